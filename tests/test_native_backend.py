"""``backend: native`` through the public API: train, evaluate, predict, save, reload, export; runs that load
under the other backend with the same F1; refusals that name what is supported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE, assert_clean_error, cli

import qatune
from qatune.errors import ConfigError, ModelError

TRAIN = str(SAMPLE / "train.json")
DEV = str(SAMPLE / "dev.json")
CONTEXT = ("The bakery on Mill Street was founded in 1921 by Ada Brennan, who baked rye bread in a wood oven "
           "and sold it from the front window.")


def _train(model_dir: Path, out: Path, method: str, backend: str = "native", **extra) -> object:
    return qatune.train(dict(model=str(model_dir), method=method, backend=backend, train=TRAIN, eval=DEV,
                             max_train_samples=24, max_eval_samples=40, epochs=1, max_seq_length=128, doc_stride=32,
                             tracking=False, output=str(out), **extra), progress=False)


@pytest.fixture(scope="module")
def native_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("native-runs")
    runs = {}
    for method in ("full", "lora-last1"):
        torch.set_num_threads(1)
        _train(tiny_model_dir, root / method, method, learning_rate=5e-3)
        runs[method] = root / method
    return runs


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_full_run_is_a_hugging_face_model_dir(native_runs: dict[str, Path]) -> None:
    from transformers import AutoModelForQuestionAnswering

    from qatune.native import BertForQuestionAnswering

    run = native_runs["full"]
    files = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "qatune.yaml"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    assert json.loads((run / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    hf = AutoModelForQuestionAnswering.from_pretrained(run).eval()
    ours = BertForQuestionAnswering.from_pretrained(run).eval()
    ids = torch.tensor([[101, 2040, 2003, 102, 1996, 3345, 102, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = ours(ids, mask, types)
    assert torch.allclose(a.start_logits[mask.bool()], b.start_logits[mask.bool()], atol=1e-5)
    assert torch.allclose(a.end_logits[mask.bool()], b.end_logits[mask.bool()], atol=1e-5)
    assert _metrics(run)["train_loss"] < 6.0  # trained, not a copy of the random init


@pytest.mark.parametrize("method", ["full", "lora-last1"])
def test_native_run_evaluates_to_the_same_f1_under_both_backends(native_runs: dict[str, Path], method: str,
                                                                 tmp_path: Path) -> None:
    run = native_runs[method]
    trained = _metrics(run)
    native = qatune.evaluate(str(run), DEV, max_eval_samples=40, output=str(tmp_path / "n"), progress=False)
    hf = qatune.evaluate(str(run), DEV, max_eval_samples=40, output=str(tmp_path / "h"), progress=False,
                         backend="hf", precision="fp32")
    assert native["f1"] == pytest.approx(trained["f1"], abs=1e-9)
    assert hf["f1"] == pytest.approx(native["f1"], abs=1e-6)
    assert hf["exact_match"] == pytest.approx(native["exact_match"], abs=1e-6)
    native_preds = json.loads((tmp_path / "n" / "predictions.json").read_text())
    assert native_preds == json.loads((tmp_path / "h" / "predictions.json").read_text())


def test_lora_run_is_a_peft_adapter(native_runs: dict[str, Path], tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering

    run = native_runs["lora-last1"]
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "QUESTION_ANS"
    assert config["layers_to_transform"] == [1]  # last 1 of the tiny model's 2 layers
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert not (run / "model.safetensors").exists()
    metrics = _metrics(run)
    assert 0 < metrics["trainable_params"] < metrics["total_params"] / 100
    base = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, run)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)  # trained, not PEFT's zero init


def test_predict_and_reload_agree(native_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = native_runs["full"]
    question = "Who founded the bakery?"
    native = qatune.load(str(run), precision="fp32").answer(question, CONTEXT)
    hf = qatune.load(str(run), precision="fp32", backend="hf").answer(question, CONTEXT)
    assert (native.text, native.start, native.end) == (hf.text, hf.start, hf.end)
    assert native.score == pytest.approx(hf.score, abs=1e-4)
    assert CONTEXT[native.start:native.end] == native.text
    rc, out, err = cli(capsys, "predict", run, "--question", question, "--context", CONTEXT)
    assert rc == 0, err
    assert native.text in out


def test_serve_answers_with_a_native_run(native_runs: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from qatune.serve import create_app

    predictor = qatune.load(str(native_runs["lora-last1"]), device="cpu", precision="fp32")
    expected = predictor.answer("Who founded the bakery?", CONTEXT)
    with TestClient(create_app(predictor, run_dir=native_runs["lora-last1"])) as client:
        reply = client.post("/v1/answer", json={"question": "Who founded the bakery?", "context": CONTEXT})
    assert reply.status_code == 200, reply.text
    best = reply.json()["answer"]
    assert (best["text"], best["start"], best["end"]) == (expected.text, expected.start, expected.end)


def test_an_hf_lora_run_loads_on_the_native_backend(tiny_lora_run: Path, tmp_path: Path) -> None:
    hf = qatune.evaluate(str(tiny_lora_run), DEV, max_eval_samples=20, output=str(tmp_path / "h"), progress=False,
                         precision="fp32")
    native = qatune.evaluate(str(tiny_lora_run), DEV, max_eval_samples=20, output=str(tmp_path / "n"),
                             progress=False, precision="fp32", backend="native")
    assert native["f1"] == pytest.approx(hf["f1"], abs=1e-6)


def test_export_of_a_native_run_passes_parity(native_runs: dict[str, Path], tmp_path: Path) -> None:
    from qatune.export.onnx import export_onnx

    info = export_onnx(native_runs["full"], tmp_path / "onnx", parity_samples=4, log=None)
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert info["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-3


def test_unsupported_methods_and_heads_are_refused(tiny_model_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from qatune.backends import get_backend
    from qatune.tasks.base import ModelSpec

    for method in ("ia3", "loha", "prefix"):
        with pytest.raises(ConfigError, match=f"method '{method}' is not available on the native backend; "
                                              "available: full, lora, lora-lastN"):
            _train(tiny_model_dir, tmp_path / method, method)
        assert not (tmp_path / method / "qatune.yaml").exists()
    rc, _, err = cli(capsys, "train", "--model", tiny_model_dir, "--method", "ia3", "--train", TRAIN,
                     "--output", tmp_path / "cli", "--no-tracking", "backend=native")
    assert_clean_error(rc, err, "method 'ia3' is not available on the native backend", "full, lora, lora-lastN")
    with pytest.raises(ConfigError, match="the native backend has no 'causal_lm' head; heads: question_answering, "
                                          "sequence_classification"):
        get_backend("native").load_base(str(tiny_model_dir), ModelSpec("causal_lm"))
    with pytest.raises(ConfigError, match="method 'lora': LoRA target_modules .* match no Linear"):
        _train(tiny_model_dir, tmp_path / "bad-target", "lora", lora={"target_modules": ["nope"]})


def test_an_hf_run_of_another_method_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "ia3"
    _train(tiny_model_dir, run, "ia3", backend="hf", do_eval=False)
    with pytest.raises(ModelError, match="a 'ia3' run cannot be loaded by the native backend .* load it with "
                                         "--backend hf"):
        qatune.load(str(run), backend="native")


def test_sequence_classification_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The classification task's ModelSpec: a fresh head with its labels, LoRA keeps it trainable, the run
    saves as a PEFT SEQ_CLS adapter and loads back with the same logits."""
    from qatune.backends import get_backend
    from qatune.methods import registry
    from qatune.native import BertConfig, BertForSequenceClassification, BertModel
    from qatune.tasks.base import ModelSpec

    base = tmp_path / "base"  # an encoder with a pooler (as MiniLM has): the head's input is not random
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(base)
    backend = get_backend("native")
    spec = ModelSpec("sequence_classification", {"id2label": {0: "bad", 1: "ok", 2: "good"}})
    model = backend.load_base(str(base), spec, attention_dropout=0.0)
    assert sorted(model.loading_info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert isinstance(model, BertForSequenceClassification) and model.classifier.out_features == 3
    method = registry.get("lora")
    model = backend.apply_method(model, method, registry.options("lora"), spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("classifier.") for n in trainable) and any("lora_A" in n for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.eval()
    ids = torch.tensor([[101, 2040, 2003, 102, 0]])
    expected = model(ids, (ids != 0).long()).logits
    tokenizer = backend.load_tokenizer(str(tiny_model_dir), spec)
    run = tmp_path / "run"
    backend.save_run(model, tokenizer, run)
    assert json.loads((run / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    loaded, _ = backend.load_run(run, {"model": str(base), "base_model_path": str(base)}, spec, method)
    assert loaded.config.id2label == {0: "bad", 1: "ok", 2: "good"}
    assert torch.allclose(loaded(ids, (ids != 0).long()).logits, expected, atol=1e-5)


def test_interrupted_native_training_resumes_to_the_same_result(tiny_model_dir: Path, tmp_path: Path,
                                                                one_thread: None) -> None:
    from qatune.training.checkpoint import CheckpointError

    def run(out: Path, **kw: object) -> object:
        return qatune.train(dict(model=str(tiny_model_dir), method="lora", backend="native", train=TRAIN, eval=DEV,
                                 output=str(out), max_train_samples=40, max_eval_samples=8, epochs=2, batch_size=8,
                                 learning_rate=5e-3, max_seq_length=128, doc_stride=32, precision="fp32",
                                 device="cpu", tracking=False, num_threads=1) | kw, progress=False)

    whole = run(tmp_path / "a")
    out = tmp_path / "b"
    assert run(out, stop_after_steps=3).status == "stopped"
    with pytest.raises(CheckpointError, match="backend: 'native' -> 'hf'"):
        run(out, resume=True, backend="hf")
    resumed = run(out, resume=True)
    assert resumed.status == "finished"
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
        assert (b["exact_match"], b["f1"]) == (a["exact_match"], a["f1"])


@pytest.mark.parametrize("backend_name", ["hf", "native"])
def test_hidden_dropout_override(tiny_model_dir: Path, backend_name: str) -> None:
    """``hidden_dropout`` replaces the checkpoint's hidden-state dropout on both backends (None keeps it): with
    it and attention dropout at 0, two forward passes in train mode agree; with the checkpoint's 0.1 they do not."""
    from qatune.backends import get_backend
    from qatune.tasks.base import ModelSpec

    backend = get_backend(backend_name)
    spec = ModelSpec("question_answering")
    ids = torch.tensor([[101, 2040, 2003, 1037, 3231, 102]])
    outputs = {}
    for hidden in (None, 0.0):
        model = backend.load_base(str(tiny_model_dir), spec, attention_dropout=0.0, hidden_dropout=hidden).train()
        assert model.config.hidden_dropout_prob == (0.1 if hidden is None else 0.0)
        torch.manual_seed(1)
        first = model(ids, torch.ones_like(ids)).start_logits
        second = model(ids, torch.ones_like(ids)).start_logits
        outputs[hidden] = torch.equal(first, second)
    assert outputs == {None: False, 0.0: True}
