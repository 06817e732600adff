"""Evaluation speed: `qatune evaluate` vs the run_qa.py-style evaluation, same model and questions.

Reference: windows padded to 384, fp32, batch 16, utils_qa-style Python n-best loops (20, max 30).
Both are timed as whole processes (start-up, tokenization, inference, post-processing, scoring).

    python bench/eval_speed.py RUN_DIR --max-eval-samples 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV, last_json, print_table, require_squad, run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", help="a full fine-tuning run dir (a HF model dir) from qatune train")
    ap.add_argument("--max-eval-samples", type=int, default=1000)
    args = ap.parse_args()
    require_squad()
    py = sys.executable
    out = Path(tempfile.mkdtemp(prefix="qatune-eval-speed-"))
    ours = run_child([py, "-m", "qatune", "evaluate", args.run, "--data", str(DEV), "--max-eval-samples",
                      str(args.max_eval_samples), "--output", str(out), "--no-progress"])
    ours_m = last_json(ours["stdout"])
    ref = run_child([py, str(Path(__file__).with_name("reference_run_qa.py")), "evaluate", "--run", args.run,
                     "--data", str(DEV), "--max-eval-samples", str(args.max_eval_samples)])
    ref_m = last_json(ref["stdout"])
    ours_preds = json.loads((out / "predictions.json").read_text())
    same = sum(ours_preds[k] == v for k, v in ref_m["predictions"].items()) / len(ref_m["predictions"])
    n = args.max_eval_samples
    rows = [["qatune evaluate (dynamic padding, length-sorted batches of 64, bf16 where native, vectorized n-best)",
             round(ours["wall_s"], 1), round(n / ours["wall_s"], 1), round(ours["peak_rss_mb"]),
             round(ours_m["exact_match"], 2), round(ours_m["f1"], 2)],
            ["run_qa.py-style (pad 384, fp32, batch 16, Python n-best loops)", round(ref["wall_s"], 1),
             round(n / ref["wall_s"], 1), round(ref["peak_rss_mb"]), round(ref_m["exact_match"], 2),
             round(ref_m["f1"], 2)]]
    print_table(["setup", "process s", "questions/s", "peak RSS MB", "EM", "F1"], rows)
    print(f"\nspeed-up: {ref['wall_s'] / ours['wall_s']:.2f}x; EM diff {rows[0][4] - rows[1][4]:+.2f}, "
          f"F1 diff {rows[0][5] - rows[1][5]:+.2f}; identical answers: {100 * same:.1f}%")


if __name__ == "__main__":
    main()
