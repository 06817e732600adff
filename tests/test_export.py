"""ONNX export, the ONNX runner behind ``qatune.load``, the parity check and ``qatune bench`` (tiny model)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import qatune  # noqa: E402
from qatune.cli import main  # noqa: E402
from qatune.errors import ConfigError, QatuneError  # noqa: E402

SAMPLE = Path(qatune.__file__).resolve().parent / "resources" / "sample"

METHODS = ("full", "lora", "ia3")


def _pairs(n: int = 10) -> list[tuple[str, str]]:
    from qatune.data.squad.squad_schema import load_qa_examples

    examples, _ = load_qa_examples(str(SAMPLE / "dev.json"), max_samples=n)
    return [(e.question, e.context) for e in examples]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for method in METHODS:
        out[method] = root / method
        qatune.train(dict(model=str(tiny_model_dir), method=method, train=str(SAMPLE / "train.json"),
                          max_train_samples=20, epochs=1, max_seq_length=128, doc_stride=32, tracking=False,
                          do_eval=False, output=str(out[method])), progress=False)
    return out


@pytest.fixture(scope="module")
def exports(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from qatune.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for method in METHODS:
        out[method] = root / f"{method}-onnx"
        export_onnx(runs[method], out[method], parity_samples=4, log=None)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_export_round_trip(method: str, runs: dict[str, Path], exports: dict[str, Path]) -> None:
    from qatune.inference.onnx_runner import OnnxRunner

    export = exports[method]
    for name in ("model.onnx", "export.json", "qatune.yaml", "tokenizer.json", "tokenizer_config.json"):
        assert (export / name).is_file(), name
    info = json.loads((export / "export.json").read_text())
    assert info["quantization"] == "none" and info["source_run"] == str(runs[method].resolve())
    assert info["parity"]["fp32"]["passed"] and info["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-3
    assert info["fused_operators"].get("Attention", 0) > 0  # eager-attention export: ORT fuses attention
    assert info["size_mb"] > 0 and info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert qatune.load(str(export)).run_config["export"]["quantization"] == "none"

    pairs = _pairs()  # 10 questions of different lengths in one padded batch: dynamic batch and sequence axes
    torch_answers = qatune.load(str(runs[method]), device="cpu", precision="fp32").answer_batch(pairs)
    onnx_pipeline = qatune.load(str(export))
    assert isinstance(onnx_pipeline.runner, OnnxRunner)
    onnx_answers = onnx_pipeline.answer_batch(pairs)
    assert [(a.text, a.start, a.end) for a in onnx_answers] == [(a.text, a.start, a.end) for a in torch_answers]
    assert max(abs(a.score - b.score) for a, b in zip(onnx_answers, torch_answers, strict=True)) < 1e-3


def test_int8_export_via_cli(runs: dict[str, Path], exports: dict[str, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lora-int8"
    rc = main(["export", str(runs["lora"]), "--format", "onnx", "--quantize", "int8", "--output", str(out),
               "--parity-samples", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "parity (int8) vs PyTorch fp32" in printed and "max |logit diff|" in printed
    info = json.loads((out / "export.json").read_text())
    assert info["quantization"] == "int8" and set(info["parity"]) == {"fp32", "int8"}
    assert info["parity"]["int8"]["passed"]
    assert (out / "model.onnx").stat().st_size < 0.5 * (exports["lora"] / "model.onnx").stat().st_size
    answers = qatune.load(str(out)).answer_batch(_pairs(5))
    assert len(answers) == 5 and all(a.text for a in answers)


def test_parity_catches_corrupted_graph(exports: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qatune.export.onnx import ParityError, check_parity

    broken = tmp_path / "broken"
    shutil.copytree(exports["full"], broken)
    model = onnx.load(str(broken / "model.onnx"))
    # the first weight matrix after the embeddings (a fused attention QKV weight): add noise
    target = next(t for t in model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and 1 < t.dims[0] < 100)
    array = numpy_helper.to_array(target)
    noise = np.random.default_rng(0).normal(0.0, 1.0, array.shape)
    target.CopyFrom(numpy_helper.from_array((array + noise).astype(np.float32), target.name))
    onnx.save(model, str(broken / "model.onnx"))
    assert check_parity(exports["full"], samples=4)["passed"]
    with pytest.raises(ParityError, match="parity check failed"):
        check_parity(broken, samples=4)


def test_failed_export_leaves_nothing(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qatune.export import onnx as onnx_export

    def boom(*args, **kwargs):
        raise QatuneError("quantizer exploded")

    monkeypatch.setattr(onnx_export, "_quantize", boom)
    out = tmp_path / "out" / "lora-int8"
    with pytest.raises(QatuneError, match="exploded"):
        onnx_export.export_onnx(runs["lora"], out, quantize="int8", parity_samples=2, log=None)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temp dir left behind


def test_prefix_run_is_refused(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qatune.export.onnx import export_onnx

    run = tmp_path / "prefix-run"
    run.mkdir()
    (run / "qatune.yaml").write_text(f"model: {tiny_model_dir}\nmethod: prefix\n")
    with pytest.raises(ConfigError, match="virtual tokens") as err:
        export_onnx(run, tmp_path / "out", log=None)
    assert "lora" in str(err.value) and "full" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert main(["export", str(run), "--output", str(tmp_path / "out")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


def test_bench_table_has_every_column(runs: dict[str, Path], exports: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from qatune.export.bench import COLUMNS
    from qatune.inference.onnx_runner import cuda_gpu_present

    out = tmp_path / "bench.csv"
    rc = main(["bench", str(runs["lora"]), "--backends", "torch-fp32,onnx-fp32,onnx-int8,onnx-cuda-fp16",
               "--data", str(SAMPLE / "dev.json"), "--max-samples", "4", "--latency-samples", "2",
               "--exports", str(exports["lora"]), "--output", str(out), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| " + " | ".join(COLUMNS) + " |" in table
    rows = {r["backend"]: r for r in csv.DictReader(out.open())}
    assert list(rows) == ["torch-fp32", "onnx-fp32", "onnx-int8", "onnx-cuda-fp16"]
    for name in ("torch-fp32", "onnx-fp32", "onnx-int8"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert all(row[c] != "" for c in COLUMNS), row
        assert float(row["latency_p95_ms"]) >= float(row["latency_p50_ms"]) > 0
        assert float(row["throughput_qps"]) > 0 and 0 <= float(row["f1"]) <= 100
    assert float(rows["torch-fp32"]["f1_diff"]) == 0
    assert abs(float(rows["onnx-fp32"]["f1_diff"])) < 1e-6
    assert float(rows["onnx-int8"]["size_mb"]) < float(rows["onnx-fp32"]["size_mb"])
    if not cuda_gpu_present():
        assert rows["onnx-cuda-fp16"]["status"] == "skipped: no CUDA GPU"
        assert rows["onnx-cuda-fp16"]["latency_p50_ms"] == ""
