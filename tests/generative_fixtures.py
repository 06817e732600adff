"""Tiny causal LMs for the generative-QA tests: a byte-level BPE tokenizer trained here on made-up text
(so it has a newline token and an end-of-text token), random GPT-2 and Llama configs, and synthetic
SQuAD-style data (original sentences written for these tests)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ANIMALS = ["otter", "heron", "badger", "lynx", "marten", "beaver", "falcon", "weasel"]
PLACES = ["Oslo", "Lima", "Quito", "Hanoi", "Tunis", "Dakar", "Perth", "Cusco"]
CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def corpus() -> list[str]:
    lines = []
    for a in ANIMALS:
        for p in PLACES:
            lines.append(f"Context: The {a} lives in {p}.\n\nQuestion: Where does the {a} live?\nAnswer: {p}\n")
    lines.append("Answer the question with a short phrase taken from the context. If the context does not contain "
                 "the answer, reply exactly: unanswerable.")
    return lines


def make_tokenizer(path: Path, chat: bool = False) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def make_model(path: Path, arch: str = "gpt2", chat: bool = False, seed: int = 0) -> Path:
    """A tiny random causal LM + tokenizer saved as a Hugging Face model dir."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(path, chat=chat)
    torch.manual_seed(seed)
    eos = tok.eos_token_id
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                           bos_token_id=eos, eos_token_id=eos))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos,
                                             pad_token_id=eos))
    model.save_pretrained(path)
    return path


def squad_records(n: int, seed: int, unanswerable_every: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, p = rng.choice(ANIMALS), rng.choice(PLACES)
        context = f"The {a} lives in {p}."
        if unanswerable_every and i % unanswerable_every == 0:
            other = rng.choice([x for x in ANIMALS if x != a])
            out.append({"id": f"q{seed}-{i}", "question": f"Where does the {other} live?", "context": context,
                        "answers": [], "is_impossible": True})
        else:
            out.append({"id": f"q{seed}-{i}", "question": f"Where does the {a} live?", "context": context,
                        "answers": [{"text": p, "answer_start": context.index(p)}]})
    return out


def write_squad(path: Path, records: list[dict[str, Any]], version: str) -> Path:
    paragraphs = [{"context": r["context"], "qas": [{k: v for k, v in r.items() if k != "context"}]} for r in records]
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path
