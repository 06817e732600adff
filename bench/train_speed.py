"""Training speed: qatune defaults vs the run_qa.py-style setup, same questions, same machine, one run.

Both sides train MiniLM (full fine-tuning, batch 16, lr 1e-4, 1 epoch) in their own process; the table
shows whole-process and training-loop questions/s, peak RSS, and dev EM/F1 of each trained model
(both scored by `qatune evaluate` on the same dev questions).

    python bench/train_speed.py --max-train-samples 2000 --max-eval-samples 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV, TRAIN, last_json, print_table, require_squad, run_child  # noqa: E402

from qatune.artifacts import read_run_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=1000)
    ap.add_argument("--model", default="minilm", help="alias or local Hugging Face model directory")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="qatune's side (auto: bf16 where the hardware runs it natively); the reference is fp32")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    require_squad()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qatune-train-speed-"))
    py = sys.executable
    ours_dir, ref_dir = work / "ours", work / "reference"
    sides = {
        f"qatune (dynamic padding, length grouping, attn dropout 0, precision {args.precision})": (
            [py, "-m", "qatune", "train", "--model", args.model, "--method", "full", "--train", str(TRAIN),
             "--max-train-samples", str(args.max_train_samples), "--epochs", "1", "--batch-size", "16",
             "--learning-rate", "1e-4", "--no-eval", "--no-tracking", "--no-progress", "--overwrite",
             "--output", str(ours_dir), f"cache_dir={work / 'cache'}", f"precision={args.precision}"], ours_dir),
    }
    if not args.skip_reference:
        sides["run_qa.py-style (pad 384, fp32, no grouping, HF Trainer)"] = (
            [py, str(Path(__file__).with_name("reference_run_qa.py")), "train", "--train", str(TRAIN),
             "--max-train-samples", str(args.max_train_samples), "--model", args.model, "--output", str(ref_dir)],
            ref_dir)
    rows = []
    for name, (cmd, out_dir) in sides.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        res = run_child(cmd)
        if out_dir == ours_dir:
            metrics = json.loads((out_dir / "metrics.json").read_text())
            loop_s, n_q = metrics["train_time_s"], metrics["train_questions"]
            used = read_run_config(out_dir).get("precision_used")
            name = name.replace(f"precision {args.precision}", f"{args.precision}: {used}")
        else:
            child = last_json(res["stdout"])
            loop_s, n_q = child["train_time_s"], child["questions"]
        ev = run_child([py, "-m", "qatune", "evaluate", str(out_dir), "--data", str(DEV), "--max-eval-samples",
                        str(args.max_eval_samples), "--no-progress", "--precision", "fp32"])
        em_f1 = last_json(ev["stdout"])
        rows.append([name, n_q, round(res["wall_s"], 1), round(n_q / res["wall_s"], 2), round(loop_s, 1),
                     round(n_q / loop_s, 2), round(res["peak_rss_mb"]), round(em_f1["exact_match"], 2),
                     round(em_f1["f1"], 2)])
    print()
    print_table(["setup", "questions", "process s", "q/s (process)", "train loop s", "q/s (loop)",
                 "peak RSS MB", "dev EM", "dev F1"], rows)
    if len(rows) == 2:
        print(f"\nspeed-up (whole process): {rows[0][3] / rows[1][3]:.2f}x; "
              f"F1 difference: {rows[0][8] - rows[1][8]:+.2f}; RSS ratio: {rows[0][6] / rows[1][6]:.2f}")


if __name__ == "__main__":
    main()
