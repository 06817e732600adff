"""What each Kubeflow pipeline step does, as plain functions on directories (no kfp import here).

The KFP components in :mod:`qatune.pipelines.kfp_pipeline` are thin wrappers around these, so the steps
can be tested, debugged and run by hand without a cluster:

* :func:`compare_plan` (at compile time): a ``qatune compare`` config -> the pipeline's plan (shared data
  settings + one fully resolved ``qatune train`` config per method); a bad method or option fails here.
* :func:`prepare_data`: load + cut the train/eval data once, write it as SQuAD JSON, tokenize it into the
  feature cache; the whole folder is the step's Dataset artifact, so no training step tokenizes again.
* :func:`train_method`: one method's training on the prepared data (``torchrun`` when given several GPUs).
* :func:`evaluate_method`: official EM/F1 of the *saved* run through the public inference pipeline, plus
  inference latency/throughput (``qatune.compare.measure``).
* :func:`build_report`: lays the runs out as a ``qatune compare`` output directory and writes the same
  report.csv/md/json/html (``qatune.compare.report.write_report``, else ``python -m qatune report``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from qatune.core.jsonio import write_json
from qatune.errors import ConfigError

PREPARE_INFO = "prepare.json"  # in the data artifact: what was prepared (counts, the data's task options, settings)
METHOD_INFO = "pipeline_method.json"  # in run/evaluation artifacts: which method (label) they belong to
TRAIN_YAML = "pipeline_train.yaml"  # in the run artifact: the exact `qatune train` config used
# plan["shared"] keys: what the prepare step needs; the same for every method of a comparison
# (plus the task's and the backend's config sections, e.g. qa: and hf:)
DATA_KEYS = ("model", "task", "backend", "max_train_samples", "max_eval_samples", "max_seq_length")
# per-method config keys the pipeline sets itself at run time
RUNTIME_KEYS = ("output", "train", "eval", "max_train_samples", "max_eval_samples", "cache_dir", "resume",
                "overwrite", "run_name", "tracking_uri")


def _labels_ok(name: str) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return safe or "qatune"


def _sections(resolved: dict[str, Any]) -> tuple[str, str]:
    """The config sections of the run's task and backend (``qa``, ``hf``)."""
    from qatune.tasks import get_task

    return get_task(resolved.get("task")).section, str(resolved.get("backend") or "hf")


def compare_plan(config: str | os.PathLike, methods: str | None = None, overrides: list[str] | None = None,
                 local_paths: bool = False) -> dict[str, Any]:
    """The pipeline plan from a ``qatune compare`` config (configs/compare_*.yaml).

    ``local_paths``: train/eval as resolved on this machine (run-local); otherwise as written in the YAML
    (or overridden), since they are read inside the step's container (image, volume or hub dataset).
    """
    from qatune.compare.runner import load_compare_spec, method_train_config
    from qatune.config import config_to_dict

    spec = load_compare_spec(config, methods=methods, overrides=overrides or [])
    raw = yaml.safe_load(Path(config).read_text()) or {}
    # paths as written: read inside the step containers, not resolved on the machine that compiles
    written = {k: v for k, v in raw.items() if k in ("train", "eval", "model") and isinstance(v, str)}
    for item in overrides or []:  # train=... / model=... given on the command line win over the YAML
        key, _, value = item.partition("=")
        if key.strip() in ("train", "eval", "model"):
            written[key.strip()] = value
    items = []
    resolved: dict[str, Any] = {}
    for m in spec.methods:
        cfg = config_to_dict(method_train_config(spec, m))
        resolved = resolved or cfg
        for key in ("model", "task", "backend"):
            # the data step prepares features and data-decided options for one model and task only
            if cfg.get(key) != resolved.get(key):
                raise ConfigError(f"{config}: methods.{m.label}.{key} is {cfg.get(key)!r} but the first row's is "
                                  f"{resolved.get(key)!r}; a pipeline runs one model, task and backend: split the "
                                  "comparison into one pipeline per model, or run it with `qatune compare`")
        items.append({"label": m.label, "method": m.method,
                      "config": {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}})
    if not items:
        raise ConfigError("the comparison lists no methods")
    source = spec.shared if local_paths else {**spec.shared, **written}
    if not local_paths and "model" in written:
        for item in items:
            item["config"]["model"] = written["model"]
        resolved = {**resolved, "model": written["model"]}
    return {
        "name": _labels_ok(f"qatune-{spec.output.name}"),
        "output": str(spec.output),
        "train": str(source["train"]),
        "eval": str(source["eval"]),
        "shared": {k: resolved.get(k) for k in (*DATA_KEYS, *_sections(resolved))},
        "measure": dict(spec.measure),
        "methods": items,
    }


# --- steps ------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, default=str)


def prepare_data(shared: dict[str, Any], train: str, eval: str | None, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and cut the data once, write ``train.json``/``eval.json`` and their tokenized features.

    The features are built from the JSON files just written (not from the source), so the training
    step, which reads those files, computes the same cache key and finds them in ``features/``.
    """
    import dataclasses

    from qatune.backends import get_backend
    from qatune.config import config_from_dict
    from qatune.tasks import get_task
    from qatune.training.trainer import check_window_fits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict({**{k: v for k, v in shared.items() if v is not None}, "method": "full",
                            "train": train, "cache_dir": str(out / "features")})
    task = get_task(cfg.task)
    options = cfg.task_config()
    tokenizer = get_backend(cfg.backend).load_tokenizer(cfg.model, task.model, cfg.backend_config())
    check_window_fits(tokenizer, cfg)
    info: dict[str, Any] = {"model": cfg.model, "max_seq_length": cfg.max_seq_length, **cfg.task_options}
    reports: dict[str, Any] = {}
    for name, source, limit, split in (("train", train, cfg.max_train_samples, None),
                                       ("eval", eval, cfg.max_eval_samples, "validation")):
        if not source:
            continue
        examples, report = task.read(source, limit, split=split)
        reports[name] = report
        path = out / f"{name}.json"
        task.write_examples(list(examples), report, path)
        examples, _ = task.read(str(path), None, split=split)
        features = task.features(examples, tokenizer, options, cfg.max_seq_length, training=True,
                                 cache_dir=cfg.cache_dir, progress=False)
        info.update({f"{name}_source": source, f"{name}_questions": len(examples), f"{name}_features": len(features),
                     **{f"{name}_{k}": v for k, v in task.data_info(report).items()}})
        print(f"qatune pipeline: {report.summary()} -> {len(features)} features", file=sys.stderr, flush=True)
    # what the data decides (QA: SQuAD v2 or not), so every method's training step agrees
    info["task_options"] = dataclasses.asdict(task.prepare(options, reports.get("train"), reports.get("eval")))
    _write_json(out / PREPARE_INFO, info)
    return info


def item_config(item: dict[str, Any]) -> dict[str, Any]:
    """A plan item's ``qatune train`` config (a mapping, or JSON text as KFP passes it)."""
    config = item["config"]
    return dict(json.loads(config) if isinstance(config, str) else config)


def _method_config(item: dict[str, Any], data_dir: Path, run_dir: Path, tracking_uri: str | None) -> dict[str, Any]:
    info = json.loads((data_dir / PREPARE_INFO).read_text())
    cfg = item_config(item)
    has_eval = (data_dir / "eval.json").is_file()
    cfg.update(train=str(data_dir / "train.json"), eval=str(data_dir / "eval.json") if has_eval else None,
               max_train_samples=None, max_eval_samples=None, cache_dir=str(data_dir / "features"),
               output=str(run_dir), overwrite=True, resume=False, run_name=item["label"])
    if has_eval:  # options the user left open (None) take what the prepared data decided
        from qatune.tasks import get_task

        section = get_task(cfg.get("task")).section
        given = {**{k: cfg.get(k) for k in info.get("task_options", {}) if k in cfg}, **(cfg.get(section) or {})}
        decided = {k: v for k, v in info.get("task_options", {}).items() if given.get(k) is None and v is not None}
        if decided:
            for key in decided:
                cfg.pop(key, None)
            cfg[section] = {**(cfg.get(section) or {}), **decided}
    # MLflow only with a tracking server: a file store inside a step's container would be thrown away
    cfg["tracking"] = bool(tracking_uri) and bool(cfg.get("tracking", True))
    cfg["tracking_uri"] = tracking_uri or None
    return cfg


def train_method(item: dict[str, Any], data_dir: str | os.PathLike, run_dir: str | os.PathLike, nproc: int = 1,
                 tracking_uri: str | None = None) -> dict[str, Any]:
    """Train one method into ``run_dir``; with ``nproc`` > 1, DDP over that many local GPUs via torchrun."""
    from qatune.config import config_from_dict

    data, run = Path(data_dir), Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = _method_config(item, data, run, tracking_uri)
    (run / TRAIN_YAML).write_text(yaml.safe_dump(cfg, sort_keys=False))
    _write_json(run / METHOD_INFO, {"label": item["label"], "method": item["method"]})
    t0 = time.perf_counter()
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "qatune", "train", "--config", str(run / TRAIN_YAML), "--no-progress"]
        print("qatune pipeline: " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    else:
        from qatune.training.trainer import train

        train(config_from_dict(cfg, source=f"methods.{item['label']}"), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["wall_time_s"] = round(time.perf_counter() - t0, 3)
    return metrics


def evaluate_method(item: dict[str, Any], data_dir: str | os.PathLike, run_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, measure: dict[str, int] | None = None) -> dict[str, Any]:
    """Score the saved run on the prepared eval data and measure its inference speed.

    Writes predictions.json / metrics.json (and na_probs.json for v2) plus a ``compare_status.json`` in
    the layout ``qatune report`` reads; returns the metrics (EM/F1, latency, throughput).
    """
    from qatune.evaluation.evaluate import evaluate_run

    data, run, out = Path(data_dir), Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = item_config(item)
    eval_path = data / "eval.json"
    result: dict[str, Any] = {}
    status: dict[str, Any] = {"label": item["label"], "method": item["method"], "status": "finished"}
    if eval_path.is_file():
        metrics = evaluate_run(str(run), str(eval_path), output=str(out), batch_size=int(cfg.get("eval_batch_size") or 64),
                               device=str(cfg.get("device") or "auto"), precision=str(cfg.get("precision") or "auto"),
                               progress=False)
        status["evaluation"] = metrics
        from qatune.tasks import get_task

        report_spec = get_task(cfg.get("task")).report
        keys = {c.key for c in (*report_spec.columns, *report_spec.optional)}
        result.update({k: v for k, v in metrics.items() if k in keys})
        try:
            from qatune.compare.measure import load_eval_items, measure_run
        except ImportError:  # comparison module not installed: accuracy only
            pass
        else:
            settings = {"latency_questions": 50, "throughput_questions": 256, "throughput_batch_size": 32,
                        "warmup": 3, **{k: int(v) for k, v in (measure or {}).items()}}  # KFP passes numbers as floats
            pairs = load_eval_items(str(eval_path), max(settings["latency_questions"],
                                                        settings["throughput_questions"]), cfg.get("task"))
            status["measure"] = measure_run(run, pairs, device=str(cfg.get("device") or "auto"), **settings)
            result.update({k: v for k, v in status["measure"].items()
                           if k in ("latency_p50_ms", "latency_p95_ms", "throughput_qps")})
    try:
        status["wall_time_s"] = json.loads((run / "metrics.json").read_text()).get("train_time_s")
    except (OSError, ValueError):
        pass
    _write_json(out / "compare_status.json", status)
    _write_json(out / METHOD_INFO, {"label": item["label"], "method": item["method"]})
    return result


def _label_of(path: Path) -> str:
    try:
        return str(json.loads((path / METHOD_INFO).read_text())["label"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{path} is not a qatune pipeline run (no {METHOD_INFO})") from None


RUNS_FILE = "runs.json"  # in the report artifact: label -> the run and evaluation artifact paths it used


def layout_compare_dir(plan: dict[str, Any], run_dirs: list[str], eval_dirs: list[str],
                       target: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Lay the pipeline's runs out as a ``qatune compare`` output directory (compare.json + one folder
    per method with its run files symlinked and a compare_status.json), which ``qatune report`` reads."""
    runs = {_label_of(Path(p)): Path(p).resolve() for p in run_dirs}
    evals = {_label_of(Path(p)): Path(p).resolve() for p in eval_dirs}
    labels = [m["label"] for m in plan["methods"]]
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "compare.json", {
        "output": str(out.resolve()), "methods": labels,
        "method_names": {m["label"]: m["method"] for m in plan["methods"]},
        "overrides": {}, "shared": {**plan.get("shared", {}), "train": plan.get("train"), "eval": plan.get("eval")},
        "measure": plan.get("measure", {}), "configs": {m["label"]: item_config(m) for m in plan["methods"]},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "pipeline": plan.get("name"),
    })
    for label in labels:
        folder = out / label
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():  # links of an earlier layout (a method since retrained)
            if old.is_symlink():
                old.unlink()
        if label in runs:
            for f in runs[label].iterdir():
                if f.is_file() and not (folder / f.name).exists():
                    (folder / f.name).symlink_to(f)
        status_file = evals[label] / "compare_status.json" if label in evals else None
        if status_file is not None and status_file.is_file():
            shutil.copy(status_file, folder / "compare_status.json")
        else:
            _write_json(folder / "compare_status.json", {
                "label": label, "status": "finished" if label in runs else "failed",
                "error": None if label in runs else "no training output reached the report step"})
    return {label: {"run": str(runs.get(label, "")), "evaluation": str(evals.get(label, ""))} for label in labels}


def write_compare_report(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """``qatune.compare.report.write_report`` on a compare directory (the ``qatune report`` CLI if the
    comparison module is not importable)."""
    try:
        from qatune.compare.report import write_report
    except ImportError:
        subprocess.run([sys.executable, "-m", "qatune", "report", str(folder)], check=True, stdout=subprocess.DEVNULL)
        return json.loads((Path(folder) / "report.json").read_text()).get("methods", [])
    return write_report(Path(folder))


def build_report(plan: dict[str, Any], run_dirs: list[str], eval_dirs: list[str], out_dir: str | os.PathLike,
                 html_path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The comparison report of the pipeline's runs, as ``qatune compare`` writes it, into ``out_dir``.

    The runs are laid out in a scratch folder (symlinks, so the weights are not copied into the report
    artifact), the report is written there and its files copied to ``out_dir`` with ``runs.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qatune-report-") as scratch:
        staging = Path(scratch) / plan.get("name", "qatune")
        used = layout_compare_dir(plan, run_dirs, eval_dirs, staging)
        rows = write_compare_report(staging)
        for f in staging.iterdir():
            if f.is_file() and (f.name.startswith("report.") or f.suffix == ".png"):
                shutil.copy(f, out / f.name)
    _write_json(out / RUNS_FILE, used)
    if html_path is not None and (out / "report.html").is_file():
        shutil.copy(out / "report.html", html_path)
    return rows
