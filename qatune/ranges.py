"""Allowed ranges of numeric settings, checked where configs are built so every entry point gets them.

Why here and not in the trainer: a ``warmup_ratio`` of 5 or a ``lora.r`` of 0 must be refused with the key,
the value and the range before any model loads or file is written, whether it came from a CLI flag, YAML,
a dotted override, ``qatune.train({...})`` or a compare plan. Both :mod:`qatune.config` (training
settings) and :mod:`qatune.methods` (per-method options) declare their ranges with :class:`Range`;
the inference entry points (``evaluate_run``, ``load_pipeline``, ``answer_batch``, ``run_bench``) check
their keyword options with :func:`check_option`, so the Python API refuses what the CLI flags refuse.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from qatune.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (either end optional; ``*_open`` excludes it). ``why`` says what the value
    means, so the message tells the user which number makes sense."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "a finite number"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def check(self, key: str, value: Any, label: str | None = None) -> None:
        """Raise a one-line ConfigError naming ``key`` (or ``label``), ``value`` and the range; None passes
        (unset)."""
        if value is None or self.contains(value):
            return
        why = f" ({self.why})" if self.why else ""
        name = label or f"config key '{key}'"
        raise ConfigError(f"{name}: {value!r} is out of range; it must be {self.text()}{why}")


def check_option(key: str, value: Any, allowed: Range, integer: bool = False, label: str | None = None) -> None:
    """A keyword option of a Python entry point that is also a CLI flag (``batch_size`` / ``--batch-size``).

    The message names both spellings (or says ``label``), so a CLI user and an API caller each recognize
    their own; a bool, a string or (for ``integer``) 2.5 is refused here instead of failing deep inside
    PyTorch. None passes.
    """
    if value is None:
        return
    label = label or f"option '{key}' (--{key.replace('_', '-')})"
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{label}: {value!r} is not {'a whole number' if integer else 'a number'}; it must be "
                          f"{allowed.text()}{f' ({allowed.why})' if allowed.why else ''}")
    allowed.check(key, value, label)
