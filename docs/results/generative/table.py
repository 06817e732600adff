"""Print the results table of README.md from the metrics files here; ``--rescore RUN_EVAL_DIR N DATA`` first
writes the official metrics of the first N questions of an evaluation that covered more (same answers, a
smaller question set, so every row is scored on the same questions).

    python docs/results/generative/table.py
    python docs/results/generative/table.py --rescore runs/gen-300/smollm2-lora/eval-v1.1 200 \
        ../shared/data/squad/dev-v1.1.json.gz docs/results/generative/smollm2-lora-v1.1-first200.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = [("SmolLM2-135M-Instruct, zero-shot", "smollm2-zero-shot"), ("SmolLM2-135M-Instruct + LoRA", "smollm2-lora"),
        ("MiniLM-L6 extractive, full FT", "minilm-full"), ("MiniLM-L6 extractive + LoRA", "minilm-lora")]


def rescore(eval_dir: str, n: int, data: str, out: str) -> None:
    from qatune.data.squad.squad_scoring import score_answers
    from qatune.tasks import get_task
    from qatune.tasks.generative_qa.predictor import bleu1

    examples, report = get_task("generative").read(data, n, split="validation")
    predictions = json.loads((Path(eval_dir) / "predictions.json").read_text())
    answers = {ex.id: predictions[ex.id] for ex in examples}
    if report.version == "2.0":
        raise SystemExit("rescoring a v2 subset needs its na_probs and threshold: evaluate the subset instead")
    metrics = score_answers(examples, answers, {}, False, None).metrics
    metrics.update({"bleu1": bleu1(answers, examples), "eval_questions": len(examples),
                    "rescored_from": f"the first {n} questions of {eval_dir}"})
    Path(out).write_text(json.dumps(metrics, indent=2) + "\n")


def cell(metrics: dict | None, key: str) -> str:
    if not metrics or metrics.get(key) is None:
        return "–"
    return f"{metrics[key]:.1f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rescore":
        rescore(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return

    def load(name: str) -> dict | None:
        path = HERE / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def questions(metrics: dict | None) -> str:
        return str(metrics.get("eval_questions", "")) if metrics else ""

    print("v1.1, the first 200 dev questions (every row, the zero-shot comparison):\n")
    print("| model | questions | EM | F1 | BLEU-1 |")
    print("|---|---:|---:|---:|---:|")
    for label, stem in ROWS:
        v1 = load(f"{stem}-v1.1-first200") or load(f"{stem}-v1.1")
        if v1 and v1.get("eval_questions") == 200:
            print(f"| {label} | 200 | {cell(v1, 'exact_match')} | {cell(v1, 'f1')} | {cell(v1, 'bleu1')} |")
    print("\nThe first 500 dev-v1.1 and the first 500 dev-v2.0 questions:\n")
    print("| model | v1.1 questions | v1.1 EM | v1.1 F1 | v1.1 BLEU-1 | v2.0 questions | v2.0 EM | v2.0 F1 | "
          "v2.0 HasAns F1 | v2.0 NoAns F1 | v2.0 BLEU-1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, stem in ROWS:
        v1, v2 = load(f"{stem}-v1.1"), load(f"{stem}-v2.0")
        if v1 and v1.get("eval_questions") != 500:
            v1 = None
        if not (v1 or v2):
            continue
        print(f"| {label} | {questions(v1)} | {cell(v1, 'exact_match')} | {cell(v1, 'f1')} | {cell(v1, 'bleu1')} | "
              f"{questions(v2)} | {cell(v2, 'exact_match')} | {cell(v2, 'f1')} | {cell(v2, 'HasAns_f1')} | "
              f"{cell(v2, 'NoAns_f1')} | {cell(v2, 'bleu1')} |")


if __name__ == "__main__":
    main()
