"""BERT written from scratch, numerically the same as Hugging Face's, readable top to bottom.

Why a second implementation: it needs neither transformers nor PEFT to run a trained model, and it can do
what the general library does not:

* one fused Q/K/V projection (a single Linear of 3 * hidden outputs) instead of three matrix multiplies;
* ``torch.nn.functional.scaled_dot_product_attention`` with a broadcast boolean key mask;
* no dropout calls at all when dropout is 0 or the model is in eval mode (HF calls ``nn.Dropout`` modules
  that return early, and passes dropout into attention while training), and a cheaper dropout when it is on
  (the same keep masks as ``F.dropout`` for the same seed, one scaling pass fewer);
* fewer fresh tensors: position rows added by broadcast, embedding and residual adds in place, the activation
  in place at inference;
* optionally (``skip_padding=True``) only the real tokens go through the embeddings, projections, feed-forward
  and layer norms; padding is re-inserted only around the attention kernel.

Parameter names mirror Hugging Face's (``embeddings.word_embeddings``, ``encoder.layer.N.attention.output.dense``,
``bert.`` prefix under a task head ...) except the fused ``attention.self.qkv``; the conversion lives in
:mod:`qatune.native.convert` and is applied only when reading or writing files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from qatune.errors import ModelError
from qatune.native import convert
from qatune.native.functional import dropout as _dropout
from qatune.native.functional import packed_rows

# ----------------------------------------------------------------------------------------------- config

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # the exact (erf) GELU of the original BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# the same functions, overwriting their input: used where no backward needs it (inference), saving one
# [tokens x intermediate_size] tensor per layer
INPLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": torch.ops.aten.gelu_,
    "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "relu": torch.relu_,
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
}


@dataclass
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` this model uses; everything else is kept verbatim
    in ``extra`` so ``save_pretrained`` writes it back."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ModelError(f"hidden_act {self.hidden_act!r} is not supported by qatune.native; "
                             f"supported: {', '.join(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ModelError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BertConfig:
        """Build from a parsed ``config.json``, refusing what this encoder does not implement, by name."""
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ModelError(f"{source}: model_type {model_type!r} is not supported by qatune.native "
                             "(BERT-architecture checkpoints only: model_type 'bert')")
        position = data.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ModelError(f"{source}: position_embedding_type {position!r} is not supported by qatune.native "
                             "(only 'absolute' position embeddings)")
        if data.get("is_decoder") or data.get("add_cross_attention"):
            raise ModelError(f"{source}: decoder / cross-attention BERT is not supported by qatune.native "
                             "(encoder only)")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and (v is not None or k == "classifier_dropout")}
        if "id2label" not in data and "num_labels" in data:
            known["num_labels"] = int(data["num_labels"])
        extra = {k: v for k, v in data.items() if k not in names and k not in ("label2id", "num_labels")}
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:
            raise ModelError(f"{source}: invalid BERT config ({exc})") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(_read_config(Path(path)), source=str(path))

    def to_dict(self, architecture: str) -> dict[str, Any]:
        """A config.json transformers reads back into the same model (architecture and labels included)."""
        data = dict(self.extra)
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "id2label")})
        id2label = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        data.update(model_type="bert", architectures=[architecture], position_embedding_type="absolute",
                    id2label={str(k): v for k, v in id2label.items()},
                    label2id={v: k for k, v in id2label.items()})
        data.pop("num_labels", None)  # implied by id2label, as transformers writes it
        return data

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# ----------------------------------------------------------------------------------------------- outputs

@dataclass
class BaseModelOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: torch.Tensor | None = None


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------- layers

@dataclass
class Tokens:
    """Where the tokens of a batch are: ``index`` (flat positions of the real tokens in the B x L grid)
    is set when padding is skipped, so hidden states are ``[T, H]``; otherwise they are ``[B, L, H]``."""

    batch: int
    length: int
    key_mask: torch.Tensor | None  # bool [B, 1, 1, L], True = attend; None = no padding
    index: torch.Tensor | None = None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                position_ids: torch.Tensor | None) -> torch.Tensor:
        """``position_ids`` None: ``input_ids`` is a ``[B, L]`` grid at positions ``0..L-1``, so the first L
        position rows are added by broadcast (no ``B x L`` gather, and their gradient is one sum over B)."""
        # in place on the fresh lookup: an embedding's backward needs the indices, not its output
        x = self.word_embeddings(input_ids)
        if position_ids is None:
            x.add_(self.position_embeddings.weight[: input_ids.shape[-1]])
        else:
            x.add_(self.position_embeddings(position_ids))
        if token_type_ids is None:  # segment 0 everywhere: one row, broadcast
            x.add_(self.token_type_embeddings.weight[0])
        else:
            x.add_(self.token_type_embeddings(token_type_ids))
        return _dropout(self.LayerNorm(x), self.dropout, self.training)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with one fused Q/K/V projection (rows: query, key, value)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        qkv = self.qkv(x)
        if tokens.index is not None:  # packed [T, 3H] -> zero-padded [B, L, 3H] just for the attention kernel
            grid = qkv.new_zeros(tokens.batch * tokens.length, qkv.shape[-1])
            qkv = grid.index_copy(0, tokens.index, qkv).view(tokens.batch, tokens.length, -1)
        b, n = qkv.shape[0], qkv.shape[1]
        q, k, v = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=tokens.key_mask, dropout_p=self.dropout if self.training else 0.0)
        context = context.transpose(1, 2).reshape(b, n, -1)
        if tokens.index is not None:
            context = context.view(b * n, -1).index_select(0, tokens.index)
        return context


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # in place on the fresh projection (or dropout) output: neither's backward reads its own output
        return self.LayerNorm(_dropout(self.dense(x), self.dropout, self.training).add_(residual))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        return self.output(self.self(x, tokens), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.act_ = INPLACE_ACTIVATIONS.get(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense(x)
        if not torch.is_grad_enabled() and self.act_ is not None:  # inference: no backward needs h
            return self.act_(h)
        return self.act(h)


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        x = self.attention(x, tokens)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, tokens)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


# ----------------------------------------------------------------------------------------------- loading

M = TypeVar("M", bound="BertPreTrainedModel")


class BertPreTrainedModel(nn.Module):
    """Weight init, ``from_pretrained`` and ``save_pretrained`` shared by the encoder and its task heads."""

    architecture: ClassVar[str] = ""
    base_prefix: ClassVar[str] = ""  # "bert." under a task head, "" for the bare encoder
    head_prefixes: ClassVar[tuple[str, ...]] = ()  # parameters a headless checkpoint may lack

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.loading_info: dict[str, list[str]] = {"missing_keys": [], "unexpected_keys": []}

    def init_weights(self, module: nn.Module | None = None) -> None:
        """Hugging Face's BERT init: normal(0, initializer_range) weights, zero biases, unit layer norms."""
        std = self.config.initializer_range
        for m in (module or self).modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, **overrides: Any) -> M:
        """Load a Hugging Face BERT directory (config.json + safetensors), with or without the ``bert.``
        prefix and with or without this class's head. A missing head is initialised like Hugging Face does
        and listed in ``model.loading_info["missing_keys"]``; anything else missing is an error."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"{directory} is not a directory; pass a Hugging Face model directory")
        data = _read_config(directory / "config.json")
        data.update(overrides)
        config = BertConfig.from_dict(data, source=str(directory / "config.json"))
        # Built on the meta device: no random init of weights the checkpoint replaces. Only the missing head
        # then draws from the RNG, as in Hugging Face's from_pretrained, so the same seed gives the same head
        # and the same dropout stream afterwards (a seeded run trains like --backend hf's).
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        state = convert.read_safetensors_dir(directory)
        model._load_hf_state(state, source=str(directory))
        return model

    def _load_hf_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        state = {k: v for k, v in state.items() if not k.endswith(("position_ids", "token_type_ids"))}
        has_prefix = any(k.startswith("bert.") for k in state)
        renamed: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if has_prefix:
                key = self.base_prefix + key[len("bert."):] if key.startswith("bert.") else key
            else:  # a bare encoder checkpoint (MiniLM, sentence-transformers)
                key = self.base_prefix + key
            renamed[key] = tensor
        native = convert.hf_to_native(renamed)
        own = self.state_dict()
        unexpected = sorted(k for k in native if k not in own)
        missing = sorted(k for k in own if k not in native)
        for key in sorted(set(native) & set(own)):
            if native[key].shape != own[key].shape:
                raise ModelError(f"{source}: weight {convert.hf_name(key)[0]} has shape "
                                 f"{tuple(native[key].shape)}, the config implies {tuple(own[key].shape)}")
        not_head = [n for k in missing if not k.startswith(self.head_prefixes) for n in convert.hf_name(k)]
        if not_head:
            raise ModelError(f"{source}: the checkpoint lacks {len(not_head)} encoder weights (e.g. "
                             f"{', '.join(not_head[:3])}); it is not a complete BERT checkpoint for this config")
        with torch.no_grad():
            for key in set(native) & set(own):
                own[key].copy_(native[key])
        # e.g. a headless checkpoint: init the head, in module order (Hugging Face's order, hence its RNG draws)
        missing_modules = {k.rsplit(".", 1)[0] for k in missing}
        for name, module in self.named_modules():
            if name in missing_modules:
                self.init_weights(module)
        self.loading_info = {"missing_keys": [n for k in missing for n in convert.hf_name(k)],
                             "unexpected_keys": [n for k in unexpected for n in convert.hf_name(k)]}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors in Hugging Face's names (``transformers.AutoModel*`` loads it)."""
        from qatune.native.lora import has_lora

        if has_lora(self):
            raise ModelError("this model has LoRA layers: save the adapter with qatune.native.lora.save_adapter, "
                             "or merge it first with qatune.native.lora.merge_and_unload")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = convert.native_to_hf(self.state_dict())
        convert.write_safetensors(state, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(self.architecture), indent=2) + "\n",
                                               encoding="utf-8")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{path} is missing: a model directory needs the config.json that describes it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------------------------- models

class BertModel(BertPreTrainedModel):
    """The encoder: embeddings, N transformer layers and (optionally) the tanh pooler over the first token.

    ``skip_padding``: run embeddings, projections, feed-forward and layer norms on the real tokens only,
    when at least ``SKIP_PADDING_MIN`` of the batch is padding. Outputs at real positions are unchanged;
    hidden states at padded positions come back as zeros (Hugging Face computes values there; the QA head's
    training loss reads them, so ``BertForQuestionAnswering`` computes them while training). Dropout then
    draws its masks over the padded grid (``functional.packed_rows``), so seeded runs stay in step.
    Measured on MiniLM (docs/benchmarks.md): 1.8x at 52% padding, but 0.92-0.99x at 4%, where the
    gather/scatter costs more than the padding it saves -- hence the threshold.
    """

    SKIP_PADDING_MIN: ClassVar[float] = 0.10

    architecture = "BertModel"
    head_prefixes = ("pooler.",)

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, skip_padding: bool = False) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.skip_padding = skip_padding
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, skip_padding: bool | None = None) -> BaseModelOutput:
        """``skip_padding``: None follows ``self.skip_padding``; False computes the padded grid this once."""
        batch, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ModelError(f"input of {length} tokens is longer than max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        # a trace (ONNX export) records one path for every input: always the mask, never the data-dependent skip
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        key_mask = None
        if attention_mask is not None and (tracing or not bool(attention_mask.all())):
            key_mask = attention_mask.bool().view(batch, 1, 1, length)
        allowed = self.skip_padding if skip_padding is None else skip_padding
        skip = allowed and key_mask is not None and not tracing and (
            1.0 - float(attention_mask.sum()) / attention_mask.numel() >= self.SKIP_PADDING_MIN)
        if not skip:
            tokens = Tokens(batch, length, key_mask)
            hidden = self.embeddings(input_ids, token_type_ids, None)
            hidden = self.encoder(hidden, tokens)
        else:
            index = attention_mask.reshape(-1).nonzero().squeeze(1)
            positions = torch.arange(length, device=input_ids.device).expand(batch, length)
            tokens = Tokens(batch, length, key_mask, index)
            types = None if token_type_ids is None else token_type_ids.reshape(-1)[index]
            with packed_rows(batch * length, index):  # dropout masks as the padded model draws them
                packed = self.embeddings(input_ids.reshape(-1)[index], types, positions.reshape(-1)[index])
                packed = self.encoder(packed, tokens)
            hidden = packed.new_zeros(batch * length, packed.shape[-1]).index_copy(0, index, packed)
            hidden = hidden.view(batch, length, -1)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutput(last_hidden_state=hidden, pooler_output=pooled)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Encoder + ``qa_outputs`` (hidden -> start/end logits per token), as Hugging Face's."""

    architecture = "BertForQuestionAnswering"
    base_prefix = "bert."
    head_prefixes = ("qa_outputs.",)

    def __init__(self, config: BertConfig, skip_padding: bool = False) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False, skip_padding=skip_padding)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights(self.qa_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None) -> QuestionAnsweringOutput:
        # The loss (as Hugging Face's) takes its softmax over every position, padding included, so training
        # computes the padded positions too: skipping them would change the loss, not only the speed.
        # Inference skips them (the answer search reads real tokens only).
        hidden = self.bert(input_ids, attention_mask, token_type_ids,
                           skip_padding=False if self.training else None).last_hidden_state
        start, end = self.qa_outputs(hidden).unbind(-1)
        start, end = start.contiguous(), end.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]  # labels outside the window are ignored, as in Hugging Face
            loss = (F.cross_entropy(start, start_positions.view(-1).clamp(0, ignored), ignore_index=ignored)
                    + F.cross_entropy(end, end_positions.view(-1).clamp(0, ignored), ignore_index=ignored)) / 2
        return QuestionAnsweringOutput(start_logits=start, end_logits=end, loss=loss)


class BertForSequenceClassification(BertPreTrainedModel):
    """Encoder + pooler + dropout + ``classifier``, as Hugging Face's."""

    architecture = "BertForSequenceClassification"
    base_prefix = "bert."
    head_prefixes = ("classifier.", "bert.pooler.")

    def __init__(self, config: BertConfig, skip_padding: bool = False) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True, skip_padding=skip_padding)
        self.dropout = (config.classifier_dropout if config.classifier_dropout is not None
                        else config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output
        logits = self.classifier(_dropout(pooled, self.dropout, self.training))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            elif self.config.problem_type == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(logits=logits, loss=loss)
