"""DDP scaling: the same MiniLM training job as 1 process and as N processes (torchrun), same global batch.

Every configuration trains the same questions with the same global batch (per-process batch = global
batch / processes), so the loss curves match and only the speed differs. Configurations are
PROCESSESxTHREADS (threads per process): the default on a C-core machine is 1x1 (the per-core baseline),
1xC (one process using every core) and NxC/N for N in --nprocs. The table shows training-loop
throughput (questions/s), speedup over 1x1 and over 1xC, and scaling efficiency = throughput /
(cores used x throughput of 1x1): 100% means the extra processes cost nothing (no all-reduce, no
waiting, no memory-bandwidth contention). See docs/scaling.md for what to expect.

    python bench/ddp_scaling.py                                   # SQuAD, 2,000 questions, lora, 1 and 2 processes
    python bench/ddp_scaling.py --max-train-samples 64            # a quick smoke run
    python bench/ddp_scaling.py --method full --nprocs 1,2,4 --global-batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TRAIN, print_table, run_child  # noqa: E402


def configurations(nprocs: list[int], cores: int) -> list[tuple[int, int]]:
    configs = [(1, 1), (1, cores)]
    configs += [(n, max(1, cores // n)) for n in nprocs if n > 1]
    return list(dict.fromkeys(configs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--train", default=None, help="training data (default: SQuAD v1.1 train beside the checkout, "
                                                  "else the bundled sample)")
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=16, help="windows per optimizer step, all processes")
    ap.add_argument("--max-seq-length", type=int, default=384)
    ap.add_argument("--nprocs", default="2", help="comma-separated process counts besides 1 (2)")
    ap.add_argument("--configs", default=None, help="explicit PROCSxTHREADS list, e.g. 1x1,1x2,2x1")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to use (all)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda (then THREADS is ignored, N GPUs)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    train = args.train or (str(TRAIN) if TRAIN.is_file() else str(REPO / "qatune/resources/sample/train.json"))
    if args.configs:
        configs = [tuple(int(x) for x in c.lower().split("x")) for c in args.configs.split(",")]
    else:
        configs = configurations([int(n) for n in args.nprocs.split(",")], args.cores)
    for procs, _ in configs:
        if args.global_batch % procs:
            sys.exit(f"--global-batch {args.global_batch} does not split over {procs} processes")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qatune-ddp-scaling-"))
    py = sys.executable
    rows, results = [], []
    base_1x1 = base_1xc = None
    for procs, threads in configs:
        out = work / f"{procs}x{threads}"
        cmd = ["-m", "qatune", "train", "--model", args.model, "--method", args.method, "--train", train,
               "--max-train-samples", str(args.max_train_samples), "--epochs", str(args.epochs),
               "--batch-size", str(args.global_batch // procs), "--max-seq-length", str(args.max_seq_length),
               "--precision", args.precision, "--device", args.device, "--no-eval", "--no-tracking",
               "--no-progress", "--overwrite", "--output", str(out), f"cache_dir={work / 'cache'}"]
        env = {"OMP_NUM_THREADS": str(threads)}
        if procs == 1:
            cmd = [py, *cmd, f"num_threads={threads}"]
        else:
            cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd]
        print(f"== {procs} process(es) x {threads} thread(s): {' '.join(cmd)}", file=sys.stderr, flush=True)
        res = run_child(cmd, env=env)
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        qps = metrics["train_questions"] * args.epochs / metrics["train_time_s"]
        if (procs, threads) == (1, 1):
            base_1x1 = qps
        if procs == 1 and threads == max(t for p, t in configs if p == 1):
            base_1xc = qps
        results.append({"procs": procs, "threads": threads, "questions_per_s": qps, "wall_s": res["wall_s"],
                        "train_time_s": metrics["train_time_s"], "train_loss": [h["train_loss"] for h in history],
                        "world_size": metrics.get("world_size", procs)})
    for r in results:
        cores_used = r["procs"] * r["threads"] if args.device == "cpu" else r["procs"]
        r["speedup_vs_1x1"] = r["questions_per_s"] / base_1x1 if base_1x1 else None
        r["speedup_vs_1_process"] = r["questions_per_s"] / base_1xc if base_1xc else None
        r["efficiency"] = r["questions_per_s"] / (cores_used * base_1x1) if base_1x1 else None
        rows.append([f"{r['procs']} x {r['threads']}", r["questions_per_s"], r["train_time_s"], r["wall_s"],
                     "-" if r["speedup_vs_1x1"] is None else f"{r['speedup_vs_1x1']:.2f}x",
                     "-" if r["speedup_vs_1_process"] is None else f"{r['speedup_vs_1_process']:.2f}x",
                     "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f}%",
                     f"{r['train_loss'][-1]:.4f}"])
    print(f"\n{args.model} / {args.method}: {args.max_train_samples} questions from {Path(train).name}, "
          f"{args.epochs} epoch(s), global batch {args.global_batch}, max_seq_length {args.max_seq_length}, "
          f"{args.device}, {args.cores} cores\n")
    print_table(["processes x threads", "questions/s (train loop)", "train loop (s)", "wall (s)", "speedup vs 1x1",
                 "speedup vs 1 process", "scaling efficiency", "final train loss"], rows)
    (work / "ddp_scaling.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {work / 'ddp_scaling.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
