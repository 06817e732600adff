"""The fastest any implementation could train the SQuAD job on this CPU: a roofline for the speed goals.

For the first N SQuAD v1.1 training questions (the job of ``bench/train_speed.py`` and ``bench/native_e2e.py``:
MiniLM, 384-token windows, stride 128, batch 16, 1 epoch) it counts the training FLOPs two ways:

* as qatune batches them: length-grouped batches, each padded to its longest window (rounded up to 8);
* as the run_qa.py-style reference batches them: every window padded to 384.

FLOPs: 6 x (the encoder's matmul weights) per token (forward + both backward GEMMs) plus attention,
12 x L^2 x hidden per window and layer. Embedding, layer-norm, dropout and optimizer work are left out, so the
bound is optimistic. Dividing by the best GEMM throughput measured here, at the encoder's own training shapes,
gives the time no implementation computing the same model can beat on this machine; ``--measured`` puts
measured loop questions/s beside it.

    python bench/train_roofline.py --max-train-samples 2000 --measured "qatune --backend native=6.08" \
        "qatune --backend hf=5.70" "run_qa.py-style reference=1.81"
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRAIN, print_table, require_squad  # noqa: E402


def gemm_gflops(m: int, k: int, n: int, transpose_a: bool = False, seconds: float = 1.0) -> float:
    """fp32 GEMM throughput of an (m, k) x (k, n) product; ``transpose_a`` as a weight gradient reads X^T."""
    import torch

    a = torch.randn(k, m).t() if transpose_a else torch.randn(m, k)
    b = torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def matmul_weights(layers: int, hidden: int, inner: int) -> int:
    """The encoder's GEMM weights: Q, K, V, attention output (hidden x hidden each) and the two FFN matrices."""
    return layers * (4 * hidden * hidden + 2 * hidden * inner)


def training_flops(widths: list[int], rows: list[int], layers: int, hidden: int, inner: int) -> float:
    """FLOPs of one training pass (forward + backward) over batches of ``rows[i]`` windows padded to ``widths[i]``:
    6 x matmul weights per token, plus the attention scores and their weighted sum (4 x L^2 x hidden per layer
    forward, twice that backward). Checked against ``torch.utils.flop_counter`` in tests/test_roofline.py."""
    weights = matmul_weights(layers, hidden, inner)
    return float(sum(r * (6 * weights * w + 12 * layers * hidden * w * w) for w, r in zip(widths, rows, strict=True)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--measured", nargs="*", default=[], metavar="LABEL=QPS",
                    help="measured training-loop questions/s to set beside the bound; a LABEL containing "
                         "'reference' is counted with the reference's FLOPs (pad 384), any other with qatune's")
    args = ap.parse_args()
    require_squad()

    import numpy as np
    import torch
    from transformers import AutoConfig

    from qatune.backends.hf.models import load_tokenizer, resolve_model
    from qatune.core.batching import length_grouped_batches
    from qatune.data.squad.squad_schema import load_qa_examples
    from qatune.tasks.extractive_qa.features import build_features

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model("minilm")
    cfg = AutoConfig.from_pretrained(model_dir)
    hidden, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

    examples, _ = load_qa_examples(TRAIN, max_samples=args.max_train_samples)
    features = build_features(examples, load_tokenizer(model_dir), 384, 128, training=True,
                              cache_dir=Path(tempfile.gettempdir()) / "qatune-roofline-cache", progress=False)
    lengths = np.asarray(features.lengths)
    questions = len(examples)

    batches = length_grouped_batches(lengths, args.batch_size, args.seed)
    grouped_widths = [-(-int(lengths[b].max()) // 8) * 8 for b in batches]
    grouped = training_flops(grouped_widths, [len(b) for b in batches], layers, hidden, inner)
    padded = training_flops([384], [len(lengths)], layers, hidden, inner)

    tokens = args.batch_size * int(np.median(grouped_widths))  # one typical batch, as a GEMM's rows
    shapes = [(tokens, hidden, 3 * hidden, False), (tokens, hidden, inner, False), (tokens, inner, hidden, False),
              (inner, tokens, hidden, True), (hidden, tokens, 3 * hidden, True), (2048, 2048, 2048, False)]
    rates = {f"{m}x{k}x{n}{' (A^T)' if t else ''}": gemm_gflops(m, k, n, t) for m, k, n, t in shapes}
    peak = max(rates.values())

    print(f"# {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, fp32")
    print(f"# {questions} questions -> {len(lengths)} windows; real tokens {int(lengths.sum()):,}; "
          f"matmul weights {matmul_weights(layers, hidden, inner) / 1e6:.2f} M")
    print("# GEMM GFLOP/s at the training shapes: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    print(f"# bound = FLOPs / {peak:.0f} GFLOP/s (the best of those)\n")
    rows = []
    for label, total, computed in (("qatune (length-grouped, dynamic padding)", grouped,
                                    sum(w * len(b) for w, b in zip(grouped_widths, batches, strict=True))),
                                   ("run_qa.py-style reference (pad 384)", padded, 384 * len(lengths))):
        seconds = total / (peak * 1e9)
        rows.append([label, f"{computed:,}", round(total / 1e12, 1), round(seconds, 1), round(questions / seconds, 2)])
    print_table(["batching", "tokens computed", "training TFLOP", "bound s", "bound q/s"], rows)
    print(f"\nqatune's batching computes {padded / grouped:.2f}x fewer FLOPs than padding to 384.")

    if args.measured:
        bound_qps = questions / (grouped / (peak * 1e9))
        print()
        table = []
        for item in args.measured:
            label, _, value = item.rpartition("=")
            qps = float(value)
            flop_per_q = (padded if "reference" in label else grouped) / questions
            table.append([label, qps, round(qps * flop_per_q / 1e9, 1), f"{qps * flop_per_q / 1e9 / peak:.0%}",
                          round(bound_qps / qps, 2)])
        print_table(["measured (loop)", "q/s", "GFLOP/s computed", "of the GEMM peak", "qatune's bound / this"],
                    table)


if __name__ == "__main__":
    main()
