"""The ``generative:`` config section: prompt, generation and SQuAD v2 settings of generative QA."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qatune.errors import ConfigError
from qatune.ranges import Range, check_option

PROMPTS = ("auto", "chat", "plain")

RANGES: dict[str, Range] = {
    "max_new_tokens": Range(1, 512, why="answer tokens generated at most"),
    "num_beams": Range(1, 16, why="1 is greedy decoding"),
}


@dataclass
class GenerativeOptions:
    """How prompts are built, answers generated and unanswerable questions decided."""

    prompt: str = field(default="auto", metadata={"help": "prompt template: auto (the tokenizer's chat template when "
                                                          "it has one, else plain), chat or plain"})
    max_new_tokens: int = field(default=32, metadata={"help": "answer tokens generated at most (default 32)"})
    num_beams: int = field(default=1, metadata={"help": "beam search width; 1 (default) is greedy decoding"})
    no_answer_text: str = field(default="unanswerable", metadata={
        "help": "what the model is taught to say for an unanswerable question (SQuAD v2)"})
    version_2: bool | None = field(default=None, metadata={
        "help": "SQuAD v2 (unanswerable questions); default: decided by the data"})
    null_threshold: float | None = field(default=None, metadata={
        "help": "no-answer log-likelihood margin; default: tuned on the evaluation data"})


def resolve_options(values: dict[str, Any], max_seq_length: int) -> GenerativeOptions:
    """Validated options; errors name the key, the value and what is allowed."""
    names = {f.name for f in dataclasses.fields(GenerativeOptions)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the 'generative:' section; known: {', '.join(sorted(names))}")
    options = GenerativeOptions(**values)
    if options.prompt not in PROMPTS:
        raise ConfigError(f"config key 'generative.prompt': {options.prompt!r} is not a prompt template; "
                          f"use {', '.join(PROMPTS)}")
    for key, limits in RANGES.items():
        check_option(key, getattr(options, key), limits, integer=True, label=f"config key 'generative.{key}'")
    if options.max_new_tokens >= max_seq_length:
        raise ConfigError(f"config key 'generative.max_new_tokens': {options.max_new_tokens} leaves no room for the "
                          f"prompt in max_seq_length {max_seq_length}; use a smaller value or a larger max_seq_length")
    if not isinstance(options.no_answer_text, str) or not options.no_answer_text.strip() or "\n" in options.no_answer_text:
        raise ConfigError("config key 'generative.no_answer_text' must be a non-empty single line, e.g. 'unanswerable'")
    if options.null_threshold is not None:
        check_option("null_threshold", options.null_threshold, Range(why="a log-likelihood margin, e.g. 0.0"),
                     label="config key 'generative.null_threshold'")
    return options
