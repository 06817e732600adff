"""LoRA and LoHa: low-rank updates to chosen linear layers, optionally only in the last N layers.

How each backend applies them: e.g. :mod:`qatune.backends.hf.peft_methods` (default target modules per
architecture live there).
"""

from __future__ import annotations

from qatune.methods.base import Method, registry
from qatune.ranges import Range


def _lora_ranges(name: str) -> dict[str, Range]:
    return {
        "r": Range(1, why=f"the {name} adapter rank, e.g. 8"),
        "alpha": Range(0, low_open=True, why=f"the {name} scaling numerator (scale = alpha / r), e.g. 16"),
        "dropout": Range(0, 1, high_open=True, why="a dropout probability"),
        "layers": Range(1, why="train only the last N layers"),
    }


registry.register(Method(
    name="lora",
    description="LoRA low-rank adapters (r, alpha, dropout, target_modules, layers=last N)",
    learning_rate=2e-3,  # measured best of 5e-4/1e-3/2e-3/3e-3 on MiniLM + SQuAD (docs/benchmarks.md)
    defaults={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None, "layers": None},
    ranges=_lora_ranges("LoRA"),
))

registry.register(Method(
    name="loha",
    description="LoHa: low-rank Hadamard-product adapters",
    # one factor of each product starts at zero, so early updates are tiny: 1e-2 gave F1 54.8 vs 27.9 at
    # 2e-3 on MiniLM, 2,000 SQuAD questions x 2 epochs (docs/results/compare-squad-followup)
    learning_rate=1e-2,
    defaults={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "layers": None},
    ranges=_lora_ranges("LoHa"),
))
