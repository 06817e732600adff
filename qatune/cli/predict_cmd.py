"""``qatune predict RUN``: predictions of a trained run, for one item given as flags or many from a file.

The single-item flags are the run's task's request fields (``Task.request_fields``): ``--question`` and
``--context`` for extractive QA, ``--text`` for classification, ... (each also as ``--FIELD-file PATH``, read
as UTF-8 text). Their strings go to ``Task.parse_request`` and the prediction is printed as the task's
``format_response`` JSON::

    qatune predict runs/lora --question "Who ...?" --context-file article.txt [--top-k 3]

Many items from a JSON Lines file (one request object a line, ``id`` optional: the line number) or a JSON
array of request objects, with a progress bar; each output line is ``{"id", ...}`` with the task's fields
(extractive QA: ``answer``, ``score``, ``start``, ``end``, ``no_answer``, plus ``answers`` with ``--top-k`` > 1)::

    qatune predict runs/lora --input questions.jsonl --output answers.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from qatune.cli.common import add_debug, print_json, to_json
from qatune.errors import ConfigError, DataError, OutputError

CHUNK = 256  # items per predict_batch call in --input mode: bounded memory, a moving progress bar
# options of this verb: a task's request field of the same name is reachable through --input only
_RESERVED = {"run", "input", "output", "overwrite", "top_k", "batch_size", "null_threshold", "device", "no_progress",
             "debug", "verbose", "help"}


def request_flags() -> dict[str, list[str]]:
    """Request field -> the registered tasks that have it (``--question`` and ``--context`` are extractive
    QA's): every task's fields become flags; two tasks with the same field share its flag."""
    from qatune.tasks import get_task, task_names

    owners: dict[str, list[str]] = {}
    for name in task_names():
        for field_name in get_task(name).request_fields:
            if field_name.replace("-", "_") not in _RESERVED:
                owners.setdefault(field_name, []).append(name)
    return owners


def _dest(field_name: str) -> str:
    return "field__" + field_name.replace("-", "_")


def register(sub: argparse._SubParsersAction) -> None:
    from qatune.tasks import get_task

    p = sub.add_parser("predict", help="predict with a trained run (one item from flags, many from a file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (PyTorch or exported)")
    for field_name, owners in request_flags().items():
        flag = field_name.replace("_", "-")
        described = get_task(owners[0]).request_fields[field_name]
        group = p.add_mutually_exclusive_group()
        group.add_argument(f"--{flag}", dest=_dest(field_name), default=None,
                           help=f"{described} ({', '.join(owners)})")
        group.add_argument(f"--{flag}-file", dest=_dest(field_name) + "__file", default=None, metavar="PATH",
                           help=f"read --{flag} from this UTF-8 text file")
    p.add_argument("--input", help="JSON Lines file of request objects (or a JSON array of them): batch mode")
    p.add_argument("--output", help="with --input: write the predictions here as JSONL (default: stdout); never "
                   "the input file or a file inside the run or its model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output file, if it is a predictions file qatune wrote")
    p.add_argument("--top-k", type=int, default=1, help="return the k best answers (tasks with ranked answers)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default 64)")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 no-answer threshold override (QA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar in --input mode")
    add_debug(p)
    p.set_defaults(handler=run)


def _given_fields(args: argparse.Namespace) -> dict[str, str]:
    """The request-field flags given on the command line (``--FIELD-file`` read into the field)."""
    out: dict[str, str] = {}
    for field_name in request_flags():
        value = getattr(args, _dest(field_name), None)
        file_ = getattr(args, _dest(field_name) + "__file", None)
        if file_ is not None:
            path = Path(file_)
            label = field_name.replace("_", "-")
            try:
                value = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DataError(f"{label} file {path} does not exist") from None
            except UnicodeDecodeError:
                raise DataError(f"{label} file {path} is not UTF-8 text") from None
            except OSError as exc:
                raise DataError(f"{label} file {path} cannot be read ({exc.strerror or exc})") from None
        if value is not None:
            out[field_name] = value
    return out


def _flag_names(fields: Any) -> str:
    return ", ".join(f"--{f.replace('_', '-')}" for f in fields)


def _check_fields_belong(task: Any, given: dict[str, str]) -> None:
    """A request flag the run's task does not have is refused, naming the tasks that have it."""
    owners = request_flags()
    for field_name in given:
        if field_name not in task.request_fields:
            raise ConfigError(f"--{field_name.replace('_', '-')} is a request field of task(s) "
                              f"{', '.join(owners.get(field_name, []))}, not of this run's task '{task.name}' "
                              f"(its fields: {_flag_names(task.request_fields)})")


# -- batch mode ---------------------------------------------------------------------------------------
def _item_id(obj: dict[str, Any], default: int, where: str, seen: dict[Any, int], unit: str) -> Any:
    qid = obj.get("id", default)
    if qid is None:
        qid = default
    if isinstance(qid, bool) or not isinstance(qid, (str, int, float)):
        raise DataError(f"{where}: field 'id' must be a string or a number, got {type(qid).__name__}")
    if isinstance(qid, float) and not math.isfinite(qid):
        raise DataError(f"{where}: field 'id' is {qid}; give a string or a finite number")
    if qid in seen:
        raise DataError(f"{where}: id {qid!r} was already used on {unit} {seen[qid]}; ids must be unique")
    seen[qid] = default
    return qid


def read_items(path: str | os.PathLike) -> list[tuple[Any, dict[str, Any], str]]:
    """``(id, request object without id, where)`` per non-blank JSONL line (or per element of a JSON array);
    a line that is not JSON, not an object, or has a bad or repeated id is a DataError naming file and line.
    The task checks the fields (:func:`parse_items`) once the run's task is known."""
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
    seen: dict[Any, int] = {}
    items: list[tuple[Any, dict[str, Any], str]] = []
    if raw.lstrip().startswith(b"["):  # one JSON array of request objects
        try:
            data = parse_json(raw.decode("utf-8"), str(src))
        except UnicodeDecodeError:
            raise DataError(f"{src}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{src}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        for n, obj in enumerate(data, start=1):
            where = f"{src} item {n}"
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object of request fields, got {type(obj).__name__}")
            qid = _item_id(obj, n, where, seen, "item")
            items.append((qid, {k: v for k, v in obj.items() if k != "id"}, where))
        return items
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
                            "JSON object of request fields, e.g. "
                            '{"id": ..., "question": ..., "context": ...}') from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object of request fields, got {type(obj).__name__}")
        qid = _item_id(obj, n, where, seen, "line")
        items.append((qid, {k: v for k, v in obj.items() if k != "id"}, where))
    return items


def parse_items(task: Any, items: list[tuple[Any, dict[str, Any], str]]) -> None:
    """Every item through the task's ``parse_request`` before the model loads (errors name the line)."""
    for _, obj, where in items:
        task.parse_request(obj, where)


def read_questions_jsonl(path: str | os.PathLike) -> list[tuple[Any, str, str]]:
    """``(id, question, context)`` per line of an extractive-QA request file (the reader before tasks)."""
    from qatune.tasks import get_task

    task = get_task("extractive_qa")
    out = []
    for qid, obj, where in read_items(path):
        question, context = task.parse_request(obj, where)
        out.append((qid, question, context))
    return out


def _ours(task: Any) -> Any:
    """Whether an existing file is a predictions file qatune wrote for this task (empty, or its first line is
    one record: an ``id`` with the task's ``response_keys``, or else without any request field): the only
    kind of existing file ``--overwrite`` may replace."""
    keys = frozenset(getattr(task, "response_keys", ()) or ())
    fields = set(task.request_fields)

    def check(path: Path) -> bool:
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
        if not isinstance(rec, dict) or "id" not in rec:
            return False
        return keys <= set(rec) if keys else len(rec) > 1 and not fields & set(rec)

    return check


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


def _check_output(args: argparse.Namespace, task: Any) -> Path | None:
    """qatune's write rule (qatune/rundir.py) for ``--output``, applied before the model loads: never the
    input, nothing inside the run or its model, an existing file only with --overwrite and only if ours."""
    from qatune import rundir

    if args.output is None:
        return None
    return rundir.check_output_file(args.output, inputs=[args.input], folders=_folders_read(args.run),
                                    overwrite=args.overwrite, ours=_ours(task),
                                    what="an answers file of qatune predict")


@contextmanager
def _output_stream(out: Path | None, overwrite: bool, task: Any) -> Iterator[IO[str]]:
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
            rundir.check_output_file(out, overwrite=overwrite, ours=_ours(task),
                                     what="an answers file of qatune predict")
    except OSError as exc:
        raise OutputError(f"--output {out} cannot be written ({exc.strerror or exc}); choose another path") from None


def _predict_options(predictor: Any, task: Any, top_k: int) -> dict[str, Any]:
    """``top_k`` for predictors that rank answers; asking another task for k > 1 is refused."""
    if "top_k" in inspect.signature(predictor.predict_batch).parameters:
        return {"top_k": top_k}
    if top_k != 1:
        raise ConfigError(f"--top-k: the task '{task.name}' returns one prediction per item; drop --top-k")
    return {}


def run_batch(args: argparse.Namespace, task: Any, items: list[tuple[Any, dict[str, Any], str]]) -> int:
    from tqdm.auto import tqdm

    from qatune.inference.loader import load_predictor
    from qatune.tasks.base import format_record

    parse_items(task, items)  # every item is checked before the model loads
    out = _check_output(args, task)  # nothing is created or replaced before the input and the output are checked
    predictor = load_predictor(args.run, device=args.device, null_threshold=args.null_threshold)
    options = _predict_options(predictor, task, args.top_k)
    t0 = time.perf_counter()
    with _output_stream(out, args.overwrite, task) as stream:
        bar = tqdm(total=len(items), desc="answering", unit="q", disable=args.no_progress, file=sys.stderr)
        for lo in range(0, len(items), CHUNK):
            chunk = items[lo: lo + CHUNK]
            results = predictor.predict_batch([obj for _, obj, _ in chunk], batch_size=args.batch_size, **options)
            for (qid, _, _), result in zip(chunk, results, strict=True):
                stream.write(to_json({"id": qid, **format_record(task, result)}, ensure_ascii=False) + "\n")
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
    from qatune.inference.loader import BATCH_SIZE, run_task
    from qatune.ranges import check_option

    if args.top_k < 1:
        raise DataError("--top-k must be >= 1")
    # both modes, before any file is read: a nonsense batch size is a typo in either
    check_option("batch_size", args.batch_size, BATCH_SIZE, integer=True)
    if args.input:
        given = {f for f in request_flags() if getattr(args, _dest(f), None) is not None
                 or getattr(args, _dest(f) + "__file", None) is not None}
        if given:
            raise DataError(f"--input reads the request fields from the file; drop {_flag_names(sorted(given))}")
        items = read_items(args.input)  # the file's format first: no run needed to see a broken line
        task = run_task(args.run)
        task.check_options({k: v for k, v in {"null_threshold": args.null_threshold}.items() if v is not None})
        return run_batch(args, task, items)
    if args.output:
        raise DataError("--output is for batch mode: give --input FILE.jsonl too")
    task = run_task(args.run)
    task.check_options({k: v for k, v in {"null_threshold": args.null_threshold}.items() if v is not None})
    payload = _given_fields(args)
    _check_fields_belong(task, payload)
    missing = [f for f in task.request_fields if f not in payload]
    if missing:
        fields = _flag_names(task.request_fields)
        raise DataError(f"give --{missing[0].replace('_', '-')} TEXT ({task.name} needs {fields}; or --input FILE.jsonl "
                        "for many items)")
    task.parse_request(payload, "command line")  # before the model loads
    from qatune.inference.loader import load_predictor

    predictor = load_predictor(args.run, device=args.device, null_threshold=args.null_threshold)
    options = _predict_options(predictor, task, args.top_k)
    (result,) = predictor.predict_batch([payload], batch_size=args.batch_size, **options)
    print_json(task.format_response(result))
    return 0
