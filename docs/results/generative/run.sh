#!/usr/bin/env bash
# The generative-QA comparison of docs/results/generative/README.md, as run (2 CPU cores shared with four
# other jobs: load average ~15). SQuAD data from ../shared/data/squad (never committed); runs go to runs/
# (not committed); only the metrics.json files are copied here (predictions hold text from the CC BY-SA
# contexts).   STEPS="minilm gen-train gen-v1.1 ..." bash docs/results/generative/run.sh
set -euo pipefail
D=../shared/data/squad
N=${N:-32}            # training questions: the first N of train-v1.1
E=${E:-50}            # evaluation questions: the first E of dev-v1.1 and of dev-v2.0
R=${R:-runs/gen-compare}
OUT=${OUT:-docs/results/generative}
STEPS=${STEPS:-"zs-v1.1 minilm gen-train gen-v1.1 zs-v2.0 gen-v2.0"}
q() { /usr/bin/time -f "%e s wall, %M KB peak RSS" nice -n 5 python -m qatune "$@"; }
file_of() { [ "$1" = v1.1 ] && echo "$D/dev-v1.1.json.gz" || echo "$D/dev-v2.0.reconstructed.json.gz"; }
mkdir -p "$R" "$OUT"
for step in $STEPS; do
  case $step in
    zs-*) v=${step#zs-}
      q evaluate smollm2 --task generative --data "$(file_of "$v")" --max-eval-samples "$E" --batch-size 16 \
        --output "$R/smollm2-zero-shot-$v" --no-progress
      cp "$R/smollm2-zero-shot-$v/metrics.json" "$OUT/smollm2-zero-shot-$v.json" ;;
    gen-train)
      q train --config configs/generative_smollm2_lora.yaml --max-train-samples "$N" --no-eval \
        --output "$R/smollm2-lora" --no-progress
      cp "$R/smollm2-lora/metrics.json" "$OUT/smollm2-lora-train.json" ;;
    gen-v*) v=${step#gen-}
      q evaluate "$R/smollm2-lora" --data "$(file_of "$v")" --max-eval-samples "$E" --batch-size 16 \
        --output "$R/smollm2-lora/eval-$v" --no-progress
      cp "$R/smollm2-lora/eval-$v/metrics.json" "$OUT/smollm2-lora-$v.json" ;;
    minilm)
      for m in full lora; do
        q train --model minilm --method "$m" --train "$D/train-v1.1.reconstructed.json.gz" --max-train-samples "$N" \
          --epochs 1 --batch-size 4 --no-eval --no-tracking --seed 42 --output "$R/minilm-$m" --no-progress
        for v in v1.1 v2.0; do
          q evaluate "$R/minilm-$m" --data "$(file_of "$v")" --max-eval-samples "$E" \
            --output "$R/minilm-$m/eval-$v" --no-progress
          cp "$R/minilm-$m/eval-$v/metrics.json" "$OUT/minilm-$m-$v.json"
        done
      done ;;
  esac
done
