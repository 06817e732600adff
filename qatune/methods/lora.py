"""LoRA and LoHa: low-rank updates to chosen linear layers, optionally only in the last N layers."""

from __future__ import annotations

from typing import Any

from qatune.methods.base import Method, registry


def _layers_to_transform(model: Any, last_n: int | None) -> list[int] | None:
    if not last_n:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layers", 0))
    if total <= 0:
        return None
    last_n = min(last_n, total)
    return list(range(total - last_n, total))


def _lora_like(config_cls_name: str):
    def build(model: Any, options: dict[str, Any], task_type: str) -> Any:
        import peft

        opts = dict(options)
        layers = _layers_to_transform(model, opts.pop("layers", None))
        config_cls = getattr(peft, config_cls_name)
        kwargs = {
            "task_type": task_type,
            "r": opts.pop("r"),
            "target_modules": opts.pop("target_modules", None),
            "layers_to_transform": layers,
        }
        if config_cls_name == "LoraConfig":
            kwargs["lora_alpha"] = opts.pop("alpha")
            kwargs["lora_dropout"] = opts.pop("dropout")
        else:
            kwargs["alpha"] = opts.pop("alpha")
            kwargs["rank_dropout"] = opts.pop("dropout")
        kwargs.update(opts)
        return peft.get_peft_model(model, config_cls(**kwargs))

    return build


registry.register(Method(
    name="lora",
    description="LoRA low-rank adapters (r, alpha, dropout, target_modules, layers=last N)",
    learning_rate=5e-4,
    build=_lora_like("LoraConfig"),
    defaults={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None, "layers": None},
))

registry.register(Method(
    name="loha",
    description="LoHa: low-rank Hadamard-product adapters",
    learning_rate=5e-4,
    build=_lora_like("LoHaConfig"),
    defaults={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "layers": None},
))
