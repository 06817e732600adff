"""Methods on the Hugging Face backend: each registered method name -> how PEFT builds it.

The method registry (:mod:`qatune.methods`) holds what a method *is* (name, options, defaults, learning
rate, mergeable); this module holds how transformers + PEFT apply it. A new method adds an entry here
(and one in every other backend that supports it).
"""

from __future__ import annotations

from typing import Any, Callable

from qatune.errors import ConfigError


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
    # decoder LMs (generative QA): the query/key/value projections and the attention output as well
    "gpt2": ["c_attn", "attn.c_proj"],  # GPT-2 fuses q/k/v into one Conv1D
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def default_targets(model: Any) -> list[str] | None:
    return ATTENTION_TARGETS.get(getattr(model.config, "model_type", ""))


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


def _full(model: Any, options: dict[str, Any], task_type: str) -> Any:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _lora_like(config_cls_name: str) -> Callable[[Any, dict[str, Any], str], Any]:
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


def _ia3(model: Any, options: dict[str, Any], task_type: str) -> Any:
    import peft

    opts = dict(options)
    return build_peft(
        "ia3", model, peft.IA3Config,
        task_type=task_type,
        target_modules=opts.pop("target_modules", None),
        feedforward_modules=opts.pop("feedforward_modules", None),
        **opts,
    )


def _prompt_method(name: str, config_cls_name: str) -> Callable[[Any, dict[str, Any], str], Any]:
    def build(model: Any, options: dict[str, Any], task_type: str) -> Any:
        import peft

        return build_peft(name, model, getattr(peft, config_cls_name), task_type=task_type, **options)

    return build


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


BUILDERS: dict[str, Callable[[Any, dict[str, Any], str], Any]] = {
    "full": _full,
    "lora": _lora_like("LoraConfig"),
    "loha": _lora_like("LoHaConfig"),
    "ia3": _ia3,
    "prefix": _prompt_method("prefix", "PrefixTuningConfig"),
    "ptuning": _prompt_method("ptuning", "PromptEncoderConfig"),
    "prompt": _prompt_method("prompt", "PromptTuningConfig"),
    "peft": _passthrough,
}
