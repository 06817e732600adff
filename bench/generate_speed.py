"""Generation speed: qatune's batched generation vs ``model.generate`` one question at a time.

Same model (default: the embedded SmolLM2-135M-Instruct), same questions (the first N of dev-v1.1), same
prompts (qatune's, so the inputs are identical), greedy, at most 32 new tokens, fp32 on both sides.
qatune: batches of questions whose prompts share a prefix (the same paragraph) run that prefix once and copy
its KV cache to each row, then each row's own tail; left-padded, longest first; one pass per new token over
the KV cache, rows that have stopped leave the batch, and a batch ends when every row has hit EOS or a
newline. Reference: ``model.generate(input_ids,
max_new_tokens=32, do_sample=False, eos_token_id=<the same stop tokens>)`` per question with transformers'
defaults otherwise. Answers are decoded the same way and compared one by one.

    python bench/generate_speed.py --questions 200 [--batch-size 16] [--model smollm2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV, print_table, require_squad  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2", help="a causal LM alias, folder or .gguf file")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=384)
    args = ap.parse_args()
    require_squad()
    import torch

    from qatune.backends import get_backend
    from qatune.inference.loader import TorchRunner
    from qatune.tasks import get_task

    task, backend = get_task("generative"), get_backend("hf")
    tokenizer = backend.load_tokenizer(args.model, task.model)
    model = backend.load_base(args.model, task.model, attention_dropout=0.0).eval()
    examples, _ = task.read(str(DEV), args.questions, split="validation")
    config = {"model": args.model, "max_seq_length": args.max_seq_length,
              "generative": {"max_new_tokens": args.max_new_tokens, "num_beams": 1}}
    predictor = task.predictor(TorchRunner(model, tokenizer, "cpu", "fp32", task=task), tokenizer, config)

    t0 = time.perf_counter()
    ours, _, _ = predictor.generate(examples, version_2=False, batch_size=args.batch_size)
    ours_s = time.perf_counter() - t0

    features = task.features(examples, tokenizer, predictor.options, args.max_seq_length, training=False)
    gen = features.generation
    theirs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for prompt in features.prompt_ids:
            ids = torch.from_numpy(prompt)[None]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, eos_token_id=list(gen.stop_ids), pad_token_id=gen.pad_id)
            theirs.append(predictor.text(out[0, ids.shape[1]:].numpy()))
    theirs_s = time.perf_counter() - t0

    n = len(examples)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print_table(["generation", "wall (s)", "questions/s", "same answers"], [
        [f"qatune batched (batch {args.batch_size}, shared prefixes, KV cache, greedy)", round(ours_s, 1),
         round(n / ours_s, 2), f"{same}/{n}"],
        ["model.generate, one question at a time (transformers defaults, greedy)", round(theirs_s, 1),
         round(n / theirs_s, 2), ""],
    ])
    print(f"speed-up {theirs_s / ours_s:.2f}x on {n} questions; {same}/{n} answers identical")
    for a, b in zip(ours, theirs, strict=True):
        if a != b:
            print(f"differs: qatune {a!r} vs generate {b!r}")


if __name__ == "__main__":
    main()
