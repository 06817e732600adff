"""How much can micro-batching gain on this machine? In-process, no HTTP.

Four measurements on random dev questions with a run directory's model (bf16 where native, as served):

0. roofline: matmul GFLOP/s at the model's linear-layer shapes with M = one window's tokens vs M = 32
   windows' tokens vs a large square matmul (the machine's practical peak). If one window already runs
   near the peak, batching cannot make the matmuls (most of a forward) any faster;
1. forward cost per window: one window alone vs the same-length windows in a batch of 32;
2. ``answer_batch`` questions/s when questions arrive in chunks of 1, 16, and all at once: chunks of 16
   vs chunks of 1 is the most a server's micro-batching can gain over answering requests one by one;
3. with ``--rss-seconds``: RSS while answering random micro-batches of 8-20 questions (what a server
   does), to tell a leak from caches that level off; run it with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``,
   ``128`` or unset to see oneDNN's per-shape kernel cache.

    python bench/batching_bound.py runs/compare-squad/lora
    python bench/batching_bound.py runs/compare-squad/lora --profile      # where a forward pass spends its time
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=128 python bench/batching_bound.py runs/compare-squad/lora --rss-seconds 50
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV  # noqa: E402


def matmul_gflops(m: int, k: int, n: int, dtype: object, seconds: float = 0.5) -> float:
    """Throughput of ``linear`` (x @ W.T + b) with an (m, k) input and (n, k) weight, like nn.Linear."""
    import torch

    x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.nn.functional.linear(x, w, b)
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory (qatune train output)")
    ap.add_argument("--data", default=str(DEV), help="SQuAD dev file (default ../shared/data/squad)")
    ap.add_argument("--questions", type=int, default=480, help="random dev questions for the chunk timings")
    ap.add_argument("--rss-seconds", type=float, default=0.0, help="also track RSS for this many seconds")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--profile", action="store_true",
                    help="only profile 3 forwards of the batch of 32 windows (torch.profiler, top ops by CPU time)")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"skipped: SQuAD dev data not found at {args.data}; the benchmark reads ../shared/data/squad")
        return 0

    import numpy as np
    import psutil
    import torch

    import qatune
    from qatune.data.squad.squad_schema import load_qa_examples
    from qatune.runtime import autocast, release_free_memory
    from qatune.tasks.extractive_qa.features import build_features, collate, sorted_batches
    from qatune.tasks.extractive_qa.modeling import INPUT_KEYS

    examples, _ = load_qa_examples(args.data, split="validation")
    random.Random(0).shuffle(examples)
    pairs = [(e.question, e.context) for e in examples]
    pipe = qatune.load(args.run, precision=args.precision)
    runner = pipe.runner
    print(f"# {args.run}; precision {runner.precision}; torch threads {torch.get_num_threads()}", flush=True)

    # 0. roofline of the linear layers
    cfg = runner.span_model.model.config
    hidden = getattr(cfg, "hidden_size", 384)
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    dtype = torch.bfloat16 if runner.precision == "bf16" else torch.float32
    print(f"\nmatmul roofline ({dtype}, GFLOP/s; a window of 192 tokens):")
    print(f"  {'large square matmul 2048^3 (practical peak)':<44} {matmul_gflops(2048, 2048, 2048, dtype):6.0f}")
    for windows, label in ((1, "one window,"), (32, "32 windows,")):
        for layer, k, n in (("attention projection", hidden, hidden), ("FFN up", hidden, inter),
                            ("FFN down", inter, hidden)):
            print(f"  {label} {layer:<32} {matmul_gflops(windows * 192, k, n, dtype):6.0f}")

    # 1. per-window forward cost, batch 1 vs batch 32 (same lengths)
    feats = build_features(examples[:256], pipe.tokenizer, pipe.max_seq_length, pipe.doc_stride,
                           training=False, use_cache=False, progress=False)
    batch = collate(feats, list(sorted_batches(feats.lengths, 32))[3], pipe.tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), autocast(runner.device, runner.precision):
            for _ in range(2):  # warm-up: first-call costs are not what a serving forward spends
                runner.span_model(**inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    runner.span_model(**inputs)
        print(f"\nprofile of 3 forwards, batch {tuple(inputs['input_ids'].shape)}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
        return 0
    one = {k: v[:1] for k, v in inputs.items()}
    rows = []
    with torch.inference_mode(), autocast(runner.device, runner.precision):
        for name, inp, reps in (("batch 1", one, 30), ("batch 32", inputs, 5)):
            for _ in range(2):
                runner.span_model(**inp)
            t0 = time.perf_counter()
            for _ in range(reps):
                runner.span_model(**inp)
            per_window = (time.perf_counter() - t0) / reps / inp["input_ids"].shape[0] * 1000
            rows.append((name, tuple(inp["input_ids"].shape), per_window))
    print("\nforward pass, ms per window:")
    for name, shape, ms in rows:
        print(f"  {name:<9} shape {str(shape):<10} {ms:7.1f} ms")

    # 2. answer_batch throughput by chunk size
    sample = pairs[: args.questions]
    pipe.answer_batch(sample[:16])
    print(f"\nanswer_batch over {len(sample)} random questions:")
    rates = {}
    for chunk in (1, 16, len(sample)):
        t0 = time.perf_counter()
        for i in range(0, len(sample), chunk):
            pipe.answer_batch(sample[i: i + chunk], batch_size=32)
        rates[chunk] = len(sample) / (time.perf_counter() - t0)
        print(f"  chunks of {chunk:<4} {rates[chunk]:6.1f} questions/s")
    print(f"  => micro-batches of 16 vs one at a time: {rates[16] / rates[1]:.2f}x (the most batching can gain here)")

    # 3. RSS under random micro-batches
    if args.rss_seconds > 0:
        proc = psutil.Process()
        rng = random.Random(1)
        t0 = time.monotonic()
        i = calls = 0
        samples = []
        while time.monotonic() - t0 < args.rss_seconds:
            n = rng.randint(8, 20)
            pipe.answer_batch(pairs[i: i + n])
            release_free_memory()  # what the server does after every batch
            i = (i + n) % (len(pairs) - 20)
            calls += 1
            samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        t = np.array([s[0] for s in samples])
        mb = np.array([s[1] for s in samples])
        span = min(10.0, args.rss_seconds / 3)
        first = mb[t <= span].max()
        last = mb[t >= t[-1] - span].max()
        print(f"\nRSS over {calls} micro-batches in {t[-1]:.0f} s: first {span:.0f} s max {first:.0f} MB, "
              f"last {span:.0f} s max {last:.0f} MB ({100 * (last / first - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
