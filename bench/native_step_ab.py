"""Step-level A/B of the native model against an earlier version of itself and Hugging Face, plus a profile.

One training step here is what qatune's trainer does per batch (forward + span loss + backward + gradient
clipping + fused AdamW); an inference step is a ``torch.inference_mode`` forward, as ``qatune evaluate`` runs it.
Batches are length-grouped (qatune's training and evaluation shapes), built from real dev-window lengths by
``bench/native_vs_hf.py``. The variants run back to back on every batch, rotating which goes first, and both
wall and process CPU time are reported: on shared cores CPU time is the steadier of the two.

``--baseline FILE``: an earlier ``qatune/native/bert.py`` (e.g. ``git show REV:qatune/native/bert.py > FILE``),
loaded as a separate module and timed as ``old``.

    python bench/native_step_ab.py --mode train --baseline /tmp/old_bert.py
    python bench/native_step_ab.py --mode infer --kinds native hf --profile
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.native_vs_hf import batches, build, step_fn, window_lengths  # noqa: E402


def load_baseline(path: Path, hf_dir: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("baseline_bert", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_bert"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.BertForQuestionAnswering.from_pretrained(hf_dir, attention_probs_dropout_prob=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["train", "infer"], default="train")
    ap.add_argument("--kinds", nargs="+", default=["native", "hf"], choices=["native", "hf"])
    ap.add_argument("--baseline", type=Path, default=None, help="an earlier qatune/native/bert.py, timed as 'old'")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 16 (train), 64 (infer, as evaluate)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="instead: torch.profiler tables, 2 steps per kind")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers

    from qatune.backends.hf.models import resolve_model

    base = resolve_model("minilm")
    lengths, source = window_lengths(transformers.AutoTokenizer.from_pretrained(base), 300)
    size = args.batch_size or (16 if args.mode == "train" else 64)
    data = batches(lengths, size, (2 if args.profile else args.steps) + 1, grouped=True, seed=args.seed)
    print(f"{args.mode}, window lengths of {source}, batches {[tuple(b['input_ids'].shape) for b in data[1:]]}, "
          f"{args.threads} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "minilm-qa"
        transformers.AutoModelForQuestionAnswering.from_pretrained(base).save_pretrained(hf_dir)
        models: dict[str, Any] = {k: build(k, "full", hf_dir, False) for k in args.kinds}
        if args.baseline is not None:
            models = {"old": load_baseline(args.baseline, hf_dir), **models}
        fns = {k: step_fn(m, args.mode, clip=True) for k, m in models.items()}
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            for name, fn in fns.items():
                fn(data[0])
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for batch in data[1:]:
                        fn(batch)
                print(f"\n### {name}, {args.mode}: top ops by self CPU time (2 batches)")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22,
                                                max_name_column_width=45))
            return
        names = list(fns)
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for i, batch in enumerate(data):
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
                t0, c0 = time.perf_counter(), time.process_time()
                fns[name](batch)
                if i:  # the first batch warms up every variant
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    ref = names[0]
    print(f"\n{'variant':8s} {'wall s/step':>12s} {'CPU s/step':>11s}   {ref}/variant: wall total (median pair), "
          "CPU total (median pair)")
    for name in names:
        pair_wall = statistics.median(a / b for a, b in zip(wall[ref], wall[name], strict=True))
        pair_cpu = statistics.median(a / b for a, b in zip(cpu[ref], cpu[name], strict=True))
        print(f"{name:8s} {statistics.fmean(wall[name]):12.3f} {statistics.fmean(cpu[name]):11.3f}   "
              f"{sum(wall[ref]) / sum(wall[name]):.3f} ({pair_wall:.3f}), "
              f"{sum(cpu[ref]) / sum(cpu[name]):.3f} ({pair_cpu:.3f})")


if __name__ == "__main__":
    main()
