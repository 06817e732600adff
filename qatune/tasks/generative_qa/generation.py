"""The causal LM as qatune drives it: answer-only loss, batched greedy generation with the KV cache, beam
search, and the log-likelihood of a fixed continuation (the no-answer text).

Every batch is left-padded (padding first, each prompt ending at the right edge) with position ids that
start at 0 on each row's first real token, so a padded row computes what it would alone. The loss and the
scoring ask the model for the logits of the last ``k + 1`` positions only (``logits_to_keep``): a
vocabulary of 49k x every prompt token would cost more than the model itself.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np
import torch

from qatune.core.batching import sorted_batches
from qatune.tasks.generative_qa.prompts import Generation


class CausalLM(torch.nn.Module):
    """The task's forward pass: ``(logits of the last logits_to_keep positions, KV cache)``.

    A PEFT model is called through its base model, where the adapter layers sit in place (LoRA, LoHa,
    IA3): PEFT's own wrapper forward does not pass a KV cache through unchanged in every version.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        lm = self.lm
        params = inspect.signature(lm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it

    @property
    def lm(self) -> Any:
        get = getattr(self.model, "get_base_model", None)
        return get() if callable(get) and hasattr(self.model, "peft_config") else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: Any = None, use_cache: bool = False, logits_to_keep: int = 0) -> tuple[torch.Tensor, Any]:
        kwargs = {self._cache_arg: cache} if cache is not None else {}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        return out.logits, (out.get("cache") or out.get("past_key_values")) if use_cache else None


def left_pad(rows: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` (0 at each row's first token)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "position_ids": torch.from_numpy(positions)}


def continuation_batch(prompts: Sequence[np.ndarray], continuations: Sequence[np.ndarray], pad_id: int
                       ) -> dict[str, torch.Tensor]:
    """prompt + continuation, left-padded, with ``labels``: the continuation right-aligned, -100 elsewhere
    (so only continuation tokens are ever scored: the prompt's tokens get no loss term)."""
    batch = left_pad([np.concatenate([p, c]) for p, c in zip(prompts, continuations, strict=True)], pad_id)
    k = max(len(c) for c in continuations)
    labels = np.full((len(continuations), k), -100, dtype=np.int64)
    for i, c in enumerate(continuations):
        if len(c):
            labels[i, k - len(c):] = c
    batch["labels"] = torch.from_numpy(labels)
    return batch


def continuation_logits(module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits predicting each label position: ``(batch, k, vocab)``; position j of the last k+1 predicts j+1."""
    k = batch["labels"].shape[1]
    logits, _ = module(batch["input_ids"], batch["attention_mask"], batch["position_ids"], logits_to_keep=k + 1)
    return logits[:, -(k + 1):-1].float()


def answer_loss(module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (and their EOS) of the batch."""
    logits = continuation_logits(module, batch)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                             ignore_index=-100)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def prefix_sharing_batches(prompts: Sequence[np.ndarray], batch_size: int, min_shared: int = 16
                           ) -> tuple[list[list[int]], list[int]]:
    """Generation batches, and per prompt how many leading tokens it shares with the other prompts of its group.

    SQuAD asks several questions about one paragraph, and the prompt puts the context before the question,
    so those prompts share all but their last few dozen tokens. Prompts are grouped when they share at least
    half of the shorter one (and ``min_shared`` tokens): a boilerplate system prompt alone does not group
    them. A group's prefix is computed once per batch and its KV cache shared (:func:`_prompt_pass`), which
    removes most of the prompt pass, the bulk of generation's cost. Groups are batched longest first and
    kept together where they fit; without any sharing this is exactly :func:`sorted_batches`. The shared
    length stops one token short of the shortest member, so every prompt keeps a token of its own.
    """
    lengths = np.array([len(p) for p in prompts])
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i].tolist()))
    groups: list[list[int]] = []
    shared: list[int] = []
    for prev, cur in zip([None, *order[:-1]], order, strict=True):
        lcp = _common_prefix(prompts[prev], prompts[cur]) if prev is not None else 0
        if prev is not None and lcp >= max(min_shared, 0.5 * min(lengths[prev], lengths[cur])):
            groups[-1].append(cur)
            shared[-1] = min(shared[-1], lcp)
        else:
            groups.append([cur])
            shared.append(lengths[cur])
    prefix_of = [0] * len(prompts)
    for members, lcp in zip(groups, shared, strict=True):
        for i in members:
            prefix_of[i] = int(min(lcp, lengths[members].min() - 1)) if len(members) > 1 else 0
    if all(len(g) == 1 for g in groups):
        return list(sorted_batches(lengths, batch_size)), prefix_of
    for members in groups:
        members.sort(key=lambda i: (-lengths[i], i))
    groups.sort(key=lambda g: (-lengths[g[0]], g[0]))
    flat = [i for g in groups for i in g]
    return [flat[lo: lo + batch_size] for lo in range(0, len(flat), batch_size)], prefix_of


def _prompt_pass(module: Any, prompts: Sequence[np.ndarray], prefixes: Sequence[int], pad_id: int, device: Any
                 ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """The forward pass over a batch's prompts: ``(last-position logits, KV cache, attention mask, last
    positions)``. Rows that share a prefix (``prefixes[i]`` tokens, 0 = none) run it once; the cache rows are
    then copied to every row of that prefix and each row's own tail runs on top. The mask then holds two
    left-padded parts, ``[prefix | tail]``, with positions running on from the prefix, so each row computes
    what it would alone."""
    if not any(prefixes) or min(len(p) for p in prompts) < 2:  # (a 1-token prompt has no prefix to run)
        feeds = {k: v.to(device) for k, v in left_pad(list(prompts), pad_id).items()}
        logits, cache = module(feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"], use_cache=True,
                               logits_to_keep=1)
        return logits, cache, feeds["attention_mask"], feeds["position_ids"][:, -1:]
    # a row sharing nothing runs all but its last token as its own "prefix": one code path for every row
    cut = [n if n else len(p) - 1 for p, n in zip(prompts, prefixes, strict=True)]
    keys = [tuple(p[:n].tolist()) for p, n in zip(prompts, cut, strict=True)]
    slot = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # each distinct prefix, in first-seen order
    head = {k: v.to(device) for k, v in left_pad([np.array(k, dtype=np.int64) for k in slot], pad_id).items()}
    _, cache = module(head["input_ids"], head["attention_mask"], head["position_ids"], use_cache=True,
                      logits_to_keep=1)
    rows = torch.tensor([slot[k] for k in keys], device=device)
    cache.reorder_cache(rows)
    tail = {k: v.to(device) for k, v in left_pad([p[n:] for p, n in zip(prompts, cut, strict=True)],
                                                  pad_id).items()}
    mask = torch.cat([head["attention_mask"][rows], tail["attention_mask"]], dim=1)
    offset = torch.tensor(cut, device=device)[:, None]
    positions = tail["position_ids"] + offset
    logits, cache = module(tail["input_ids"], mask, positions, cache=cache, use_cache=True, logits_to_keep=1)
    return logits, cache, mask, positions[:, -1:]


@torch.inference_mode()
def score_continuations(module: Any, prompts: Sequence[np.ndarray], continuations: Sequence[np.ndarray],
                        pad_id: int, batch_size: int, device: Any, precision: str) -> np.ndarray:
    """Sum of log-probabilities of each continuation given its prompt."""
    from qatune import runtime

    out = np.zeros(len(prompts), dtype=np.float64)
    lengths = np.array([len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)])
    for indices in sorted_batches(lengths, batch_size):
        batch = {k: v.to(device) for k, v in continuation_batch([prompts[i] for i in indices],
                                                                [continuations[i] for i in indices], pad_id).items()}
        with runtime.autocast(device, precision):
            logits = continuation_logits(module, batch)
        labels = batch["labels"]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        sums = (logp * (labels >= 0)).sum(-1).double().cpu().numpy()
        out[list(indices)] = sums
    return out


@torch.inference_mode()
def greedy(module: Any, prompts: Sequence[np.ndarray], gen: Generation, batch_size: int, device: Any,
           precision: str, no_answer: Sequence[int] | None = None, progress: bool = False
           ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Greedy answers: per prompt the generated tokens (the stop token included when one was reached), their
    summed log-probability, and the summed log-probability of the ``no_answer`` tokens (NaN without).

    Batches from :func:`prefix_sharing_batches`, left-padded; one prompt pass (:func:`_prompt_pass`), then
    one per new token over the KV cache; once a quarter of a batch's rows have stopped they leave the cache,
    and a batch ends when every row has stopped or ``max_new_tokens`` is reached. With ``no_answer``
    (SQuAD v2) its tokens are scored on the prompts' cache, the cache is cropped back to the prompts, and
    the first answer token may not be the no-answer text's first token: every question then has a real
    answer candidate and a no-answer likelihood, whose difference the threshold decides on.
    """
    from tqdm.auto import tqdm

    from qatune import runtime

    tokens: list[np.ndarray] = [np.zeros(0, np.int64)] * len(prompts)
    logprobs = np.zeros(len(prompts), dtype=np.float64)
    no_answer_lp = np.full(len(prompts), np.nan)
    stops = torch.tensor(gen.stop_ids, device=device)
    batches, prefix_of = prefix_sharing_batches(prompts, batch_size)
    for indices in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        with runtime.autocast(device, precision):
            logits, cache, mask, positions = _prompt_pass(module, [prompts[i] for i in indices],
                                                          [prefix_of[i] for i in indices], gen.pad_id, device)
        rows = mask.shape[0]
        first = torch.log_softmax(logits[:, -1].float(), dim=-1)
        if no_answer:
            text = torch.tensor(list(no_answer), device=device).expand(rows, -1)
            score = first.gather(-1, text[:, :1])[:, 0].double()
            if text.shape[1] > 1:
                extra = torch.ones((rows, text.shape[1] - 1), dtype=mask.dtype, device=device)
                steps_pos = positions + torch.arange(1, text.shape[1], device=device)
                with runtime.autocast(device, precision):
                    more, cache = module(text[:, :-1], torch.cat([mask, extra], dim=1), steps_pos, cache=cache,
                                         use_cache=True)
                logp = torch.log_softmax(more.float(), dim=-1)
                score += logp.gather(-1, text[:, 1:, None])[..., 0].double().sum(-1)
                cache.crop(-(text.shape[1] - 1))  # back to the prompts: the answer is generated from there
            no_answer_lp[list(indices)] = score.cpu().numpy()
            first[:, int(no_answer[0])] = -torch.inf
        generated = torch.full((rows, gen.max_new_tokens), gen.pad_id, dtype=torch.long, device=device)
        total = torch.zeros(rows, dtype=torch.float64, device=device)
        live = torch.arange(rows, device=device)  # the batch rows the cache holds, in its order
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # per cache row
        logp = first
        for step in range(gen.max_new_tokens):
            if step:
                logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
            chosen = logp.argmax(-1)
            total[live] += torch.where(done, 0.0, logp.gather(-1, chosen[:, None])[:, 0].double())
            chosen = torch.where(done, gen.pad_id, chosen)
            generated[live, step] = chosen
            done |= torch.isin(chosen, stops)
            if bool(done.all()) or step + 1 == gen.max_new_tokens:
                break
            if 4 * int(done.sum()) >= len(live):  # a quarter has stopped: the rest decode without them
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                live, chosen, mask, positions, done = live[keep], chosen[keep], mask[keep], positions[keep], done[keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions + 1
            with runtime.autocast(device, precision):
                logits, cache = module(chosen[:, None], mask, positions, cache=cache, use_cache=True)
        generated = generated.cpu().numpy()
        stop_set = set(gen.stop_ids)
        for row, i in enumerate(indices):
            seq = generated[row]
            end = next((j + 1 for j, t in enumerate(seq) if int(t) in stop_set), len(seq))
            tokens[i] = seq[:end].astype(np.int64)
            logprobs[i] = float(total[row])
    return tokens, logprobs, no_answer_lp


@torch.inference_mode()
def beam(module: Any, prompts: Sequence[np.ndarray], gen: Generation, batch_size: int, device: Any,
         precision: str, progress: bool = False) -> list[np.ndarray]:
    """Beam search through transformers' ``generate`` (same left padding and stop tokens); the best beam's
    tokens per prompt, the stop token included when reached."""
    from tqdm.auto import tqdm

    from qatune import runtime

    tokens: list[np.ndarray] = [np.zeros(0, np.int64)] * len(prompts)
    stop_set = set(gen.stop_ids)
    batches = list(sorted_batches(np.array([len(p) for p in prompts]), batch_size))
    for indices in tqdm(batches, desc="generating (beam)", unit="batch", disable=not progress):
        feeds = left_pad([prompts[i] for i in indices], gen.pad_id)
        with runtime.autocast(device, precision):
            out = module.lm.generate(input_ids=feeds["input_ids"].to(device),
                                     attention_mask=feeds["attention_mask"].to(device),
                                     num_beams=gen.num_beams, do_sample=False, max_new_tokens=gen.max_new_tokens,
                                     eos_token_id=list(gen.stop_ids), pad_token_id=gen.pad_id)
        new = out[:, feeds["input_ids"].shape[1]:].cpu().numpy()
        for row, i in enumerate(indices):
            seq = new[row]
            end = next((j + 1 for j, t in enumerate(seq) if int(t) in stop_set), len(seq))
            tokens[i] = seq[:end].astype(np.int64)
    return tokens


def generate_answers(module: Any, features: Any, batch_size: int, device: Any, precision: str,
                     progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The runner's work for generative QA, per prompt: the answer tokens, their log-probability, and (SQuAD
    v2) the log-probability of the no-answer text + EOS (NaN otherwise); see :func:`greedy`. Beam search
    scores both by a second pass over prompt + continuation, its answers keep no-answer text's first token
    allowed."""
    gen: Generation = features.generation
    prompts = features.prompt_ids
    was_training = module.training
    module.eval()
    try:
        if gen.num_beams > 1:
            tokens = beam(module, prompts, gen, batch_size, device, precision, progress=progress)
            logprobs = score_continuations(module, prompts, tokens, gen.pad_id, batch_size, device, precision)
            no_answer = np.full(len(prompts), np.nan)
            if gen.no_answer_ids is not None and len(prompts):
                text = np.asarray(gen.no_answer_ids, dtype=np.int64)
                no_answer = score_continuations(module, prompts, [text] * len(prompts), gen.pad_id, batch_size,
                                                device, precision)
        else:
            tokens, logprobs, no_answer = greedy(module, prompts, gen, batch_size, device, precision,
                                                 no_answer=gen.no_answer_ids, progress=progress)
    finally:
        module.train(was_training)
    return (tokens, [np.array([x], dtype=np.float32) for x in logprobs],
            [np.array([x], dtype=np.float32) for x in no_answer])


@torch.inference_mode()
def eval_loss(module: Any, features: Any, batch_size: int, device: Any, precision: str) -> float | None:
    """Mean answer-token cross-entropy over labelled prompts (the validation loss)."""
    from qatune import runtime

    if features.target_ids is None or not len(features):
        return None
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        for indices in sorted_batches(features.lengths, batch_size):
            batch = {k: v.to(device) for k, v in continuation_batch(
                [features.prompt_ids[i] for i in indices], [features.target_ids[i] for i in indices],
                features.generation.pad_id).items()}
            with runtime.autocast(device, precision):
                logits = continuation_logits(module, batch)
            labels = batch["labels"].reshape(-1)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels,
                                                             ignore_index=-100, reduction="sum"))
            count += int((labels >= 0).sum())
    finally:
        module.train(was_training)
    return total / max(count, 1)
