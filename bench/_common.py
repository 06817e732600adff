"""Shared helpers for the benchmark scripts: data paths, child-process timing, table printing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; QATUNE_SHARED points elsewhere (e.g. a copy carried to a GPU machine)
SHARED = Path(os.environ.get("QATUNE_SHARED") or REPO.parent / "shared")
SQUAD = SHARED / "data" / "squad"
TRAIN = SQUAD / "train-v1.1.reconstructed.json.gz"
DEV = SQUAD / "dev-v1.1.json.gz"
STACKOVERFLOW = SHARED / "data" / "stackoverflow" / "train-sample.partial.csv.gz"


def require_squad() -> None:
    for path in (TRAIN, DEV):
        if not path.is_file():
            sys.exit(f"SQuAD data not found at {path}: the benchmarks read ../shared/data/squad beside the checkout")


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; return wall time, peak RSS (this child only, via wait4) and its stdout."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=full_env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark child failed ({code}): {' '.join(cmd)}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def last_json(text: str) -> dict[str, Any]:
    """The last JSON object a child printed (children print their result as JSON at the end)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 else start + 1
    return json.loads(text[start:])


def print_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    return table
