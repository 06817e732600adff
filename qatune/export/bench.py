"""``qatune bench``: one table comparing inference backends x precisions of one trained run.

For every backend: model size on disk, latency p50/p95 at batch 1 (each of the first
``latency_samples`` questions alone, its windows at their real length), throughput at batch
``batch_size`` over all questions (questions/s), EM/F1 on the given questions and the F1 difference to
torch-fp32. Latency and throughput time the model only (the runner: padding + forward + unpadding);
tokenization and answer decoding are the same code for every backend and are left out.

Backends needing hardware or software that is not present are reported as ``skipped: <why>`` rows,
never measured on something else.
"""

from __future__ import annotations

import csv
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qatune.core.jsonio import write_json
from qatune.errors import ConfigError, OutputError, QatuneError
from qatune.ranges import Range, check_option
from qatune.tasks import get_task


@dataclass(frozen=True)
class Backend:
    name: str
    engine: str  # torch | onnx
    precision: str  # fp32 | bf16 | int8 | fp16
    quantization: str = "none"  # for onnx: the export's --quantize
    provider: str = "cpu"  # for onnx: the execution provider
    optimize: bool = True  # for onnx: ORT transformer fusion (TensorRT builds its own fusions instead)


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("torch-fp32", "torch", "fp32"),
    Backend("torch-bf16", "torch", "bf16"),
    Backend("onnx-fp32", "onnx", "fp32"),
    Backend("onnx-int8", "onnx", "int8", quantization="int8"),
    Backend("onnx-cuda-fp16", "onnx", "fp16", quantization="fp16", provider="cuda"),
    Backend("tensorrt-fp16", "onnx", "fp16", provider="tensorrt,cuda", optimize=False),
    Backend("tensorrt-int8", "onnx", "int8", quantization="int8-static", provider="tensorrt,cuda", optimize=False),
]}
DEFAULT_BACKENDS = "torch-fp32,torch-bf16,onnx-fp32,onnx-int8"
def columns_for(task: Any) -> list[str]:
    """Table columns: timings, the task's metrics (QA: exact_match, f1) and the primary metric's
    difference to torch-fp32 (QA: f1_diff)."""
    metrics = [c.key for c in task.report.columns]
    return ["backend", "device", "size_mb", "latency_p50_ms", "latency_p95_ms", "throughput_qps", *metrics,
            f"{task.report.primary}_diff", "status"]


COLUMNS = columns_for(get_task())  # the default task's


def parse_backends(spec: str | Sequence[str]) -> list[Backend]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ConfigError(f"unknown backend(s) {unknown or '(none given)'}; choose from: {', '.join(BACKENDS)}")
    return [BACKENDS[n] for n in dict.fromkeys(names)]


def skip_reason(backend: Backend, torch_device: str = "cpu") -> str | None:
    """Why a backend cannot run here (None: it can)."""
    from qatune.inference.onnx_runner import PROVIDER_ALIASES, cuda_gpu_present

    if backend.engine == "torch":
        if torch_device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return "skipped: no CUDA GPU"
        return None
    try:
        from qatune.inference.onnx_runner import available_providers

        available = available_providers()
    except QatuneError:
        return "skipped: onnxruntime is not installed (pip install 'qatune[export]')"
    if backend.provider == "cpu":
        return None
    if not cuda_gpu_present():
        return "skipped: no CUDA GPU"
    for name in backend.provider.split(","):
        full = PROVIDER_ALIASES[name]
        if full not in available:
            return f"skipped: this onnxruntime has no {full} (install onnxruntime-gpu)"
    return None


def _weights_mb(folder: Path) -> float:
    patterns = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.onnx.data", "*.data")
    files = {p for pat in patterns for p in folder.glob(pat) if p.is_file()}
    return sum(p.stat().st_size for p in files) / 2**20


def torch_size_mb(run_dir: Path, run_cfg: dict[str, Any]) -> float:
    """Weights needed to serve a PyTorch run: the run's files, plus the base model's for an adapter run."""
    size = _weights_mb(run_dir)
    base = run_cfg.get("base_model_path")
    if (run_dir / "adapter_config.json").is_file() and base and Path(base).is_dir():
        size += _weights_mb(Path(base))
    return round(size, 2)


def measure(runner: Callable[..., Any], examples: Sequence[Any], features: Any, run_cfg: dict[str, Any],
            report: Any, latency_samples: int, batch_size: int, warmup: int = 3) -> dict[str, Any]:
    """Latency (batch 1 = one example's windows), throughput (batch ``batch_size``) and the task's metrics
    (QA: EM/F1) of a runner."""
    from qatune.inference.loader import task_of

    task = task_of(run_cfg)
    by_question: dict[int, list[int]] = {}
    for f, ex in enumerate(features.example_index.tolist()):
        by_question.setdefault(int(ex), []).append(f)
    singles = [features.subset(by_question[q]) for q in sorted(by_question)[:latency_samples]]
    for sub in singles[: max(1, warmup)]:
        runner(sub, batch_size)
    latencies = []
    for sub in singles:
        t0 = time.perf_counter()
        runner(sub, batch_size)
        latencies.append((time.perf_counter() - t0) * 1000)
    warm = features.subset(list(range(min(batch_size, len(features)))))
    runner(warm, batch_size)
    t0 = time.perf_counter()
    outputs = runner(features, batch_size)
    elapsed = time.perf_counter() - t0
    metrics = task.score_outputs(examples, features, outputs, run_cfg, report).metrics
    return {
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "latency_p95_ms": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
        "latency_questions": len(latencies),
        "throughput_qps": round(len(examples) / elapsed, 2),
        **{c.key: round(float(metrics[c.key]), 2) for c in task.report.columns},
    }


def _export_key(folder: str | os.PathLike) -> tuple[str, bool]:
    from qatune.inference.onnx_runner import read_export_info

    info = read_export_info(folder)
    if not info:
        raise ConfigError(f"{folder} is not a qatune ONNX export dir (no export.json)")
    return str(info.get("quantization", "none")), bool(info.get("optimized", True))


def _source_run(run: Path) -> tuple[Path, dict[tuple[str, bool], Path]]:
    """(PyTorch run dir, {(quantization, optimized): export dir}) for a run dir or an export dir."""
    from qatune.inference.onnx_runner import is_onnx_export, read_export_info

    if not is_onnx_export(run):
        return run, {}
    source = read_export_info(run).get("source_run")
    if not source or not Path(source).is_dir():
        raise ConfigError(f"{run} is an ONNX export whose source run ({source}) is not available; "
                          "bench needs the PyTorch run for the torch backends and the reference F1")
    return Path(source), {_export_key(run): run}


def run_bench(run_dir: str | os.PathLike, data: str, backends: str | Sequence[str] = DEFAULT_BACKENDS,
              max_samples: int | None = 1000, latency_samples: int = 100, batch_size: int = 32,
              exports: Sequence[str | os.PathLike] = (), device: str = "cpu", threads: int | None = None,
              work_dir: str | os.PathLike | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark ``run_dir`` on ``data``; returns ``{"rows": [...], "setup": {...}}`` (rows in COLUMNS order).

    ``exports``: export dirs to use instead of exporting on the fly (matched by their quantization and
    whether they are ORT-optimized). ``work_dir``: where on-the-fly exports go (default: a temp dir).
    """
    import torch

    from qatune.export.onnx import task_features
    from qatune.inference.loader import load_run_model, task_of

    log = log or (lambda msg: print(f"qatune: {msg}", flush=True))
    chosen = parse_backends(backends)
    if latency_samples < 1 or batch_size < 1:
        raise ConfigError("--latency-samples and --batch-size must be >= 1")
    check_option("threads", threads, Range(1, why="CPU threads for torch and ONNX Runtime"), integer=True)
    if threads:
        torch.set_num_threads(int(threads))
    run, given = _source_run(Path(run_dir).expanduser())
    for folder in exports:
        given[_export_key(folder)] = Path(folder)

    loaded = load_run_model(run, merge=True)
    model, tokenizer, run_cfg = loaded
    task = task_of(run_cfg)
    columns = columns_for(task)
    examples, report = task.read(data, max_samples, split="validation")
    if not examples:
        raise ConfigError(f"{data} has no questions")
    features = task_features(task, examples, tokenizer, run_cfg)
    log(f"bench {run} on {len(examples)} questions ({len(features)} windows) from {data}; "
        f"latency over the first {min(latency_samples, len(examples))} questions one by one, "
        f"throughput at batch {batch_size}")
    rows: list[dict[str, Any]] = []
    tmp_ctx = tempfile.TemporaryDirectory(prefix="qatune-bench-") if work_dir is None else None
    work = Path(tmp_ctx.name if tmp_ctx else work_dir)  # type: ignore[arg-type]
    try:
        for backend in chosen:
            row: dict[str, Any] = {"backend": backend.name, "device": None}
            reason = skip_reason(backend, device)
            if reason:
                row["status"] = reason
                rows.append(row)
                log(f"{backend.name}: {reason}")
                continue
            try:
                runner, row["device"], row["size_mb"] = _make_runner(backend, run, loaded, given, work, device,
                                                                     threads, log)
                log(f"{backend.name}: measuring on {row['device']}")
                row.update(measure(runner, examples, features, run_cfg, report, latency_samples, batch_size))
                row["status"] = "ok"
            except QatuneError as exc:
                row["status"] = f"error: {exc}"
            except Exception as exc:  # noqa: BLE001 - one broken backend must not lose the others' rows
                row["status"] = f"error: {type(exc).__name__}: {exc}"
            rows.append(row)
            log(f"{backend.name}: {row['status']}")
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    ref = next((r for r in rows if r["backend"] == "torch-fp32" and r.get("status") == "ok"), None)
    primary = task.report.primary
    for row in rows:
        value = row.get(primary)
        row[f"{primary}_diff"] = round(value - ref[primary], 2) if ref and value is not None else None
    rows = [{**{c: row.get(c) for c in columns}, **row} for row in rows]
    setup = {
        "run": str(run), "data": str(data), "questions": len(examples), "windows": len(features),
        "latency_questions": min(latency_samples, len(examples)), "batch_size": batch_size,
        "threads": threads or torch.get_num_threads(), "cpu": _cpu_name(), "python": platform.python_version(),
        "torch": torch.__version__, "method": run_cfg.get("method"), "model": run_cfg.get("model"),
    }
    try:
        import onnxruntime

        setup["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {"rows": rows, "setup": setup, "columns": columns}


def _make_runner(backend: Backend, run: Path, loaded: tuple[Any, Any, dict[str, Any]],
                 given: dict[tuple[str, bool], Path],
                 work: Path, device: str, threads: int | None, log: Callable[[str], None]) -> tuple[Any, str, float]:
    from qatune.export.onnx import export_onnx
    from qatune.inference.loader import TorchRunner, task_of
    from qatune.inference.onnx_runner import MODEL_FILE, OnnxRunner

    model, tokenizer, run_cfg = loaded
    if backend.engine == "torch":
        runner = TorchRunner(model, tokenizer, device=device, precision=backend.precision, task=task_of(run_cfg))
        return runner, str(runner.device), torch_size_mb(run, run_cfg)
    key = (backend.quantization, backend.optimize)
    folder = given.get(key)
    if folder is None:
        folder = work / f"{backend.quantization}-{'opt' if backend.optimize else 'raw'}"
        if not (folder / MODEL_FILE).is_file():
            log(f"{backend.name}: exporting to a temporary dir ({backend.quantization})")
            export_onnx(run, folder, quantize=backend.quantization, optimize=backend.optimize, loaded=loaded,
                        overwrite=True, log=None)
        given[key] = folder
    runner = OnnxRunner(folder / MODEL_FILE, pad_token_id=tokenizer.pad_token_id or 0, providers=backend.provider,
                        precision=backend.precision, quantization=backend.quantization, threads=threads)
    device_name = runner.active_providers[0].replace("ExecutionProvider", "")
    size = round(sum(p.stat().st_size for p in folder.glob("*.onnx*") if p.is_file()) / 2**20, 2)
    return runner, f"ort-{device_name.lower()}", size


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    columns = result.get("columns", COLUMNS)
    header = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, sep]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:+.2f}" if c.endswith("_diff") and isinstance(v, (int, float)) else _cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    s = result.get("setup", {})
    lines.append("")
    lines.append(f"{s.get('questions')} questions ({s.get('windows')} windows) from {s.get('data')}; latency: "
                 f"first {s.get('latency_questions')} questions one at a time; throughput at batch "
                 f"{s.get('batch_size')}; {s.get('threads')} threads on {s.get('cpu')}.")
    return "\n".join(lines)


def write_result(result: dict[str, Any], output: str | os.PathLike) -> Path:
    path = Path(output).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=result.get("columns", COLUMNS), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(result["rows"])
        elif path.suffix.lower() == ".json":
            write_json(path, result)
        else:
            raise ConfigError(f"--output {path}: use a .json or .csv file name")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
