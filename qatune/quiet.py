"""Only qatune speaks: the libraries' warnings, INFO logs and progress bars stay off unless asked for.

Every command would otherwise carry the noise of the libraries underneath: deprecation warnings that
transformers raises about PEFT's calls, MLflow's and alembic's INFO lines when a tracking store is created,
transformers' weight-loading bars, huggingface_hub's download bars. None of it is something a qatune user
can act on, and it buries qatune's own lines. ``qatune --verbose`` or ``QATUNE_VERBOSE=1`` shows it again.

Problems a library reports that *do* matter (weights missing from a checkpoint) are not lost: qatune
rephrases them where they arise (:func:`report_loading`).

The CLI calls :func:`apply` first thing. It also sets environment variables that the libraries read when
they are imported, so the processes qatune launches (``qatune compare``'s training subprocesses, kfp.local
steps, torchrun workers started from a quiet shell) inherit the same choice. The Python API
(``qatune.train`` etc.) wraps its calls in :func:`quieted`, which restores the caller's settings after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Iterator

VERBOSE_ENV = "QATUNE_VERBOSE"

# read by the libraries at import time, in this process and in every process it starts
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::PendingDeprecationWarning",
}

# loggers of libraries that log at INFO by default or configure their own handlers
QUIET_LOGGERS = ("mlflow", "alembic", "transformers", "huggingface_hub", "datasets", "peft", "accelerate",
                 "urllib3", "httpx", "torch.distributed", "torch.onnx", "onnxruntime", "kfp")

DEPRECATIONS = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


def is_verbose() -> bool:
    """``QATUNE_VERBOSE`` set to anything but empty/0/false/no."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _show_library_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                          file: Any = None, line: str | None = None) -> None:
    """A non-deprecation warning from a library: one qatune line naming the library, no source excerpt."""
    parts = filename.replace("\\", "/").split("/")
    origin = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")),
                  parts[-1])
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"qatune: note from {origin.removesuffix('.py')}: {text}", file=file or sys.stderr)


def _filter_warnings() -> None:
    for category in DEPRECATIONS:
        warnings.filterwarnings("ignore", category=category)
    warnings.showwarning = _show_library_warning


def _hf_progress_bars(enabled: bool) -> bool | None:
    """Switch transformers' (and so its weight-loading) bars; returns the previous state, None if not imported."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is None:
        return None
    before = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        # huggingface_hub warns on enable when HF_HUB_DISABLE_PROGRESS_BARS was set as it was imported (by the
        # user, or by quieted() itself when the hub is first imported inside a call); its bars stay off then
        warnings.simplefilter("ignore")
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    return before


def apply(verbose: bool | None = None) -> bool:
    """Silence third-party output for the rest of this process and the processes it starts.

    ``verbose=True`` (``--verbose``) instead exports ``QATUNE_VERBOSE=1`` and drops the quiet values an
    outer qatune process exported, so child processes are verbose too. Quiet mode keeps variables the user
    set. Returns whether the run is verbose.
    """
    verbose = is_verbose() if verbose is None else verbose
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        for key, value in QUIET_ENV.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        return True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    _filter_warnings()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name == "transformers" else logging.WARNING)
    _hf_progress_bars(False)
    return False


@contextlib.contextmanager
def quieted() -> Iterator[None]:
    """The same silence for one API call, restoring the caller's warnings, loggers, bars and environment."""
    if is_verbose():
        yield
        return
    env = {key: os.environ.get(key) for key in QUIET_ENV}
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    bars = _hf_progress_bars(False)
    with warnings.catch_warnings():
        try:
            apply(verbose=False)
            yield
        finally:
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if bars is None:  # transformers was imported during the call: bars were on by default
                bars = True
            _hf_progress_bars(bars)


def report_loading(path: str, model: Any, info: dict[str, Any], head_expected: bool) -> None:
    """Say in qatune's words what transformers' loading report says matters.

    A task head missing from a base encoder is expected when training starts (a new head is initialised
    and trained) and when an adapter brings its own; weights missing anywhere else, or a head missing from
    a trained model, mean the model answers with random weights.
    """
    missing = sorted(info.get("missing_keys") or [])
    prefix = getattr(model, "base_model_prefix", "") or ""
    body = [k for k in missing if prefix and k.startswith(prefix + ".")]
    head = [k for k in missing if k not in body]
    if body:
        shown = ", ".join(body[:3]) + (", ..." if len(body) > 3 else "")
        print(f"qatune: warning: {len(body)} weights of the encoder are not in {path} and were initialised "
              f"randomly ({shown}); the checkpoint does not match its config, so the model's output is not "
              "meaningful until those weights are trained", file=sys.stderr)
    if head and head_expected:
        print(f"qatune: warning: {path} has no trained task head ({', '.join(head[:4])}); it was initialised "
              "randomly, so its answers are meaningless: point at the run directory that training wrote",
              file=sys.stderr)
    for msg in info.get("error_msgs") or []:
        print(f"qatune: warning: loading {path}: {str(msg).strip().splitlines()[0]}", file=sys.stderr)
