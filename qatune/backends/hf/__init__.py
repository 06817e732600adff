"""The Hugging Face backend: transformers models (``AutoModelFor<head>``) adapted with PEFT.

A full fine-tuning run is a standard Hugging Face model dir, a PEFT run a standard PEFT adapter dir;
both load with plain transformers / PEFT too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatune.errors import ConfigError, ModelError

RUN_CONFIG = "qatune.yaml"  # the run's config file (qatune.artifacts.RUN_CONFIG), named in messages

# task head kind -> (transformers auto class, PEFT task type)
HEADS: dict[str, tuple[str, str]] = {
    "question_answering": ("AutoModelForQuestionAnswering", "QUESTION_ANS"),
    "sequence_classification": ("AutoModelForSequenceClassification", "SEQ_CLS"),
    "token_classification": ("AutoModelForTokenClassification", "TOKEN_CLS"),
    "causal_lm": ("AutoModelForCausalLM", "CAUSAL_LM"),
    "feature_extraction": ("AutoModel", "FEATURE_EXTRACTION"),  # an encoder for a task-owned head
}


@dataclass
class HFOptions:
    """The ``hf:`` config section."""

    trust_remote_code: bool = False  # run a model repo's own Python code (off unless you set it)


class HFBackend:
    name = "hf"
    options_type = HFOptions
    run_files = ("config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
                 "README.md", "generation_config.json")

    @staticmethod
    def _head(spec: Any) -> tuple[str, str]:
        if spec.head not in HEADS:
            raise ConfigError(f"the hf backend has no '{spec.head}' head; heads: {', '.join(HEADS)}")
        return HEADS[spec.head]

    def resolve_model(self, name: str) -> str:
        from qatune.backends.hf.models import resolve_model

        return resolve_model(name)

    def known_model(self, name: str) -> bool:
        from qatune.backends.hf.models import ALIASES

        return name in ALIASES or bool(name and Path(name).expanduser().exists())

    def portable_model_id(self, name: str, resolved: str | None = None) -> str:
        """The base model as a run records it: the hub id of an embedded model, else the resolved name."""
        from qatune.backends.hf.models import portable_model_id

        return portable_model_id(name, resolved)

    def load_tokenizer(self, name: str, spec: Any, options: Any = None) -> Any:
        from qatune.backends.hf.models import load_tokenizer

        trust = bool(getattr(options, "trust_remote_code", False))
        return load_tokenizer(name, trust, needs_offsets=spec.needs_offsets)

    def load_base(self, name: str, spec: Any, options: Any = None, attention_dropout: float | None = None,
                  hidden_dropout: float | None = None) -> Any:
        from qatune.backends.hf.models import load_model_for_task

        auto_class, _ = self._head(spec)
        return load_model_for_task(name, auto_class, attention_dropout=attention_dropout, hidden_dropout=hidden_dropout,
                                   trust_remote_code=bool(getattr(options, "trust_remote_code", False)),
                                   head_options=dict(spec.head_options))

    def apply_method(self, model: Any, method: Any, method_options: dict[str, Any], spec: Any) -> Any:
        from qatune.backends.hf.peft_methods import BUILDERS

        if method.name not in BUILDERS:
            raise ConfigError(f"method '{method.name}' is not available on the hf backend; "
                              f"available: {', '.join(BUILDERS)}")
        _, task_type = self._head(spec)
        if spec.head == "causal_lm" and method.virtual_tokens:
            raise ConfigError(f"method '{method.name}' adds virtual tokens, which qatune's KV-cache generation for "
                              "causal LMs does not feed; use full, lora, loha, ia3 or peft (e.g. AdaLoraConfig)")
        return BUILDERS[method.name](model, method_options, task_type)

    def save_run(self, model: Any, tokenizer: Any, out: Path) -> None:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        _portable_adapter_config(out)

    def base_model_of(self, run_cfg: dict[str, Any], run_dir: str | Path | None = None) -> str:
        """The run's base model, as recorded at training time: never what a relative path means from here.

        ``model`` is what the user typed; ``base_model_path`` is what it resolved to when the run was trained
        (absolute for a local folder). An alias resolves afresh (the embedded model's package may have moved);
        a local base model loads from its recorded absolute path only, so a different model that happens to
        sit at the same relative path under the current directory is never picked up.
        """
        from qatune.backends.hf.models import ALIASES

        name = str(run_cfg.get("model") or "")
        saved = str(run_cfg.get("base_model_path") or "")
        where = f"{Path(run_dir) / RUN_CONFIG}" if run_dir is not None else RUN_CONFIG
        if name in ALIASES:
            return name
        if saved and Path(saved).expanduser().is_absolute():
            if Path(saved).expanduser().exists():
                return saved
            raise ModelError(f"the run's base model {saved} (given as --model {name or saved} at training time, "
                             f"recorded in {where}) no longer exists; put the base model back at that path, or set "
                             "base_model_path in that file to where it is now")
        if saved:
            return saved  # a hub id
        if not name:
            raise ModelError(f"{where} names no base model ('model'); retrain into a new --output")
        return name  # a run of an older version that recorded no base_model_path

    @staticmethod
    def missing_run_files(path: Path, peft: bool) -> list[str]:
        """The weight/config files a run needs that are not there (a partly deleted or copied run dir)."""
        if peft:
            needed = [("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin")]
        else:
            needed = [("config.json",), ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")]
        needed.append(("tokenizer_config.json",))
        return [names[0] for names in needed if not any((path / n).is_file() for n in names)]

    def load_run(self, run_dir: Path, run_config: dict[str, Any], spec: Any, method: Any, merge: bool = True,
                 attention_dropout: float | None = 0.0) -> tuple[Any, Any]:
        from qatune.backends.hf.models import load_model_for_task, load_tokenizer

        path = Path(run_dir)
        auto_class, _ = self._head(spec)
        missing = self.missing_run_files(path, method.is_peft)
        if missing:
            raise ModelError(f"run directory {path} is incomplete: {', '.join(missing)} is missing (deleted or not "
                             "copied); restore it, or retrain with `qatune train --output DIR`")
        tokenizer = load_tokenizer(str(path), needs_offsets=spec.needs_offsets)
        if not method.is_peft:
            model = load_model_for_task(str(path), auto_class, attention_dropout=attention_dropout,
                                        head_expected=True)
        else:
            from peft import PeftModel

            base_name = self.base_model_of(run_config, path)
            base = load_model_for_task(base_name, auto_class, attention_dropout=attention_dropout,
                                       head_options=dict(spec.head_options))
            try:
                model = PeftModel.from_pretrained(base, str(path))
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"adapter in {path} could not be loaded onto base model '{base_name}': {exc}"
                                 ) from None
            if merge and method.mergeable:
                model = model.merge_and_unload()
        model.eval()
        return model, tokenizer

    def merge(self, model: Any) -> Any:
        if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
            try:  # a PEFT type qatune does not mark mergeable (the 'peft' passthrough) may still merge
                return model.merge_and_unload()
            except Exception:  # noqa: BLE001 - not mergeable: the adapter ops stay as they are
                return model
        return model


def _portable_adapter_config(out: Path) -> None:
    """PEFT writes the base model's local folder into ``adapter_config.json`` (for the embedded MiniLM a
    site-packages path that exists on this machine only); write the hub id instead, so plain
    ``PeftModel.from_pretrained(AutoModel...(hub id), run_dir)`` works wherever that id resolves."""
    import json

    from qatune.backends.hf.models import portable_model_id
    from qatune.core.jsonio import write_json

    path = out / "adapter_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    base = data.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        portable = portable_model_id(base, base)
        if portable != base:
            data["base_model_name_or_path"] = portable
            write_json(path, data)
