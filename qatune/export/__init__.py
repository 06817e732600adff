"""Exporting trained runs for fast serving: ONNX (fused, optionally INT8), an ONNX Runtime runner, benchmarks.

* :mod:`qatune.export.onnx` - ``export_onnx(run_dir, output, quantize=...)`` and the parity check.
* :mod:`qatune.inference.onnx_runner` - ``OnnxRunner``; export dirs load through ``qatune.load`` like any run.
* :mod:`qatune.export.bench` - ``run_bench``: latency / throughput / EM-F1 per backend and precision.

Nothing here imports onnx or onnxruntime until it is used (they are the ``export`` extra).
"""
