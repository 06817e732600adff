"""ONNX export of a trained run: merge adapters, trace, fuse, quantize, and prove parity before publishing.

``export_onnx(run_dir, output, quantize="int8")`` does, in a temporary directory beside ``output``:

1. load the run with LoRA / LoHa / IA3 adapters merged into the base weights (full runs as they are),
   (by the run's backend) switch attention to the *eager* implementation (ORT's BERT fusion recognises eager attention as
   ``Attention``; an SDPA trace is left unfused and runs ~2x slower once quantized);
2. trace it with ``torch.onnx.export`` (TorchScript exporter, opset >= 17) on the task's export signature:
   inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the model uses segments) with dynamic
   ``batch`` and ``sequence`` axes, then the task's extra inputs (``ExtraInput``: e.g. tabular features,
   dynamic ``batch``), outputs named and shaped as the signature says (QA: ``start_logits``, ``end_logits``
   ``[batch, sequence]``; a classifier's ``logits`` ``[batch, labels]``);
3. run ONNX Runtime's transformer optimizer (EmbedLayerNormalization, Attention, SkipLayerNormalization,
   BiasGelu fusion) and keep the optimized graph;
4. optionally quantize: ``int8`` (dynamic, weights per tensor or ``per_channel``), ``int8-static``
   (QDQ, activation ranges calibrated on training questions) or ``fp16`` (for CUDA / TensorRT);
5. compare with PyTorch fp32 on real examples of the task (:func:`compare`): max |logit difference|
   and, for reduced precision, the share of identical predictions (the task's ``best_predictions``); above the tolerance the export fails with a
   :class:`ParityError` and nothing is left at ``output``;
6. write ``model.onnx``, the tokenizer, ``qatune.yaml`` (the run's config + an ``export`` section) and
   ``export.json`` (source run, quantization, fused operators, parity numbers, size), then rename the
   temporary directory to ``output``.

Why not optimum: a plain ``torch.onnx.export`` of the merged model is all a BERT-style QA encoder
needs, and optimum's exporters lag behind transformers 5 releases.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from qatune.artifacts import RUN_CONFIG, read_run_config, write_json
from qatune.core.batching import pad_windows
from qatune.errors import ConfigError, ModelError, OutputError, QatuneError
from qatune.inference.loader import load_run_model, task_of
from qatune.inference.onnx_runner import (
    EXPORT_FILE,
    MODEL_FILE,
    OnnxRunner,
    import_onnxruntime,
    read_export_info,
)

QUANTIZATIONS = ("none", "int8", "int8-static", "fp16")
MIN_OPSET = 17
# max |logit difference| to PyTorch fp32 (absolute, in logit units)
DEFAULT_TOLERANCE = {"none": 1e-3, "fp16": 0.1, "int8": 3.0, "int8-static": 4.0}  # int8: 1.69 seen on a good MiniLM model
# share of parity questions whose best answer must be identical to PyTorch fp32 (fp32: logits decide).
# INT8: measured on MiniLM + LoRA, 81% same answers on 32 questions while F1 on 1,000 questions moved +0.03,
# so answer agreement is a noisy proxy; 70% over 32 questions catches a broken graph (~0%) without
# rejecting a good quantization.
DEFAULT_MIN_AGREEMENT = {"none": 0.0, "fp16": 0.9, "int8": 0.7, "int8-static": 0.6}


class ParityError(QatuneError):
    """The exported model's outputs differ from PyTorch fp32 by more than the tolerance."""


def _log(msg: str) -> None:
    print(f"qatune: {msg}", flush=True)


# -- parity ---------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Real examples, their windows and PyTorch fp32 outputs: what every exported graph is compared with."""

    examples: list[Any]
    features: Any
    outputs: tuple[list[np.ndarray], ...]
    run_config: dict[str, Any]
    source: str

    @property
    def task(self) -> Any:
        return task_of(self.run_config)


def task_features(task: Any, examples: list[Any], tokenizer: Any, run_cfg: dict[str, Any]) -> Any:
    """Inference windows with the run's settings (no labels, no cache)."""
    from qatune.tasks.base import options_from_run

    return task.features(examples, tokenizer, options_from_run(task, run_cfg), int(run_cfg.get("max_seq_length", 384)),
                         training=False, use_cache=False, progress=False)


def parity_examples(run_cfg: dict[str, Any], samples: int = 8, data: str | None = None) -> tuple[list[Any], str]:
    """The first ``samples`` examples of ``data``, else of the run's eval data, else of the task's bundled sample."""
    task = task_of(run_cfg)
    candidates = [c for c in (data, run_cfg.get("eval"), task.sample_data) if c]
    for source in candidates:
        if source != data and not Path(str(source)).expanduser().exists():
            continue  # a hub dataset name: do not go online for a parity check
        try:
            examples, _ = task.read(source, samples)
        except QatuneError:
            if source == data:
                raise
            continue
        if examples:
            return list(examples), str(source)
    raise ConfigError("no questions to check the export with")


def reference_outputs(model: Any, tokenizer: Any, run_cfg: dict[str, Any], samples: int = 8,
                      data: str | None = None) -> Reference:
    from qatune.inference.loader import TorchRunner

    task = task_of(run_cfg)
    examples, source = parity_examples(run_cfg, samples, data)
    features = task_features(task, examples, tokenizer, run_cfg)
    outputs = TorchRunner(model, tokenizer, device="cpu", precision="fp32", task=task)(features, batch_size=4)
    return Reference(examples, features, tuple(outputs), run_cfg, source)


def compare(onnx_path: str | os.PathLike, ref: Reference, quantization: str = "none",
            tolerance: float | None = None, min_agreement: float | None = None,
            providers: str | Sequence[str] | None = None, pad_token_id: int = 0, raise_error: bool = True
            ) -> dict[str, Any]:
    """Run ``onnx_path`` on the reference windows (batches of 4: padding and several shapes) and compare.

    Passes when max |logit diff| <= ``tolerance`` and the share of questions with the same best answer
    >= ``min_agreement`` (defaults per quantization: :data:`DEFAULT_TOLERANCE`, :data:`DEFAULT_MIN_AGREEMENT`).
    """
    tol = DEFAULT_TOLERANCE[quantization] if tolerance is None else float(tolerance)
    agree_min = DEFAULT_MIN_AGREEMENT[quantization] if min_agreement is None else float(min_agreement)
    precision = {"none": "fp32", "int8": "fp32", "int8-static": "int8", "fp16": "fp16"}[quantization]
    runner = OnnxRunner(onnx_path, pad_token_id=pad_token_id, providers=providers or "cpu", precision=precision,
                        quantization=quantization, extra_inputs=[e.name for e in ref.task.export_signature.extra_inputs])
    outputs = tuple(runner(ref.features, batch_size=4))
    ours_flat = [a for out in outputs for a in out]
    ref_flat = [a for out in ref.outputs for a in out]
    if len(outputs) != len(ref.outputs) or any(a.shape != b.shape for a, b in zip(ours_flat, ref_flat, strict=True)):
        raise ParityError(f"{onnx_path}: output shapes differ from PyTorch (broken dynamic axes?)")
    diffs = [np.abs(a - b) for a, b in zip(ours_flat, ref_flat, strict=True)]
    max_diff = float(max((d.max() for d in diffs if d.size), default=0.0))
    mean_diff = float(np.mean(np.concatenate(diffs))) if diffs else 0.0
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    argmax_same = [int(np.argmax(a) == np.argmax(b)) for a, b in zip(ours_flat, ref_flat, strict=True) if a.size]
    task = ref.task
    ours = task.best_predictions(ref.examples, ref.features, outputs, ref.run_config)
    theirs = task.best_predictions(ref.examples, ref.features, ref.outputs, ref.run_config)
    same = [int(a == b) for a, b in zip(ours, theirs, strict=True)]
    report = {
        "quantization": quantization, "questions": len(ref.examples), "windows": len(ref.features),
        "data": ref.source, "max_abs_logit_diff": max_diff, "mean_abs_logit_diff": mean_diff,
        "argmax_agreement": float(np.mean(argmax_same)) if argmax_same else 1.0,
        "answer_agreement": float(np.mean(same)) if same else 1.0,
        "tolerance": tol, "min_answer_agreement": agree_min,
    }
    report["passed"] = bool(max_diff <= tol and report["answer_agreement"] >= agree_min)
    if raise_error and not report["passed"]:
        raise ParityError(
            f"parity check failed for {onnx_path} ({quantization}): max |logit diff| vs PyTorch fp32 = "
            f"{max_diff:.4g} (tolerance {tol:g}), same answer on {report['answer_agreement']:.0%} of "
            f"{len(same)} questions (minimum {agree_min:.0%}). The export is wrong or too lossy; try "
            "without quantization, with --per-channel, or loosen --tolerance / --min-agreement if this is expected.")
    return report


def format_parity(report: dict[str, Any]) -> str:
    return (f"parity ({report['quantization']}) vs PyTorch fp32 on {report['questions']} questions / "
            f"{report['windows']} windows: max |logit diff| {report['max_abs_logit_diff']:.3g} "
            f"(tolerance {report['tolerance']:g}), mean {report['mean_abs_logit_diff']:.3g}, "
            f"same answer {report['answer_agreement']:.0%}, same argmax {report['argmax_agreement']:.0%}")


def check_parity(export_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None,
                 tolerance: float | None = None, min_agreement: float | None = None, samples: int = 8,
                 data: str | None = None, providers: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Re-check an export dir (or a ``model.onnx``) against its source run; raises :class:`ParityError`."""
    path = Path(export_dir)
    onnx_path = path if path.suffix == ".onnx" else path / MODEL_FILE
    info = read_export_info(onnx_path.parent)
    source = run_dir or info.get("source_run")
    if not source:
        raise ConfigError(f"{onnx_path.parent} has no {EXPORT_FILE} naming its source run; pass run_dir")
    model, tokenizer, run_cfg = load_run_model(source, merge=True)
    ref = reference_outputs(model, tokenizer, run_cfg, samples, data)
    return compare(onnx_path, ref, str(info.get("quantization", "none")), tolerance, min_agreement, providers,
                   pad_token_id=tokenizer.pad_token_id or 0)


# -- export ---------------------------------------------------------------------------------------------
def _refuse_unexportable(run_dir: Path, run_cfg: dict[str, Any]) -> Any:
    from qatune.methods import registry

    if (run_dir / MODEL_FILE).is_file():
        raise ConfigError(f"{run_dir} is already an ONNX export; export its source run "
                          f"({read_export_info(run_dir).get('source_run', 'see export.json')})")
    task = task_of(run_cfg)
    if task.export_signature is None:  # e.g. generative QA: a generation loop, not one forward graph
        raise ConfigError(f"{run_dir} is a run of task '{task.name}', which has no single-graph ONNX export; "
                          "serve or predict with PyTorch (qatune serve / qatune predict on the run dir)")
    name = str(run_cfg.get("method", "full"))
    try:
        method = registry.get(name)
    except ConfigError:
        raise ModelError(f"{run_dir}: unknown method '{name}' in {RUN_CONFIG}") from None
    if method.virtual_tokens:
        raise ConfigError(
            f"{run_dir} was trained with '{name}', which prepends virtual tokens (or key/value prefixes) "
            "that cannot be merged into the base weights, so it has no plain encoder graph to export. "
            "For ONNX export train with a mergeable method (lora, loha, ia3 or full); this run can still "
            "be served with PyTorch (qatune serve / qatune.load on the run dir).")
    return method


def _output_dir(output: str | os.PathLike, overwrite: bool, run_path: Path, run_cfg: dict[str, Any]) -> Path:
    """Apply qatune's write rule (qatune/rundir.py) before anything is loaded: a new or empty folder, or, with
    --overwrite, an earlier export holding only files qatune wrote; never the run or its base model."""
    from qatune import rundir

    folder = rundir.check_output(output, "export", models=[run_path, run_cfg.get("base_model_path")],
                                 overwrite=overwrite)
    out = folder.path
    if folder.kind == "export" and not overwrite:
        raise OutputError(f"--output {out} already holds an export; choose another directory or pass --overwrite")
    if folder.exists:
        foreign = sorted(set(os.listdir(out)) - folder.ours)
        if foreign:  # e.g. a compare/pipeline log: the whole folder is swapped for the new export
            raise OutputError(f"--output {out} holds files that qatune's export did not write "
                              f"({', '.join(foreign[:5])}); choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"{out.parent} is not writable; choose another --output")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished export in: the previous export (only qatune's files, checked by :func:`_output_dir`)
    is moved aside, the new one renamed into place, then the old one removed."""
    from qatune import rundir

    rundir.record(tmp, "export", os.listdir(tmp))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _set_attention(model: Any, implementation: str) -> str | None:
    """Switch the attention implementation in place; returns the previous one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = getattr(base.config, "_attn_implementation", None)
    if hasattr(base, "set_attn_implementation"):
        try:
            base.set_attn_implementation(implementation)
            return previous
        except Exception:  # noqa: BLE001 - older transformers / custom models: set the config field
            pass
    base.config._attn_implementation = implementation
    return previous


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    heads = next((getattr(config, k) for k in ("num_attention_heads", "n_heads", "num_heads") if hasattr(config, k)), 0)
    hidden = next((getattr(config, k) for k in ("hidden_size", "dim", "d_model") if hasattr(config, k)), 0)
    return int(heads or 0), int(hidden or 0)


def _uses_token_types(model: Any, features: Any) -> bool:
    """The graph takes segment ids only when the features have them and the model's forward accepts them."""
    if features.token_type_ids is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "token_type_ids" in inspect.signature(base.forward).parameters


def _trace(model: Any, ref: Reference, path: Path, opset: int, input_names: list[str], pad_token_id: int) -> None:
    import torch

    task = ref.task
    signature = task.export_signature
    output_names = list(signature.outputs)
    wrapper = task.wrap(model).eval()
    indices = list(range(min(2, len(ref.features))))
    extras = {e.name: e for e in signature.extra_inputs}
    names = [*input_names, *extras]  # the token windows, then the task's extra inputs
    feeds = pad_windows(ref.features, indices, pad_token_id, input_names=names)
    tensors = {name: torch.from_numpy(np.asarray(feeds[name], dtype=extras[name].dtype if name in extras else np.int64))
               for name in names}
    # the token inputs positionally (as the wrapper's forward lists them), the extra ones as keywords
    kwargs: dict[str, Any] = {"input_names": names, "output_names": output_names,
                              "dynamic_axes": signature.dynamic_axes(names), "opset_version": opset,
                              "do_constant_folding": True}
    args: tuple[Any, ...] = tuple(tensors[name] for name in input_names)
    if extras:
        args = (*args, {name: tensors[name] for name in extras})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: its graphs are what ORT's BERT fusion matches
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # tracer warnings about Python-level shape checks are expected: parity on several shapes guards them
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), **kwargs)


def _optimize(raw: Path, out: Path, config: Any) -> dict[str, int]:
    from onnxruntime.transformers import optimizer

    heads, hidden = _heads_and_hidden(config)
    with _quiet_ort():
        opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(out), use_external_data_format=raw.stat().st_size > 1_800_000_000)
    return stats


def _calibration_feeds(source: str, samples: int, tokenizer: Any, run_cfg: dict[str, Any],
                       input_names: list[str], pad_token_id: int) -> list[dict[str, np.ndarray]]:
    task = task_of(run_cfg)
    examples, _ = task.read(source, samples)
    if not examples:
        raise ConfigError(f"calibration data {source} has no questions")
    features = task_features(task, examples, tokenizer, run_cfg)
    extras = {e.name: e.dtype for e in task.export_signature.extra_inputs}
    names = [*input_names, *extras]
    return [{name: np.asarray(value, dtype=extras.get(name, np.int64)) for name, value in
             pad_windows(features, [i], pad_token_id, multiple=1, input_names=names).items()}
            for i in range(len(features))]


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """The quantizer's advice ("consider pre-processing") goes to the root logger; ORT warns from C++."""
    import onnxruntime

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        onnxruntime.set_default_logger_severity(2)


def _quantize(src: Path, dst: Path, mode: str, per_channel: bool, feeds: list[dict[str, np.ndarray]] | None) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference: say "float"
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet_ort():
        if mode == "int8":
            quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                             extra_options=extra)
            return
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # static quantization needs every MatMul's output type; ORT's symbolic shape inference knows the
        # fused com.microsoft ops that ONNX shape inference does not (without it no MatMul is quantized)
        typed = src.with_name("typed.onnx")
        onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True), str(typed))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(feeds or [])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        quantize_static(str(typed), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        op_types_to_quantize=["MatMul"], activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, extra_options={**extra, "ActivationSymmetric": False})


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    with _quiet_ort():
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


def _size_mb(path: Path) -> float:
    files = [path] + [p for p in path.parent.glob("*.data")]
    return round(sum(p.stat().st_size for p in files if p.is_file()) / 2**20, 2)


def export_onnx(run_dir: str | os.PathLike, output: str | os.PathLike, quantize: str = "none",
                per_channel: bool = True, calibration_data: str | None = None, calibration_samples: int = 100,
                optimize: bool = True, opset: int = MIN_OPSET, tolerance: float | None = None,
                min_agreement: float | None = None, parity_samples: int = 32, parity_data: str | None = None,
                overwrite: bool = False, providers: str | Sequence[str] | None = None,
                loaded: tuple[Any, Any, dict[str, Any]] | None = None,
                log: Callable[[str], None] | None = _log) -> dict[str, Any]:
    """Export ``run_dir`` to ``output`` (see the module docstring); returns what ``export.json`` holds.

    ``providers``: execution providers for the parity check (default CPU), e.g. ``"cuda,cpu"``.

    ``loaded``: an already loaded ``(model, tokenizer, run_config)`` of ``run_dir`` (merged), to save a reload.
    """
    log = log or (lambda msg: None)
    quantize = "none" if quantize in (None, "", "fp32") else quantize
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization '{quantize}'; choose one of: {', '.join(QUANTIZATIONS)}")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset must be >= {MIN_OPSET} (LayerNormalization), got {opset}")
    if tolerance is not None and not 0 <= tolerance < float("inf"):  # inf would skip the check, and is not JSON
        raise ConfigError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ConfigError(f"--min-agreement must be between 0 and 1, got {min_agreement}")
    if calibration_samples < 1:
        raise ConfigError("--calibration-samples must be >= 1")
    if calibration_data and quantize != "int8-static":
        raise ConfigError("--calibration-data is used by --quantize int8-static only")
    import_onnxruntime()
    run_path = Path(run_dir).expanduser()
    run_cfg = read_run_config(run_path)
    method = _refuse_unexportable(run_path, run_cfg)
    out = _output_dir(output, overwrite, run_path, run_cfg)
    calib_source = None
    if quantize == "int8-static":
        calib_source = calibration_data or run_cfg.get("train")
        if not calib_source:
            raise ConfigError("--quantize int8-static needs --calibration-data FILE (the run records no train data)")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = _export_into(run_path, tmp, run_cfg, method, quantize, per_channel, calib_source, calibration_samples,
                            optimize, opset, tolerance, min_agreement, parity_samples, parity_data, providers, loaded,
                            log)
        _output_dir(output, overwrite, run_path, run_cfg)  # again: the folder may have changed meanwhile
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["output"] = str(out)
    log(f"exported {run_path} -> {out} ({quantize}, {info['size_mb']} MB)")
    return info


def _export_into(run_path: Path, tmp: Path, run_cfg: dict[str, Any], method: Any, quantize: str, per_channel: bool,
                 calib_source: str | None, calibration_samples: int, optimize: bool, opset: int,
                 tolerance: float | None, min_agreement: float | None, parity_samples: int,
                 parity_data: str | None, providers: str | Sequence[str] | None,
                 loaded: tuple[Any, Any, dict[str, Any]] | None, log: Callable[[str], None]) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    from qatune import __version__
    from qatune.backends import get_backend

    if loaded is None:
        log(f"loading {run_path} (method {method.name}{', adapters merged' if method.is_peft else ''})")
        loaded = load_run_model(run_path, merge=True)
    model, tokenizer, _ = loaded
    # a PEFT type qatune does not mark mergeable (the 'peft' passthrough) may still merge; if not, the
    # adapter ops are traced as they are
    model = get_backend(str(run_cfg.get("backend") or "hf")).merge(model)
    model = model.float().eval()
    pad_id = tokenizer.pad_token_id or 0
    ref = reference_outputs(model, tokenizer, run_cfg, parity_samples, parity_data)
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if _uses_token_types(model, ref.features) else [])
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config

    raw = tmp / "raw.onnx"
    previous = _set_attention(model, "eager")
    try:
        log(f"tracing with torch.onnx.export (opset {opset}, eager attention, dynamic batch/sequence)")
        try:
            _trace(model, ref, raw, opset, input_names, pad_id)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"torch.onnx.export failed for {run_path}: {type(exc).__name__}: {exc}") from None
    finally:
        if previous:
            _set_attention(model, previous)

    fused: dict[str, int] = {}
    fp32 = raw
    if optimize:
        fp32 = tmp / "optimized.onnx"
        fused = _optimize(raw, fp32, config)
        log("ORT transformer optimizer fused: " + (", ".join(f"{k} x{v}" for k, v in fused.items()) or "nothing"))
        if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
            log("warning: no attention was fused (unsupported architecture?); the graph still runs, unfused")
    parity = {"fp32": compare(fp32, ref, "none", tolerance if quantize == "none" else None,
                              min_agreement if quantize == "none" else None, providers, pad_token_id=pad_id)}
    log(format_parity(parity["fp32"]))

    final = fp32
    if quantize != "none":
        final = tmp / f"{quantize}.onnx"
        if quantize == "fp16":
            _to_fp16(fp32, final)
        else:
            feeds = None
            if quantize == "int8-static":
                feeds = _calibration_feeds(str(calib_source), calibration_samples, tokenizer, run_cfg,
                                           input_names, pad_id)
                log(f"calibrating activation ranges on {len(feeds)} windows from {calib_source}")
            _quantize(fp32, final, quantize, per_channel, feeds)
        parity[quantize] = compare(final, ref, quantize, tolerance, min_agreement, providers, pad_token_id=pad_id)
        log(format_parity(parity[quantize]))

    os.replace(final, tmp / MODEL_FILE)
    for leftover in tmp.glob("*.onnx"):
        if leftover.name != MODEL_FILE:
            leftover.unlink()
    tokenizer.save_pretrained(str(tmp))
    info: dict[str, Any] = {
        "format": "onnx", "source_run": str(run_path.resolve()), "method": run_cfg.get("method"),
        "model": run_cfg.get("model"), "quantization": quantize, "per_channel": per_channel,
        "calibration": {"data": str(calib_source), "samples": calibration_samples} if calib_source else None,
        "optimized": optimize, "fused_operators": fused, "opset": opset, "inputs": input_names,
        "extra_inputs": [e.name for e in task_of(run_cfg).export_signature.extra_inputs],
        "outputs": list(task_of(run_cfg).export_signature.outputs),
        "dynamic_axes": task_of(run_cfg).export_signature.dynamic_axes(input_names), "attention": "eager",
        "size_mb": _size_mb(tmp / MODEL_FILE), "parity": parity,
        "versions": {"qatune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(tmp / EXPORT_FILE, info)
    import yaml

    cfg = dict(run_cfg)
    cfg["export"] = {"format": "onnx", "quantization": quantize, "source_run": info["source_run"]}
    (tmp / RUN_CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return info
