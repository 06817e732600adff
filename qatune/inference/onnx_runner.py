"""Running an exported ONNX model with ONNX Runtime, behind the same runner interface as PyTorch.

An export directory (``model.onnx`` + tokenizer + ``qatune.yaml``) loads through ``qatune.load`` like
any run (``(is_onnx_export, load_onnx_export)`` is an entry of
``qatune.inference.loader.RUNNER_LOADERS``), so ``qatune predict``/``evaluate``/``serve`` run it with the
same tokenization, windowing and decoding as the PyTorch model: the run's task predictor.

Execution providers: ``device="auto"`` picks TensorRT > CUDA > CPU among those this onnxruntime build
has (GPU ones only when a CUDA GPU is present); ``device="cpu"`` forces CPU; an explicit ``providers``
list (or the ``QATUNE_ORT_PROVIDERS`` environment variable, e.g. ``cuda,cpu``) wins over both.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qatune.core.batching import Windows, inference_batches, pad_windows
from qatune.errors import ConfigError, ModelError

MODEL_FILE = "model.onnx"
EXPORT_FILE = "export.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("ONNX models need onnxruntime: pip install 'qatune[export]' "
                         "(or onnxruntime-gpu for CUDA/TensorRT)") from None
    return onnxruntime


def cuda_gpu_present() -> bool:
    """A CUDA GPU is visible (device nodes, or torch sees one); ORT's provider list alone does not say so."""
    if glob.glob("/dev/nvidia[0-9]*"):
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(providers: str | Sequence[str] | None = None, device: str = "auto") -> list[str]:
    """Execution providers, best first, always ending with CPU as the fallback for unsupported nodes."""
    available = available_providers()
    if providers is None:
        providers = os.environ.get("QATUNE_ORT_PROVIDERS") or None
    if providers is not None:
        names = [p.strip() for p in providers.split(",")] if isinstance(providers, str) else list(providers)
        out = []
        for name in filter(None, names):
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in available:
                raise ConfigError(f"execution provider '{name}' is not available in this onnxruntime build; "
                                  f"available: {', '.join(available)}")
            if full in GPU_PROVIDERS and not cuda_gpu_present():
                raise ConfigError(f"execution provider '{name}' needs a CUDA GPU and none is present; use cpu")
            out.append(full)
        if not out:
            raise ConfigError("no execution provider given (e.g. --providers cuda,cpu)")
    elif device == "cpu":
        out = []
    elif device == "auto" or device.startswith("cuda"):
        gpu = cuda_gpu_present()
        out = [p for p in GPU_PROVIDERS if p in available and gpu]
        if device.startswith("cuda") and not out:
            raise ConfigError("device=cuda was requested but no CUDA GPU / CUDA-enabled onnxruntime "
                              "(onnxruntime-gpu) is available; use device=cpu")
    else:
        raise ConfigError(f"unknown device '{device}' for an ONNX model; use auto, cpu or cuda")
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def _provider_options(name: str, precision: str, quantization: str) -> dict[str, Any]:
    if name != "TensorrtExecutionProvider":
        return {}
    cache = Path(os.environ.get("QATUNE_CACHE_DIR", Path.home() / ".cache" / "qatune")) / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": precision in ("auto", "fp16", "int8"),
        # INT8 in TensorRT takes the scales from the Q/DQ nodes of a statically quantized export
        "trt_int8_enable": precision == "int8" or quantization == "int8-static",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
    }


# ONNX element types of the inputs a task may add (ExtraInput.dtype): feeds are cast to what the graph takes
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class OnnxRunner:
    """The graph's outputs per window, float32, one list per output in the graph's output order:
    length-sorted batches, dynamic padding. An output whose second axis is the inputs' ``sequence`` axis
    (QA's start/end logits) is unpadded to each window's length; any other (classification logits
    ``[batch, labels]``) comes back as one row per window. ``extra_inputs`` names inputs a task adds besides
    the token windows (:class:`qatune.tasks.base.ExtraInput`), read from the features."""

    def __init__(self, model_path: str | os.PathLike, pad_token_id: int = 0,
                 providers: str | Sequence[str] | None = None, device: str = "auto", precision: str = "auto",
                 quantization: str = "none", threads: int | None = None,
                 extra_inputs: Sequence[str] = ()) -> None:
        ort = import_onnxruntime()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"ONNX model {self.model_path} does not exist")
        self.providers = resolve_providers(providers, device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        provider_list = [(p, _provider_options(p, precision, quantization)) for p in self.providers]
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=provider_list)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for an unreadable/invalid graph
            raise ModelError(f"ONNX Runtime could not load {self.model_path}: {exc}") from None
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        known = (*INPUT_NAMES, *extra_inputs)
        unknown = set(self.input_names) - set(known)
        if unknown:
            raise ModelError(f"{self.model_path}: unexpected model inputs {sorted(unknown)}; "
                             f"this run's exports take {', '.join(known)}")
        self.input_types = {i.name: _ORT_DTYPES.get(i.type, np.int64) for i in inputs}
        sequence = next((i.shape[1] for i in inputs if i.name == "input_ids" and len(i.shape) > 1), "sequence")
        # per-token outputs: their axis 1 is the inputs' (named, dynamic) sequence axis
        self.per_token = [len(o.shape) > 1 and isinstance(o.shape[1], str) and o.shape[1] == sequence
                          for o in self.session.get_outputs()]
        self.pad_token_id = pad_token_id

    @property
    def active_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, features: Windows, batch_size: int, progress: bool = False) -> tuple[list[np.ndarray], ...]:
        from tqdm.auto import tqdm

        outputs: list[list[np.ndarray]] = [[np.zeros(0, np.float32)] * len(features) for _ in self.output_names]
        lengths = features.lengths
        on_cpu = self.active_providers[0] == "CPUExecutionProvider"
        batches = inference_batches(lengths, batch_size, on_cpu)
        for indices in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
            feeds = pad_windows(features, indices, self.pad_token_id, input_names=self.input_names)
            feeds = {name: np.asarray(value, dtype=self.input_types[name]) for name, value in feeds.items()}
            results = self.session.run(self.output_names, feeds)
            for out, result, per_token in zip(outputs, results, self.per_token, strict=True):
                array = np.asarray(result, dtype=np.float32)
                for row, i in enumerate(indices):  # per-token outputs lose their padding, rows stay rows
                    out[i] = array[row, : int(lengths[i])] if per_token else array[row]
        return tuple(outputs)


def is_onnx_export(path: Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


def read_export_info(path: str | os.PathLike) -> dict[str, Any]:
    import json

    file = Path(path) / EXPORT_FILE
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_onnx_export(path: str | os.PathLike, device: str = "auto", precision: str = "auto",
                     providers: str | Sequence[str] | None = None, threads: int | None = None
                     ) -> tuple[OnnxRunner, Any, dict[str, Any]]:
    """``(runner, tokenizer, run_config)`` for an export dir. ``precision`` only matters for TensorRT
    (fp32 turns its fp16 mode off); the export's own precision (fp32/int8/fp16) is fixed."""
    from qatune.artifacts import read_run_config
    from qatune.backends import get_backend
    from qatune.tasks import get_task

    path = Path(path)
    run_cfg = read_run_config(path)
    spec = get_task(str(run_cfg.get("task") or "extractive_qa")).model
    tokenizer = get_backend(str(run_cfg.get("backend") or "hf")).load_tokenizer(str(path), spec)
    quantization = str(read_export_info(path).get("quantization", "none"))
    extras = [e.name for e in get_task(str(run_cfg.get("task") or "extractive_qa")).export_signature.extra_inputs]
    runner = OnnxRunner(path / MODEL_FILE, pad_token_id=tokenizer.pad_token_id or 0, providers=providers,
                        device=device, precision=precision, quantization=quantization, threads=threads,
                        extra_inputs=extras)
    return runner, tokenizer, run_cfg
