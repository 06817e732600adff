"""The comparison report, rebuilt from the run directories alone (``qatune report OUTPUT``).

Writes ``report.csv`` (one row per method), ``report.md`` (tables with units), ``report.json`` (everything,
per-epoch history included), ``report.html`` (the tables and the plots embedded as base64 PNG) and the
plots as PNG files: ``loss_curves.png``, ``<metric>_vs_params.png`` (the task's primary metric, QA:
``f1_vs_params.png``), ``train_time.png``, ``peak_memory.png``. The metric columns, their headers, the
plotted metric and the notes that explain them come from the task (:class:`qatune.tasks.ReportSpec`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from qatune import rundir
from qatune.artifacts import RUN_CONFIG, write_json
from qatune.compare.measure import peak_memory, weights_size_mb
from qatune.compare.rundirs import LOG_FILE, PLAN_FILE, STATUS_FILE, is_finished, read_json
from qatune.errors import OutputError
from qatune.tasks import ReportSpec, get_task

REPORT_FILES = ["report.csv", "report.md", "report.json", "report.html"]


def plots_for(spec: ReportSpec) -> dict[str, str]:
    """Plot file stem -> caption."""
    return {
        "loss_curves": "Training loss per optimizer step (faint: raw, solid: smoothed, an exponential moving "
                       "average) and validation loss after each epoch, per method (lower is better).",
        f"{spec.primary}_vs_params": f"{spec.primary_label} against trainable parameters (log scale): up and to the "
                                     "left is better.",
        "train_time": "Training time per method (training loop only; evaluation excluded).",
        "peak_memory": "Peak memory of each training process.",
    }


def base_columns(spec: ReportSpec) -> list[str]:
    """Report columns: the task's metrics after method/status/error, then cost and settings."""
    return ["method", "status", "error", *(c.key for c in spec.columns), "eval_loss", "train_loss", "train_time_s",
            "peak_memory_mb", "trainable_params", "trainable_pct", "total_params", "adapter_size_mb",
            "latency_p50_ms", "latency_p95_ms", "throughput_qps", "learning_rate", "epochs"]


def _report_spec(task: Any = None) -> ReportSpec:
    spec = get_task(str(task) if task else None).report
    for column in (*spec.columns, *spec.optional):  # the tables format the task's columns like the others
        HEADERS.setdefault(column.key, (column.header, column.fmt))
    return spec


def merged_spec(tasks: list[str]) -> ReportSpec:
    """One report spec for rows of several (data-compatible) tasks: every task's metric columns, the ones
    they share first (extractive + generative QA: EM, F1, then BLEU-1); ranked and plotted by the first
    task's primary metric when every task has it, else by the first metric they all have."""
    specs = {name: _report_spec(name) for name in dict.fromkeys(tasks)}
    if len(specs) <= 1:
        return next(iter(specs.values())) if specs else _report_spec()
    everyone = [{c.key for c in s.columns} for s in specs.values()]
    columns = list({c.key: c for s in specs.values() for c in s.columns}.values())
    columns.sort(key=lambda c: not all(c.key in keys for keys in everyone))  # stable: shared ones first
    optional = [c for c in {c.key: c for s in specs.values() for c in s.optional}.values()
                if c.key not in {col.key for col in columns}]
    first = next(iter(specs.values()))
    shared = [c.key for c in columns if all(c.key in keys for keys in everyone)]
    primary = first.primary if first.primary in shared else (shared[0] if shared else first.primary)

    def joined(attr: str, sep: str) -> str:
        notes = {name: getattr(s, attr) for name, s in specs.items() if getattr(s, attr)}
        return sep.join(f"{name} rows: {note}" for name, note in notes.items())

    return ReportSpec(columns=tuple(columns), primary=primary, optional=tuple(optional),
                      metric_note=joined("metric_note", "; "), optional_note=first.optional_note,
                      loss_note=joined("loss_note", " ") + " Losses of different tasks measure different "
                      "things: compare the metrics across tasks, the losses only within one task.")


def metric_keys(task: str | None = None) -> list[str]:
    """The task's report metrics, primary first (progress lines, MLflow metrics, the CLI summary)."""
    spec = get_task(task).report
    return [spec.primary] + [c.key for c in spec.columns if c.key != spec.primary]


# the default task's (extractive QA's) plots and columns
PLOTS = plots_for(get_task().report)
BASE_COLUMNS = base_columns(get_task().report)
EXTRA_COLUMNS = ["model", "task", "base_method", "peak_memory_source", "wall_time_s", "train_questions", "eval_questions",
                 "latency_questions", "throughput_questions", "throughput_batch_size", "precision", "run_dir"]
# column -> (header with units, formatter) for the Markdown/HTML tables
MEMORY_SOURCES = {"cpu_peak_rss": "CPU peak RSS of the training process",
                  "cuda_max_allocated": "CUDA max allocated by the training process"}


def _pct(v: float) -> str:
    return f"{v:.1f}"


def _count(v: float) -> str:
    return f"{int(v):,}"


def _small(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _model_name(value: Any) -> str:
    """A model as the tables show it: a registry name or hub id as given, a local directory by its name."""
    text = str(value)
    return Path(text).name if Path(text).is_absolute() else text


HEADERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "method": ("method", str),
    "model": ("model", _model_name),
    "task": ("task", str),
    "status": ("status", str),
    "eval_loss": ("val loss", lambda v: f"{v:.3f}"),
    "train_loss": ("train loss (last epoch)", lambda v: f"{v:.3f}"),
    "train_time_s": ("train time (s)", lambda v: f"{v:.1f}"),
    "peak_memory_mb": ("peak memory (MB)", lambda v: f"{v:,.0f}"),
    "trainable_params": ("trainable params", _count),
    "trainable_pct": ("trainable (% of total)", _small),
    "total_params": ("total params", _count),
    "adapter_size_mb": ("weights on disk (MB)", _small),
    "latency_p50_ms": ("latency p50 (ms, batch 1)", lambda v: f"{v:.1f}"),
    "latency_p95_ms": ("latency p95 (ms, batch 1)", lambda v: f"{v:.1f}"),
    "throughput_qps": ("throughput (questions/s)", lambda v: f"{v:.1f}"),
    "learning_rate": ("learning rate", lambda v: f"{v:g}"),
    "epochs": ("epochs", lambda v: f"{v:g}"),
}


# -- collecting -------------------------------------------------------------------------------------------

def _labels(out: Path, plan: dict[str, Any] | None) -> list[str]:
    if plan and isinstance(plan.get("methods"), list):
        return [str(m) for m in plan["methods"]]
    return sorted(p.name for p in out.iterdir() if p.is_dir() and ((p / STATUS_FILE).is_file()
                                                                  or (p / "metrics.json").is_file()))


def _status(status_file: dict[str, Any], finished: bool) -> str:
    recorded = status_file.get("status")
    if recorded == "failed":
        return "failed"
    if finished:
        return "finished"
    if recorded in ("running", "interrupted"):
        return "interrupted"
    return "not run"  # never started, or its run files are gone


def _default_lr(method: str) -> float | None:
    from qatune.methods import registry

    try:
        return registry.get(method).learning_rate
    except Exception:  # noqa: BLE001 - an unknown method has no default
        return None


def _hyperparameters(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    from qatune.methods import registry

    keys = ("learning_rate", "resolved_learning_rate", "batch_size", "grad_accum", "weight_decay", "warmup_ratio",
            "max_grad_norm")
    hp = {k: cfg[k] for k in keys if k in cfg}
    try:
        base, _ = registry.resolve(method)
        hp["options"] = registry.options(method, cfg.get(base.name) or {})
    except Exception:  # noqa: BLE001 - failed methods may have invalid options; report what was asked
        pass
    return hp


def collect(out: Path) -> dict[str, Any]:
    """Everything the report shows, read from OUTPUT/compare.json and OUTPUT/<method>/ run directories."""
    out = Path(out)
    if not out.is_dir():
        raise OutputError(f"{out} does not exist; pass the --output directory of `qatune compare`")
    plan = read_json(out / PLAN_FILE)
    labels = _labels(out, plan)
    if not labels:
        raise OutputError(f"{out} holds no comparison (no {PLAN_FILE} and no method run directories); "
                          "pass the --output directory of `qatune compare`")
    plan = plan or {}
    default_task = _task_name(out, plan, labels)
    records = []
    for label in labels:
        run_dir = out / label
        status_file = (read_json(run_dir / STATUS_FILE) or {}) if run_dir.is_dir() else {}
        finished = is_finished(run_dir)
        status = _status(status_file, finished)
        metrics = (read_json(run_dir / "metrics.json") or {}) if finished and status == "finished" else {}
        history = (read_json(run_dir / "history.json") or []) if metrics else []
        planned_cfg = (plan.get("configs") or {}).get(label) or {}
        run_cfg: dict[str, Any] = {}
        if metrics:
            try:
                run_cfg = yaml.safe_load((run_dir / RUN_CONFIG).read_text()) or {}
            except (OSError, yaml.YAMLError):
                run_cfg = {}
        cfg = run_cfg or planned_cfg
        asked = {**(plan.get("shared") or {}), **((plan.get("overrides") or {}).get(label) or {})}
        task = get_task(str(cfg.get("task") or asked.get("task") or default_task or "") or None).name
        own = _report_spec(task)
        own_metrics = [c.key for c in (*own.columns, *own.optional)]  # another task's metric: "–" in this row
        method = str(cfg.get("method") or (plan.get("method_names") or {}).get(label) or status_file.get("method")
                     or label)
        measure = (status_file.get("measure") or {}) if metrics else {}
        error = status_file.get("error") if status != "finished" else None
        if status == "finished" and measure.get("error"):
            error = f"measurement failed: {measure['error']}"
        if status == "not run":
            error = "not run yet (rerun the comparison)"
        memory, memory_source = peak_memory(metrics) if metrics else (None, "")
        lr = run_cfg.get("resolved_learning_rate") if run_cfg else None
        if lr is None:
            lr = cfg.get("learning_rate") if cfg.get("learning_rate") is not None else _default_lr(method)
        row: dict[str, Any] = {
            "method": label, "status": status, "error": error,
            **{key: metrics.get(key) for key in own_metrics},
            "eval_loss": metrics.get("eval_loss"), "train_loss": metrics.get("train_loss"),
            "train_time_s": metrics.get("train_time_s"), "peak_memory_mb": memory,
            "trainable_params": metrics.get("trainable_params"), "trainable_pct": metrics.get("trainable_pct"),
            "total_params": metrics.get("total_params"),
            "adapter_size_mb": weights_size_mb(run_dir) if metrics else None,
            "latency_p50_ms": measure.get("latency_p50_ms"), "latency_p95_ms": measure.get("latency_p95_ms"),
            "throughput_qps": measure.get("throughput_qps"),
            "learning_rate": float(lr) if lr is not None else None,
            "epochs": metrics.get("epochs", cfg.get("epochs", (plan.get("shared") or {}).get("epochs"))),
            "model": cfg.get("model") or asked.get("model"), "task": task,
            "base_method": method, "peak_memory_source": memory_source,
            "wall_time_s": status_file.get("wall_time_s"),
            "train_questions": metrics.get("train_questions"), "eval_questions": metrics.get("eval_questions"),
            "latency_questions": measure.get("latency_questions"),
            "throughput_questions": measure.get("throughput_questions"),
            "throughput_batch_size": measure.get("throughput_batch_size"),
            "precision": run_cfg.get("precision_used"), "run_dir": str(run_dir),
        }
        records.append({"row": row, "history": history, "hyperparameters": _hyperparameters(cfg, method),
                        "error_tail": status_file.get("error_tail") or ([error] if error else []),
                        "measure": measure, "log": str(run_dir / LOG_FILE) if (run_dir / LOG_FILE).is_file() else None})
    spec = merged_spec([r["row"]["task"] for r in records])
    for r in records:  # every column present in every row (None: the row's task has no such metric)
        for c in (*spec.columns, *spec.optional):
            r["row"].setdefault(c.key, None)
    # optional metric columns (QA: HasAns/NoAns F1 on SQuAD v2) only when some run has them
    shown = [c.key for c in spec.optional if any(r["row"][c.key] is not None for r in records)]
    base = base_columns(spec)
    n_head = 3 + len(spec.columns)
    columns = base[:n_head] + shown + base[n_head:] + EXTRA_COLUMNS
    return {"output": str(out), "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "setup": _setup(plan, records), "version_2": bool(shown), "columns": columns, "records": records,
            "spec": spec, "plots": _plot_captions(spec, len({r["row"]["task"] for r in records}) > 1),
            "tasks_differ": len({r["row"]["task"] for r in records}) > 1}


def _plot_captions(spec: ReportSpec, tasks_differ: bool) -> dict[str, str]:
    captions = plots_for(spec)
    if tasks_differ:  # one loss axis, losses of different kinds
        captions["loss_curves"] += (" The rows' tasks compute different losses: compare a row's curve with the "
                                    "rows of its own task only.")
    return captions


def _task_name(out: Path, plan: dict[str, Any], labels: list[str]) -> str | None:
    """The compared task: the plan's, else a run's (reports rebuilt from run directories alone)."""
    task = (plan.get("shared") or {}).get("task")
    for label in labels if not task else []:
        try:
            task = (yaml.safe_load((out / label / RUN_CONFIG).read_text()) or {}).get("task")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if task:
            break
    return task


def _setup(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    resolved = next((c for c in (plan.get("configs") or {}).values() if c), None) or {}
    shared = {**resolved, **(plan.get("shared") or {})}  # a method's full config has the defaults too
    setup = {k: shared.get(k) for k in ("model", "train", "eval", "max_train_samples", "max_eval_samples", "epochs",
                                        "seed", "max_seq_length", "precision", "device")}
    models = list(dict.fromkeys(str(r["row"]["model"]) for r in records if r["row"]["model"]))
    tasks = list(dict.fromkeys(r["row"]["task"] for r in records))
    if len(models) > 1:  # rows of several models (methods.<label>.model): the model column says which
        setup["model"] = None
        setup["models"] = models
    elif models:
        setup["model"] = models[0]  # what the rows trained, also when each row names it
    if len(tasks) > 1:
        setup["tasks"] = tasks
    configs = [c for c in (plan.get("configs") or {}).values() if c]
    for task in tasks or [get_task(shared.get("task")).name]:
        section = get_task(task).section  # the task's options as its methods ran them (QA: doc_stride, ...)
        setup[section] = next((c.get(section) for c in configs if c.get("task", task) == task),
                              resolved.get(section) if len(tasks) <= 1 else None)
    for r in records:
        if r["row"]["status"] == "finished":
            setup.update(train_questions=r["row"]["train_questions"], eval_questions=r["row"]["eval_questions"],
                         precision_used=r["row"]["precision"], measured_on=r["measure"].get("device"))
            break
    setup["measure"] = plan.get("measure")
    return setup


# -- writing ----------------------------------------------------------------------------------------------

def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 else round(value, 4)
    return value


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    header = HEADERS.get(key)
    try:
        return header[1](value) if header else str(value)
    except (TypeError, ValueError):
        return str(value)


def _memory_note(rows: list[dict[str, Any]]) -> str:
    sources = {r["peak_memory_source"] for r in rows if r["peak_memory_source"]}
    return "; ".join(MEMORY_SOURCES.get(s, s) for s in sorted(sources)) or "not measured"


# the Results section's two tables (a 17-column table does not fit a page): quality, then cost
def quality_columns(spec: ReportSpec) -> list[str]:
    return ["method", "model", "task", "status", *(c.key for c in (*spec.columns, *spec.optional)), "eval_loss", "train_loss",
            "learning_rate", "epochs"]
COST_COLUMNS = ["method", "model", "task", "train_time_s", "peak_memory_mb", "trainable_params", "trainable_pct", "total_params",
                "adapter_size_mb", "latency_p50_ms", "latency_p95_ms", "throughput_qps"]


def _epoch_count(records: list[dict[str, Any]]) -> int:
    return max((len(r["history"]) for r in records), default=0)


def _epoch_tables(records: list[dict[str, Any]], spec: ReportSpec
                  ) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(loss header, loss rows, primary-metric header, rows) over finished methods."""
    n = _epoch_count(records)
    primary = spec.primary
    loss_head = ["method"] + [h for e in range(1, n + 1) for h in (f"epoch {e} train loss", f"epoch {e} val loss")]
    f1_head = ["method"] + [f"epoch {e} {spec.column(primary).header}" for e in range(1, n + 1)]
    loss_rows, f1_rows = [], []
    for r in records:
        if not r["history"]:
            continue
        hist = r["history"] + [{}] * (n - len(r["history"]))
        loss_rows.append([r["row"]["method"]] + [_cell("eval_loss", h.get(k)) for h in hist
                                                 for k in ("train_loss", "eval_loss")])
        f1_rows.append([r["row"]["method"]] + [_cell(primary, h.get(primary)) for h in hist])
    return loss_head, loss_rows, f1_head, f1_rows


def _describe(report: dict[str, Any]) -> str:
    s = report["setup"]
    n = len(report["records"])
    done = sum(r["row"]["status"] == "finished" for r in report["records"])
    if s.get("models"):
        models = "models " + ", ".join(f"`{_model_name(m)}`" for m in s["models"])
    else:
        models = f"model `{s.get('model')}`"
    tasks = f" (tasks {', '.join(s['tasks'])}: the same questions, each task's own metrics)" if s.get("tasks") else ""
    parts = [f"{n} methods ({done} finished) on one budget: {models}{tasks}",
             f"{s.get('train_questions') or s.get('max_train_samples') or '?'} training questions from `{s.get('train')}`",
             f"{s.get('eval_questions') or s.get('max_eval_samples') or '?'} evaluation questions from `{s.get('eval')}`",
             f"{s.get('epochs')} epoch(s), seed {s.get('seed')}, max_seq_length {s.get('max_seq_length')}"]
    if s.get("precision_used"):
        parts.append(f"precision {s['precision_used']}")
    if s.get("measured_on"):
        parts.append(f"inference measured on {s['measured_on']}")
    return ", ".join(parts) + "."


def _notes(report: dict[str, Any]) -> list[str]:
    rows = [r["row"] for r in report["records"]]
    m = report["setup"].get("measure") or {}
    spec = report["spec"]
    return [
        spec.metric_note + (f"; {spec.optional_note}." if report["version_2"] and spec.optional_note else "."),
        spec.loss_note,
        "Train time: the training loop only (seconds, evaluation and loading excluded).",
        f"Peak memory: {_memory_note(rows)} (MB = 2^20 bytes), data loading and evaluation included.",
        "Trainable params: parameters updated by the method; % of total counts the adapter in the total.",
        "Weights on disk: the weight files the run saved (the adapter for PEFT methods, the whole model for full).",
        f"Latency: end-to-end `qatune.load(run).answer_batch` per question at batch 1 over the first "
        f"{m.get('latency_questions', 50)} evaluation questions (p50/p95, ms); throughput: questions/s at batch "
        f"{m.get('throughput_batch_size', 32)} over up to {m.get('throughput_questions', 256)} questions. "
        "LoRA/LoHa/IA3 are merged into the base weights for inference; prefix/prompt methods are not mergeable.",
        "See docs/compare.md for how to read this report.",
    ]


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    text = {"method", "model", "task", "status"}  # left-aligned like the first column; numbers to the right
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 or h in text else "---:" for i, h in enumerate(head)) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _results_table(report: dict[str, Any], which: list[str]) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in which if c in report["columns"] and (c != "task" or report.get("tasks_differ"))]
    head = [HEADERS[c][0] for c in cols]
    rows = [[_cell(c, r["row"].get(c)) for c in cols] for r in report["records"]]
    return head, rows


def _failures(report: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(r["row"]["method"], str(r["row"]["error"]), r["log"]) for r in report["records"] if r["row"]["error"]]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# qatune compare: {Path(report['output']).name}", "", _describe(report), "",
             f"Generated {report['generated']}; rebuild with `qatune report {report['output']}`.", "",
             "## Results: quality", ""]
    lines += _md_table(*_results_table(report, quality_columns(report["spec"])))
    lines += ["", "## Results: cost", ""]
    lines += _md_table(*_results_table(report, COST_COLUMNS))
    failures = _failures(report)
    if failures:
        lines += ["", "## Problems", ""]
        lines += [f"- **{label}**: {_md_escape(err)}" + (f" (log: `{log}`)" if log else "") for label, err, log in failures]
    loss_head, loss_rows, f1_head, f1_rows = _epoch_tables(report["records"], report["spec"])
    if loss_rows:
        lines += ["", "## Loss per epoch", "", report["spec"].loss_note, ""]
        lines += _md_table(loss_head, loss_rows)
        lines += ["", "## F1 per epoch", "", "SQuAD token F1 (%) on the evaluation set after each epoch.", ""]
        lines += _md_table(f1_head, f1_rows)
    lines += ["", "## How to read this", ""] + [f"- {n}" for n in _notes(report)]
    plots = [p for p in report["plots"] if (Path(report["output"]) / f"{p}.png").is_file()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{report['plots'][p]}]({p}.png)" for p in plots]
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]], statuses: list[str] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(statuses[i].replace(" ", "-"))}"' if statuses else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;white-space:normal;vertical-align:bottom;max-width:9em}td:first-child,th:first-child{text-align:left;font-weight:600}
tr.failed td,tr.interrupted td,tr.not-run td{background:#fdecea}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}
code{background:#f5f5f5;padding:1px 4px}li{margin:4px 0}
"""


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    esc = html.escape
    statuses = [r["row"]["status"] for r in report["records"]]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>qatune compare: {esc(Path(report['output']).name)}</title><style>{CSS}</style></head><body>",
             f"<h1>qatune compare: {esc(Path(report['output']).name)}</h1>",
             f"<p>{esc(_describe(report)).replace('`', '')}</p>",
             f"<p>Generated {esc(report['generated'])}; rebuild with <code>qatune report {esc(report['output'])}</code>.</p>",
             "<h2>Results: quality</h2>", _html_table(*_results_table(report, quality_columns(report["spec"])), statuses),
             "<h2>Results: cost</h2>", _html_table(*_results_table(report, COST_COLUMNS), statuses)]
    failures = _failures(report)
    if failures:
        parts.append("<h2>Problems</h2><ul>" + "".join(
            f"<li><b>{esc(label)}</b>: {esc(err)}" + (f" (log: <code>{esc(log)}</code>)" if log else "") + "</li>"
            for label, err, log in failures) + "</ul>")
    loss_head, loss_rows, f1_head, f1_rows = _epoch_tables(report["records"], report["spec"])
    if loss_rows:
        parts += [f"<h2>Loss per epoch</h2><p>{html.escape(report['spec'].loss_note)}</p>",
                  _html_table(loss_head, loss_rows),
                  "<h2>F1 per epoch</h2><p>SQuAD token F1 (%) on the evaluation set after each epoch.</p>",
                  _html_table(f1_head, f1_rows)]
    if images:
        parts.append("<h2>Plots</h2>")
        for stem, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            caption = report["plots"][stem]
            parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    else:
        parts.append("<h2>Plots</h2><p>No finished methods to plot yet.</p>")
    parts.append("<h2>How to read this</h2><ul>" + "".join(
        f"<li>{esc(n).replace('`', '')}</li>" for n in _notes(report)) + "</ul></body></html>")
    return "\n".join(parts) + "\n"


# -- plots ------------------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(labels: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _bars(rows: list[dict[str, Any]], key: str, xlabel: str, title: str, colors: dict[str, Any],
          fmt: Callable[[float], str]) -> bytes | None:
    data = [(r["method"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not data:
        return None
    fig = _figure(8, 0.9 + 0.45 * len(data))
    ax = fig.add_subplot()
    names = [d[0] for d in data][::-1]
    values = [d[1] for d in data][::-1]
    bars = ax.barh(names, values, color=[colors[n] for n in names])
    ax.bar_label(bars, labels=[fmt(v) for v in values], padding=3, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.set_xlim(0, max(values) * 1.18 or 1)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _step_axis(history: list[dict[str, Any]], i: int) -> float:
    """Where epoch ``i`` of a history ended on the optimizer-step axis (older runs: the epoch number)."""
    return float(history[i].get("step") or history[i].get("epoch") or i + 1)


def legend_names(records: list[dict[str, Any]]) -> dict[str, str]:
    """Method label -> its name in the plots: with the model beside it when the rows train several models
    (unless the label already names it)."""
    models = {str(r["row"].get("model")) for r in records}
    names = {}
    for r in records:
        label, model = r["row"]["method"], r["row"].get("model")
        short = _model_name(model) if model else ""
        names[label] = f"{label} ({short})" if len(models) > 1 and short and short not in label else label
    return names


def loss_figure(finished: list[dict[str, Any]], colors: dict[str, Any], names: dict[str, str] | None = None) -> Any:
    """Per-step training loss (raw faint, EMA solid) and validation loss at each epoch's end, on one step axis.

    Runs written before per-step curves existed (no ``steps`` in history.json) show their per-epoch mean
    training loss at the epoch's last step instead, with markers."""
    fig = _figure(12, 4.8)
    axes = fig.subplots(1, 2, sharex=True)
    plotted = False
    epoch_ends: set[float] = set()
    names = names or {}
    for r in finished:
        key, history = r["row"]["method"], r["history"]
        color, label = colors[key], names.get(key, key)
        points = [p for h in history for p in (h.get("steps") or [])]
        if points:
            xs = [p["step"] for p in points]
            axes[0].plot(xs, [p["loss"] for p in points], color=color, alpha=0.22, linewidth=0.8)
            # a short run (a few optimizer steps: one is a single point) gets markers so that it shows at all
            axes[0].plot(xs, [p["loss_ema"] for p in points], color=color, linewidth=1.8, label=label,
                         marker="o" if len(points) <= 20 else None, markersize=4)
            plotted = True
        else:
            epochs = [(_step_axis(history, i), h["train_loss"]) for i, h in enumerate(history)
                      if isinstance(h.get("train_loss"), (int, float))]
            if epochs:
                axes[0].plot(*zip(*epochs, strict=True), color=color, marker="o", linewidth=1.8, label=label)
                plotted = True
        val = [(_step_axis(history, i), h["eval_loss"]) for i, h in enumerate(history)
               if isinstance(h.get("eval_loss"), (int, float))]
        if val:
            axes[1].plot(*zip(*val, strict=True), color=color, marker="o", linewidth=1.8, label=label)
            plotted = True
        epoch_ends.update(_step_axis(history, i) for i in range(len(history)))
    if not plotted:
        return None
    axes[0].set_title("Training loss per optimizer step (faint: raw, solid: smoothed)")
    axes[1].set_title("Validation loss after each epoch")
    for ax in axes:
        for x in sorted(epoch_ends):
            ax.axvline(x, color="0.6", linewidth=0.7, linestyle=":")  # epoch boundaries
        ax.set_xlabel("optimizer step (dotted lines: epoch ends)")
        ax.set_ylabel("loss (cross-entropy, nats)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    title = "method (model)" if any(names.get(k, k) != k for k in names) else "method"
    fig.legend(handles, labels, loc="outside right upper", title=title, fontsize=9)
    return fig


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per plot stem, for the finished methods."""
    finished = [r for r in report["records"] if r["row"]["status"] == "finished"]
    if not finished:
        return {}
    rows = [r["row"] for r in finished]
    colors = _colors([r["row"]["method"] for r in report["records"]])
    images: dict[str, bytes] = {}

    names = legend_names(report["records"])
    fig = loss_figure(finished, colors, names)
    if fig is not None:
        images["loss_curves"] = _png(fig)

    spec = report["spec"]
    key, label = spec.primary, spec.primary_label
    units = spec.column(key).header[len(label):]
    points = [r for r in rows if isinstance(r.get(key), (int, float)) and (r.get("trainable_params") or 0) > 0]
    if points:
        fig = _figure(8, 5)
        ax = fig.add_subplot()
        ys_all = [r[key] for r in points]
        y_span = max(1.0, max(ys_all) - min(ys_all))
        placed: list[tuple[float, float]] = []  # (log10 x, y) of labels above their point
        for r in points:
            ax.scatter(r["trainable_params"], r[key], s=60, color=colors[r["method"]], zorder=3)
            here = (math.log10(r["trainable_params"]), r[key])
            # a label next to another point's label (close in log x and in F1) goes below its point instead
            crowded = any(abs(here[0] - x) < 0.6 and abs(here[1] - y) < 0.06 * y_span for x, y in placed)
            if not crowded:
                placed.append(here)
            ax.annotate(names[r["method"]], (r["trainable_params"], r[key]), textcoords="offset points",
                        xytext=(6, -13) if crowded else (6, 5), fontsize=9)
        ax.set_xscale("log")
        xs = [r["trainable_params"] for r in points]
        ax.set_xlim(min(xs) / 3, max(xs) * 4)
        ys = [r[key] for r in points]
        pad = max(2.0, (max(ys) - min(ys)) * 0.15)
        top = min(100.0, max(ys) + pad) if "%" in units else max(ys) + pad  # percentages stop at 100
        ax.set_ylim(max(0.0, min(ys) - pad), top if max(ys) + pad > min(ys) else max(ys) + 1)
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{label} on the evaluation set{units}")
        ax.set_title(f"{label} vs trainable parameters")
        ax.grid(alpha=0.3, which="both")
        images[f"{key}_vs_params"] = _png(fig)

    png = _bars(rows, "train_time_s", "training time (s, training loop only)", "Training time", colors,
                lambda v: f"{v:,.1f} s")
    if png:
        images["train_time"] = png
    png = _bars(rows, "peak_memory_mb", f"peak memory (MB; {_memory_note(rows)})", "Peak memory during training",
                colors, lambda v: f"{v:,.0f} MB")
    if png:
        images["peak_memory"] = png
    return images


# -- entry point ------------------------------------------------------------------------------------------

def write_report(out: str | Path, plots: bool = True) -> list[dict[str, Any]]:
    """(Re)write every report file in ``out`` from its run directories; returns the CSV rows.

    ``plots=False`` (used between methods while a comparison runs) writes the CSV, Markdown and JSON only.
    """
    # qatune's write rule (qatune/rundir.py): report files go only into a comparison folder (compare.json),
    # never into a foreign folder that merely holds run-like subfolders
    out = rundir.require_kind(out, "compare", what="qatune report",
                              hint="pass the --output directory of `qatune compare`")
    report = collect(out)
    rows = [r["row"] for r in report["records"]]
    images: dict[str, bytes] = {}
    if plots:
        images = make_plots(report)
        for stem in report["plots"]:
            path = out / f"{stem}.png"
            if stem in images:
                with rundir.atomic_open(path, "wb") as fh:
                    fh.write(images[stem])
            elif path.exists():
                path.unlink()  # stale plot from an earlier report
    with rundir.atomic_open(out / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=report["columns"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in report["columns"]})
    rundir.write_text_atomic(out / "report.md", render_markdown(report))
    write_json(out / "report.json", {
        "output": report["output"], "generated": report["generated"], "setup": report["setup"],
        "version_2": report["version_2"], "columns": report["columns"],
        "plots": [f"{stem}.png" for stem in images] if plots else [],
        "methods": [{**r["row"], "history": r["history"], "hyperparameters": r["hyperparameters"],
                     "error_tail": r["error_tail"], "measure": r["measure"], "log": r["log"]}
                    for r in report["records"]],
    })
    if plots:
        rundir.write_text_atomic(out / "report.html", render_html(report, images))
    return rows


def summary(rows: list[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Short per-method summary for the CLI's JSON output: status, model, the row's task's metrics (primary
    first; ``task``: for rows that do not name theirs)."""
    return {r["method"]: {k: r[k] for k in ("status", "model", *metric_keys(r.get("task") or task), "train_time_s",
                                            "error") if r.get(k) is not None} for r in rows}


__all__ = ["REPORT_FILES", "PLOTS", "collect", "make_plots", "merged_spec", "metric_keys", "render_html",
           "render_markdown", "summary", "write_report"]
