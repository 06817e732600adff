#!/usr/bin/env bash
# Refresh requirements-lock.txt, the exact versions scripts/setup.sh installs, as a deliberate, tested step:
#
#   bash scripts/lock.sh --upgrade   # newest versions pyproject.toml's ranges allow
#   bash scripts/lock.sh             # after editing pyproject.toml / requirements-lock.in: keep the other pins
#   bash scripts/lock.sh --upgrade -- -x tests/test_methods.py   # arguments after -- go to pytest
#
# It resolves with pip-tools (pip-compile) in a throwaway venv, installs the candidate into another throwaway
# venv with scripts/setup.sh, runs the whole suite there, and only if it passes writes requirements-lock.txt
# (then commit it). On a failure the lock is left as it was and the candidate's path is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS="pip-tools==7.6.2"
UPGRADE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --upgrade) UPGRADE=(--upgrade); shift ;;
    --) shift; break ;;
    *) echo "usage: bash scripts/lock.sh [--upgrade] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qatune-lock.XXXXXX")
echo "lock: working in $WORK"
python3 -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q "$PIP_TOOLS" > "$WORK/tools.log" 2>&1 \
  || { cat "$WORK/tools.log"; exit 1; }
[ ! -f requirements-lock.txt ] || cp requirements-lock.txt "$WORK/lock.txt"  # kept unless --upgrade
echo "lock: resolving ${UPGRADE[*]:-(keeping current pins)}"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh --upgrade" "$WORK/tools/bin/pip-compile" -q "${UPGRADE[@]}" --strip-extras \
  --extra minilm --extra serve --extra export --extra pipelines --extra generative --extra tensorboard --extra dev \
  --unsafe-package torch --no-emit-index-url --no-emit-find-links \
  -o "$WORK/lock.txt" pyproject.toml requirements-lock.in > "$WORK/compile.log" 2>&1 \
  || { grep -v "^WARNING: Location" "$WORK/compile.log"; exit 1; }
pins() { grep -sE '^[A-Za-z0-9._-]+==' "$1" | sort || true; }
echo "lock: changes against requirements-lock.txt:"
diff <(pins requirements-lock.txt) <(pins "$WORK/lock.txt") | grep '^[<>]' || echo "  (none)"
echo "lock: installing the candidate into $WORK/venv"
QATUNE_VENV="$WORK/venv" QATUNE_LOCK="$WORK/lock.txt" QATUNE_BROWSER=0 bash scripts/setup.sh > "$WORK/setup.log" 2>&1 \
  || { cat "$WORK/setup.log"; echo "lock: setup failed; requirements-lock.txt unchanged"; exit 1; }
echo "lock: running the test suite against it"
if QATUNE_VENV="$WORK/venv" bash scripts/test.sh "$@"; then
  cp "$WORK/lock.txt" requirements-lock.txt
  rm -rf "$WORK"
  echo "lock: suite passed; requirements-lock.txt updated (review with git diff, then commit it)"
else
  rm -rf "$WORK/tools" "$WORK/venv"
  echo "lock: suite FAILED against the candidate; requirements-lock.txt unchanged. Candidate: $WORK/lock.txt" >&2
  exit 1
fi
