"""``qatune bench RUN --backends torch-fp32,onnx-int8 --data FILE``: size, latency, throughput and F1 per backend.

Prints one markdown table; ``--output`` also writes it as JSON or CSV. ONNX backends are exported on the
fly to a temporary dir unless ``--exports`` gives export dirs. GPU backends without a GPU are listed as
skipped. See docs/export.md.
"""

from __future__ import annotations

import argparse

from qatune.cli.common import add_debug


def register(sub: argparse._SubParsersAction) -> None:
    from qatune.export.bench import BACKENDS, DEFAULT_BACKENDS

    p = sub.add_parser("bench", help="benchmark inference backends and precisions of a run", description=__doc__)
    p.add_argument("run", help="run directory (or an ONNX export dir of one)")
    p.add_argument("--backends", default=DEFAULT_BACKENDS, help=f"comma-separated, from: {', '.join(BACKENDS)}")
    p.add_argument("--data", required=True, help="SQuAD-format questions to measure on")
    p.add_argument("--max-samples", type=int, default=1000, help="the first N questions (EM/F1, throughput)")
    p.add_argument("--latency-samples", type=int, default=100, help="questions timed one at a time")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for throughput")
    p.add_argument("--exports", nargs="*", default=[], help="ONNX export dirs to use instead of exporting on the fly")
    p.add_argument("--device", default="cpu", help="device for the torch backends (cpu or cuda)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--output", default=None, help="also write the table to FILE.json or FILE.csv")
    p.add_argument("--no-progress", action="store_true")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.export.bench import parse_backends, run_bench, to_markdown, write_result

    parse_backends(args.backends)  # fail on a typo before loading anything
    result = run_bench(args.run, args.data, backends=args.backends, max_samples=args.max_samples,
                       latency_samples=args.latency_samples, batch_size=args.batch_size, exports=args.exports,
                       device=args.device, threads=args.threads, progress=not args.no_progress)
    print(to_markdown(result))
    if args.output:
        print(f"qatune: wrote {write_result(result, args.output)}")
    return 0
