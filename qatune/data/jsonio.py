"""The one place qatune parses JSON that a user hands it (data files, JSONL inputs, ``qatune score`` inputs).

``json.loads`` accepts two kinds of valid JSON that break much later with an unnamed error: nesting deeper
than Python's recursion limit (``RecursionError`` inside the parser) and lone UTF-16 surrogate escapes
such as ``"\\ud800"``, which decode to a ``str`` that cannot be encoded (``UnicodeEncodeError`` in the
tokenizer or when an answer is written). :func:`parse_json` refuses both at once, naming the file, the
line or record and the field, so every reader gives the same one-line :class:`DataError`.
"""

from __future__ import annotations

import gzip
import json
import re
import reprlib
from pathlib import Path
from typing import IO, Any

from qatune.errors import DataError

__all__ = ["open_text", "parse_json", "read_json_file", "short_repr", "unreadable"]

_GZIP_MAGIC = b"\x1f\x8b"
# a \uD800-\uDFFF escape in the raw text: the only way a surrogate gets into a str decoded from UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")

_repr = reprlib.Repr()
_repr.maxlevel = 3  # bounded depth: the repr of a 900-level list in an error message must not recurse
_repr.maxstring = 60
_repr.maxother = 60


def short_repr(value: Any) -> str:
    """A short repr for error messages; safe for deeply nested values and lone surrogates."""
    return _repr.repr(value).encode("utf-8", "backslashreplace").decode("utf-8")


def open_text(path: Path) -> IO[str]:
    """Open as UTF-8 text, transparently un-gzipping (by content, so a mislabelled .json.gz still works)."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def unreadable(label: str, exc: BaseException) -> DataError:
    """The error for a file that cannot be decoded (bad UTF-8, broken gzip, I/O error)."""
    return DataError(
        f"{label}: cannot be read as UTF-8 text ({type(exc).__name__}: {exc}). "
        "The file may be truncated, binary or in another encoding; re-download it or save it as UTF-8."
    )


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; too-deep nesting and lone surrogate escapes become a :class:`DataError`.

    ``where`` starts every message (``"data.json"``, ``"input.jsonl line 3"``). Syntax errors are left as
    ``json.JSONDecodeError`` so callers can add their format's advice.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(
            f"{where}: JSON nested too deeply to read (brackets opened inside each other hundreds of times); "
            "qatune data needs only a few levels. The file is malformed: regenerate it."
        ) from None
    if _has_lone_surrogate(text):
        field, char = _find_surrogate(value)
        raise DataError(
            f"{where}: field {field or '(top level)'} holds a lone UTF-16 surrogate escape "
            f"(\\u{ord(char):04x}), which is not a character. Fix that text (it is usually half of an "
            "emoji cut in two) or remove it."
        )
    return value


def read_json_file(path: Path, label: str) -> Any:
    """A whole JSON file (plain or gzip) through :func:`parse_json`; syntax errors name line and column."""
    try:
        with open_text(path) as fh:
            text = fh.read()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise unreadable(label, exc) from exc
    try:
        return parse_json(text, label)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{label}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}. "
            "Fix the file there (a truncated download or a hand edit is the usual cause) or re-download it."
        ) from exc


def _has_lone_surrogate(text: str) -> bool:
    """True when a real ``\\uD800``-``\\uDFFF`` escape in ``text`` is not half of a high+low pair.

    Works on the raw text (a regex and a loop over the few matches) so that valid pairs, common in files
    written with ``ensure_ascii``, cost no walk over the parsed value.
    """
    real: dict[int, bool] = {}  # offset -> is high surrogate, for escapes not themselves escaped (\\ud800)
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        before = start - 1
        while before >= 0 and text[before] == "\\":
            before -= 1
        if (start - 1 - before) % 2 == 0:  # an even run of backslashes before it: a real escape
            real[start] = match.group()[3].lower() in "89ab"
    for start, high in real.items():
        if high and real.get(start + 6) is not False:
            return True
        if not high and real.get(start - 6) is not True:
            return True
    return False


def _find_surrogate(value: Any) -> tuple[str, str]:
    """(path such as ``data[0].paragraphs[1].qas[2].question``, the surrogate) of the first bad string."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            found = _SURROGATE_CHAR.search(node)
            if found:
                return path, found.group()
        elif isinstance(node, dict):
            for key, item in reversed(list(node.items())):
                found = _SURROGATE_CHAR.search(key)
                if found:
                    return f"{path}.{short_repr(key)}" if path else short_repr(key), found.group()
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(node))))
    return "", "\ud800"  # not reached: _has_lone_surrogate saw one
