"""Virtual-token methods: prefix tuning, P-tuning (prompt encoder) and prompt tuning, plus a PEFT passthrough.

Prompt and P-tuning prepend virtual tokens to the input, so the model returns logits for
``num_virtual_tokens + seq_len`` positions; the task's forward pass (e.g. ``QASpanModel``) strips them so
labels, logits and offset mappings stay aligned. Prefix tuning adds keys/values only (no extra positions).
"""

from __future__ import annotations

from qatune.methods.base import Method, registry
from qatune.ranges import Range

_VIRTUAL = Range(1, why="virtual tokens prepended to every window, e.g. 20")

registry.register(Method(
    name="prefix",
    description="prefix tuning (trainable key/value prefixes in every layer)",
    learning_rate=1e-2,
    defaults={"num_virtual_tokens": 20, "prefix_projection": False},
    ranges={"num_virtual_tokens": _VIRTUAL},
    mergeable=False,
    virtual_tokens=True,
))

registry.register(Method(
    name="ptuning",
    description="P-tuning: virtual tokens produced by a prompt encoder (MLP)",
    learning_rate=1e-2,
    defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 128},
    ranges={"num_virtual_tokens": _VIRTUAL, "encoder_hidden_size": Range(1, why="the prompt encoder's width")},
    mergeable=False,
    virtual_tokens=True,
    takes_positions=True,
))

registry.register(Method(
    name="prompt",
    description="prompt tuning (trainable virtual-token embeddings)",
    learning_rate=3e-2,
    defaults={"num_virtual_tokens": 20},
    ranges={"num_virtual_tokens": _VIRTUAL},
    mergeable=False,
    virtual_tokens=True,
    takes_positions=True,
))


registry.register(Method(
    name="peft",
    description="any other PEFT config, passed through from YAML (peft_type + its arguments)",
    learning_rate=5e-4,
    defaults={},
    mergeable=False,
))
