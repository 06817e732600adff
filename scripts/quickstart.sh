#!/usr/bin/env bash
# One command: set up .venv, fine-tune the embedded MiniLM with LoRA on the bundled sample, evaluate it,
# and answer a few questions.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SETUP_LOG=$(mktemp "${TMPDIR:-/tmp}/qatune-setup-log.XXXXXX")
echo "quickstart: setting up .venv (pinned versions from requirements-lock.txt; log: $SETUP_LOG)"
if ! QATUNE_BROWSER=0 bash scripts/setup.sh > "$SETUP_LOG" 2>&1; then
  cat "$SETUP_LOG" >&2
  echo "quickstart: setup failed (output above, also in $SETUP_LOG)" >&2
  exit 1
fi
rm -f "$SETUP_LOG"
Q=.venv/bin/qatune
$Q train --config configs/quickstart.yaml --no-progress
$Q evaluate runs/quickstart --data qatune/resources/sample/dev.json --output runs/quickstart/eval --no-progress
CTX="The Harbor Street Library opened in 1962 with four thousand books donated by the Okonjo family. \
It moved to a larger brick building on Mill Road in 1988, and today its head librarian is Petra Lund."
for q in "When did the Harbor Street Library open?" "Who donated the first books?" "Who is the head librarian?"; do
  echo "Q: $q"
  $Q predict runs/quickstart --question "$q" --context "$CTX"
done
