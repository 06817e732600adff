"""``qatune predict RUN``: answer questions with a trained run.

One question (answer, score and character offsets as JSON on stdout)::

    qatune predict runs/lora --question "Who ...?" --context-file article.txt [--top-k 3]

Many questions from a JSONL file, one ``{"id": ..., "question": ..., "context": ...}`` object a line
(``id`` optional: the line number), with a progress bar; each output line is
``{"id", "answer", "score", "start", "end", "no_answer"}`` (plus ``answers`` with ``--top-k`` > 1)::

    qatune predict runs/lora --input questions.jsonl --output answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from qatune.cli.common import add_debug, print_json, to_json
from qatune.errors import DataError, OutputError

CHUNK = 256  # questions per answer_batch call in --input mode: bounded memory, a moving progress bar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="answer questions with a trained run", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (PyTorch or exported)")
    p.add_argument("--question", help="the question")
    ctx = p.add_mutually_exclusive_group()
    ctx.add_argument("--context", help="the context text")
    ctx.add_argument("--context-file", help="read the context from this UTF-8 text file")
    p.add_argument("--input", help="JSONL file of {id, question, context} objects: batch mode")
    p.add_argument("--output", help="with --input: write answers here as JSONL (default: stdout); never the "
                   "input file or a file inside the run or its model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output file, if it is an answers file qatune wrote")
    p.add_argument("--top-k", type=int, default=1, help="return the k best answers")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default 64)")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 no-answer threshold override")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar in --input mode")
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


# -- batch mode ---------------------------------------------------------------------------------------
def read_questions_jsonl(path: str | os.PathLike) -> list[tuple[Any, str, str]]:
    """``(id, question, context)`` per non-blank line; any bad line is a DataError naming file and line."""
    from qatune.data.jsonio import parse_json

    src = Path(path)
    try:
        raw = src.read_bytes()
    except FileNotFoundError:
        raise DataError(f"input file {src} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"input {src} is a directory; give a JSONL file") from None
    except OSError as exc:
        raise DataError(f"input file {src} cannot be read ({exc.strerror or exc})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    items: list[tuple[Any, str, str]] = []
    seen: dict[Any, int] = {}
    for n, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{src} line {n}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            obj = parse_json(line, where)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                            '{"id": ..., "question": ..., "context": ...} object') from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with 'question' and 'context', "
                            f"got {type(obj).__name__}")
        for key in ("question", "context"):
            if key not in obj:
                raise DataError(f"{where}: field '{key}' is missing")
            if not isinstance(obj[key], str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}")
            if not obj[key].strip():
                raise DataError(f"{where}: field '{key}' is empty")
        qid = obj.get("id", n)
        if qid is None:
            qid = n
        if isinstance(qid, bool) or not isinstance(qid, (str, int, float)):
            raise DataError(f"{where}: field 'id' must be a string or a number, got {type(qid).__name__}")
        if isinstance(qid, float) and not math.isfinite(qid):
            raise DataError(f"{where}: field 'id' is {qid}; give a string or a finite number")
        if qid in seen:
            raise DataError(f"{where}: id {qid!r} was already used on line {seen[qid]}; ids must be unique")
        seen[qid] = n
        items.append((qid, obj["question"], obj["context"]))
    return items


ANSWER_KEYS = frozenset({"id", "answer", "score", "start", "end", "no_answer"})  # every output line has these


def _is_answers_file(path: Path) -> bool:
    """Whether ``path`` is an answers file qatune wrote (empty, or its first line is one answer record): the
    only kind of existing file ``--overwrite`` may replace."""
    try:
        with path.open("rb") as fh:
            first = b""
            while not first.strip():
                first = fh.readline(1 << 20)
                if not first:
                    return True  # empty or blank: nothing to lose
        rec = json.loads(first.decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and ANSWER_KEYS <= set(rec)


def _folders_read(run: str) -> list[str | None]:
    """The run folder and its recorded base model: ``--output`` may not lie inside either."""
    import yaml

    from qatune.artifacts import RUN_CONFIG

    try:
        cfg = yaml.safe_load((Path(run) / RUN_CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        cfg = {}  # load_pipeline names what is wrong with the run
    base = cfg.get("base_model_path") if isinstance(cfg, dict) else None
    return [run, base if isinstance(base, str) and Path(base).expanduser().is_absolute() else None]


def _check_output(args: argparse.Namespace) -> Path | None:
    """qatune's write rule (qatune/rundir.py) for ``--output``, applied before the model loads: never the
    input, nothing inside the run or its model, an existing file only with --overwrite and only if ours."""
    from qatune import rundir

    if args.output is None:
        return None
    return rundir.check_output_file(args.output, inputs=[args.input], folders=_folders_read(args.run),
                                    overwrite=args.overwrite, ours=_is_answers_file,
                                    what="an answers file of qatune predict")


@contextmanager
def _output_stream(out: Path | None, overwrite: bool) -> Iterator[IO[str]]:
    """stdout, or a temporary file beside ``out`` renamed over it only when every answer is written: an
    interrupted or failed run leaves the previous file as it was and no partial one."""
    from qatune import rundir

    if out is None:
        yield sys.stdout
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with rundir.atomic_open(out, "w", encoding="utf-8") as stream:
            yield stream
            # a file that appeared at --output while answering is not replaced without --overwrite either
            rundir.check_output_file(out, overwrite=overwrite, ours=_is_answers_file,
                                     what="an answers file of qatune predict")
    except OSError as exc:
        raise OutputError(f"--output {out} cannot be written ({exc.strerror or exc}); choose another path") from None


def _record(qid: Any, result: Any, top_k: int) -> dict[str, Any]:
    answers = result if isinstance(result, list) else [result]
    best = answers[0].to_dict()
    rec = {"id": qid, "answer": best["text"], "score": best["score"], "start": best["start"], "end": best["end"],
           "no_answer": best["no_answer"]}
    if top_k > 1:
        rec["answers"] = [a.to_dict() for a in answers]
    return rec


def run_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from qatune.inference.loader import load_pipeline

    if args.question or args.context is not None or args.context_file:
        raise DataError("--input reads questions and contexts from the file; drop --question/--context/--context-file")
    items = read_questions_jsonl(args.input)  # every line is checked before the model loads
    out = _check_output(args)  # nothing is created or replaced before the input and the output are checked
    pipeline = load_pipeline(args.run, device=args.device, null_threshold=args.null_threshold)
    t0 = time.perf_counter()
    with _output_stream(out, args.overwrite) as stream:
        bar = tqdm(total=len(items), desc="answering", unit="q", disable=args.no_progress, file=sys.stderr)
        for lo in range(0, len(items), CHUNK):
            chunk = items[lo: lo + CHUNK]
            results = pipeline.answer_batch([(q, c) for _, q, c in chunk], batch_size=args.batch_size,
                                            top_k=args.top_k)
            for (qid, _, _), result in zip(chunk, results, strict=True):
                stream.write(to_json(_record(qid, result, args.top_k), ensure_ascii=False) + "\n")
            bar.update(len(chunk))
        bar.close()
        stream.flush()
    elapsed = time.perf_counter() - t0
    rate = len(items) / elapsed if elapsed > 0 else 0.0
    dest = args.output or "stdout"
    print(f"qatune: answered {len(items)} questions in {elapsed:.1f} s ({rate:.1f} questions/s) -> {dest}",
          file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from qatune.inference.loader import BATCH_SIZE
    from qatune.ranges import check_option
    from qatune.tasks import get_task

    if args.top_k < 1:
        raise DataError("--top-k must be >= 1")
    # both modes, before any file is read: one question ignores --batch-size, but a nonsense one is still a typo
    check_option("batch_size", args.batch_size, BATCH_SIZE, integer=True)
    get_task("extractive_qa").check_options({"null_threshold": args.null_threshold})  # a QA verb's QA flag
    if args.input:
        return run_batch(args)
    if args.output:
        raise DataError("--output is for batch mode: give --input questions.jsonl too")
    from qatune.inference.loader import load_pipeline

    if not args.question:
        raise DataError("give --question TEXT (or --input FILE.jsonl for many questions)")
    context = _context(args)
    pipeline = load_pipeline(args.run, device=args.device, null_threshold=args.null_threshold)
    result = pipeline.answer(args.question, context, top_k=args.top_k)
    print_json([a.to_dict() for a in result] if isinstance(result, list) else result.to_dict())
    return 0
