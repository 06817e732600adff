#!/usr/bin/env bash
# Run the test suite (offline) in .venv (or $QATUNE_VENV). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"${QATUNE_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
