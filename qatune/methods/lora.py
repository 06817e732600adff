"""LoRA and LoHa: low-rank updates to chosen linear layers, optionally only in the last N layers."""

from __future__ import annotations

from typing import Any

from qatune.methods.base import Method, build_peft, registry
from qatune.ranges import Range


def _layers_to_transform(model: Any, last_n: int | None) -> list[int] | None:
    if not last_n:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layers", 0))
    if total <= 0:
        return None
    last_n = min(last_n, total)
    return list(range(total - last_n, total))


# Default adapter targets per architecture: all attention projections including the attention output.
# Measured on MiniLM (2,000 SQuAD questions, 1 epoch, lr 2e-3, r 8): query+key+value+attention.output.dense
# reached F1 32.2 vs 14.6 for query+key+value alone (docs/benchmarks.md). Unknown architectures fall back
# to PEFT's own default mapping.
ATTENTION_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
}


def default_targets(model: Any) -> list[str] | None:
    return ATTENTION_TARGETS.get(getattr(model.config, "model_type", ""))


def _lora_like(config_cls_name: str):
    def build(model: Any, options: dict[str, Any], task_type: str) -> Any:
        import peft

        opts = dict(options)
        layers = _layers_to_transform(model, opts.pop("layers", None))
        config_cls = getattr(peft, config_cls_name)
        kwargs = {
            "task_type": task_type,
            "r": opts.pop("r"),
            "target_modules": opts.pop("target_modules", None) or default_targets(model),
            "layers_to_transform": layers,
        }
        if config_cls_name == "LoraConfig":
            kwargs["lora_alpha"] = opts.pop("alpha")
            kwargs["lora_dropout"] = opts.pop("dropout")
        else:
            kwargs["alpha"] = opts.pop("alpha")
            kwargs["rank_dropout"] = opts.pop("dropout")
        kwargs.update(opts)
        return build_peft(config_cls_name.removesuffix("Config").lower(), model, config_cls, **kwargs)

    return build


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
    build=_lora_like("LoraConfig"),
    defaults={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None, "layers": None},
    ranges=_lora_ranges("LoRA"),
))

registry.register(Method(
    name="loha",
    description="LoHa: low-rank Hadamard-product adapters",
    # one factor of each product starts at zero, so early updates are tiny: 1e-2 gave F1 54.8 vs 27.9 at
    # 2e-3 on MiniLM, 2,000 SQuAD questions x 2 epochs (docs/results/compare-squad-followup)
    learning_rate=1e-2,
    build=_lora_like("LoHaConfig"),
    defaults={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "layers": None},
    ranges=_lora_ranges("LoHa"),
))
