"""Method interface and registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from qatune.errors import ConfigError
from qatune.ranges import Range


@dataclass
class Method:
    """A fine-tuning method: what it is, not how a backend applies it (``Backend.apply_method`` does,
    e.g. :mod:`qatune.backends.hf.peft_methods` with PEFT).

    ``defaults`` are the documented per-method hyperparameters; ``learning_rate`` is the
    default when the user gives none. ``mergeable``: adapter weights can be folded into the base weights
    for inference/export. ``ranges``: checked when a config is built, so ``lora.r=0`` is refused before
    PEFT sees it.
    """

    name: str
    description: str
    learning_rate: float
    defaults: dict[str, Any] = field(default_factory=dict)
    mergeable: bool = True
    ranges: dict[str, Range] = field(default_factory=dict)  # numeric options: allowed values (qatune.ranges)
    virtual_tokens: bool = False  # prepends virtual tokens (prefix/prompt methods)
    takes_positions: bool = False  # the virtual tokens occupy input positions (prompt, P-tuning; not prefix)
    is_peft: bool = True


class MethodRegistry:
    _VARIANT = re.compile(r"^(?P<base>[a-z0-9_]+)-last(?P<n>\d+)$")

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, method: Method) -> Method:
        self._methods[method.name] = method
        return method

    def names(self) -> list[str]:
        return list(self._methods)

    def resolve(self, name: str) -> tuple[Method, dict[str, Any]]:
        """Return the method and the options implied by its name (``lora-last4`` -> layers=4)."""
        if name in self._methods:
            return self._methods[name], {}
        match = self._VARIANT.match(name)
        if match and match["base"] in self._methods and "layers" in self._methods[match["base"]].defaults:
            if int(match["n"]) < 1:  # lora-last0 used to mean "every layer" without a word
                raise ConfigError(f"method '{name}': the last-N-layers variant needs N >= 1 (e.g. "
                                  f"{match['base']}-last4), got {match['n']}")
            return self._methods[match["base"]], {"layers": int(match["n"])}
        raise ConfigError(
            f"unknown method '{name}'. Choose one of: {', '.join(self.names())} "
            f"(or a last-N-layers variant such as lora-last4)."
        )

    def get(self, name: str) -> Method:
        return self.resolve(name)[0]

    def options(self, name: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults < name-implied options < user options (validated against the defaults' keys)."""
        method, implied = self.resolve(name)
        user = dict(user or {})
        unknown = set(user) - set(method.defaults) - {"peft_type"}
        if unknown and method.name != "peft":
            raise ConfigError(
                f"method '{name}': unknown option(s) {sorted(unknown)}; known: {sorted(method.defaults)}"
            )
        return {**method.defaults, **implied, **user}


registry = MethodRegistry()
