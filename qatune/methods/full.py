"""Full fine-tuning: every weight trains. The baseline every PEFT method is compared against."""

from __future__ import annotations

from typing import Any

from qatune.methods.base import Method, registry


def _build(model: Any, options: dict[str, Any], task_type: str) -> Any:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


registry.register(Method(
    name="full",
    description="full fine-tuning of every weight",
    learning_rate=1e-4,  # small models (MiniLM) like 1e-4; use 3e-5..5e-5 for BERT-base and larger
    build=_build,
    defaults={},
    mergeable=False,
    is_peft=False,
))
