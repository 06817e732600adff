"""SQuAD features: question-first windows over long contexts, offsets, labels, on-disk cache, batching.

Features are stored unpadded (ragged), so batches are padded only to their longest member (dynamic
padding) and grouped by length; the run_qa.py setup pads every window to ``max_seq_length``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qatune.core.batching import (  # noqa: F401 - re-exported: the QA task's batching API
    CPU_MIN_FILL,
    inference_batches,
    length_grouped_batches,
    pad_windows,
    sorted_batches,
)
from qatune.data.squad.squad_types import QAExample

FEATURES_VERSION = 1
MAX_QUERY_TOKENS = 64  # as in the original BERT SQuAD code: longer questions are clipped


@dataclass
class QAFeatures:
    """Tokenized windows. ``offsets[i][t]`` is the context char span of token t, (-1, -1) outside the context."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    offsets: list[np.ndarray]
    example_index: np.ndarray
    start_positions: np.ndarray | None = None
    end_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> "QAFeatures":
        """The windows ``indices`` (without labels): e.g. one question's windows for a latency measurement."""
        idx = list(indices)
        return QAFeatures(
            input_ids=[self.input_ids[i] for i in idx],
            token_type_ids=[self.token_type_ids[i] for i in idx] if self.token_type_ids is not None else None,
            offsets=[self.offsets[i] for i in idx],
            example_index=np.zeros(len(idx), dtype=np.int64),
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def save(self, path: Path) -> None:
        lengths = self.lengths
        arrays: dict[str, np.ndarray] = {
            "lengths": lengths,
            "input_ids": np.concatenate(self.input_ids) if len(self) else np.zeros(0, np.int32),
            "offsets": np.concatenate(self.offsets) if len(self) else np.zeros((0, 2), np.int32),
            "example_index": self.example_index,
        }
        if self.token_type_ids is not None:
            arrays["token_type_ids"] = np.concatenate(self.token_type_ids)
        if self.start_positions is not None:
            arrays["start_positions"] = self.start_positions
            arrays["end_positions"] = self.end_positions
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file

    @classmethod
    def load(cls, path: Path) -> "QAFeatures":
        with np.load(path) as data:
            split = np.cumsum(data["lengths"])[:-1]
            tti = np.split(data["token_type_ids"], split) if "token_type_ids" in data else None
            return cls(
                input_ids=np.split(data["input_ids"], split),
                token_type_ids=tti,
                offsets=np.split(data["offsets"], split),
                example_index=data["example_index"],
                start_positions=data["start_positions"] if "start_positions" in data else None,
                end_positions=data["end_positions"] if "end_positions" in data else None,
            )


def default_cache_dir() -> Path:
    return Path(os.environ.get("QATUNE_CACHE_DIR", Path.home() / ".cache" / "qatune")) / "features"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of the tokenizer's vocabulary and rules, not of its call state: transformers leaves the last
    call's truncation/padding settings on the backend, which must not turn cache hits into misses."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        data = json.loads(backend.to_str())
        data.pop("truncation", None)
        data.pop("padding", None)
        text = json.dumps(data, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}:{text}".encode()).hexdigest()[:16]


def features_key(examples: Sequence[QAExample], tokenizer: Any, max_seq_length: int, doc_stride: int,
                 training: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([FEATURES_VERSION, tokenizer_fingerprint(tokenizer), max_seq_length,
                              doc_stride, training, MAX_QUERY_TOKENS]).encode())
    for ex in examples:
        digest.update(ex.id.encode())
        digest.update(b"\0" + ex.question.encode() + b"\0" + ex.context.encode())
        for ans in ex.answers[:1]:
            digest.update(f"\0{ans.answer_start}\0{ans.text}".encode())
    return digest.hexdigest()[:24]


def max_query_tokens(tokenizer: Any, max_seq_length: int, doc_stride: int) -> int:
    """Question tokens that fit: MAX_QUERY_TOKENS, fewer when the window leaves the context too little room.

    The tokenizer needs more context tokens per window than ``doc_stride`` (it panics otherwise), so a
    question may take at most ``max_seq_length - special tokens - doc_stride - 1`` tokens.
    """
    room = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    if room < 1:
        from qatune.errors import ConfigError

        raise ConfigError(f"doc_stride {doc_stride} leaves no room for the question in windows of max_seq_length "
                          f"{max_seq_length}; use a doc_stride below {max_seq_length // 2} or a longer max_seq_length")
    return min(MAX_QUERY_TOKENS, room)


def _clip_questions(questions: list[str], tokenizer: Any, max_tokens: int = MAX_QUERY_TOKENS) -> list[str]:
    """Clip questions longer than ``max_tokens`` so the context always gets room in the window."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, offs in zip(questions, enc["offset_mapping"], strict=True):
        out.append(q[: offs[max_tokens - 1][1]] if len(offs) > max_tokens else q)
    return out


def _label(offsets: np.ndarray, example: QAExample, cls_index: int) -> tuple[int, int]:
    """Token start/end of the first gold answer in this window; CLS when absent or outside the window."""
    if not example.answers:
        return cls_index, cls_index
    answer = example.answers[0]
    start_char = answer.answer_start
    end_char = start_char + len(answer.text)
    in_context = np.flatnonzero(offsets[:, 0] >= 0)
    if len(in_context) == 0:
        return cls_index, cls_index
    first, last = in_context[0], in_context[-1]
    if not (offsets[first, 0] <= start_char and offsets[last, 1] >= end_char):
        return cls_index, cls_index
    ctx = offsets[first: last + 1]
    start_tok = first + int(np.searchsorted(ctx[:, 0], start_char, side="right")) - 1
    end_tok = first + int(np.searchsorted(ctx[:, 1], end_char, side="left"))
    start_tok = max(first, min(start_tok, last))
    end_tok = max(start_tok, min(end_tok, last))
    return start_tok, end_tok


def tokenize_examples(examples: Sequence[QAExample], tokenizer: Any, max_seq_length: int = 384,
                      doc_stride: int = 128, training: bool = False, progress: bool = True,
                      chunk_size: int = 1000) -> QAFeatures:
    """Tokenize examples into windows (question first, ``only_second`` truncation, stride overlap)."""
    from tqdm.auto import tqdm

    pad_right = getattr(tokenizer, "padding_side", "right") == "right"
    if not pad_right:
        raise ValueError("qatune expects question-first tokenizers (padding_side='right')")
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] | None = []
    offsets_out: list[np.ndarray] = []
    example_index: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    max_query = max_query_tokens(tokenizer, max_seq_length, doc_stride)
    bar = tqdm(total=len(examples), desc="tokenizing", unit="q", disable=not progress, leave=False)
    for lo in range(0, len(examples), chunk_size):
        chunk = examples[lo: lo + chunk_size]
        questions = _clip_questions([ex.question.lstrip() for ex in chunk], tokenizer, max_query)
        enc = tokenizer(
            questions, [ex.context for ex in chunk], truncation="only_second", max_length=max_seq_length,
            stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
        )
        has_types = "token_type_ids" in enc
        if not has_types:
            type_ids = None
        for i, ids in enumerate(enc["input_ids"]):
            seq_ids = np.array([-1 if s is None else s for s in enc.sequence_ids(i)], dtype=np.int8)
            offs = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            offs[seq_ids != 1] = -1
            ex_idx = lo + enc["overflow_to_sample_mapping"][i]
            input_ids.append(np.asarray(ids, dtype=np.int32))
            if type_ids is not None:
                type_ids.append(np.asarray(enc["token_type_ids"][i], dtype=np.int8))
            offsets_out.append(offs)
            example_index.append(ex_idx)
            if training:
                cls_positions = np.flatnonzero(np.asarray(ids) == tokenizer.cls_token_id)
                cls_index = int(cls_positions[0]) if len(cls_positions) else 0
                s, e = _label(offs, examples[ex_idx], cls_index)
                starts.append(s)
                ends.append(e)
        bar.update(len(chunk))
    bar.close()
    return QAFeatures(
        input_ids=input_ids,
        token_type_ids=type_ids,
        offsets=offsets_out,
        example_index=np.asarray(example_index, dtype=np.int64),
        start_positions=np.asarray(starts, dtype=np.int64) if training else None,
        end_positions=np.asarray(ends, dtype=np.int64) if training else None,
    )


def build_features(examples: Sequence[QAExample], tokenizer: Any, max_seq_length: int = 384,
                   doc_stride: int = 128, training: bool = False, cache_dir: str | os.PathLike | None = None,
                   use_cache: bool = True, progress: bool = True) -> QAFeatures:
    """Tokenize with an on-disk cache keyed by the data, the tokenizer and the window settings."""
    if not use_cache:
        return tokenize_examples(examples, tokenizer, max_seq_length, doc_stride, training, progress)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / f"qa-{features_key(examples, tokenizer, max_seq_length, doc_stride, training)}.npz"
    if path.is_file():
        try:
            return QAFeatures.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    features = tokenize_examples(examples, tokenizer, max_seq_length, doc_stride, training, progress)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        features.save(path)
    except OSError:
        pass  # caching is an optimisation; an unwritable cache dir must not fail the run
    return features


def collate(features: QAFeatures, indices: Sequence[int], pad_token_id: int, pad_to_multiple_of: int = 8,
            with_labels: bool = False) -> dict[str, Any]:
    """Pad a batch to its longest window (rounded up to a multiple of 8 for tensor-core friendly shapes)."""
    import torch

    arrays = pad_windows(features, indices, pad_token_id, pad_to_multiple_of)
    batch: dict[str, Any] = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if with_labels:
        idx = np.asarray(indices)
        batch["start_positions"] = torch.from_numpy(features.start_positions[idx])
        batch["end_positions"] = torch.from_numpy(features.end_positions[idx])
    return batch
