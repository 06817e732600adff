"""The native backend: qatune's own BERT and LoRA (:mod:`qatune.native`) behind the backend seam.

``backend: native`` (YAML), ``backend=native`` or ``--backend native`` trains, evaluates, predicts, serves,
exports and compares BERT-architecture models without transformers' modelling code or PEFT. Its runs are
the same files the ``hf`` backend writes -- a full fine-tuning run is a Hugging Face model dir
(``config.json`` + ``model.safetensors``, query/key/value unfused on disk), a LoRA run a PEFT adapter dir --
so a run trained here loads under ``--backend hf`` (and with plain transformers / PEFT), and an ``hf`` run of
a supported method loads here. The fused Q/K/V layout exists only in memory (:mod:`qatune.native.convert`).

What it supports, and refuses by name otherwise: heads ``question_answering`` and
``sequence_classification``; methods ``full``, ``lora`` and its last-N variant (``lora-last4``).
Finding a model by alias and loading its tokenizer are shared with the ``hf`` backend (the tokenizer is
transformers' fast tokenizer either way: the tasks need its offsets and windowing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qatune.backends.hf import HFBackend
from qatune.errors import ConfigError, ModelError

# task head kind -> qatune.native model class name
HEADS: dict[str, str] = {
    "question_answering": "BertForQuestionAnswering",
    "sequence_classification": "BertForSequenceClassification",
}
METHODS = ("full", "lora")  # + lora-lastN, resolved by the method registry into lora with layers=N


def _supported_methods() -> str:
    return "full, lora, lora-lastN (e.g. lora-last4)"


@dataclass
class NativeOptions:
    """The ``native:`` config section."""

    skip_padding: bool = field(default=True, metadata={
        "help": "run embeddings, projections, feed-forward and layer norms on the real tokens only when at "
                "least 10% of a batch is padding (exact at real tokens; off: always compute the padded grid)"})


class NativeBackend(HFBackend):
    """qatune.native models; model lookup, tokenizer and run-file checks are the hf backend's."""

    name = "native"
    options_type = NativeOptions
    run_files = HFBackend.run_files

    @staticmethod
    def _model_class(spec: Any) -> Any:
        import qatune.native as native

        if spec.head not in HEADS:
            raise ConfigError(f"the native backend has no '{spec.head}' head; heads: {', '.join(HEADS)} "
                              "(use --backend hf for other tasks)")
        return getattr(native, HEADS[spec.head])

    @staticmethod
    def _overrides(spec: Any, attention_dropout: float | None, hidden_dropout: float | None = None) -> dict[str, Any]:
        overrides = dict(spec.head_options)
        if attention_dropout is not None:
            overrides["attention_probs_dropout_prob"] = attention_dropout
        if hidden_dropout is not None:
            overrides["hidden_dropout_prob"] = hidden_dropout
        return overrides

    def _load(self, path: str, spec: Any, options: Any, attention_dropout: float | None,
              head_expected: bool, hidden_dropout: float | None = None) -> Any:
        cls = self._model_class(spec)
        model = cls.from_pretrained(path, **self._overrides(spec, attention_dropout, hidden_dropout))
        missing = model.loading_info["missing_keys"]
        if head_expected and missing:
            raise ModelError(f"{path}: the trained model has no {', '.join(sorted(missing))} (a {spec.head} head); "
                             "is it a run of another task?")
        skip = getattr(options, "skip_padding", NativeOptions.skip_padding)
        model.bert.skip_padding = bool(skip)
        model.name_or_path = path  # recorded as the base model of a LoRA adapter, as PEFT does
        return model

    def load_base(self, name: str, spec: Any, options: Any = None, attention_dropout: float | None = None,
                  hidden_dropout: float | None = None) -> Any:
        return self._load(self.resolve_model(name), spec, options, attention_dropout, head_expected=False,
                          hidden_dropout=hidden_dropout)

    def apply_method(self, model: Any, method: Any, method_options: dict[str, Any], spec: Any) -> Any:
        from qatune.native import lora

        if method.name not in METHODS:
            raise ConfigError(f"method '{method.name}' is not available on the native backend; available: "
                              f"{_supported_methods()} (use --backend hf for the others)")
        if method.name == "full":
            for param in model.parameters():
                param.requires_grad_(True)
            return model
        total = model.config.num_hidden_layers
        last_n = method_options.get("layers")
        layers = list(range(total - min(int(last_n), total), total)) if last_n else None
        settings = lora.LoraSettings(r=int(method_options["r"]), alpha=float(method_options["alpha"]),
                                     dropout=float(method_options["dropout"]),
                                     target_modules=method_options.get("target_modules") or lora.DEFAULT_TARGETS,
                                     layers=layers)
        try:
            lora.apply_lora(model, settings)
        except ModelError as exc:  # e.g. a target module BERT does not have: the user's option, not the model
            raise ConfigError(f"method '{method.name}': {exc}") from None
        return model

    def save_run(self, model: Any, tokenizer: Any, out: Path) -> None:
        from qatune.native import lora

        if lora.has_lora(model):
            lora.save_adapter(model, out, base_model_name_or_path=getattr(model, "name_or_path", None))
        else:
            model.save_pretrained(out)
        tokenizer.save_pretrained(str(out))

    def load_run(self, run_dir: Path, run_config: dict[str, Any], spec: Any, method: Any, merge: bool = True,
                 attention_dropout: float | None = 0.0) -> tuple[Any, Any]:
        from qatune.backends.hf.models import load_tokenizer
        from qatune.native import lora

        path = Path(run_dir)
        if method.name not in METHODS:
            raise ModelError(f"{path}: a '{method.name}' run cannot be loaded by the native backend (it runs "
                             f"{_supported_methods()}); load it with --backend hf")
        missing = self.missing_run_files(path, method.is_peft)
        if missing:
            raise ModelError(f"run directory {path} is incomplete: {', '.join(missing)} is missing (deleted or not "
                             "copied); restore it, or retrain with `qatune train --output DIR`")
        tokenizer = load_tokenizer(str(path), needs_offsets=spec.needs_offsets)
        options = self.options_type(**_section(run_config, self.name, self.options_type))
        if not method.is_peft:
            model = self._load(str(path), spec, options, attention_dropout, head_expected=True)
        else:
            model = self._load(self.resolve_model(self.base_model_of(run_config, path)), spec, options,
                               attention_dropout, head_expected=False)
            lora.load_adapter(model, path)
            if merge:
                model = lora.merge_and_unload(model)
        model.eval()
        return model, tokenizer

    def merge(self, model: Any) -> Any:
        from qatune.native import lora

        return lora.merge_and_unload(model) if lora.has_lora(model) else model


def _section(run_config: dict[str, Any], name: str, options_type: type) -> dict[str, Any]:
    """The backend's options as a run recorded them (only when it was trained with this backend)."""
    from dataclasses import fields

    section = run_config.get(name) if run_config.get("backend") == name else None
    known = {f.name for f in fields(options_type)}
    return {k: v for k, v in section.items() if k in known} if isinstance(section, dict) else {}
