"""The ``qatune`` command: one verb per module (train, evaluate, predict, score, ...).

Each verb module defines ``register(subparsers)``, which adds its parser and sets ``handler``. User
errors (:class:`qatune.errors.QatuneError`) print one clear line and exit 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# verb modules, in help order; a module that fails to import (missing optional extra) is skipped with a note
VERBS = ["train", "evaluate", "predict", "score", "compare", "report", "serve", "export", "bench", "pipeline"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qatune", description="Fine-tune, compare and serve QA models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings, logs and progress bars (or QATUNE_VERBOSE=1)")
    from qatune import __version__

    parser.add_argument("--version", action="version", version=f"qatune {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"qatune.cli.{verb}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("qatune.cli."):
                continue  # verb not implemented in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from qatune import quiet

    quiet.apply(verbose=True if "--verbose" in argv else None)  # before any verb imports a library
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from qatune.errors import QatuneError

    try:
        result = args.handler(args)
        return int(result or 0)
    except QatuneError as exc:
        if debug:
            traceback.print_exc()
        print(f"qatune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qatune: interrupted", file=sys.stderr)
        return 130
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence: no traceback without --debug
        # BaseException, not Exception: a Rust panic in tokenizers/safetensors arrives as pyo3's PanicException
        if debug:
            traceback.print_exc()
        print(f"qatune: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
