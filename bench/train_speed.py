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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    require_squad()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qatune-train-speed-"))
    py = sys.executable
    ours_dir, ref_dir = work / "ours", work / "reference"
    sides = {
        "qatune defaults (dynamic padding, length grouping, bf16 where native, attn dropout 0)": (
            [py, "-m", "qatune", "train", "--model", "minilm", "--method", "full", "--train", str(TRAIN),
             "--max-train-samples", str(args.max_train_samples), "--epochs", "1", "--batch-size", "16",
             "--learning-rate", "1e-4", "--no-eval", "--no-tracking", "--no-progress", "--overwrite",
             "--output", str(ours_dir), f"cache_dir={work / 'cache'}"], ours_dir),
    }
    if not args.skip_reference:
        sides["run_qa.py-style (pad 384, fp32, no grouping, HF Trainer)"] = (
            [py, str(Path(__file__).with_name("reference_run_qa.py")), "train", "--train", str(TRAIN),
             "--max-train-samples", str(args.max_train_samples), "--output", str(ref_dir)], ref_dir)
    rows = []
    for name, (cmd, out_dir) in sides.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        res = run_child(cmd)
        if "qatune" in name:
            metrics = json.loads((out_dir / "metrics.json").read_text())
            loop_s, n_q = metrics["train_time_s"], metrics["train_questions"]
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
