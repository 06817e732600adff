"""Method interface and registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from qatune.errors import ConfigError
from qatune.ranges import Range


@dataclass
class Method:
    """A fine-tuning method.

    ``build(model, options, task_type)`` returns the model to train (a PEFT model, or the model itself for
    full fine-tuning). ``defaults`` are the documented per-method hyperparameters; ``learning_rate`` is the
    default when the user gives none. ``mergeable``: adapter weights can be folded into the base weights
    for inference/export. ``ranges``: checked when a config is built, so ``lora.r=0`` is refused before
    PEFT sees it.
    """

    name: str
    description: str
    learning_rate: float
    build: Callable[[Any, dict[str, Any], str], Any]
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


def build_peft(method: str, model: Any, config_cls: Any, **kwargs: Any) -> Any:
    """``get_peft_model(model, config_cls(**kwargs))``, with PEFT's own refusals of the user's options (a target
    module the model lacks, ``r=0`` through the passthrough, an unknown argument) as a one-line ConfigError
    naming the method, instead of an internal error."""
    import peft

    try:
        config = config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method '{method}' ({config_cls.__name__}): {exc}") from None
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"method '{method}': PEFT cannot apply these options to the model: {exc}") from None
