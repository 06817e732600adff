"""The span-prediction forward pass, correct for every method.

Two things PEFT's ``PeftModelForQuestionAnswering.forward`` gets wrong for BERT-style QA, fixed here:

* it drops ``token_type_ids`` (question/context segments) for every method, and
* for prompt tuning / P-tuning it returns logits for ``num_virtual_tokens + seq_len`` positions while
  passing the unshifted ``start_positions`` to the loss, so labels point at the wrong tokens.

``QASpanModel`` runs the base model itself (adapter layers still active), prepends virtual tokens with
a zero segment id, and returns logits aligned with the real input tokens, so the labels, the offset
mappings and the decoded spans all refer to the same positions. It is an ``nn.Module`` so DDP can wrap it.

Prefix tuning hands its key/value prefixes to the encoder as a cache. transformers 5.24 renamed BERT's
``past_key_values`` argument to ``cache`` (the old name is a deprecated alias until 5.40), and PEFT 0.21's own
prefix forward looks only for the old name, so it cannot run at all there. qatune reads the argument's name
from the encoder's signature (:func:`cache_argument`) and passes the prefixes under it, on either version.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _peft_config(model: Any) -> Any:
    return getattr(model, "active_peft_config", None)


@lru_cache(maxsize=None)
def _cache_argument_of(forward_owner: type) -> str | None:
    params = inspect.signature(forward_owner.forward).parameters  # follows the deprecation wrapper's __wrapped__
    for name in ("cache", "past_key_values"):  # transformers >= 5.24, then earlier versions
        if name in params:
            return name
    return None


def cache_argument(module: nn.Module) -> str:
    """The keyword under which ``module.forward`` takes a key/value cache (``cache`` or ``past_key_values``).

    Read from the signature rather than by trying a call, so the deprecated alias is never used and an
    encoder without a cache argument is reported as such instead of failing deep inside the forward pass.
    """
    from qatune.errors import ModelError

    name = _cache_argument_of(type(module))
    if name is None:
        raise ModelError(f"{type(module).__name__}.forward takes no key/value cache (neither 'cache' nor "
                         "'past_key_values'), which prefix tuning needs; use another method (e.g. lora or prompt)")
    return name


class QASpanModel(nn.Module):
    """Wraps a QA model (plain or PEFT) and returns ``(start_logits, end_logits)`` over the real tokens."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        config = _peft_config(self.model)
        if config is None:
            out = self.model(**inputs)
            start, end = out.start_logits, out.end_logits
        elif not config.is_prompt_learning:
            out = self.model.base_model(**inputs)  # LoraModel etc.: adapters active, all inputs passed
            start, end = out.start_logits, out.end_logits
        else:
            start, end = self._prompt_learning_forward(config, inputs)
        extra = start.shape[1] - input_ids.shape[1]
        if extra > 0:  # virtual tokens come first: keep the positions of the real tokens
            start, end = start[:, extra:], end[:, extra:]
        return start.float(), end.float()

    def _prompt_learning_forward(self, config: Any, inputs: dict[str, torch.Tensor]
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
        peft_model = self.model
        input_ids = inputs["input_ids"]
        batch = input_ids.shape[0]
        virtual = config.num_virtual_tokens
        ones = torch.ones(batch, virtual, dtype=inputs["attention_mask"].dtype, device=input_ids.device)
        attention_mask = torch.cat([ones, inputs["attention_mask"]], dim=1)
        token_type_ids = inputs.get("token_type_ids")
        base = peft_model.base_model
        if config.peft_type.value == "PREFIX_TUNING":
            past = peft_model.get_prompt(batch)
            backbone = base.get_submodule(peft_model.transformer_backbone_name)
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, cache_argument(backbone): past}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = backbone(**kwargs)[0]
            if hasattr(base, "dropout"):
                hidden = base.dropout(hidden)
            logits = base.get_submodule(peft_model.cls_layer_name)(hidden)
            start, end = logits.split(1, dim=-1)
            return start.squeeze(-1), end.squeeze(-1)
        embeds = peft_model.word_embeddings(input_ids)
        prompts = peft_model.get_prompt(batch_size=batch).to(embeds.dtype)
        kwargs = {"inputs_embeds": torch.cat([prompts, embeds], dim=1), "attention_mask": attention_mask}
        if token_type_ids is not None:
            zeros = torch.zeros(batch, virtual, dtype=token_type_ids.dtype, device=token_type_ids.device)
            kwargs["token_type_ids"] = torch.cat([zeros, token_type_ids], dim=1)
        out = base(**kwargs)
        return out.start_logits, out.end_logits


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of start and end cross-entropy (the standard BERT SQuAD loss)."""
    return (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
