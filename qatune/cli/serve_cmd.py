"""``qatune serve RUN``: an HTTP server (FastAPI + uvicorn) answering questions, with a web page at ``/``.

    qatune serve runs/lora --port 8000
    curl -s localhost:8000/v1/answer -d '{"question": "...", "context": "..."}'

Concurrent requests are micro-batched into one model call; binds 127.0.0.1 unless told otherwise. Ctrl+C /
SIGTERM stop accepting connections, answer the requests in flight, then exit. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

from qatune.cli.common import add_debug
from qatune.errors import ConfigError

_LIMIT_FLAGS = [  # (flag, settings field, type, help)
    ("--max-batch", "max_batch", int, "most windows computed in one step, shared by the waiting requests "
                                      "(default 32)"),
    ("--max-wait-ms", "max_wait_ms", float, "how long a step waits for requests still being read, in ms "
                                            "(0-1000, default 5)"),
    ("--batch-size", "batch_size", int, "windows per forward pass inside a step (default 32)"),
    ("--request-step-windows", "request_step_windows", int, "most windows of one request in one step (default 1): "
                                                            "lower lets small requests pass long ones sooner"),
    ("--max-body-bytes", "max_body_bytes", int, "largest request body (default 1 MiB) -> 413"),
    ("--max-context-chars", "max_context_chars", int, "longest context in characters (default 100000) -> 413"),
    ("--max-question-chars", "max_question_chars", int, "longest question in characters (default 2000) -> 413"),
    ("--max-questions", "max_questions", int, "most questions in one request (default 64) -> 413"),
    ("--max-top-k", "max_top_k", int, "largest top_k a request may ask for (default 20)"),
    ("--max-request-chars", "max_request_chars", int, "most context characters in one request, all questions "
                                                      "together (default 100000) -> 413"),
    ("--max-request-windows", "max_request_windows", int, "most windows (max_seq_length tokens, doc_stride "
                                                          "overlap) one request may need (default 128) -> 413"),
    ("--drain-timeout", "drain_timeout_s", float, "at shutdown, seconds queued work may take (default 30)"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained run over HTTP (API + web page)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (PyTorch or exported)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in this environment variable (Authorization: Bearer / X-API-Key)")
    p.add_argument("--no-batching", action="store_true", help="answer each request on its own (for comparison)")
    for flag, dest, typ, help_text in _LIMIT_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_text,
                       metavar="MS" if dest == "max_wait_ms" else "S" if dest == "drain_timeout_s" else "N")
    p.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                   help="at shutdown, seconds in-flight requests get before they are cancelled (default 30)")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 no-answer threshold override")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    add_debug(p)
    p.set_defaults(handler=run)


def build_settings(args: argparse.Namespace) -> Any:
    from qatune.serve.app import ServeSettings

    values = {dest: getattr(args, dest) for _, dest, _, _ in _LIMIT_FLAGS if getattr(args, dest) is not None}
    values["batching"] = not args.no_batching
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "")
        if not key.strip():
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty; "
                              f"export {args.api_key_env}=<secret> first")
        values["api_key"] = key.strip()
    try:
        return ServeSettings(**values)
    except ValueError as exc:  # "max_batch must be >= 1" -> "--max-batch must be >= 1"
        message = str(exc)
        for flag, dest, _, _ in _LIMIT_FLAGS:
            message = message.replace(dest, flag) if message.startswith(dest + " ") else message
        raise ConfigError(message) from None


def check_server_flags(args: argparse.Namespace) -> None:
    """Refuse nonsense numbers before the model loads (NaN compares as neither too small nor too big)."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port (0-65535)")
    if not math.isfinite(args.graceful_timeout) or args.graceful_timeout < 0:
        raise ConfigError(f"--graceful-timeout must be a finite number of seconds >= 0, got {args.graceful_timeout:g}")
    if args.null_threshold is not None and not math.isfinite(args.null_threshold):
        raise ConfigError(f"--null-threshold must be a finite number, got {args.null_threshold:g}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")


SWITCH_INTERVAL_S = 0.0005


def run(args: argparse.Namespace) -> int:
    # oneDNN caches a compiled kernel per input shape (1024 by default); a server sees a new batch shape
    # almost every call, so its RSS creeps up for minutes. 128 keeps the common shapes at the same
    # speed (docs/benchmarks.md). Read when oneDNN first runs, so setting it here is early enough.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
    try:
        import uvicorn

        from qatune.serve.app import create_app
    except ModuleNotFoundError as exc:
        raise ConfigError(f"qatune serve needs the 'serve' extra ({exc.name} is missing): "
                          "pip install 'qatune[serve]'") from None
    from qatune.inference.loader import load_pipeline
    from qatune.runtime import set_threads

    check_server_flags(args)
    settings = build_settings(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"qatune: warning: serving on {args.host} without an API key; anyone who can reach this machine "
              "can use it (see --api-key-env)", file=sys.stderr)
    set_threads(args.threads)
    # The model thread takes the GIL back after every op; with the default 5 ms switch interval it waits behind
    # the HTTP thread each time. 0.5 ms: +9% requests/s under 32 clients (docs/benchmarks.md).
    sys.setswitchinterval(float(os.environ.get("QATUNE_SWITCH_INTERVAL", SWITCH_INTERVAL_S)))
    pipeline = load_pipeline(args.run, device=args.device, null_threshold=args.null_threshold)
    app = create_app(pipeline, settings, run_dir=args.run)
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"qatune: serving {args.run} on http://{host}:{args.port}/ (API: POST {app.state.route}, docs: /docs); "
          "Ctrl+C to stop", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=not args.no_access_log,
                timeout_graceful_shutdown=args.graceful_timeout)
    return 0
