"""The run_qa.py-style reference setup, for side-by-side benchmarks (not part of qatune).

Training: every window padded to 384, fp32, no length grouping, default dropout, a plain HF Trainer.
Evaluation: windows padded to 384, fp32, batch 16, utils_qa-style Python post-processing (n-best 20,
max answer 30). Written from the published behaviour of transformers' examples/pytorch/question-answering;
questions are counted before tokenization (as qatune does) so both sides see the same questions.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qatune.backends.hf.models import resolve_model  # noqa: E402
from qatune.data.squad.squad_schema import load_qa_examples  # noqa: E402


def prepare_train(examples, tokenizer, max_len=384, stride=128):
    enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=max_len, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id)
        seq = enc.sequence_ids(i)
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        if not ex.answers:
            starts.append(cls), ends.append(cls)
            continue
        s_char = ex.answers[0].answer_start
        e_char = s_char + len(ex.answers[0].text)
        ts = 0
        while seq[ts] != 1:
            ts += 1
        te = len(ids) - 1
        while seq[te] != 1:
            te -= 1
        if not (offsets[ts][0] <= s_char and offsets[te][1] >= e_char):
            starts.append(cls), ends.append(cls)
            continue
        while ts < len(offsets) and offsets[ts][0] <= s_char:
            ts += 1
        starts.append(ts - 1)
        while offsets[te][1] >= e_char:
            te -= 1
        ends.append(te + 1)
    enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return enc


class EncDataset(torch.utils.data.Dataset):
    def __init__(self, enc):
        self.enc = enc

    def __len__(self):
        return len(self.enc["input_ids"])

    def __getitem__(self, i):
        return {k: torch.tensor(v[i]) for k, v in self.enc.items()}


def train(args):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainingArguments

    path = resolve_model(args.model)
    examples, _ = load_qa_examples(args.train, max_samples=args.max_train_samples)
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = prepare_train(examples, tokenizer)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    targs = TrainingArguments(output_dir=args.output, per_device_train_batch_size=16, learning_rate=args.learning_rate,
                              num_train_epochs=1, save_strategy="no", report_to=[], logging_steps=50,
                              disable_tqdm=True, seed=42, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=EncDataset(enc))
    t0 = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - t0
    trainer.save_model(args.output)
    tokenizer.save_pretrained(args.output)
    Path(args.output, "qatune.yaml").write_text(f"model: {path}\nmethod: full\ntask: extractive_qa\n")
    print(json.dumps({"train_time_s": train_time, "questions": len(examples), "features": len(enc["input_ids"])}))


def evaluate(args):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from qatune.data.squad.squad_metrics import squad_v1_evaluate
    from qatune.data.squad.squad_schema import examples_to_squad_json

    examples, _ = load_qa_examples(args.data, max_samples=args.max_eval_samples)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.run)
    model = AutoModelForQuestionAnswering.from_pretrained(args.run).eval()
    enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=384, stride=128, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")
    mapping = enc["overflow_to_sample_mapping"]
    offsets = [[o if enc.sequence_ids(i)[k] == 1 else None for k, o in enumerate(offs)]
               for i, offs in enumerate(enc["offset_mapping"])]
    all_start, all_end = [], []
    with torch.no_grad():
        for lo in range(0, len(enc["input_ids"]), 16):
            batch = {k: torch.tensor(enc[k][lo: lo + 16]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            out = model(**batch)
            all_start.extend(out.start_logits.numpy())
            all_end.extend(out.end_logits.numpy())
    features_per_example = collections.defaultdict(list)
    for i, ex_idx in enumerate(mapping):
        features_per_example[ex_idx].append(i)
    predictions = {}
    for ex_idx, ex in enumerate(examples):
        candidates = []
        for f in features_per_example[ex_idx]:
            s_log, e_log, offs = all_start[f], all_end[f], offsets[f]
            for s in np.argsort(s_log)[-1:-21:-1].tolist():
                for e in np.argsort(e_log)[-1:-21:-1].tolist():
                    if s >= len(offs) or e >= len(offs) or offs[s] is None or offs[e] is None:
                        continue
                    if e < s or e - s + 1 > 30:
                        continue
                    candidates.append((s_log[s] + e_log[e], offs[s][0], offs[e][1]))
        best = max(candidates) if candidates else (0, 0, 0)
        predictions[ex.id] = ex.context[best[1]: best[2]]
    elapsed = time.perf_counter() - t0
    metrics = squad_v1_evaluate(examples_to_squad_json(examples, "1.1")["data"], predictions)
    print(json.dumps({**metrics, "eval_time_s": elapsed, "questions": len(examples),
                      "predictions": predictions}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "evaluate"])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--train")
    ap.add_argument("--data")
    ap.add_argument("--run")
    ap.add_argument("--output")
    ap.add_argument("--max-train-samples", type=int)
    ap.add_argument("--max-eval-samples", type=int)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    args = ap.parse_args()
    train(args) if args.mode == "train" else evaluate(args)


if __name__ == "__main__":
    main()
