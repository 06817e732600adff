"""Run every method of a comparison on the same budget, each as its own ``qatune train`` subprocess.

The spec (YAML and/or flags)::

    model: minilm                 # any `qatune train` key at the top level is shared by every method
    train: data/train.json
    eval: data/dev.json
    epochs: 2
    output: runs/compare
    methods:                      # run order; the key is the label and the run directory OUTPUT/<label>
      full: {learning_rate: 1e-4}
      lora: {learning_rate: 5e-4, lora: {r: 8}}
      lora-r16: {method: lora, lora: {r: 16}}   # a second LoRA under its own label
    measure: {latency_questions: 50, throughput_questions: 256, throughput_batch_size: 32}

Keys that define the data budget and the evaluation (data, sample counts, epochs, seed, sequence length,
device, precision, ...) may only be set at the top level, so every row sees the same questions. A method may
set its own ``model``, ``task`` and ``backend`` (a row per model: an extractive encoder beside a decoder)::

    methods:
      minilm-full: {model: minilm, task: extractive_qa, method: full}
      smollm2-lora: {model: smollm2, task: generative_qa, method: lora}

as long as every row's task reads the same data (``Task.data_kind``: both QA tasks read SQuAD files). A
task's or backend's section at the top level (``qa:``, ``generative:``, ``hf:``) goes to the rows of that
task or backend only; flat option keys (``doc_stride: 64``) belong to the top-level task and backend. The
rest (learning rate, batch size, method sections...) can be set per method.

Each method runs as ``python -m qatune train --config OUTPUT/<label>/compare_train.yaml --no-progress``
(log in ``OUTPUT/<label>/train.log``), so its peak memory is its own and a crash or OOM kills only that
method. A method is finished when its ``metrics.json`` exists; finished methods are skipped on a rerun
unless ``force``. After each training the parent process measures inference latency and throughput.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from qatune.artifacts import ensure_writable_dir, write_json
from qatune.compare.rundirs import (  # noqa: F401 - re-exported: the runner's file layout
    LOG_FILE,
    PLAN_FILE,
    STATUS_FILE,
    TRAIN_YAML,
    is_finished,
    read_json,
)
from qatune.config import TrainConfig, apply_overrides, config_from_dict, config_to_dict, read_yaml_mapping
from qatune.errors import ConfigError, QatuneError

# Keys that define the budget and the evaluation: top level only, the same for every method. The task's
# and the backend's sections (qa:, hf:) and their flat keys (doc_stride, ...) are too: see shared_only().
# ROW_KEYS (which model, trained as which task, on which backend) may also be set per method.
SHARED_ONLY = {
    "model", "task", "backend", "train", "eval", "max_train_samples", "max_eval_samples", "epochs", "seed",
    "max_seq_length", "do_eval", "precision", "device", "num_threads", "output", "resume", "overwrite",
    "stop_after_steps", "tracking", "tracking_uri", "experiment", "run_name", "cache_dir",
}


def shared_only(task: str | None = None, backend: str | None = None) -> set[str]:
    """SHARED_ONLY plus the task's and backend's sections and option names."""
    import dataclasses

    from qatune.backends import get_backend
    from qatune.tasks import get_task

    spec, engine = get_task(task), get_backend(backend)
    names = {f.name for cls in (spec.options_type, engine.options_type) for f in dataclasses.fields(cls)}
    return SHARED_ONLY | {spec.section, engine.name} | names


# what a method may set for its own row, with an example value for the error message
ROW_KEYS = {"model": "minilm", "task": "generative_qa", "backend": "hf"}


def _sections_of_others(task: str, backend: str) -> set[str]:
    """Section names of every registered task and backend except these two: a row does not receive them."""
    from qatune.backends import backend_names, get_backend
    from qatune.tasks import get_task, task_names

    names = {get_task(n).section for n in task_names()} | set(backend_names())
    return names - {get_task(task).section, get_backend(backend).name}


def _option_names(options_type: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(options_type)}


def row_settings(shared: dict[str, Any], task: str | None, backend: str | None) -> dict[str, Any]:
    """The shared settings a row of ``task`` on ``backend`` receives: all of them but other tasks' and
    backends' sections, and (when the row's task or backend is not the top-level one) the top-level task's
    or backend's flat option keys, which belong to that task/backend."""
    from qatune.backends import get_backend
    from qatune.tasks import get_task

    mine_t, mine_b = get_task(task or shared.get("task")), get_backend(backend or shared.get("backend"))
    top_t, top_b = get_task(shared.get("task")), get_backend(shared.get("backend"))
    drop = _sections_of_others(mine_t.name, mine_b.name)
    if top_t.name != mine_t.name:
        drop |= _option_names(top_t.options_type) - _TRAIN_FIELDS
    if top_b.name != mine_b.name:
        drop |= _option_names(top_b.options_type) - _TRAIN_FIELDS
    out = {k: v for k, v in shared.items() if k.replace("-", "_") not in drop}
    out.update(task=mine_t.name, backend=mine_b.name)
    return out


def _check_same_data(shared: dict[str, Any], specs: list["MethodSpec"]) -> None:
    """Every row reads the comparison's train/eval files: their tasks must read the same kind of data
    (``Task.data_kind``), the top-level task's (else the first row's) kind."""
    from qatune.tasks import get_task
    from qatune.tasks.base import data_kind

    if not specs:
        return
    first = specs[0].overrides.get("task") if not shared.get("task") else None
    ref = get_task(shared.get("task") or first)
    for m in specs:
        task = get_task(m.overrides.get("task") or shared.get("task"))
        if data_kind(task) != data_kind(ref):
            raise ConfigError(
                f"methods.{m.label}.task: '{task.name}' reads {data_kind(task)} data, but this comparison's "
                f"train/eval files are read as {data_kind(ref)} data ('{ref.name}'); every method trains and is "
                f"evaluated on the same files, so compare '{task.name}' in a comparison of its own")


def row_task(spec: "CompareSpec", m: "MethodSpec") -> str:
    """The canonical task name a method's row runs (its own ``task:``, else the top level's)."""
    from qatune.tasks import get_task

    return get_task(m.overrides.get("task") or spec.shared.get("task")).name


MEASURE_DEFAULTS: dict[str, int] = {
    "latency_questions": 50,  # batch-1 latency over the first N eval questions
    "throughput_questions": 256,  # throughput over up to N eval questions ...
    "throughput_batch_size": 32,  # ... at this batch size
    "warmup": 3,  # untimed calls before each measurement
}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


@dataclass
class MethodSpec:
    label: str  # row name in the report and run directory name
    method: str  # registry name (lora, lora-last4, ...)
    overrides: dict[str, Any] = field(default_factory=dict)  # per-method train keys and method sections


@dataclass
class CompareSpec:
    output: Path
    shared: dict[str, Any]  # train config keys shared by every method
    methods: list[MethodSpec]
    measure: dict[str, int] = field(default_factory=lambda: dict(MEASURE_DEFAULTS))
    force: bool = False


# -- spec --------------------------------------------------------------------------------------------

def _method_table(value: Any, source: str) -> dict[str, dict[str, Any]]:
    """``methods`` as a mapping (label -> settings), a list of names, or a comma-separated string."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        table: dict[str, dict[str, Any]] = {}
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(f"{source}: 'methods' list items must be method names, got {item!r}")
            table[item] = {}
        return table
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: 'methods' must map labels to settings (lora: {{learning_rate: 5e-4}}) "
                          "or list method names")
    table = {}
    for label, settings in value.items():
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: methods.{label} must be a mapping of settings, got {settings!r}")
        table[str(label)] = dict(settings)
    return table


def _absolute_if_local(value: Any) -> Any:
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def load_compare_spec(path: str | os.PathLike | None = None, base: dict[str, Any] | None = None,
                      methods: str | None = None, overrides: list[str] | None = None,
                      force: bool = False) -> CompareSpec:
    """YAML file (optional) < ``base`` (CLI flags, None = not given) < ``key=value`` overrides.

    ``methods`` (``full,lora,ia3``) picks and orders the methods; those the YAML does not configure run
    with their defaults. Errors that would spoil every method (shared keys) raise :class:`ConfigError`.
    """
    source = str(path) if path else "compare"
    raw: dict[str, Any] = copy.deepcopy(read_yaml_mapping(path)) if path is not None else {}
    for key, value in (base or {}).items():
        if value is not None:
            raw[key] = value
    raw["methods"] = _method_table(raw.get("methods"), source)
    raw = apply_overrides(raw, overrides or [], example="epochs=2 or methods.lora.learning_rate=1e-3",
                          verbatim_under="methods")

    table = _method_table(raw.pop("methods"), source)
    measure_raw = raw.pop("measure", None) or {}
    if not isinstance(measure_raw, dict):
        raise ConfigError(f"{source}: 'measure' must be a mapping such as {{latency_questions: 50}}")
    unknown = set(measure_raw) - set(MEASURE_DEFAULTS)
    if unknown:
        raise ConfigError(f"{source}: unknown measure key(s) {sorted(unknown)}; known: {sorted(MEASURE_DEFAULTS)}")
    measure = dict(MEASURE_DEFAULTS)
    for key, value in measure_raw.items():
        try:
            measure[key] = int(value)
            if measure[key] < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: measure.{key} must be a whole number >= 0, got {value!r}") from None

    output = Path(str(raw.pop("output", None) or "runs/compare"))
    shared = {key.replace("-", "_"): value for key, value in raw.items()}
    for key in ("model", "train", "eval", "cache_dir"):
        if key in shared:
            shared[key] = _absolute_if_local(shared[key])
    for key in ("resume", "overwrite", "run_name", "stop_after_steps", "method"):
        if key in shared:
            raise ConfigError(f"{source}: '{key}' cannot be set for a comparison"
                              + (" (list the methods under 'methods:' or pass --methods)" if key == "method" else ""))
    # shared settings must be valid on their own: an error there would fail every method (checked again
    # below for each task/backend the rows run, with that task's and backend's sections)
    check = config_from_dict({**row_settings(shared, None, None), "method": "full"}, source=source)
    if not check.train or not check.eval:
        raise ConfigError("a comparison needs training and evaluation data: pass --train and --eval "
                          "(or train:/eval: in the YAML)")

    if methods:
        labels = [m.strip() for m in methods.split(",") if m.strip()]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--methods lists a method twice: {methods}")
    else:
        labels = list(table)
    if not labels:
        raise ConfigError("no methods to compare: pass --methods full,lora,... or a 'methods:' section")
    specs = []
    for label in labels:
        settings = dict(table.get(label, {}))
        if not _LABEL.match(label):
            raise ConfigError(f"method label '{label}' must be letters, digits, '.', '_' or '-' "
                              "(it names the run directory)")
        method = str(settings.pop("method", label))
        row = {k.replace("-", "_"): v for k, v in settings.items()}
        for key in sorted(set(ROW_KEYS) & set(row)):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ConfigError(f"methods.{label}.{key} must be a name such as {ROW_KEYS[key]!r}, "
                                  f"got {row[key]!r}")
        try:
            only = shared_only(row.get("task") or shared.get("task"), row.get("backend") or shared.get("backend"))
        except ConfigError as exc:
            raise ConfigError(f"methods.{label}: {exc}") from None
        for key in settings:
            norm = key.replace("-", "_")
            if norm in only - set(ROW_KEYS):
                raise ConfigError(f"methods.{label}.{key}: '{norm}' is the same for every method so they are "
                                  f"compared on one budget; set it at the top level")
        if "model" in row:
            row["model"] = _absolute_if_local(row["model"])
        specs.append(MethodSpec(label, method, row))
    _check_same_data(shared, specs)
    for task, backend in sorted({(s.overrides.get("task"), s.overrides.get("backend")) for s in specs}
                                - {(None, None)}, key=str):
        config_from_dict({**row_settings(shared, task, backend), "method": "full"}, source=source)
    return CompareSpec(output=output, shared=shared, methods=specs, measure=measure, force=force)


def method_train_config(spec: CompareSpec, m: MethodSpec, tracking_uri: str | None = None) -> TrainConfig:
    """The full `qatune train` config of one method; raises ConfigError for a bad method/option/value."""
    from qatune.methods import registry

    raw = copy.deepcopy(row_settings(spec.shared, m.overrides.get("task"), m.overrides.get("backend")))
    for key, value in m.overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}  # per-method section options over shared ones
        else:
            raw[key] = copy.deepcopy(value)
    raw.update(method=m.method, output=str((spec.output / m.label).resolve()), run_name=m.label)
    if tracking_uri:
        raw["tracking_uri"] = tracking_uri
    cfg = config_from_dict(raw, source=f"methods.{m.label}")
    method, _ = registry.resolve(cfg.method)
    registry.options(cfg.method, cfg.options_for(method.name))  # unknown options fail here, not after loading
    return cfg


# -- status files --------------------------------------------------------------------------------------

def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    ensure_writable_dir(run_dir)
    write_json(run_dir / STATUS_FILE, status)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in {"resume", "overwrite", "tracking_uri", "output"}}


def _config_change(run_dir: Path, new: dict[str, Any]) -> str | None:
    """What differs between a finished run's generated config and this comparison's (None: same/unknown)."""
    try:
        old = yaml.safe_load((run_dir / TRAIN_YAML).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    old, new = _comparable(old), _comparable(new)
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "") if diffs else None


# -- subprocess ------------------------------------------------------------------------------------------

@dataclass
class LaunchResult:
    returncode: int
    wall_time_s: float
    tail: list[str]  # last lines of the log


def log_tail(path: Path, lines: int = 12) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return out[-lines:]


def _launch(config_path: Path, run_dir: Path, env: dict[str, str]) -> LaunchResult:
    """``python -m qatune train --config ... --no-progress`` with its output in OUTPUT/<label>/train.log."""
    cmd = [sys.executable, "-m", "qatune", "train", "--config", str(config_path), "--no-progress"]
    log_path = run_dir / LOG_FILE
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            # the child got the terminal's Ctrl-C too: let it save its checkpoint and exit, then stop it
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
    return LaunchResult(returncode, time.perf_counter() - t0, log_tail(log_path))


def failure_message(result: LaunchResult) -> str:
    """One line saying why the subprocess failed: the qatune error line, else the last log line."""
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        why = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        return why + (f"; last output: {result.tail[-1]}" if result.tail else "")
    for line in reversed(result.tail):
        if line.startswith("qatune: error") or line.startswith("qatune: internal error"):
            return line.removeprefix("qatune: ")
    for line in reversed(result.tail):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line
    return (result.tail[-1] if result.tail else "no output") + f" (exit status {result.returncode})"


# -- progress ------------------------------------------------------------------------------------------

def fmt_duration(seconds: float, coarse: bool = False) -> str:
    """``45s``, ``4m10s``, ``1h05m``; ``coarse`` (for estimates): ``45s``, ``12m``, ``1h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{round(seconds / 60)}m" if coarse else f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(index: int, total: int, label: str, outcome: str, elapsed: float,
                  eta: float | None) -> str:
    """``[2/7] lora: done in 2m03s (F1 45.2) — elapsed 4m10s, ETA 12m``."""
    eta_text = "" if index == total else (", ETA ?" if eta is None else f", ETA {fmt_duration(eta, coarse=True)}")
    return f"[{index}/{total}] {label}: {outcome} — elapsed {fmt_duration(elapsed)}{eta_text}"


def _metric_text(metrics: dict[str, Any] | None, task: str | None = None) -> str:
    """`` (F1 52.6)``: the task's primary metric for a progress line."""
    from qatune.tasks import get_task

    spec = get_task(task).report
    value = (metrics or {}).get(spec.primary)
    return f" ({spec.primary_label} {value:.1f})" if isinstance(value, (int, float)) else ""


# -- the comparison ------------------------------------------------------------------------------------

Launcher = Callable[[Path, Path, dict[str, str]], LaunchResult]


def run_compare(spec: CompareSpec, log: TextIO | None = None, launcher: Launcher | None = None) -> list[dict[str, Any]]:
    """Train (or skip) every method, measure it, and write the report; returns the report rows.

    Ctrl-C stops the running method (its checkpoint stays for the next run to resume), rebuilds the
    report from what is finished and re-raises KeyboardInterrupt.
    """
    from qatune.compare import measure as measuring
    from qatune.compare.report import write_report
    from qatune.tracking import PARENT_RUN_ENV, Tracker, default_tracking_uri

    log = log or sys.stderr
    launch = launcher or _launch
    from qatune import rundir

    # qatune's write rule: a new or empty folder or an earlier comparison, never a foreign folder
    rundir.check_output(spec.output, "compare")
    out = ensure_writable_dir(spec.output)
    tasks = {m.label: row_task(spec, m) for m in spec.methods}  # rows may run different (compatible) tasks

    def say(msg: str) -> None:
        print(msg, file=log, flush=True)

    tracking = bool(spec.shared.get("tracking", True))
    tracking_uri = spec.shared.get("tracking_uri") or default_tracking_uri(out)
    experiment = str(spec.shared.get("experiment") or "qatune")

    # resolve every method's config first: a typo fails that method now, not after the others trained
    prepared: list[tuple[MethodSpec, TrainConfig | None, str | None]] = []
    for m in spec.methods:
        try:
            prepared.append((m, method_train_config(spec, m, tracking_uri if tracking else None), None))
        except QatuneError as exc:
            prepared.append((m, None, f"config: {exc}"))
            say(f"qatune compare: {m.label}: invalid settings, recorded as failed: {exc}")

    plan = {
        "output": str(out.resolve()),
        "methods": [m.label for m in spec.methods],
        "method_names": {m.label: m.method for m in spec.methods},
        "overrides": {m.label: m.overrides for m in spec.methods},
        "shared": spec.shared,
        "measure": spec.measure,
        "configs": {m.label: (config_to_dict(cfg) if cfg else None) for m, cfg, _ in prepared},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(out / PLAN_FILE, plan)

    tracker = Tracker(tracking, out, tracking_uri, experiment, run_name=f"compare:{out.name}")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # no "Creating initial tables" lines
    parent_id = tracker.start({"compare.output": str(out), "compare.methods": ",".join(plan["methods"]),
                               **{f"shared.{k}": v for k, v in spec.shared.items()},
                               **{f"lr.{m.label}": (cfg.learning_rate if cfg else None) for m, cfg, _ in prepared}},
                              tags={"qatune.compare": "parent"})
    env = dict(os.environ)
    env.pop(PARENT_RUN_ENV, None)
    if parent_id:
        env[PARENT_RUN_ENV] = parent_id

    finished_before = sum(1 for m, cfg, _ in prepared if cfg is not None and not spec.force
                          and is_finished(out / m.label))
    say(f"qatune compare: {len(prepared)} methods -> {out}"
        + (f" ({finished_before} finished earlier, skipped; --force reruns them)" if finished_before else "")
        + f"; logs in {out}/<method>/{LOG_FILE}")

    eval_pairs: dict[str, list[Any]] = {}  # per task: its request items of the same eval questions

    def pairs(task: str) -> list[Any]:
        if task not in eval_pairs:
            n = max(spec.measure["latency_questions"], spec.measure["throughput_questions"])
            limit = spec.shared.get("max_eval_samples")
            eval_pairs[task] = measuring.load_eval_items(str(spec.shared["eval"]), min(n, limit) if limit else n,
                                                         task)
        return eval_pairs[task]

    def measure(run_dir: Path, task: str) -> dict[str, Any]:
        try:
            return measuring.measure_run(run_dir, pairs(task), device=str(spec.shared.get("device", "auto")),
                                         **spec.measure)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a measurement problem must not lose the trained run
            return {"error": f"{type(exc).__name__}: {exc}"}

    t_start = time.perf_counter()
    spent: list[float] = []  # seconds per method actually trained
    remaining = [m.label for m, cfg, _ in prepared if cfg is not None]
    current: tuple[Path, dict[str, Any]] | None = None

    def eta() -> float | None:
        """Mean time of the methods trained so far x the methods still to train."""
        to_train = [lbl for lbl in remaining if spec.force or not is_finished(out / lbl)]
        if not to_train:
            return 0.0
        return sum(spent) / len(spent) * len(to_train) if spent else None

    try:
        for index, (m, cfg, error) in enumerate(prepared, 1):
            run_dir = out / m.label
            if m.label in remaining:
                remaining.remove(m.label)
            if spec.force and run_dir.exists():  # only what qatune wrote there; anything else stays
                rundir.remove_own_files(run_dir, "run")
                for name in (STATUS_FILE, TRAIN_YAML, LOG_FILE):
                    (run_dir / name).unlink(missing_ok=True)
            if cfg is None:
                _write_status(run_dir, {"label": m.label, "method": m.method, "status": "failed", "error": error,
                                        "error_tail": [error]})
                say(progress_line(index, len(prepared), m.label, f"FAILED: {error}",
                                  time.perf_counter() - t_start, eta()))
                continue
            cfg_dict = config_to_dict(cfg)
            if is_finished(run_dir):
                status = read_json(run_dir / STATUS_FILE) or {"label": m.label, "method": m.method}
                status["status"] = "finished"
                if not status.get("measure") or status["measure"].get("error"):  # e.g. interrupted before
                    current = (run_dir, status)
                    status["measure"] = measure(run_dir, tasks[m.label])
                _write_status(run_dir, status)
                current = None
                change = _config_change(run_dir, cfg_dict)
                note = f"; its settings differ from this comparison's ({change}), --force reruns it" if change else ""
                say(progress_line(index, len(prepared), m.label,
                                  f"skipped, finished earlier{_metric_text(read_json(run_dir / 'metrics.json'), tasks[m.label])}{note}",
                                  time.perf_counter() - t_start, eta()))
                continue

            from qatune.training.checkpoint import has_checkpoint

            ensure_writable_dir(run_dir)
            resume = has_checkpoint(run_dir)  # an interrupted earlier attempt: continue from its last epoch
            config_path = run_dir / TRAIN_YAML
            config_path.write_text(yaml.safe_dump({**cfg_dict, "resume": resume, "overwrite": True}, sort_keys=False))
            status = {"label": m.label, "method": m.method, "status": "running", "resumed": resume,
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            current = (run_dir, status)
            _write_status(run_dir, status)
            t0 = time.perf_counter()
            result = launch(config_path, run_dir, env)
            status.update(returncode=result.returncode, wall_time_s=round(result.wall_time_s, 3))
            if result.returncode == 0 and is_finished(run_dir):
                status.update(status="finished", error=None)
                status["measure"] = measure(run_dir, tasks[m.label])
                outcome = (f"done in {fmt_duration(time.perf_counter() - t0)}"
                           f"{_metric_text(read_json(run_dir / 'metrics.json'), tasks[m.label])}")
            else:
                message = failure_message(result) if result.returncode != 0 else \
                    "the training exited without writing metrics.json"
                status.update(status="failed", error=message, error_tail=result.tail)
                outcome = f"FAILED after {fmt_duration(time.perf_counter() - t0)}: {message}"
            status["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            _write_status(run_dir, status)
            current = None
            spent.append(time.perf_counter() - t0)
            say(progress_line(index, len(prepared), m.label, outcome, time.perf_counter() - t_start, eta()))
            write_report(out, plots=False)  # text report kept current while the comparison runs
    except KeyboardInterrupt:
        if current is not None:
            run_dir, status = current
            if is_finished(run_dir):
                status["status"] = "finished"  # trained; only the measurement was cut short
            else:
                status.update(status="interrupted", error="interrupted (Ctrl-C); rerun to resume this method")
            _write_status(run_dir, status)
        say("qatune compare: interrupted; the report covers the methods finished so far "
            "(rerun the same command to continue)")
        _finish(out, tracker, "KILLED", list(tasks.values()))
        raise
    except BaseException:
        _finish(out, tracker, "FAILED", list(tasks.values()))
        raise
    return _finish(out, tracker, "FINISHED", list(tasks.values()))


def _finish(out: Path, tracker: Any, status: str, tasks: list[str] | None = None) -> list[dict[str, Any]]:
    """Write the full report (plots too) and attach it to the parent MLflow run."""
    from qatune.compare.report import REPORT_FILES, metric_keys, write_report

    rows: list[dict[str, Any]] = []
    try:
        rows = write_report(out)
    except Exception as exc:  # noqa: BLE001 - never hide the original error behind a report error
        print(f"qatune compare: could not write the report: {type(exc).__name__}: {exc} "
              f"(run `qatune report {out}` to retry)", file=sys.stderr)
    for row in rows:
        if row.get("status") == "finished":
            task = row.get("task") or (tasks[0] if tasks else None)  # each row's own task's metrics
            tracker.log_metrics({f"{row['method']}.{key}": row[key] for key in (
                *metric_keys(task), "train_time_s", "peak_memory_mb", "trainable_params", "adapter_size_mb",
                "latency_p50_ms", "throughput_qps") if isinstance(row.get(key), (int, float))})
    tracker.log_artifacts([out / name for name in REPORT_FILES] + sorted(out.glob("*.png")), artifact_path="report")
    tracker.end(status)
    return rows
