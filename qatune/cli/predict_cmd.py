"""``qatune predict RUN --question Q --context C``: answer, score and character offsets as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from qatune.cli.common import add_debug, print_json
from qatune.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="answer questions with a trained run", description=__doc__)
    p.add_argument("run", help="run directory (PyTorch or exported)")
    p.add_argument("--question", help="the question")
    ctx = p.add_mutually_exclusive_group()
    ctx.add_argument("--context", help="the context text")
    ctx.add_argument("--context-file", help="read the context from this UTF-8 text file")
    p.add_argument("--top-k", type=int, default=1, help="return the k best answers")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 no-answer threshold override")
    p.add_argument("--device", default="auto")
    add_debug(p)
    p.set_defaults(handler=run)


def _context(args: argparse.Namespace) -> str:
    if args.context_file:
        path = Path(args.context_file)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"context file {path} does not exist") from None
        except UnicodeDecodeError:
            raise DataError(f"context file {path} is not UTF-8 text") from None
    if args.context is None:
        raise DataError("give --context TEXT or --context-file FILE")
    return args.context


def run(args: argparse.Namespace) -> int:
    from qatune.inference.pipeline import load_pipeline

    if not args.question:
        raise DataError("give --question TEXT")
    if args.top_k < 1:
        raise DataError("--top-k must be >= 1")
    pipeline = load_pipeline(args.run, device=args.device, null_threshold=args.null_threshold)
    result = pipeline.answer(args.question, _context(args), top_k=args.top_k)
    print_json([a.to_dict() for a in result] if isinstance(result, list) else result.to_dict())
    return 0
