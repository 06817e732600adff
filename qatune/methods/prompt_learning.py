"""Virtual-token methods: prefix tuning, P-tuning (prompt encoder) and prompt tuning, plus a PEFT passthrough.

Prompt and P-tuning prepend virtual tokens to the input, so the model returns logits for
``num_virtual_tokens + seq_len`` positions; :func:`qatune.tasks.qa.modeling.span_logits` strips them so
labels, logits and offset mappings stay aligned. Prefix tuning adds keys/values only (no extra positions).
"""

from __future__ import annotations

from typing import Any

from qatune.errors import ConfigError
from qatune.methods.base import Method, build_peft, registry
from qatune.ranges import Range

_VIRTUAL = Range(1, why="virtual tokens prepended to every window, e.g. 20")


def _prompt_method(name: str, config_cls_name: str):
    def build(model: Any, options: dict[str, Any], task_type: str) -> Any:
        import peft

        return build_peft(name, model, getattr(peft, config_cls_name), task_type=task_type, **options)

    return build


registry.register(Method(
    name="prefix",
    description="prefix tuning (trainable key/value prefixes in every layer)",
    learning_rate=1e-2,
    build=_prompt_method("prefix", "PrefixTuningConfig"),
    defaults={"num_virtual_tokens": 20, "prefix_projection": False},
    ranges={"num_virtual_tokens": _VIRTUAL},
    mergeable=False,
    virtual_tokens=True,
))

registry.register(Method(
    name="ptuning",
    description="P-tuning: virtual tokens produced by a prompt encoder (MLP)",
    learning_rate=1e-2,
    build=_prompt_method("ptuning", "PromptEncoderConfig"),
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
    build=_prompt_method("prompt", "PromptTuningConfig"),
    defaults={"num_virtual_tokens": 20},
    ranges={"num_virtual_tokens": _VIRTUAL},
    mergeable=False,
    virtual_tokens=True,
    takes_positions=True,
))


def _passthrough(model: Any, options: dict[str, Any], task_type: str) -> Any:
    """Any PEFT config by class name: ``peft: {peft_type: AdaLoraConfig, r: 8, ...}`` in YAML."""
    import peft

    opts = dict(options)
    name = opts.pop("peft_type", None)
    config_cls = getattr(peft, str(name), None) if name else None
    if config_cls is None:
        raise ConfigError(f"method 'peft' needs peft_type: the name of a PEFT config class, got {name!r} "
                          "(e.g. AdaLoraConfig, VeraConfig, BOFTConfig)")
    return build_peft("peft", model, config_cls, task_type=task_type, **opts)


registry.register(Method(
    name="peft",
    description="any other PEFT config, passed through from YAML (peft_type + its arguments)",
    learning_rate=5e-4,
    build=_passthrough,
    defaults={},
    mergeable=False,
))
