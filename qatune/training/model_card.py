"""The run directory's ``README.md``: a Hugging Face model card written from the run's own files.

YAML metadata (``base_model``, ``library_name``, ``pipeline_tag``, ``tags``, ``datasets`` for hub datasets,
``metrics`` and a ``model-index`` with the evaluation results) and a text that says what was trained, on
what, how, what it scored and how to load it. Everything comes from ``qatune.yaml``, ``metrics.json`` and
``history.json``, so a card can be rewritten for any finished run (:func:`write_model_card`) and says
nothing the run does not record. ``huggingface_hub.ModelCard`` parses it (tests/test_model_card.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from qatune.artifacts import read_run_config
from qatune.rundir import write_text_atomic
from qatune.tasks import get_task

MODEL_CARD = "README.md"
# the backend's head kind (ModelSpec.head) -> the Hugging Face pipeline tag / model-index task type
PIPELINE_TAGS = {"question_answering": "question-answering", "sequence_classification": "text-classification",
                 "token_classification": "token-classification", "causal_lm": "text-generation"}
# config keys shown in the training-procedure table, in this order
_PROCEDURE_KEYS = ("epochs", "batch_size", "grad_accum", "resolved_learning_rate", "warmup_ratio", "weight_decay",
                   "max_grad_norm", "max_seq_length", "seed", "precision_used", "attention_dropout",
                   "hidden_dropout")


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _is_local(spec: Any) -> bool:
    return bool(spec) and (Path(str(spec)).expanduser().exists() or "/" in str(spec) and not _hub_like(str(spec)))


def _hub_like(spec: str) -> bool:
    """``owner/name`` or ``name`` without path or file-extension look: a hub dataset id."""
    parts = spec.split("/")
    return len(parts) <= 2 and all(parts) and not any(p.startswith(".") for p in parts) and "." not in parts[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def card_metadata(cfg: dict[str, Any], metrics: dict[str, Any], run_name: str, peft: bool) -> dict[str, Any]:
    """The card's YAML header (Hugging Face model-card metadata)."""
    task = get_task(str(cfg.get("task") or "extractive_qa"))
    method = str(cfg.get("method_name") or cfg.get("method") or "full")
    base_model = str(cfg.get("base_model_path") or cfg.get("model") or "")
    pipeline = PIPELINE_TAGS.get(task.model.head)
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "peft" if peft else "transformers"
    if pipeline:
        meta["pipeline_tag"] = pipeline
    meta["tags"] = list(dict.fromkeys(["qatune", task.name, method]))
    datasets = [str(s) for s in (cfg.get("train"), cfg.get("eval")) if s and _hub_like(str(s)) and not _is_local(s)]
    if datasets:
        meta["datasets"] = list(dict.fromkeys(datasets))
    columns = [c for c in task.report.columns if isinstance(metrics.get(c.key), (int, float))]
    if columns:
        meta["metrics"] = [c.key for c in columns]
        eval_source = str(cfg.get("eval") or "evaluation data")
        dataset = {"name": Path(eval_source).name if _is_local(eval_source) else eval_source,
                   "type": eval_source if not _is_local(eval_source) else "local"}
        if cfg.get("max_eval_samples"):
            dataset["split"] = f"first {cfg['max_eval_samples']} examples"
        meta["model-index"] = [{"name": run_name, "results": [{
            "task": {"type": pipeline or task.name},
            "dataset": dataset,
            "metrics": [{"type": c.key, "value": round(float(metrics[c.key]), 4), "name": c.header}
                        for c in columns],
        }]}]
    return meta


def render_model_card(run_dir: str | Path) -> str:
    """The card of a finished run, as text (YAML header + Markdown)."""
    out = Path(run_dir)
    cfg = read_run_config(out)
    metrics = _read_json(out / "metrics.json", {})
    history = _read_json(out / "history.json", [])
    run_name = out.resolve().name
    task = get_task(str(cfg.get("task") or "extractive_qa"))
    meta = card_metadata(cfg, metrics, run_name, peft=(out / "adapter_config.json").is_file())
    method = str(cfg.get("method_name") or cfg.get("method") or "full")
    label = str(cfg.get("method") or method)
    base_model = meta.get("base_model", "?")
    options = cfg.get(method) if isinstance(cfg.get(method), dict) else {}
    lines = [f"# {run_name}", "",
             f"A `{base_model}` model fine-tuned for **{task.name}** with **{label}** "
             + ("(full fine-tuning: every weight trains)" if method == "full" else
                f"(a PEFT adapter: {_fmt(metrics.get('trainable_params'))} trainable parameters, "
                f"{_fmt(metrics.get('trainable_pct'))}% of the model)")
             + " with qatune. This card is written from the run's own files "
               "(`qatune.yaml`, `metrics.json`, `history.json`).", ""]
    lines += ["## Data", "",
              f"- training: `{cfg.get('train')}`" + (f", first {cfg['max_train_samples']} examples"
                                                     if cfg.get("max_train_samples") else "")
              + (f" ({_fmt(metrics.get('train_questions'))} examples, {_fmt(metrics.get('train_features'))} "
                 "model inputs)" if metrics.get("train_questions") else ""),
              f"- evaluation: `{cfg.get('eval')}`" + (f", first {cfg['max_eval_samples']} examples"
                                                      if cfg.get("max_eval_samples") else "")
              if cfg.get("eval") and cfg.get("do_eval", True) else "- evaluation: none (trained with --no-eval)",
              ""]
    columns = [c for c in task.report.columns if isinstance(metrics.get(c.key), (int, float))]
    if columns:
        lines += ["## Results", "", "| " + " | ".join(c.header for c in columns) + " |",
                  "|" + "---:|" * len(columns),
                  "| " + " | ".join(c.fmt(float(metrics[c.key])) for c in columns) + " |", ""]
    lines += ["## Training procedure", "", "| setting | value |", "|---|---|",
              f"| method | {label}" + ("" if label == method else f" ({method})") + " |"]
    lines += [f"| {method}.{k} | {_fmt(v)} |" for k, v in (options or {}).items()]
    lines += [f"| {k.replace('resolved_', '').replace('_used', '')} | {_fmt(cfg.get(k))} |"
              for k in _PROCEDURE_KEYS if k in cfg]
    for key, name in (("train_time_s", "training time (s)"), ("peak_rss_mb", "peak memory (MB)"),
                      ("world_size", "processes")):
        if metrics.get(key) is not None:
            lines.append(f"| {name} | {_fmt(metrics[key])} |")
    lines.append("")
    if history:
        shown = [c for c in task.report.columns if any(isinstance(h.get(c.key), (int, float)) for h in history)]
        head = ["epoch", "step", "train loss", "val loss"] + [c.header for c in shown]
        lines += ["### Per epoch", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for h in history:
            cells = [str(h.get("epoch")), str(h.get("step", "-")), _fmt(h.get("train_loss")), _fmt(h.get("eval_loss"))]
            cells += [c.fmt(float(h[c.key])) if isinstance(h.get(c.key), (int, float)) else "-" for c in shown]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Per-step training loss (raw and smoothed) and learning rate: `history.json` (`steps`).", ""]
    auto_class = {"question_answering": "AutoModelForQuestionAnswering",
                  "sequence_classification": "AutoModelForSequenceClassification",
                  "token_classification": "AutoModelForTokenClassification",
                  "causal_lm": "AutoModelForCausalLM"}.get(task.model.head, "AutoModel")
    lines += ["## How to load", "", "```python", "import qatune", "", f"model = qatune.load(\"{run_name}\")  "
              "# the task's predictor; `qatune serve` / `qatune predict` take the same folder", "```", ""]
    if meta["library_name"] == "peft":
        lines += ["With plain transformers + PEFT (the base model is named by its hub id in `adapter_config.json`):",
                  "", "```python", f"from transformers import {auto_class}", "from peft import PeftModel", "",
                  f"base = {auto_class}.from_pretrained(\"{base_model}\")",
                  f"model = PeftModel.from_pretrained(base, \"{run_name}\")", "```", ""]
    else:
        lines += ["With plain transformers:", "", "```python", f"from transformers import {auto_class}", "",
                  f"model = {auto_class}.from_pretrained(\"{run_name}\")", "```", ""]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path:
    """Write (atomically) ``run_dir/README.md``, replacing PEFT's stub card."""
    path = Path(run_dir) / MODEL_CARD
    write_text_atomic(path, render_model_card(run_dir))
    return path
