"""Where qatune may write: the one rule that train, evaluate and export (and the compare/pipeline steps
that call them) follow before they create, replace or delete anything. See docs/threat-model.md.

1. qatune writes only into a folder that does not exist yet (it creates it), an empty folder, or a folder
   that already holds qatune's own output of the *same kind* (a training run, an export, an evaluation).
   Its own output is recognised by the manifest it writes (:data:`MANIFEST`: the kind and every top-level
   name it wrote) or, for folders written by earlier versions, by their marker files (``qatune.yaml``,
   ``export.json``, a checkpoint) and the fixed file names those versions wrote.
2. It never writes into, inside, or above the folder of a model it reads.
3. ``--overwrite`` removes only names qatune wrote (manifest or known names); a folder that is not
   qatune's is refused even with ``--overwrite``. Files it did not write stay byte-identical.
4. Callers call :func:`check_output` first (no side effects), then validate every input, and only then
   :func:`prepare_output` (creates the folder, removes the previous output on ``--overwrite``).
5. A single output file (``predict --output``) follows the same rule through :func:`check_output_file`:
   never an input file or a file inside a folder the command reads; an existing file is replaced only with
   ``--overwrite`` and only when it is qatune's own; it is written to a temporary name and renamed
   (:func:`atomic_open`), so an interrupted run leaves the previous file as it was.

Why a manifest and not a list of names alone: the tokenizer files a run holds depend on the model, and a
user may keep notes beside a run; the manifest says exactly what qatune may remove.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from qatune.core.jsonio import write_text_atomic  # noqa: F401 - the one atomic writer, used here
from qatune.errors import OutputError

MANIFEST = ".qatune-files.json"  # {"kind": "run" | "export" | "evaluation", "files": [top-level names]}
KINDS = ("run", "export", "evaluation", "compare")
RUN_MARKER = "qatune.yaml"
EXPORT_MARKER = "export.json"

# Written into a run folder by qatune's own orchestrators before `qatune train` starts there; training never
# writes or removes them, so their presence does not make a folder foreign. Names must equal
# qatune.compare.runner TRAIN_YAML / STATUS_FILE / LOG_FILE and qatune.pipelines.steps TRAIN_YAML / METHOD_INFO
# (tests/test_safety_files.py checks).
COMPANIONS = frozenset({"compare_train.yaml", "compare_status.json", "train.log", "pipeline_train.yaml",
                        "pipeline_method.json"})

_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
              "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
              "chat_template.json")
CHECKPOINT_NAMES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")
# what older versions wrote, by kind: what --overwrite may remove from a folder that has no manifest
KNOWN_NAMES: dict[str, frozenset[str]] = {
    "run": frozenset(("qatune.yaml", "metrics.json", "history.json", "predictions.json", "na_probs.json",
                      "config.json", "model.safetensors", "model.safetensors.index.json", "adapter_config.json",
                      "adapter_model.safetensors", "README.md", "generation_config.json")
                     + _TOKENIZER + CHECKPOINT_NAMES),
    "export": frozenset(("model.onnx", "model.onnx.data", "export.json", "qatune.yaml") + _TOKENIZER),
    "evaluation": frozenset(("predictions.json", "metrics.json", "na_probs.json")),
    # a comparison folder (recognised by compare.json): the report files; each method's run is a subfolder
    # (names equal qatune.compare.runner PLAN_FILE and qatune.compare.report REPORT_FILES / PLOTS; tests check)
    "compare": frozenset(("compare.json", "report.md", "report.csv", "report.json", "report.html",
                          "loss_curves.png", "f1_vs_params.png", "train_time.png", "peak_memory.png")),
}
_ARTICLE = {"run": "a training run", "export": "an export", "evaluation": "an evaluation",
            "compare": "a comparison"}
_NOUN = {"run": "run", "export": "export", "evaluation": "evaluation", "compare": "comparison"}


@dataclass
class OutputFolder:
    """What :func:`inspect` found at an output path."""

    path: Path
    exists: bool
    kind: str | None = None  # the kind of qatune output it holds; None: empty, missing or not qatune's
    ours: set[str] = field(default_factory=set)  # top-level names qatune wrote
    others: list[str] = field(default_factory=list)  # names qatune did not write (companions excluded)

    @property
    def empty(self) -> bool:
        return self.kind is None and not self.others


def _names(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        raise OutputError(f"output directory {path} cannot be read ({exc.strerror or exc}); choose another --output"
                          ) from None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of ``path``, or None when absent or not one of ours (a damaged one counts as absent)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("files"), list):
        return None
    return data


def _legacy_kind(path: Path, names: set[str]) -> str | None:
    if EXPORT_MARKER in names or "model.onnx" in names:
        return "export"
    if RUN_MARKER in names or any((path / c / "trainer_state.json").is_file() for c in CHECKPOINT_NAMES):
        return "run"
    if "compare.json" in names:
        return "compare"
    if "metrics.json" in names and names <= KNOWN_NAMES["evaluation"] | COMPANIONS:
        try:
            if "eval_questions" in json.loads((path / "metrics.json").read_text()):
                return "evaluation"
        except (OSError, ValueError, TypeError):
            return None
    return None


def _unwritable_ancestor(path: Path) -> tuple[Path, str]:
    """The nearest existing folder above ``path`` and why qatune cannot create ``path`` there ("" when it can)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        return ancestor, ""
    return ancestor, "a file is in the way" if ancestor.exists() and not ancestor.is_dir() else "permission denied"


def inspect(path: str | os.PathLike) -> OutputFolder:
    """Classify ``path`` without changing anything; raises :class:`OutputError` when it cannot be a folder."""
    out = Path(path).expanduser()
    if not out.exists():
        ancestor, why = _unwritable_ancestor(out)
        if why:
            raise OutputError(f"output directory {out} is not writable ({why}: {ancestor}); choose another --output")
        return OutputFolder(out, exists=False)
    if not out.is_dir():
        raise OutputError(f"output directory {out} is not writable (it exists and is not a directory); "
                          "choose another --output")
    names = set(_names(out))
    manifest = read_manifest(out)
    if manifest is not None:
        kind = manifest["kind"]
        ours = (names & {str(n) for n in manifest["files"]}) | {MANIFEST}
        if kind == "run":
            ours |= names & set(CHECKPOINT_NAMES)
    else:
        kind = _legacy_kind(out, names)
        ours = names & KNOWN_NAMES[kind] if kind else set()
    others = sorted(n for n in names - ours - COMPANIONS if not n.startswith(".qatune-write-test-"))
    return OutputFolder(out, exists=True, kind=kind, ours=ours, others=others)


def _list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(path: str | os.PathLike, kind: str, *, models: Iterable[str | os.PathLike | None] = (),
                 source_run: str | os.PathLike | None = None, overwrite: bool = False,
                 flag: str = "--output") -> OutputFolder:
    """Refuse an output qatune may not write ``kind`` into; changes nothing (call before loading inputs).

    ``models``: local model folders this command reads; the output may not be one of them, lie inside one,
    or contain one. ``source_run``: the run an evaluation reads; the output may not be the run itself or
    contain it (a subfolder such as ``RUN/eval`` is fine: it never touches the run's files).
    """
    folder = inspect(path)
    target = folder.path.resolve()
    for model in models:
        if model is None or not Path(model).expanduser().exists():
            continue  # an alias or hub id: nothing local to protect
        m = Path(model).expanduser().resolve()
        if _inside(target, m) or _inside(m, target):
            where = "is" if target == m else ("is inside" if _inside(target, m) else "contains")
            raise OutputError(f"{flag} {folder.path} {where} the model folder {m} that this command reads; qatune "
                              f"never writes into a model it reads: choose another {flag}")
    if source_run is not None:
        run = Path(source_run).expanduser().resolve()
        if _inside(run, target):
            where = "is" if target == run else "contains"
            hint = f" (e.g. {Path(source_run) / 'eval'})" if kind == "evaluation" else ""
            raise OutputError(f"{flag} {folder.path} {where} the run directory {run} that this command reads; "
                              f"its files (metrics.json, weights) would be replaced: choose another {flag}{hint}")
    if folder.kind is not None and folder.kind != kind:
        raise OutputError(f"{flag} {folder.path} holds {_ARTICLE[folder.kind]} of qatune, not {_ARTICLE[kind]}; "
                          f"choose another {flag}")
    if folder.kind is None and folder.others:
        raise OutputError(
            f"{flag} {folder.path} is not empty and holds no qatune {_NOUN[kind]} ({_list(folder.others)}); qatune "
            f"writes only into a new or empty folder or into its own {_NOUN[kind]}, and --overwrite never deletes files it did "
            f"not write: choose another {flag}")
    clash = sorted(set(folder.others) & KNOWN_NAMES[kind])
    if clash:
        raise OutputError(f"{flag} {folder.path} holds files that qatune did not write but would replace "
                          f"({_list(clash)}); move them away or choose another {flag}")
    if kind == "export" and folder.kind == kind and folder.others and overwrite:
        raise OutputError(f"{flag} {folder.path} holds files that qatune did not write ({_list(folder.others)}); "
                          f"--overwrite replaces the whole export, so move them away or choose another {flag}")
    return folder


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and prove it is writable before any expensive work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".qatune-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory {path} is not writable ({exc.strerror or exc}); "
                          "choose another --output") from None
    return path


def remove_own_files(path: Path, kind: str) -> list[str]:
    """Delete the names qatune wrote for ``kind`` in ``path`` (never anything else); returns them."""
    folder = inspect(path)
    if folder.kind != kind:
        return []
    removed = sorted(folder.ours - {MANIFEST})
    for name in removed:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    return removed


def prepare_output(path: str | os.PathLike, kind: str, overwrite: bool = False, **check: object) -> Path:
    """Check again (the folder may have changed while inputs loaded), create the folder, remove qatune's
    previous output of ``kind`` when ``overwrite``, and start the manifest. Call after validating inputs."""
    folder = check_output(path, kind, overwrite=overwrite, **check)  # type: ignore[arg-type]
    out = ensure_writable_dir(folder.path)
    if overwrite:
        remove_own_files(out, kind)
    record(out, kind, [])
    return out


def require_kind(path: str | os.PathLike, kind: str, *, what: str, hint: str) -> Path:
    """``path`` must already hold qatune's output of ``kind``: for commands that add files to an existing
    output (``qatune report`` into a comparison) and so may never write into a foreign or empty folder."""
    out = Path(path).expanduser()
    if not out.is_dir():
        raise OutputError(f"{out} {'is not a directory' if out.exists() else 'does not exist'}; {hint}")
    folder = inspect(out)
    if folder.kind != kind:
        held = f"holds {_ARTICLE[folder.kind]} of qatune" if folder.kind else (
            "is empty" if folder.empty else f"holds files qatune did not write ({_list(folder.others)})")
        raise OutputError(f"{out} is not a qatune {_NOUN[kind]} (it {held}); {what} writes only into a qatune "
                          f"{_NOUN[kind]} folder, never into another folder: {hint}")
    return out


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      folders: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                      ours: Callable[[Path], bool] | None = None, what: str = "qatune's output",
                      flag: str = "--output") -> Path:
    """Refuse an output *file* qatune may not write; changes nothing (call before loading the model).

    ``inputs``: files the command reads (the output may not be one of them: same resolved path or the same
    file through another link). ``folders``: folders it reads (a run, a model); the output may not lie inside
    one. An existing file is refused unless ``overwrite``, and even then unless ``ours(path)`` says qatune
    wrote it (``what`` names such a file in the message).
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a directory; give a file name such as {out / 'answers.jsonl'}")
    target = out.resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).expanduser()
        same = target == s.resolve()
        if not same and out.exists() and s.exists():
            try:
                same = os.path.samefile(out, s)
            except OSError:
                same = False
        if same:
            raise OutputError(f"{flag} {out} is the input file {s}; writing answers there would destroy the "
                              f"questions: choose another {flag}")
    for folder in folders:
        if folder is None or not Path(folder).expanduser().is_dir():
            continue  # an alias or hub id: nothing local to protect
        f = Path(folder).expanduser().resolve()
        if _inside(target, f):
            raise OutputError(f"{flag} {out} lies inside {f}, a folder this command reads; qatune never writes "
                              f"into a run or model it reads: choose another {flag}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists; pass --overwrite to replace it or choose another "
                              f"{flag}")
        if not out.is_file() or out.is_symlink() or (ours is not None and not ours(out)):
            raise OutputError(f"{flag} {out} exists and is not {what}; --overwrite replaces only a file qatune "
                              f"wrote: move it away or choose another {flag}")
    parent, why = _unwritable_ancestor(out)
    if why:
        raise OutputError(f"{flag} {out} cannot be written ({why}: {parent}); choose another {flag}")
    return out


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kw: Any) -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file beside it, renamed over ``path`` only when the block ends
    without an error: an interruption leaves the previous file (or none) and no partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **kw) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record(path: Path, kind: str, names: Iterable[str]) -> None:
    """Add top-level ``names`` to ``path``'s manifest (creating it for ``kind``)."""
    manifest = read_manifest(path)
    files = set(manifest["files"]) if manifest and manifest["kind"] == kind else set()
    files.update(str(n) for n in names)
    files.discard(MANIFEST)
    write_text_atomic(path / MANIFEST, json.dumps({"kind": kind, "files": sorted(files)}, indent=1))
