"""``--backend native`` vs ``--backend hf``, end to end: the same ``qatune train`` and ``qatune evaluate`` jobs.

Training: MiniLM, full fine-tuning (or ``--method``), batch 16, lr 1e-4, 1 epoch, qatune's defaults, each
side in its own process (whole-process and training-loop questions/s). Evaluation: the native-trained run
evaluated by both backends (the same weights, so the F1 must match and the speed ratio is the backends'
alone) and the hf-trained run by hf (the F1 of each backend's own training). Sides alternate (hf first in
odd rounds, native first in even ones) so background load on shared cores hits both alike; ``--first native`` starts with native instead.

    python bench/native_e2e.py --max-train-samples 2000 --max-eval-samples 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV, TRAIN, last_json, print_table, require_squad, run_child  # noqa: E402

BACKENDS = ("hf", "native")


def train(py: str, backend: str, out: Path, args: argparse.Namespace, work: Path) -> dict[str, float]:
    res = run_child([py, "-m", "qatune", "train", "--model", args.model, "--method", args.method, "--train", str(TRAIN),
                     "--max-train-samples", str(args.max_train_samples), "--epochs", "1", "--batch-size", "16",
                     "--learning-rate", str(args.learning_rate), "--no-eval", "--no-tracking", "--no-progress",
                     "--overwrite", "--output", str(out), f"cache_dir={work / 'cache'}", f"backend={backend}"])
    metrics = json.loads((out / "metrics.json").read_text())
    n = metrics["train_questions"]
    return {"process_s": res["wall_s"], "process_qps": n / res["wall_s"], "loop_s": metrics["train_time_s"],
            "loop_qps": n / metrics["train_time_s"], "rss_mb": res["peak_rss_mb"], "questions": n}


def evaluate(py: str, run: Path, backend: str, args: argparse.Namespace) -> dict[str, float]:
    res = run_child([py, "-m", "qatune", "evaluate", str(run), "--data", str(DEV), "--max-eval-samples",
                     str(args.max_eval_samples), "--no-progress", "--precision", "fp32", "--backend", backend])
    out = last_json(res["stdout"])
    return {"process_s": res["wall_s"], "process_qps": args.max_eval_samples / res["wall_s"],
            "eval_s": out["eval_time_s"], "eval_qps": args.max_eval_samples / out["eval_time_s"],
            "em": out["exact_match"], "f1": out["f1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=1000)
    ap.add_argument("--model", default="minilm", help="alias or local Hugging Face model directory")
    ap.add_argument("--method", default="full")
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--first", choices=BACKENDS, default="hf",
                    help="the backend that goes first in round 1 (a second invocation with the other order "
                         "balances the load drift of one round)")
    args = ap.parse_args()
    require_squad()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qatune-native-e2e-"))
    py = sys.executable
    trains: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    evals: dict[str, list[dict[str, float]]] = {k: [] for k in ("native@native", "native@hf", "hf@hf")}
    flip = BACKENDS.index(args.first)
    for r in range(args.rounds):
        hf_first = (r + flip) % 2 == 0
        order = BACKENDS if hf_first else BACKENDS[::-1]
        for backend in order:
            print(f"== round {r + 1}: train --backend {backend}", file=sys.stderr, flush=True)
            trains[backend].append(train(py, backend, work / backend, args, work))
        jobs = [("native", "hf"), ("native", "native")] if hf_first else [("native", "native"), ("native", "hf")]
        for run, backend in [*jobs, ("hf", "hf")]:
            print(f"== round {r + 1}: evaluate the {run} run with --backend {backend}", file=sys.stderr, flush=True)
            evals[f"{run}@{backend}"].append(evaluate(py, work / run, backend, args))

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    print(f"\ntraining: {args.method}, {args.max_train_samples} questions, 1 epoch, {args.rounds} round(s), means")
    train_rows = [[b, round(mean(trains[b], "process_s"), 1), round(mean(trains[b], "process_qps"), 2),
                   round(mean(trains[b], "loop_s"), 1), round(mean(trains[b], "loop_qps"), 2),
                   round(mean(trains[b], "rss_mb")), round(evals[f"{b}@{b}"][-1]["f1"], 2)]
                  for b in BACKENDS]
    print_table(["backend", "process s", "q/s (process)", "train loop s", "q/s (loop)", "peak RSS MB",
                 "dev F1 (own backend)"], train_rows)
    print(f"\nevaluation: {args.max_eval_samples} dev questions, fp32")
    eval_rows = [[k, round(mean(v, "process_s"), 1), round(mean(v, "process_qps"), 2), round(mean(v, "eval_s"), 1),
                  round(mean(v, "eval_qps"), 2), round(v[-1]["em"], 2), round(v[-1]["f1"], 2)]
                 for k, v in evals.items()]
    print_table(["run@backend", "process s", "q/s (process)", "eval s", "q/s (eval)", "EM", "F1"], eval_rows)
    summary = {
        "train_speedup_process": train_rows[1][2] / train_rows[0][2],
        "train_speedup_loop": train_rows[1][4] / train_rows[0][4],
        "eval_speedup_process": eval_rows[0][2] / eval_rows[1][2],  # the same run: native@native / native@hf
        "eval_speedup_loop": eval_rows[0][4] / eval_rows[1][4],
        "f1_native_minus_hf_training": train_rows[1][6] - train_rows[0][6],
        "f1_same_run_native_minus_hf": eval_rows[0][6] - eval_rows[1][6],
        "trains": trains, "evals": evals,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + json.dumps({k: round(v, 3) for k, v in summary.items() if isinstance(v, float)}))


if __name__ == "__main__":
    main()
