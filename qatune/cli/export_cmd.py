"""``qatune export RUN --format onnx --output DIR``: adapters merged, fused ONNX graph, optional INT8, parity-checked.

The export dir (model.onnx, tokenizer, qatune.yaml, export.json) loads like a run: ``qatune predict``,
``qatune evaluate``, ``qatune serve`` and ``qatune.load`` run it with ONNX Runtime. See docs/export.md.
"""

from __future__ import annotations

import argparse

from qatune.cli.common import add_debug, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX (optionally INT8)", description=__doc__)
    p.add_argument("run", help="run directory written by `qatune train` (full, lora, loha, ia3)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--output", required=True, help="export directory to create")
    p.add_argument("--quantize", default="none", choices=["none", "int8", "int8-static", "fp16"],
                   help="none (fp32), int8 (dynamic, CPU), int8-static (calibrated QDQ), fp16 (CUDA/TensorRT)")
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="per-channel INT8 weight scales (default: per-tensor scales failed the parity check on "
                        "a MiniLM LoRA model, 62%% same answers; per-channel kept F1, docs/benchmarks.md)")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one INT8 scale per weight tensor")
    p.add_argument("--calibration-data", default=None,
                   help="int8-static: SQuAD-format questions for calibration (default: the run's train data)")
    p.add_argument("--calibration-samples", type=int, default=100, help="int8-static: calibration questions")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--no-optimize", action="store_true", help="skip ORT's transformer fusion (e.g. for TensorRT)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |logit diff| vs PyTorch fp32 (default: 1e-3 fp32, 0.1 fp16, 1.5 int8, 3 int8-static)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="minimum share of parity questions with the same answer (default: 0.9 fp16, 0.8 int8, "
                        "0.7 int8-static; fp32 is judged on logits only)")
    p.add_argument("--parity-samples", type=int, default=32, help="questions for the parity check")
    p.add_argument("--parity-data", default=None, help="questions for the parity check (default: the run's "
                   "eval data, else the bundled sample)")
    p.add_argument("--providers", default=None,
                   help="ONNX Runtime execution providers for the parity check, e.g. cuda,cpu or tensorrt,cuda,cpu "
                        "(default: cpu). Serving picks TensorRT > CUDA > CPU by itself")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output (only a folder holding nothing but a qatune export)")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.errors import ConfigError
    from qatune.export.onnx import export_onnx

    if args.parity_samples < 1:
        raise ConfigError("--parity-samples must be >= 1")
    info = export_onnx(args.run, args.output, quantize=args.quantize, per_channel=args.per_channel,
                       calibration_data=args.calibration_data, calibration_samples=args.calibration_samples,
                       optimize=not args.no_optimize, opset=args.opset, tolerance=args.tolerance,
                       min_agreement=args.min_agreement, parity_samples=args.parity_samples,
                       parity_data=args.parity_data, overwrite=args.overwrite,
                       providers=args.providers)
    print_json({k: info[k] for k in ("output", "source_run", "quantization", "size_mb", "fused_operators", "parity")})
    return 0
