"""Allowed ranges of numeric settings, checked where configs are built so every entry point gets them.

Why here and not in the trainer: a ``warmup_ratio`` of 5 or a ``lora.r`` of 0 must be refused with the key,
the value and the range before any model loads or file is written, whether it came from a CLI flag, YAML,
a dotted override, ``qatune.train({...})`` or a compare plan. Both :mod:`qatune.config` (training
settings) and :mod:`qatune.methods` (per-method options) declare their ranges with :class:`Range`.
"""

from __future__ import annotations

import math
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

    def check(self, key: str, value: Any) -> None:
        """Raise a one-line ConfigError naming ``key``, ``value`` and the range; None passes (unset)."""
        if value is None or self.contains(value):
            return
        why = f" ({self.why})" if self.why else ""
        raise ConfigError(f"config key '{key}': {value!r} is out of range; it must be {self.text()}{why}")
