"""Full fine-tuning: every weight trains. The baseline every PEFT method is compared against."""

from __future__ import annotations

from qatune.methods.base import Method, registry

registry.register(Method(
    name="full",
    description="full fine-tuning of every weight",
    learning_rate=1e-4,  # small models (MiniLM) like 1e-4; use 3e-5..5e-5 for BERT-base and larger
    defaults={},
    mergeable=False,
    is_peft=False,
))
