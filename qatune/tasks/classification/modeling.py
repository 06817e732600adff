"""The classifier's forward pass: an encoder (as the backend built it, any method applied), pooled text,
optionally the tabular vector beside it, one linear head.

The head (and the category embeddings) belong to the task, not to the backend: they are the same module
for every encoder and method, and a run saves them as ``classifier_head.safetensors`` beside the backend's
files. Standardisation and category lookup happen before the graph (numpy, :mod:`.data`), so a PyTorch
run and an ONNX export get the same arrays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HEAD_FILE = "classifier_head.safetensors"


def embedding_dim(vocab_size: int) -> int:
    """Small embeddings for small vocabularies: 1 + half the values, at most 16."""
    return int(min(16, (vocab_size + 1) // 2 + 1))


def hidden_size(encoder: Any) -> int:
    config = encoder.config
    return int(next(getattr(config, k) for k in ("hidden_size", "dim", "d_model") if hasattr(config, k)))


class TextTabularClassifier(nn.Module):
    """``logits = W [pool(encoder(text)); numeric; missing flags; embeddings(categories)] + b``."""

    def __init__(self, encoder: Any, num_labels: int, n_numeric: int, vocab_sizes: list[int], pooling: str,
                 dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.embeddings = nn.ModuleList(nn.Embedding(v + 1, embedding_dim(v + 1)) for v in vocab_sizes)
        width = hidden_size(encoder) + 2 * n_numeric + sum(e.embedding_dim for e in self.embeddings)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_labels)
        self.uses_numeric = n_numeric > 0
        self.uses_categorical = bool(vocab_sizes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Any = None,
                numeric: Any = None, categorical: Any = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs)[0]
        # prompt-learning methods put virtual tokens in front: pool over the real tokens only
        hidden = hidden[:, hidden.shape[1] - input_ids.shape[1]:]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        parts = [pooled]
        if self.uses_numeric:
            parts.append(numeric.to(pooled.dtype))
        if self.uses_categorical:
            parts.extend(emb(categorical[:, j]).to(pooled.dtype) for j, emb in enumerate(self.embeddings))
        return self.classifier(self.dropout(torch.cat(parts, dim=-1))).float()

    def head_state(self) -> dict[str, torch.Tensor]:
        """The task-owned weights (everything but the encoder), contiguous for safetensors."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_head(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        from qatune.errors import ModelError

        expected = set(self.head_state())
        if set(tensors) != expected:
            raise ModelError(f"{where}: head weights {sorted(set(tensors) ^ expected)} do not match this run's "
                             "classify settings (its qatune.yaml); the run dir is damaged: retrain")
        own = self.state_dict()
        for key, value in tensors.items():
            if own[key].shape != value.shape:
                raise ModelError(f"{where}: head weight {key} has shape {tuple(value.shape)}, the run's settings "
                                 f"need {tuple(own[key].shape)}; the run dir is damaged: retrain")
        self.load_state_dict(tensors, strict=False)
