"""Every fine-tuning method on a tiny BERT: trains, saves, reloads to identical answers; parameter counts;
and the span forward pass (virtual-token alignment, segment ids) that PEFT's own QA forward gets wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SAMPLE

import qatune
from qatune.backends import get_backend
from qatune.errors import ConfigError
from qatune.methods import registry
from qatune.tasks import get_task
from qatune.tasks.extractive_qa import load_qa_examples
from qatune.tasks.extractive_qa.features import QAFeatures, collate, tokenize_examples
from qatune.tasks.extractive_qa.modeling import QASpanModel, cache_argument, span_loss
from qatune.tasks.extractive_qa.postprocess import decode

SEQ, STRIDE = 128, 32
N_EVAL = 10
HIDDEN, LAYERS, VIRTUAL = 32, 2, 20
HEAD = HIDDEN * 2 + 2  # qa_outputs: Linear(32, 2)

# method -> (extra config, learning rate, exact trainable parameter count on the tiny 2-layer hidden-32 BERT)
LORA_PER_MODULE = 2 * HIDDEN * 8  # A (8x32) + B (32x8), r=8
METHODS: dict[str, tuple[dict[str, Any], float, int | None]] = {
    "full": ({}, 1e-3, None),  # every weight
    # query, key, value and the attention output in both layers (qatune's BERT default targets)
    "lora": ({}, 1e-2, LAYERS * 4 * LORA_PER_MODULE + HEAD),
    "lora-last1": ({}, 1e-2, 1 * 4 * LORA_PER_MODULE + HEAD),
    "loha": ({}, 1e-2, LAYERS * 4 * 2 * LORA_PER_MODULE + HEAD),  # two Hadamard factors per module
    # key, value, attention output (32 each) and the feed-forward output (64 inputs) per layer
    "ia3": ({}, 1e-2, LAYERS * (3 * HIDDEN + 2 * HIDDEN) + HEAD),
    "prefix": ({}, 1e-2, VIRTUAL * LAYERS * 2 * HIDDEN + HEAD),  # a key and a value prefix per layer
    "ptuning": ({}, 1e-2, VIRTUAL * HIDDEN + (HIDDEN * 128 + 128) + (128 * 128 + 128) + (128 * HIDDEN + HIDDEN) + HEAD),
    "prompt": ({}, 3e-2, VIRTUAL * HIDDEN + HEAD),
    "peft": ({"peft": {"peft_type": "LoraConfig", "r": 4}}, 1e-2, LAYERS * 2 * 2 * HIDDEN * 4 + HEAD),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures one_thread and cache_dir: tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def dev_examples():
    return load_qa_examples(SAMPLE / "dev.json", max_samples=N_EVAL)[0]


def base_model(tiny_model_dir: Path):
    from qatune.backends.hf.models import load_model_for_task

    return load_model_for_task(str(tiny_model_dir), "AutoModelForQuestionAnswering", attention_dropout=0.0)


def build(method: str, tiny_model_dir: Path, options: dict[str, Any] | None = None, seed: int = 0):
    torch.manual_seed(seed)
    m, _ = registry.resolve(method)
    return get_backend("hf").apply_method(base_model(tiny_model_dir), m, registry.options(method, options),
                                          get_task("extractive_qa").model)


def train_config(tiny_model_dir: Path, out: Path, cache_dir: Path, method: str, **kw: Any) -> dict[str, Any]:
    extra, lr, _ = METHODS[method]
    cfg = dict(model=str(tiny_model_dir), method=method, train=str(SAMPLE / "train.json"),
               eval=str(SAMPLE / "dev.json"), output=str(out), max_train_samples=40, max_eval_samples=N_EVAL,
               epochs=3, batch_size=8, learning_rate=lr, warmup_ratio=0.0, max_seq_length=SEQ,
               doc_stride=STRIDE, precision="fp32", tracking=False, cache_dir=str(cache_dir), num_threads=1,
               device="cpu", **extra)
    cfg.update(kw)
    return cfg


def logits_of(model: Any, feats: QAFeatures, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    span = QASpanModel(model).eval()
    with torch.no_grad():
        return span(**collate(feats, list(range(len(feats))), pad_token_id))


# ---------------------------------------------------------------------------------------------------
# Every method: train, save, reload


def test_the_registry_holds_the_tested_methods():
    assert set(registry.names()) == set(METHODS) - {"lora-last1"}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_saves_and_reloads_identically(method, tiny_model_dir, tmp_path, cache_dir, tokenizer,
                                                     dev_examples):
    out = tmp_path / method
    result = qatune.train(train_config(tiny_model_dir, out, cache_dir, method), progress=False)
    assert result.status == "finished"

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    assert np.isfinite(first) and last < first - 0.05, f"{method}: training loss did not fall: {history}"

    metrics = json.loads((out / "metrics.json").read_text())
    trainable, total = metrics["trainable_params"], metrics["total_params"]
    expected = METHODS[method][2]
    if method == "full":
        assert trainable == total > 1_000_000
        assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    else:
        assert trainable == expected, f"{method}: {trainable} trainable parameters, expected {expected}"
        assert trainable < 0.05 * total
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
        from safetensors.torch import load_file

        keys = load_file(str(out / "adapter_model.safetensors")).keys()
        assert any("qa_outputs" in k for k in keys), f"{method}: the QA head is not saved with the adapter"
    assert not (out / "checkpoint").exists()

    # the in-memory model's answers (predictions.json, written by the last evaluation before saving)
    # equal the reloaded model's answers, text for text
    saved = json.loads((out / "predictions.json").read_text())
    assert list(saved) == [ex.id for ex in dev_examples]
    pipe = qatune.load(str(out), device="cpu", precision="fp32")
    answers = pipe.answer_batch([(ex.question, ex.context) for ex in dev_examples])
    assert [a.text for a in answers] == [saved[ex.id] for ex in dev_examples]
    assert sum(bool(t) for t in saved.values()) == N_EVAL

    # the reloaded model is the trained one, not the base model
    feats = tokenize_examples(dev_examples, tokenizer, SEQ, STRIDE, progress=False)
    loaded_start, _ = logits_of(pipe.runner.span_model.model, feats, tokenizer.pad_token_id)
    base_start, _ = logits_of(base_model(tiny_model_dir), feats, tokenizer.pad_token_id)
    assert (loaded_start - base_start).abs().max() > 1e-2

    if registry.get(method).mergeable:  # merged LoRA-style weights give the adapter's logits
        from qatune.inference.loader import load_run_model as load_trained_model

        unmerged, _, _ = load_trained_model(out, merge=False)
        assert hasattr(unmerged, "peft_config") and not hasattr(pipe.runner.span_model.model, "peft_config")
        u_start, u_end = logits_of(unmerged, feats, tokenizer.pad_token_id)
        m_start, m_end = logits_of(pipe.runner.span_model.model, feats, tokenizer.pad_token_id)
        torch.testing.assert_close(m_start, u_start, atol=1e-5, rtol=0)
        torch.testing.assert_close(m_end, u_end, atol=1e-5, rtol=0)


def test_lora_last1_adapts_only_the_last_layer(tiny_model_dir, tmp_path, cache_dir):
    from safetensors.torch import load_file

    out = tmp_path / "last1"
    qatune.train(train_config(tiny_model_dir, out, cache_dir, "lora-last1", epochs=1, do_eval=False), progress=False)
    keys = list(load_file(str(out / "adapter_model.safetensors")))
    lora_keys = [k for k in keys if "lora_" in k]
    assert lora_keys and all(".layer.1." in k for k in lora_keys), lora_keys
    assert not any(".layer.0." in k for k in keys)
    adapted = {k.split(".attention.")[1].rsplit(".lora_", 1)[0] for k in lora_keys}
    assert adapted == {"self.query", "self.key", "self.value", "output.dense"}, adapted
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]


def test_parameters_frozen_and_trainable_as_documented(tiny_model_dir):
    for method in METHODS:
        if method == "peft":
            model = build(method, tiny_model_dir, {"peft_type": "LoraConfig", "r": 4})
        else:
            model = build(method, tiny_model_dir)
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        count = sum(params[n].numel() for n in trainable)
        if method == "full":
            assert trainable == set(params)
            continue
        assert count == METHODS[method][2], method
        head = [n for n in params if "qa_outputs" in n and "original_module" not in n]
        assert head and all(n in trainable for n in head), f"{method}: QA head frozen"
        # the base encoder stays frozen: only adapter tensors, prompts and the head's copy train
        frozen_base = [n for n in params if n.endswith(("query.base_layer.weight", "word_embeddings.weight"))]
        assert all(n not in trainable for n in frozen_base)
        assert not any("embeddings.word_embeddings" in n for n in trainable)


def test_unknown_method_and_options_are_config_errors(tiny_model_dir, tmp_path):
    base = dict(model=str(tiny_model_dir), train=str(SAMPLE / "train.json"), tracking=False)
    with pytest.raises(ConfigError) as err:
        qatune.train(dict(base, method="lorra", output=str(tmp_path / "a")), progress=False)
    for name in registry.names():
        assert name in str(err.value)
    assert "lorra" in str(err.value)
    with pytest.raises(ConfigError, match="rank"):
        qatune.train(dict(base, method="lora", lora={"rank": 4}, output=str(tmp_path / "b")), progress=False)
    with pytest.raises(ConfigError, match="known: .*num_virtual_tokens"):
        registry.options("prompt", {"r": 8})
    with pytest.raises(ConfigError, match="unknown method 'prefix-last2'"):
        registry.resolve("prefix-last2")  # only methods with a layers option have -lastN variants
    assert registry.options("lora-last3")["layers"] == 3
    assert registry.options("lora-last3", {"layers": 1, "r": 4})["layers"] == 1  # user options win
    assert registry.options("loha", {"r": 2}) == {**registry.get("loha").defaults, "r": 2}
    with pytest.raises(ConfigError, match="peft_type"):
        build("peft", tiny_model_dir, {"r": 4})
    with pytest.raises(ConfigError, match="LoraConfig"):
        build("peft", tiny_model_dir, {"peft_type": "LoraConfig", "rank": 4})


# ---------------------------------------------------------------------------------------------------
# The span forward pass: virtual tokens, segment ids, padding


@pytest.fixture(scope="module")
def labelled(tokenizer):
    """Training features of dev questions whose answer lies inside the window (non-CLS labels)."""
    examples = load_qa_examples(SAMPLE / "dev.json", max_samples=12)[0]
    feats = tokenize_examples(examples, tokenizer, SEQ, STRIDE, training=True, progress=False)
    keep = [i for i in range(len(feats)) if feats.start_positions[i] > 0][:6]
    assert len(keep) >= 4
    sub = QAFeatures(
        input_ids=[feats.input_ids[i] for i in keep], token_type_ids=[feats.token_type_ids[i] for i in keep],
        offsets=[feats.offsets[i] for i in keep], example_index=np.arange(len(keep)),
        start_positions=feats.start_positions[keep], end_positions=feats.end_positions[keep])
    sub_examples = [examples[int(feats.example_index[i])] for i in keep]
    return sub_examples, sub


def _module(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    return next(m for n, m in model.named_modules() if n.endswith(suffix))


def peft_forward_runs(model: Any) -> bool:
    """Whether PEFT's own QA forward can run this model at all.

    PEFT 0.21's prefix-tuning forward passes ``past_key_values`` and refuses an encoder whose forward has no
    argument of that name; transformers 5.24 renamed BERT's to ``cache``. qatune's own forward passes either.
    """
    config = model.active_peft_config
    if config.peft_type.value != "PREFIX_TUNING":
        return True
    return cache_argument(model.base_model.get_submodule(model.transformer_backbone_name)) == "past_key_values"


def peft_forward_is_refused(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    """Where PEFT's forward cannot run, say so by asserting its error (fails once a PEFT release fixes it)."""
    with pytest.raises(ValueError, match="does not support past key values"):
        model(**inputs)


@pytest.mark.parametrize("method,virtual", [("prompt", VIRTUAL), ("ptuning", VIRTUAL), ("prefix", 0)])
def test_virtual_token_logits_align_with_the_real_tokens(method, virtual, tiny_model_dir, tokenizer, labelled):
    examples, feats = labelled
    model = build(method, tiny_model_dir).eval()
    batch = collate(feats, list(range(len(feats))), tokenizer.pad_token_id, with_labels=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    seq_len = inputs["input_ids"].shape[1]
    starts, ends = batch["start_positions"], batch["end_positions"]
    seen = {}

    def fake_head(module, args, output):
        hidden = args[0]
        offset = hidden.shape[1] - seq_len  # virtual positions in front of the real tokens
        seen["offset"] = offset
        logits = torch.full((hidden.shape[0], hidden.shape[1], 2), -10.0)
        rows = torch.arange(hidden.shape[0])
        logits[rows, offset + starts, 0] = 10.0
        logits[rows, offset + ends, 1] = 10.0
        return logits + 0 * output  # keep the graph

    handle = _module(model, "qa_outputs").register_forward_hook(fake_head)
    try:
        span_model = QASpanModel(model)
        start, end = span_model(**inputs)
        assert seen["offset"] == virtual
        assert start.shape == end.shape == (len(feats), seq_len)
        assert start.argmax(1).tolist() == starts.tolist()
        assert end.argmax(1).tolist() == ends.tolist()
        good = float(span_loss(start, end, starts, ends).detach())
        assert good < 1e-6

        decoded = decode(examples, feats, list(start.detach().numpy()), list(end.detach().numpy()))
        for d, ex, i in zip(decoded, examples, range(len(feats)), strict=True):
            offs = feats.offsets[i]
            expected = ex.context[offs[starts[i], 0]: offs[ends[i], 1]]
            assert d.best.text == expected == ex.answers[0].text

        # PEFT's own forward: num_virtual + seq_len logits, scored against unshifted labels
        if not peft_forward_runs(model):
            peft_forward_is_refused(model, inputs)
            return
        with torch.no_grad():
            raw = model(**inputs)
            raw_loss = model(**inputs, start_positions=starts, end_positions=ends).loss
        assert raw.start_logits.shape == (len(feats), virtual + seq_len)
        if virtual:
            bad = float(span_loss(raw.start_logits, raw.end_logits, starts, ends))
            assert bad > 10.0 > good
            assert float(raw_loss) > 10.0
        else:  # prefix tuning adds no positions: nothing to shift
            torch.testing.assert_close(raw.start_logits, start)
    finally:
        handle.remove()


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_prompt_logits_are_peft_logits_shifted(method, tiny_model_dir, tokenizer, labelled):
    """Without segment ids (which PEFT drops) QASpanModel computes PEFT's logits, minus the virtual ones."""
    _, feats = labelled
    model = build(method, tiny_model_dir).eval()
    batch = collate(feats, list(range(len(feats))), tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        raw = model(**inputs)
        start, end = QASpanModel(model)(**inputs)
    torch.testing.assert_close(start, raw.start_logits[:, VIRTUAL:])
    torch.testing.assert_close(end, raw.end_logits[:, VIRTUAL:])


@pytest.mark.parametrize("method,virtual", [("lora", 0), ("prompt", VIRTUAL), ("prefix", 0), ("full", 0)])
def test_token_type_ids_reach_the_base_model(method, virtual, tiny_model_dir, tokenizer, labelled):
    _, feats = labelled
    model = build(method, tiny_model_dir).eval()
    batch = collate(feats, list(range(len(feats))), tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert (inputs["token_type_ids"] == 1).any()
    received = []
    handle = _module(model, "token_type_embeddings").register_forward_pre_hook(
        lambda module, args: received.append(args[0].clone()))
    try:
        with torch.no_grad():
            QASpanModel(model)(**inputs)
            ours = received.pop()
            assert ours.shape == (len(feats), virtual + inputs["input_ids"].shape[1])
            assert (ours[:, :virtual] == 0).all()
            assert torch.equal(ours[:, virtual:], inputs["token_type_ids"])
            if method == "full":
                return
            # PEFT's own forward, for comparison
            if not peft_forward_runs(model):
                peft_forward_is_refused(model, inputs)
                return
            model(**inputs)
            assert not (received.pop() == 1).any()  # the bug QASpanModel works around: segment ids dropped
    finally:
        handle.remove()


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "lora"])
def test_padding_does_not_change_logits(method, tiny_model_dir, tokenizer, labelled):
    """A window's logits are the same alone and padded in a batch: the attention masks line up."""
    _, feats = labelled
    model = build(method, tiny_model_dir).eval()
    lengths = feats.lengths
    assert lengths.min() < lengths.max()
    start, end = logits_of(model, feats, tokenizer.pad_token_id)
    span = QASpanModel(model).eval()
    for i in range(len(feats)):
        with torch.no_grad():
            s1, e1 = span(**collate(feats, [i], tokenizer.pad_token_id, pad_to_multiple_of=1))
        n = int(lengths[i])
        torch.testing.assert_close(start[i, :n], s1[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(end[i, :n], e1[0], atol=1e-5, rtol=0)


def test_prefix_keys_change_the_output(tiny_model_dir, tokenizer, labelled):
    _, feats = labelled
    model = build("prefix", tiny_model_dir).eval()
    before, _ = logits_of(model, feats, tokenizer.pad_token_id)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.add_(torch.randn_like(p))
    after, _ = logits_of(model, feats, tokenizer.pad_token_id)
    assert (after - before).abs().max() > 1e-3
