"""Generative QA with tiny random GPT-2 and Llama models: answer-only loss, generation that stops, batched
generation equal to one-at-a-time, the no-answer likelihood, long contexts, save/load/predict, SQuAD v2
files the official scoring reproduces, and the server answering a generative run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from generative_fixtures import make_model, squad_records, write_squad  # noqa: E402

import qatune  # noqa: E402
from qatune.errors import ConfigError, DataError  # noqa: E402
from qatune.tasks import get_task  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny-llama"), "llama", chat=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gen-data")
    return {"train": write_squad(folder / "train.json", squad_records(48, 1), "1.1"),
            "dev": write_squad(folder / "dev.json", squad_records(12, 2), "1.1"),
            "train2": write_squad(folder / "train2.json", squad_records(48, 3, unanswerable_every=3), "2.0"),
            "dev2": write_squad(folder / "dev2.json", squad_records(12, 4, unanswerable_every=3), "2.0")}


def load(model_dir: Path) -> tuple[Any, Any]:
    from qatune.backends import get_backend

    task = get_task("generative")
    backend = get_backend("hf")
    return backend.load_base(str(model_dir), task.model, attention_dropout=0.0), \
        backend.load_tokenizer(str(model_dir), task.model)


def options(**kw: Any) -> Any:
    return get_task("generative").resolve_options(kw, {"max_seq_length": 128}, "test")


def examples(path: Path) -> list[Any]:
    return get_task("generative").read(str(path), None)[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_is_on_answer_tokens_only(arch: str, gpt2_dir: Path, llama_dir: Path, data: dict[str, Path]) -> None:
    """The loss equals the cross-entropy of the answer tokens (+ EOS) alone, and the output at every prompt
    position but the last (which predicts the first answer token) gets no gradient from it."""
    from qatune.tasks.generative_qa.generation import continuation_batch

    task = get_task("generative")
    model, tokenizer = load(gpt2_dir if arch == "gpt2" else llama_dir)
    features = task.features(examples(data["train"])[:3], tokenizer, options(), 128, training=True)
    module = task.wrap(model)
    batch = task.collate(features, [0, 1, 2], tokenizer)
    captured: dict[str, torch.Tensor] = {}
    final_norm = module.lm.transformer.ln_f if arch == "gpt2" else module.lm.model.norm

    def keep(_: Any, __: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        captured["h"] = out

    handle = final_norm.register_forward_hook(keep)
    loss = task.loss(module, batch)
    loss.backward()
    handle.remove()
    grad = captured["h"].grad.abs().sum(-1)  # (batch, positions)
    for row in range(3):
        prompt_len, target_len = len(features.prompt_ids[row]), len(features.target_ids[row])
        width = batch["input_ids"].shape[1]
        first = width - prompt_len - target_len
        prompt_part = grad[row, first: width - target_len - 1]
        answer_part = grad[row, width - target_len - 1: width - 1]
        assert prompt_len > target_len > 1
        assert torch.all(prompt_part == 0), "a prompt position got a gradient"
        assert torch.all(answer_part > 0), "an answer-predicting position got no gradient"

    # the same number by hand: full logits, cross-entropy over the answer positions only
    full = continuation_batch(features.prompt_ids[:3], features.target_ids[:3], features.generation.pad_id)
    with torch.no_grad():
        logits = module.lm(input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                           position_ids=full["position_ids"]).logits
        terms = []
        for row in range(3):
            target = torch.from_numpy(features.target_ids[row])
            predicting = logits[row, -len(target) - 1:-1]
            terms.append(torch.nn.functional.cross_entropy(predicting, target, reduction="none"))
        assert float(loss) == pytest.approx(float(torch.cat(terms).mean()), rel=1e-4)


class Scripted(torch.nn.Module):
    """A stand-in causal LM that writes a fixed token script per row (by how many tokens it has seen), so
    stopping can be checked exactly."""

    def __init__(self, scripts: list[list[int]], vocab: int = 20) -> None:
        super().__init__()
        self.scripts, self.vocab = scripts, vocab
        self.widths: list[int] = []  # rows per forward pass
        self.training = False

    class Cache:  # which scripts the rows still in the batch follow (finished rows leave it)
        def __init__(self, rows: list[int], step: int) -> None:
            self.rows, self.step = rows, step

        def batch_select_indices(self, keep: torch.Tensor) -> None:
            self.rows = [self.rows[i] for i in keep.tolist()]

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any = None,
                use_cache: bool = False, logits_to_keep: int = 0) -> tuple[torch.Tensor, Any]:
        rows = list(range(len(self.scripts))) if cache is None else cache.rows
        step = 0 if cache is None else cache.step + 1
        assert input_ids.shape[0] == len(rows) == attention_mask.shape[0] == position_ids.shape[0]
        logits = torch.full((len(rows), 1, self.vocab), -10.0)
        for row, script in enumerate(self.scripts[r] for r in rows):
            logits[row, 0, script[min(step, len(script) - 1)]] = 10.0
        self.widths.append(len(rows))
        return logits, self.Cache(rows, step)


def test_generation_stops_at_eos_or_newline_per_row_and_at_max_new_tokens() -> None:
    from qatune.tasks.generative_qa.generation import greedy
    from qatune.tasks.generative_qa.prompts import Generation

    gen = Generation(max_new_tokens=6, num_beams=1, eos_id=1, pad_id=0, stop_ids=(1, 2))  # 2: a newline token
    scripts = [[5, 6, 1, 7, 7, 7], [5, 2, 8, 8, 8, 8], [9, 9, 9, 9, 9, 9, 9, 9]]
    prompts = [np.array([3, 4], np.int64), np.array([3], np.int64), np.array([4, 4, 4], np.int64)]
    # one batch: rows keep the order sorted_batches gives, so map the scripts through it
    from qatune.core.batching import sorted_batches

    order = next(iter(sorted_batches(np.array([len(p) for p in prompts]), 8)))
    module = Scripted([scripts[i] for i in order])
    tokens, logprobs, _ = greedy(module, prompts, gen, batch_size=8, device="cpu", precision="fp32")
    assert [t.tolist() for t in tokens] == [[5, 6, 1], [5, 2], [9, 9, 9, 9, 9, 9]]
    assert module.widths == [3, 3, 2, 1, 1, 1]  # prompt pass, then a stopped row leaves the batch
    assert all(-1e-3 < lp <= 0 for lp in logprobs)  # each chosen token is near-certain


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_left_padded_generation_equals_one_question_at_a_time(arch: str, gpt2_dir: Path, llama_dir: Path,
                                                                    data: dict[str, Path]) -> None:
    """Padding, positions and the KV cache are right: a batch of different prompt lengths gives the tokens
    (and log-probabilities) each prompt gives alone, and the no-answer score on the cache equals a separate
    teacher-forced pass over prompt + no-answer text."""
    from qatune.tasks.generative_qa.generation import greedy, score_continuations

    task = get_task("generative")
    model, tokenizer = load(gpt2_dir if arch == "gpt2" else llama_dir)
    exs = examples(data["dev2"])[:6]
    exs[1].context = exs[1].context + " It is a quiet animal." * 4  # lengths differ: real left padding
    features = task.features(exs, tokenizer, options(max_new_tokens=5, version_2=True), 128, training=False)
    module = task.wrap(model).eval()
    gen = features.generation
    assert gen.no_answer_ids is not None
    batched, lp, na = greedy(module, features.prompt_ids, gen, 8, "cpu", "fp32", no_answer=gen.no_answer_ids)
    for i, prompt in enumerate(features.prompt_ids):
        alone, lp1, na1 = greedy(module, [prompt], gen, 1, "cpu", "fp32", no_answer=gen.no_answer_ids)
        assert alone[0].tolist() == batched[i].tolist()
        assert lp1[0] == pytest.approx(lp[i], abs=1e-3) and na1[0] == pytest.approx(na[i], abs=1e-3)
        assert batched[i][0] != gen.no_answer_ids[0]  # the answer candidate is never the no-answer text
    forced = score_continuations(module, features.prompt_ids, [np.array(gen.no_answer_ids)] * len(exs),
                                 gen.pad_id, 4, "cpu", "fp32")
    np.testing.assert_allclose(forced, na, atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_questions_on_one_context_share_its_prompt_pass_and_answer_as_alone(
        arch: str, gpt2_dir: Path, llama_dir: Path, data: dict[str, Path]) -> None:
    """Several questions about one paragraph (as SQuAD asks them) run the shared prompt tokens once and copy
    the KV cache; every answer, log-probability and no-answer score still equals the prompt's own, alone."""
    from qatune.tasks.generative_qa.generation import greedy, prefix_sharing_batches

    task = get_task("generative")
    model, tokenizer = load(gpt2_dir if arch == "gpt2" else llama_dir)
    exs = examples(data["dev2"])[:7]
    # paragraphs long beside the instruction, as SQuAD's are: three questions on A, two on B, one each on C, D
    story = {k: f" The {k} mill stood by the river{k[:3]}." * n for k, n in
             (("alder", 7), ("birch", 6), ("cedar", 8), ("damson", 7))}
    for ex, key in zip(exs, ["alder"] * 3 + ["birch"] * 2 + ["cedar", "damson"], strict=True):
        ex.context = ex.context + story[key]
    for ex in exs[1:3]:
        ex.context = exs[0].context
    exs[4].context = exs[3].context
    features = task.features(exs, tokenizer, options(max_new_tokens=5, version_2=True), 512, training=False)
    prompts = features.prompt_ids
    batches, prefix_of = prefix_sharing_batches(prompts, 4)
    assert sorted(i for b in batches for i in b) == list(range(7)) and all(len(b) <= 4 for b in batches)
    assert [bool(n) for n in prefix_of] == [True] * 5 + [False] * 2
    assert prefix_of[0] == prefix_of[1] == prefix_of[2] and prefix_of[3] == prefix_of[4]
    assert all(0 < prefix_of[i] < len(prompts[i]) for i in range(5))

    class Counting(torch.nn.Module):  # counts the prompt tokens each pass feeds the model
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner, self.fed = inner, 0

        def forward(self, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
            if input_ids.shape[1] > 1:
                self.fed += int(input_ids.numel())
            return self.inner(input_ids, *args, **kwargs)

    module = Counting(task.wrap(model).eval())
    gen = features.generation
    batched, lp, na = greedy(module, prompts, gen, 4, "cpu", "fp32", no_answer=gen.no_answer_ids)
    shared_fed = module.fed
    for i, prompt in enumerate(prompts):
        alone, lp1, na1 = greedy(module, [prompt], gen, 1, "cpu", "fp32", no_answer=gen.no_answer_ids)
        assert alone[0].tolist() == batched[i].tolist(), i
        assert lp1[0] == pytest.approx(lp[i], abs=1e-3) and na1[0] == pytest.approx(na[i], abs=1e-3)
    # one pass per prompt feeds at least every prompt token; the shared passes, padding included, feed fewer
    assert shared_fed < sum(len(p) for p in prompts)


def test_chat_template_and_plain_prompts(gpt2_dir: Path, llama_dir: Path, data: dict[str, Path]) -> None:
    task = get_task("generative")
    ex = examples(data["dev"])[:1]
    _, chat_tok = load(llama_dir)
    _, plain_tok = load(gpt2_dir)
    chat = chat_tok.decode(task.features(ex, chat_tok, options(), 128, training=False).prompt_ids[0])
    plain = plain_tok.decode(task.features(ex, plain_tok, options(), 128, training=False).prompt_ids[0])
    assert chat.startswith("<|user|>Answer the question") and chat.endswith("<|assistant|>")
    assert f"Context: {ex[0].context}" in chat and f"Question: {ex[0].question}" in chat
    assert plain.endswith(f"Question: {ex[0].question}\nAnswer:") and "<|user|>" not in plain
    forced_plain = chat_tok.decode(task.features(ex, chat_tok, options(prompt="plain"), 128, False).prompt_ids[0])
    assert forced_plain.endswith("\nAnswer:")
    v2 = plain_tok.decode(task.features(ex, plain_tok, options(version_2=True), 128, False).prompt_ids[0])
    assert "reply exactly: unanswerable." in v2


def test_a_long_context_is_cut_to_fit_with_a_count_and_answers(gpt2_dir: Path, data: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    task = get_task("generative")
    model, tokenizer = load(gpt2_dir)
    ex = examples(data["dev"])[:2]
    ex[0].context = ex[0].context + " The weasel sat by the river in Oslo." * 400
    features = task.features(ex, tokenizer, options(max_new_tokens=8), 128, training=False)
    assert features.truncated == 1 and all(len(p) + 8 <= 128 for p in features.prompt_ids)
    assert "1 of 2 prompts were longer than max_seq_length 128" in capsys.readouterr().err
    # training: an answer past the cut is left out, counted
    train = examples(data["train"])[:2]
    train[0].context = "The lynx sat by the river. " * 200 + train[0].context
    train[0].answers[0].answer_start += len("The lynx sat by the river. " * 200)
    tf = task.features(train, tokenizer, options(), 128, training=True)
    assert tf.dropped == [0] and len(tf) == 1 and tf.example_index.tolist() == [1]


def test_train_save_load_predict_round_trip(gpt2_dir: Path, data: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen-run"
    result = qatune.train({"task": "generative", "model": str(gpt2_dir), "method": "lora", "train": str(data["train"]),
                           "eval": str(data["dev"]), "output": str(out), "epochs": 1, "batch_size": 8,
                           "max_seq_length": 128, "tracking": False, "generative": {"max_new_tokens": 6}},
                          progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"exact_match", "f1", "bleu1", "eval_loss"} <= set(metrics) and metrics["eval_questions"] == 12
    assert result.history[0]["eval_loss"] > 0
    assert (out / "adapter_model.safetensors").is_file() and "task: generative_qa" in (out / "qatune.yaml").read_text()
    run_predictions = json.loads((out / "predictions.json").read_text())
    assert len(run_predictions) == 12

    predictor = qatune.load(str(out))
    rows = examples(data["dev"])
    answers = predictor.answer_batch([(e.question, e.context) for e in rows], batch_size=5)
    assert [a.text for a in answers] == [run_predictions[e.id] for e in rows]  # same as the run's evaluation
    one = predictor.answer(rows[0].question, rows[0].context)
    assert one.text == answers[0].text and 0 < one.score <= 1 or one.no_answer
    again = qatune.evaluate(str(out), str(data["dev"]), output=str(tmp_path / "eval"), progress=False)
    assert again["f1"] == pytest.approx(metrics["f1"]) and again["bleu1"] == pytest.approx(metrics["bleu1"])
    with pytest.raises(DataError, match="item 0: field 'context' is missing"):
        predictor.predict_batch([{"question": "Where?"}])
    from conftest import cli

    rc, stdout, _ = cli(capsys, "predict", out, "--question", rows[0].question, "--context", rows[0].context)
    assert rc == 0 and json.loads(stdout)["text"] == answers[0].text  # the CLI answers through the same predictor
    from qatune.export.onnx import export_onnx

    with pytest.raises(ConfigError, match="task 'generative_qa', which has no single-graph ONNX export"):
        export_onnx(str(out), str(tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists()


def test_v2_no_answer_probability_threshold_and_official_files(llama_dir: Path, data: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """SQuAD v2: the model learns the no-answer text; na_probs.json + predictions.json given to the official
    scoring reproduce metrics.json, and the tuned threshold is what the run keeps for inference."""
    out = tmp_path / "gen-v2"
    qatune.train({"task": "generative", "model": str(llama_dir), "method": "full", "train": str(data["train2"]),
                  "eval": str(data["dev2"]), "output": str(out), "epochs": 2, "batch_size": 8, "learning_rate": 3e-3,
                  "max_seq_length": 128, "tracking": False, "generative": {"max_new_tokens": 6}}, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    na_probs = json.loads((out / "na_probs.json").read_text())
    assert set(predictions) == set(na_probs) and len(na_probs) == 12
    assert all(0.0 <= p <= 1.0 for p in na_probs.values())
    assert {"HasAns_f1", "NoAns_f1", "no_answer_accuracy", "null_threshold"} <= set(metrics)
    assert metrics["null_threshold_tuned_on_eval"] is True
    # empty answers are exactly the questions whose no-answer probability is above 0.5
    assert {k for k, v in predictions.items() if v == ""} >= {k for k, p in na_probs.items() if p > 0.5}
    official = get_task("generative").score_files(str(data["dev2"]), str(out / "predictions.json"),
                                                  na_probs=str(out / "na_probs.json"))
    assert official["exact"] == pytest.approx(metrics["exact"]) and official["f1"] == pytest.approx(metrics["f1"])
    cfg = (out / "qatune.yaml").read_text()
    assert "version_2_model: true" in cfg and f"null_threshold: {metrics['null_threshold']}" in cfg
    predictor = qatune.load(str(out))
    assert predictor.version_2 and predictor.null_threshold == pytest.approx(metrics["null_threshold"])
    # a fixed threshold far above every gap answers everything; far below, nothing
    never = predictor.evaluate(examples(data["dev2"]), null_threshold=1e6).files["predictions.json"]
    always = predictor.evaluate(examples(data["dev2"]), null_threshold=-1e6).files["predictions.json"]
    assert all(v != "" for v in never.values()) and all(v == "" for v in always.values())


def test_lora_targets_per_architecture_are_overridable_and_prompt_methods_refused(
        gpt2_dir: Path, llama_dir: Path, data: dict[str, Path], tmp_path: Path) -> None:
    from qatune.backends import get_backend
    from qatune.methods import registry

    backend, task = get_backend("hf"), get_task("generative")
    lora, _ = registry.resolve("lora")
    defaults = registry.options("lora", {})
    for path, expected in ((gpt2_dir, {"c_attn", "attn.c_proj"}), (llama_dir, {"q_proj", "k_proj", "v_proj", "o_proj"})):
        model, _ = load(path)
        peft_model = backend.apply_method(model, lora, dict(defaults), task.model)
        assert set(peft_model.peft_config["default"].target_modules) >= expected
        assert peft_model.peft_config["default"].task_type == "CAUSAL_LM"
    model, _ = load(llama_dir)
    only_v = backend.apply_method(model, lora, {**defaults, "target_modules": ["v_proj"]}, task.model)
    assert set(only_v.peft_config["default"].target_modules) == {"v_proj"}
    prefix, _ = registry.resolve("prefix")
    with pytest.raises(ConfigError, match="method 'prefix' adds virtual tokens"):
        backend.apply_method(load(gpt2_dir)[0], prefix, registry.options("prefix", {}), task.model)


def test_options_are_checked(data: dict[str, Path]) -> None:
    task = get_task("generative")
    with pytest.raises(ConfigError, match="generative.prompt': 'fancy' is not a prompt template"):
        options(prompt="fancy")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        options(max_new_tokens=0)
    with pytest.raises(ConfigError, match="leaves no room for the prompt"):
        task.resolve_options({"max_new_tokens": 200}, {"max_seq_length": 128}, "test")
    with pytest.raises(ConfigError, match="unknown option"):
        task.check_options({"n_best": 3})


def test_bleu1_is_corpus_level_over_answerable_questions() -> None:
    from qatune.data.squad.squad_types import GoldAnswer, QAExample
    from qatune.tasks.generative_qa.predictor import bleu1

    exs = [QAExample("a", "q", "c", [GoldAnswer("in Oslo", 0)]), QAExample("b", "q", "c", [GoldAnswer("Lima", 0)]),
           QAExample("c", "q", "c", [], is_impossible=True)]
    assert bleu1({"a": "in Oslo", "b": "Lima", "c": "anything"}, exs) == pytest.approx(100.0)
    half = bleu1({"a": "in Perth", "b": "Lima"}, exs)  # 2 of 3 unigrams right, same length: 66.7
    assert half == pytest.approx(200 / 3, abs=0.01)
    assert math.isclose(bleu1({}, exs[2:]) or -1, -1)


def test_the_server_answers_a_generative_run(gpt2_dir: Path, data: dict[str, Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from qatune.serve.app import create_app

    out = tmp_path / "served"
    qatune.train({"task": "generative", "model": str(gpt2_dir), "method": "full", "train": str(data["train"]),
                  "output": str(out), "epochs": 1, "batch_size": 8, "max_seq_length": 128, "tracking": False,
                  "generative": {"max_new_tokens": 5}}, progress=False)
    predictor = qatune.load(str(out))
    expected = predictor.answer("Where does the otter live?", "The otter lives in Lima.")
    with TestClient(create_app(predictor, run_dir=out)) as client:
        reply = client.post("/v1/answer", json={"question": "Where does the otter live?",
                                                "context": "The otter lives in Lima."})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        answer = body.get("answer", body)
        assert answer["text"] == expected.text and answer["no_answer"] == expected.no_answer
        bad = client.post("/v1/answer", json={"question": "Where?"})
        assert bad.status_code in (400, 422) and "context" in bad.text
