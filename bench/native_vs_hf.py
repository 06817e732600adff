"""qatune.native vs Hugging Face BERT, model level: the same MiniLM QA weights, the same batches, fp32.

Times one optimisation step (forward + backward + fused AdamW, as qatune's trainer) for full fine-tuning and for LoRA r 8 (query, key,
value, attention output; the head trains too, as PEFT's modules_to_save), and the inference forward pass,
for the native model and for transformers (+ PEFT for LoRA). Batches use real window lengths: the
MiniLM-tokenized windows (max 384, stride 128) of the first SQuAD dev-v1.1 questions when
../shared/data/squad is present, else of qatune's bundled sample. Two batchings:

* ``random``: windows drawn at random, padded to the longest (rounded up to 8), as ``collate`` pads a batch;
* ``grouped``: batches of similar lengths, as qatune's trainer (group_by_length) and evaluation (sorted) form them.

Training uses qatune's dropout settings (attention dropout 0, hidden dropout 0.1). Native and HF steps are
interleaved batch by batch so background load hits both alike; the table reports the mean ms per batch, the
ratio of total times and, in brackets, the median of the per-batch ratios (robust to load bursts).

    python bench/native_vs_hf.py --threads 2 --batch-sizes 16 32
    python bench/native_vs_hf.py --profile      # torch.profiler tables for one HF and one native step
    python bench/native_vs_hf.py --profile --batching grouped --modes full   # at qatune's training shapes
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import DEV, print_table  # noqa: E402

SAMPLE = REPO / "qatune" / "resources" / "sample" / "dev.json"


def window_lengths(tokenizer: Any, questions: int) -> tuple[np.ndarray, str]:
    """Token counts of the question+context windows qatune would build (lengths only, no text kept)."""
    source = DEV if DEV.is_file() else SAMPLE
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as handle:
        data = json.load(handle)["data"]
    pairs = [(q["question"], p["context"]) for a in data for p in a["paragraphs"] for q in p["qas"]][:questions]
    enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation="only_second", max_length=384,
                    stride=128, return_overflowing_tokens=True)
    return np.array([len(ids) for ids in enc["input_ids"]]), f"{source.name} ({len(pairs)} questions)"


def make_batch(lengths: list[int], vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    width = -(-max(lengths) // 8) * 8
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, vocab, (n,), generator=gen)
        ids[row, 0], ids[row, n - 1] = 101, 102
        mask[row, :n] = 1
        types[row, n // 4: n] = 1
    starts = torch.tensor([int(torch.randint(n // 4, n - 1, (1,), generator=gen)) for n in lengths])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "start_positions": starts, "end_positions": torch.minimum(starts + 3, torch.tensor(lengths) - 2)}


def batches(lengths: np.ndarray, size: int, count: int, grouped: bool, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        if grouped:  # a run of neighbours in length order, like length-grouped/sorted batching
            order = np.sort(lengths)
            lo = int(rng.integers(0, max(len(order) - size, 1)))
            chosen = order[lo: lo + size].tolist()
        else:
            chosen = rng.choice(lengths, size=size, replace=True).tolist()
        out.append(make_batch(chosen, 30000, gen))
    return out


def span_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    ce = torch.nn.functional.cross_entropy
    return (ce(out.start_logits, batch["start_positions"]) + ce(out.end_logits, batch["end_positions"])) / 2


def build(kind: str, method: str, hf_dir: Path, skip_padding: bool) -> torch.nn.Module:
    """A fresh model (HF or native) with identical weights, prepared for ``method``."""
    targets = ["query", "key", "value", "attention.output.dense"]
    if kind == "hf":
        import peft
        import transformers

        model = transformers.AutoModelForQuestionAnswering.from_pretrained(
            hf_dir, attn_implementation="sdpa", attention_probs_dropout_prob=0.0)
        if method == "lora":
            config = peft.LoraConfig(task_type="QUESTION_ANS", r=8, lora_alpha=16, lora_dropout=0.1,
                                     target_modules=targets)
            model = peft.get_peft_model(model, config).base_model  # LoraModel: passes token_type_ids through
        return model
    from qatune.native import BertForQuestionAnswering, lora

    model = BertForQuestionAnswering.from_pretrained(hf_dir, attention_probs_dropout_prob=0.0)
    model.bert.skip_padding = skip_padding
    if method == "lora":
        lora.apply_lora(model, lora.LoraSettings(r=8, alpha=16, dropout=0.1, target_modules=targets))
    return model


def step_fn(model: torch.nn.Module, mode: str, clip: bool = False) -> Callable[[dict[str, torch.Tensor]], None]:
    """One inference batch, or one training step (``clip``: with the trainer's gradient clipping to norm 1)."""
    if mode == "infer":
        model.eval()

        def infer(batch: dict[str, torch.Tensor]) -> None:
            with torch.inference_mode():
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"])
        return infer
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)  # as qatune

    def train(batch: dict[str, torch.Tensor]) -> None:
        span_loss(model, batch).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train


def time_pair(fns: dict[str, Callable[[dict[str, torch.Tensor]], None]], data: list[dict[str, torch.Tensor]],
              warmup: int) -> dict[str, list[float]]:
    """Seconds per batch for each function, running them back to back (alternating order) on every batch,
    so a burst of background load hits a pair rather than one side."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i, batch in enumerate(data):
        for name, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
            t0 = time.perf_counter()
            fn(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def ratios(hf: list[float], other: list[float]) -> tuple[float, float]:
    """(total HF time / total other time, median of the per-batch HF/other ratios)."""
    return sum(hf) / sum(other), statistics.median(h / o for h, o in zip(hf, other, strict=True))


def profile(hf_dir: Path, data: list[dict[str, torch.Tensor]], mode: str, method: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for kind in ("hf", "native"):
        fn = step_fn(build(kind, method, hf_dir, skip_padding=False), mode)
        fn(data[0])
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in data[1:3]:
                fn(batch)
        print(f"\n### {kind}, {method}, {mode}: top ops by self CPU time (2 batches)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, default=4, help="timed batches per cell (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--questions", type=int, default=300, help="dev questions whose window lengths are used")
    parser.add_argument("--batching", nargs="+", default=["random", "grouped"], choices=["random", "grouped"])
    parser.add_argument("--modes", nargs="+", default=["full", "lora", "infer"], choices=["full", "lora", "infer"])
    parser.add_argument("--skip-padding", action="store_true", help="also time native with skip_padding=True")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers

    from qatune.backends.hf.models import resolve_model

    base = resolve_model("minilm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    lengths, source = window_lengths(tokenizer, args.questions)
    print(f"window lengths from {source}: {len(lengths)} windows, min {lengths.min()}, "
          f"median {int(np.median(lengths))}, max {lengths.max()}; {args.threads} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "minilm-qa"  # one QA head, shared by both: the same weights everywhere
        transformers.AutoModelForQuestionAnswering.from_pretrained(base).save_pretrained(hf_dir)
        if args.profile:
            data = batches(lengths, args.batch_sizes[0], 3, grouped=args.batching[0] == "grouped", seed=1)
            for mode in args.modes:
                profile(hf_dir, data, "infer" if mode == "infer" else "train", "lora" if mode == "lora" else "full")
            return
        rows = []
        for batching in args.batching:
            for size in args.batch_sizes:
                data = batches(lengths, size, args.warmup + args.steps, batching == "grouped", seed=size)
                real = sum(int(b["attention_mask"].sum()) for b in data)
                padded = sum(b["attention_mask"].numel() for b in data)
                for mode in args.modes:
                    method = "lora" if mode == "lora" else "full"
                    run = "infer" if mode == "infer" else "train"
                    models = {"hf": build("hf", method, hf_dir, False),
                              "native": build("native", method, hf_dir, False)}
                    if args.skip_padding:
                        models["native-skip-pad"] = build("native", method, hf_dir, True)
                    fns = {name: step_fn(m, run) for name, m in models.items()}
                    t = time_pair(fns, data, args.warmup)
                    mean = {name: 1000 * statistics.fmean(ts) for name, ts in t.items()}
                    row = [batching, size, f"{100 * (1 - real / padded):.0f}%", mode, mean["hf"], mean["native"],
                           "{:.2f}x ({:.2f}x)".format(*ratios(t["hf"], t["native"]))]
                    if args.skip_padding:
                        row += [mean["native-skip-pad"],
                                "{:.2f}x ({:.2f}x)".format(*ratios(t["hf"], t["native-skip-pad"]))]
                    rows.append(row)
                    print(row, flush=True)
                    del models, fns
        headers = ["batching", "batch", "padding", "step", "HF ms", "native ms", "HF/native (median pair)"]
        if args.skip_padding:
            headers += ["native skip-pad ms", "HF/skip-pad (median pair)"]
        print()
        print_table(headers, rows)


if __name__ == "__main__":
    main()
