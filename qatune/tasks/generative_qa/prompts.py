"""Prompts and token sequences for generative QA (no torch here).

Two templates, chosen by ``generative.prompt`` (``auto``: the first when the tokenizer has one):

* **chat**: the tokenizer's own chat template, one user turn holding the instruction, the context and the
  question, then the assistant turn opened for the answer (``add_generation_prompt``);
* **plain**: ``<instruction>\\n\\nContext: <context>\\n\\nQuestion: <question>\\nAnswer:`` and the answer
  after one space.

The instruction asks for a short phrase from the context; for SQuAD v2 it adds "If the context does not
contain the answer, reply exactly: <no_answer_text>." The training target is the answer (or the no-answer
text) followed by the tokenizer's end-of-sequence token; generation stops at that token or at a newline.

A prompt longer than ``max_seq_length`` minus the room the answer needs is cut at the end of the context
(whole tokens) and the count of cut contexts is reported; an answer past the cut cannot be generated from
the text, so such training questions are left out (counted too). Nothing is windowed: one prompt per
question.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from qatune.data.squad.squad_types import QAExample

INSTRUCTION = "Answer the question with a short phrase taken from the context."
NO_ANSWER_INSTRUCTION = " If the context does not contain the answer, reply exactly: {text}."


@dataclass(frozen=True)
class Generation:
    """Everything the generation loop needs besides the prompts (the runner gets no tokenizer)."""

    max_new_tokens: int
    num_beams: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]  # EOS and every token whose text holds a newline
    no_answer_ids: tuple[int, ...] | None = None  # the no-answer text + EOS: scored for SQuAD v2


@dataclass
class GenFeatures:
    """One prompt per question (``example_index[i] == i``), with its answer tokens when training."""

    prompt_ids: list[np.ndarray]
    target_ids: list[np.ndarray] | None
    generation: Generation
    example_index: np.ndarray
    max_seq_length: int = 512  # what the prompts were fitted to
    truncated: int = 0  # prompts whose context was cut to fit
    dropped: list[int] = field(default_factory=list)  # training questions left out (answer past the cut)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> np.ndarray:
        extra = [len(t) for t in self.target_ids] if self.target_ids is not None else [0] * len(self)
        return np.array([len(p) + e for p, e in zip(self.prompt_ids, extra, strict=True)], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> GenFeatures:
        idx = list(indices)
        targets = [self.target_ids[i] for i in idx] if self.target_ids is not None else None
        return replace(self, prompt_ids=[self.prompt_ids[i] for i in idx], target_ids=targets,
                       example_index=self.example_index[idx])


def uses_chat(tokenizer: Any, prompt: str) -> bool:
    if prompt == "chat":
        return True
    return prompt == "auto" and bool(getattr(tokenizer, "chat_template", None))


def eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id  # BERT-style vocabularies (tiny test models) end a sequence with [SEP]
    if eos is None:
        from qatune.errors import ModelError

        raise ModelError("the tokenizer has no end-of-sequence token (eos_token); generative QA needs one to end answers")
    return int(eos)


@functools.lru_cache(maxsize=8)
def stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """EOS and every vocabulary token whose text contains a newline: answers are one line."""
    ids = {eos_id(tokenizer)}
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]) if "Ċ" in token or "\n" in token or "<0x0A>" in token else ""
        if "\n" in text:
            ids.add(int(index))
    return tuple(sorted(ids))


def generation_settings(tokenizer: Any, max_new_tokens: int, num_beams: int, no_answer_text: str | None,
                        chat: bool) -> Generation:
    eos = eos_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    no_answer = (*answer_ids(tokenizer, no_answer_text, chat), eos) if no_answer_text is not None else None
    return Generation(max_new_tokens, num_beams, eos, int(pad), stop_ids(tokenizer), no_answer)


def prompt_text(tokenizer: Any, question: str, context: str, chat: bool, version_2: bool, no_answer_text: str) -> str:
    instruction = INSTRUCTION + (NO_ANSWER_INSTRUCTION.format(text=no_answer_text) if version_2 else "")
    body = f"{instruction}\n\nContext: {context}\n\nQuestion: {question}"
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{body}\nAnswer:"


def answer_ids(tokenizer: Any, text: str, chat: bool) -> list[int]:
    """The answer's tokens as the model writes them: right after the assistant header (chat) or after one
    space (plain)."""
    return list(tokenizer(text if chat else " " + text, add_special_tokens=False)["input_ids"])


def _encode(tokenizer: Any, text: str, chat: bool) -> list[int]:
    # a chat template writes its special tokens itself; a plain prompt gets the tokenizer's own (e.g. BOS)
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])


def build_features(examples: Sequence[QAExample], tokenizer: Any, options: Any, max_seq_length: int,
                   training: bool, announce: bool = True) -> GenFeatures:
    """Prompts (and for ``training`` the answer tokens + EOS) for every question, cut to ``max_seq_length``."""
    chat = uses_chat(tokenizer, options.prompt)
    version_2 = bool(options.version_2) if options.version_2 is not None else any(
        ex.is_impossible or not ex.answers for ex in examples)
    eos = eos_id(tokenizer)
    prompts: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    kept: list[int] = []
    dropped: list[int] = []
    truncated = 0
    for i, ex in enumerate(examples):
        target: list[int] = []
        if training:
            text = ex.answers[0].text if ex.answers and not ex.is_impossible else options.no_answer_text
            target = answer_ids(tokenizer, text, chat) + [eos]
        reserve = len(target) if training else options.max_new_tokens
        ids, cut = _fitted_prompt(tokenizer, ex, chat, version_2, options.no_answer_text, max_seq_length - reserve)
        if cut is not None:
            truncated += 1
            if training and ex.answers and not ex.is_impossible and ex.answers[0].answer_start + len(
                    ex.answers[0].text) > cut:
                dropped.append(i)
                continue
        prompts.append(np.asarray(ids, dtype=np.int64))
        targets.append(np.asarray(target, dtype=np.int64))
        kept.append(i)
    if announce and (truncated or dropped):
        note = f"qatune: {truncated} of {len(examples)} prompts were longer than max_seq_length {max_seq_length} " \
               f"(less the answer's room) and had their context cut"
        if dropped:
            note += f"; {len(dropped)} training questions whose answer lay past the cut were left out"
        print(note + " (raise max_seq_length to keep more context)", file=sys.stderr, flush=True)
    no_answer = options.no_answer_text if version_2 else None
    return GenFeatures(prompts, targets if training else None,
                       generation_settings(tokenizer, options.max_new_tokens, options.num_beams, no_answer, chat),
                       np.asarray(kept, dtype=np.int64), max_seq_length, truncated, dropped)


def _fitted_prompt(tokenizer: Any, ex: QAExample, chat: bool, version_2: bool, no_answer_text: str,
                   budget: int) -> tuple[list[int], int | None]:
    """The prompt's tokens within ``budget``, and the character where the context was cut (None: whole)."""
    ids = _encode(tokenizer, prompt_text(tokenizer, ex.question, ex.context, chat, version_2, no_answer_text), chat)
    if len(ids) <= budget:
        return ids, None
    context = tokenizer(ex.context, add_special_tokens=False, return_offsets_mapping=True)
    offsets = context["offset_mapping"]
    keep = len(offsets)
    for _ in range(4):  # a cut can change how the neighbouring text tokenizes: a few tries at most
        keep = max(0, keep - (len(ids) - budget) - 2)
        cut = int(offsets[keep - 1][1]) if keep else 0
        ids = _encode(tokenizer, prompt_text(tokenizer, ex.question, ex.context[:cut], chat, version_2,
                                             no_answer_text), chat)
        if len(ids) <= budget:
            return ids, cut
    # even without context the question does not fit: keep the prompt's end (question + answer cue)
    return ids[max(0, len(ids) - max(budget, 1)):], 0
