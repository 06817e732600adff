"""A classification run with tabular columns (concat fusion) exported to ONNX answers like PyTorch, with the
tabular inputs in the graph; `qatune serve`'s classify route and `qatune predict`'s flags use the task's
request schema (text + features in the CLI's NAME=VALUE form)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_clean_error, cli
from test_classification import rows, section, write_csv

import qatune

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cls-export")
    (folder / "recipe.yaml").write_text((Path(__file__).parent / "test_classification.py").read_text()
                                        .split('RECIPE = """')[1].split('"""')[0])
    data = write_csv(folder / "data.csv", rows())
    try:
        qatune.train({"task": "classify", "model": str(tiny_model_dir), "method": "lora", "train": str(data),
                      "eval": str(data), "output": str(folder / "run"), "epochs": 2, "batch_size": 8,
                      "learning_rate": 5e-3, "max_seq_length": 32, "tracking": False,
                      "classify": section(folder / "recipe.yaml")}, progress=False)
        yield folder
    finally:
        torch.set_num_threads(threads)


ITEMS = [{"text": "cat python tree", "features": "Rep=700,Tag1=py"},
         {"text": "a recipe for the blue house", "features": {"Rep": 3, "Tag1": "go", "Tag2": "x"}},
         {"text": "which is best", "features": "Tag1=rust"},  # an unseen category, a missing number
         {"Title": "quick dog", "Body": "best stone", "features": {"OwnerCreationDate": "2010-01-01",
                                                                   "PostCreationDate": "01/05/2010 00:00:00"}}]


def test_onnx_export_keeps_the_tabular_inputs_and_answers_like_pytorch(run: Path) -> None:
    import onnx

    from qatune.export.onnx import export_onnx

    info = export_onnx(run / "run", run / "onnx", parity_samples=8, log=None)
    assert info["parity"]["fp32"]["passed"], info["parity"]
    assert info["extra_inputs"] == ["numeric", "categorical"]
    inputs = {i.name: i for i in onnx.load(str(run / "onnx" / "model.onnx")).graph.input}
    assert inputs["categorical"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    exported, torch_run = qatune.load(str(run / "onnx")), qatune.load(str(run / "run"), device="cpu")
    ours, theirs = exported.predict_batch(ITEMS, batch_size=3), torch_run.predict_batch(ITEMS, batch_size=2)
    assert [a["label"] for a in ours] == [b["label"] for b in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    # the numbers reach the graph: a different reputation gives different logits
    features = exported.task.features([exported.task.parse_request(i, "x") for i in ITEMS[:1]], exported.tokenizer,
                                      None, 32, False)
    (before,) = exported.runner(features, batch_size=1)
    features.numeric = features.numeric + np.array([3.0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    (after,) = exported.runner(features, batch_size=1)
    assert not np.allclose(before[0], after[0])


def test_the_server_answers_on_the_classify_route(run: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from qatune.serve.app import create_app

    predictor = qatune.load(str(run / "run"), device="cpu")
    expected = predictor.predict_batch(ITEMS)
    with TestClient(create_app(predictor, max_questions=8)) as client:
        one = client.post("/v1/classify", json=ITEMS[1])
        assert one.status_code == 200, one.text
        body = one.json()
        body.pop("took_ms", None)
        assert body["label"] == expected[1]["label"]
        assert body["probabilities"] == pytest.approx(expected[1]["probabilities"], abs=1e-6)
        many = client.post("/v1/classify", json={"items": ITEMS})
        assert many.status_code == 200, many.text
        assert [r["label"] for r in many.json()["results"]] == [e["label"] for e in expected]
        bad = client.post("/v1/classify", json={"text": "x", "features": "Rep=lots"})
        assert bad.status_code in (400, 422) and "column 'Rep': 'lots' is not a number" in bad.text
        assert client.post("/v1/answer", json={"question": "q", "context": "c"}).status_code == 404


def test_predict_flags_take_the_cli_feature_form(run: Path, capsys: Any, tmp_path: Path) -> None:
    rc, out, err = cli(capsys, "predict", run / "run", "--text", "cat python tree", "--features", "Rep=700,Tag1=py")
    assert rc == 0, err
    expected = qatune.load(str(run / "run"), device="cpu").predict_batch([ITEMS[0]])[0]
    assert json.loads(out)["label"] == expected["label"]
    rc, _, err = cli(capsys, "predict", run / "run", "--text", "cat", "--features", "Rep=12k")
    assert_clean_error(rc, err, "column 'Rep': '12k' is not a number")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    rc, out, err = cli(capsys, "predict", run / "run", "--input", jsonl)
    assert rc == 0, err
    labels = [json.loads(line)["label"] for line in out.splitlines() if line.strip()]
    assert len(labels) == len(ITEMS)


def test_evaluate_cli_scores_the_test_split(run: Path, capsys: Any, tmp_path: Path) -> None:
    rc, out, err = cli(capsys, "evaluate", run / "run", "--data", run / "data.csv", "--split", "test",
                       "--output", tmp_path / "ev", "--no-progress")
    assert rc == 0, err
    metrics = json.loads(out)
    assert metrics["eval_examples"] == 24 and "test split" in err  # PostId % 10 == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    rc, _, err = cli(capsys, "evaluate", run / "run", "--data", run / "data.csv", "--split", "holdout")
    assert_clean_error(rc, err, "split 'holdout': the classify task has train, validation and test splits")
