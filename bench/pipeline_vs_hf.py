"""qatune's batched ``answer_batch`` vs transformers 4.57's ``pipeline("question-answering")``.

Same model (a *full* fine-tuning run directory, which is a plain Hugging Face model dir), same first N
questions of SQuAD dev-v1.1, same window settings (the run's max_seq_length / doc_stride / max_answer_length).
transformers 5 removed the QA pipeline, so the HF side runs in a separate venv given by ``--hf-python``::

    python3 -m venv /work/hf457 && /work/hf457/bin/pip install torch==2.13.0 "transformers==4.57.*"
    python bench/pipeline_vs_hf.py runs/full --n 1000 --hf-python /work/hf457/bin/python

Reports questions/s on both sides (model loading excluded, tokenization + inference + post-processing
included, after a short warm-up), the share of answers identical to ``qatune evaluate``'s predictions.json
for the same questions, and EM/F1 against the gold answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV  # noqa: E402

# Runs under --hf-python (transformers 4.57); must not import qatune.
HF_CHILD = r'''
import json, sys, time
import torch
import transformers
from transformers import pipeline

job = json.load(open(sys.argv[1]))
if job["threads"]:
    torch.set_num_threads(job["threads"])
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[job["dtype"]]
t0 = time.perf_counter()
qa = pipeline("question-answering", model=job["model"], tokenizer=job["model"], device=job["device"],
              torch_dtype=dtype)
load_s = time.perf_counter() - t0
qs = job["questions"]
kw = dict(batch_size=job["batch_size"], max_seq_len=job["max_seq_len"], doc_stride=job["doc_stride"],
          max_answer_len=job["max_answer_len"], handle_impossible_answer=False)
warm = qs[: job["warmup"]]
if warm:
    qa(question=[q["question"] for q in warm], context=[q["context"] for q in warm], **kw)
t0 = time.perf_counter()
out = qa(question=[q["question"] for q in qs], context=[q["context"] for q in qs], **kw)
seconds = time.perf_counter() - t0
if isinstance(out, dict):
    out = [out]
preds = {q["id"]: o["answer"] for q, o in zip(qs, out)}
print(json.dumps({"predictions": preds, "seconds": seconds, "load_s": load_s,
                  "transformers": transformers.__version__, "torch": torch.__version__}))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a full fine-tuning run dir from `qatune train` (a HF model dir)")
    ap.add_argument("--hf-python", required=True, help="python of a venv with transformers 4.57 (see above)")
    ap.add_argument("--n", type=int, default=1000, help="the first N dev-v1.1 questions")
    ap.add_argument("--data", default=str(DEV), help="SQuAD v1.1 dev file (default ../shared/data/squad)")
    ap.add_argument("--batch-size", type=int, default=32, help="windows per forward pass, both sides")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, both sides (0: torch's default)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="qatune side (auto: bf16 where native, what users get)")
    ap.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"], help="HF side model dtype")
    ap.add_argument("--warmup", type=int, default=16, help="questions answered before timing, both sides")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not data.is_file():
        print(f"skipped: SQuAD dev data not found at {data}; the benchmark reads ../shared/data/squad beside "
              "the checkout")
        return 0
    if not Path(args.hf_python).exists():
        sys.exit(f"--hf-python {args.hf_python} does not exist; create the venv first (see --help)")

    import torch

    import qatune
    from qatune.artifacts import read_run_config
    from qatune.data.squad.squad_metrics import exact_match_v1, f1_v1, normalize_answer
    from qatune.data.squad.squad_schema import load_qa_examples
    from qatune.methods import registry

    run_cfg = read_run_config(args.run)
    if registry.get(run_cfg.get("method", "full")).is_peft:
        sys.exit(f"{args.run} is a {run_cfg.get('method')} adapter run; the HF pipeline needs a full model dir "
                 "(train with method=full, or merge the adapter first)")
    if args.threads:
        torch.set_num_threads(args.threads)
    examples, _ = load_qa_examples(str(data), max_samples=args.n)
    questions = [{"id": ex.id, "question": ex.question, "context": ex.context} for ex in examples]
    settings = dict(max_seq_len=int(run_cfg.get("max_seq_length", 384)), doc_stride=int(run_cfg.get("doc_stride", 128)),
                    max_answer_len=int(run_cfg.get("max_answer_length", 30)))
    print(f"# {len(questions)} questions from {data}; {settings}; batch {args.batch_size}; device {args.device}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    # qatune evaluate's predictions: the reference both sides are compared with
    with tempfile.TemporaryDirectory(prefix="qatune-vs-hf-") as tmp:
        qatune.evaluate(args.run, str(data), max_eval_samples=args.n, output=tmp, progress=False,
                        device=args.device, precision=args.precision, batch_size=args.batch_size)
        reference = json.loads((Path(tmp) / "predictions.json").read_text())

        # qatune answer_batch
        pipe = qatune.load(args.run, device=args.device, precision=args.precision)
        pairs = [(q["question"], q["context"]) for q in questions]
        if args.warmup:
            pipe.answer_batch(pairs[: args.warmup], batch_size=args.batch_size)
        t0 = time.perf_counter()
        answers = pipe.answer_batch(pairs, batch_size=args.batch_size)
        ours_s = time.perf_counter() - t0
        ours = {q["id"]: a.text for q, a in zip(questions, answers, strict=True)}

        # transformers 4.57 pipeline, in its own venv
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"model": str(Path(args.run).resolve()), "questions": questions,
                                   "batch_size": args.batch_size, "device": args.device, "threads": args.threads,
                                   "dtype": args.hf_dtype, "warmup": args.warmup, **settings}))
        child = Path(tmp) / "hf_child.py"
        child.write_text(HF_CHILD)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([args.hf_python, str(child), str(job)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"the transformers pipeline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        hf = json.loads(proc.stdout.strip().splitlines()[-1])

    golds = {ex.id: [a.text for a in ex.answers] for ex in examples}

    def scores(preds: dict[str, str]) -> dict[str, float]:
        n = len(preds)
        same = sum(preds[k] == reference.get(k) for k in preds)
        same_norm = sum(normalize_answer(preds[k]) == normalize_answer(reference.get(k, "")) for k in preds)
        em = sum(max(exact_match_v1(preds[k], g) for g in golds[k]) for k in preds if golds[k])
        f1 = sum(max(f1_v1(preds[k], g) for g in golds[k]) for k in preds if golds[k])
        return {"identical_pct": round(100 * same / n, 2), "identical_normalized_pct": round(100 * same_norm / n, 2),
                "em": round(100 * em / n, 2), "f1": round(100 * f1 / n, 2)}

    n = len(questions)
    rows = [
        {"side": f"qatune answer_batch ({args.precision})", "seconds": round(ours_s, 2),
         "questions_per_s": round(n / ours_s, 1), **scores(ours)},
        {"side": f"transformers {hf['transformers']} pipeline ({args.hf_dtype})", "seconds": round(hf["seconds"], 2),
         "questions_per_s": round(n / hf["seconds"], 1), **scores(hf["predictions"])},
    ]
    cols = ["side", "seconds", "questions_per_s", "identical_pct", "identical_normalized_pct", "em", "f1"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    print(f"identical_pct: answers equal to `qatune evaluate` predictions.json for the same {n} questions; "
          f"speed-up {rows[1]['seconds'] / rows[0]['seconds']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": n, "settings": settings, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
