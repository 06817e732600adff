#!/usr/bin/env bash
# The generative-QA comparison of docs/results/generative/README.md, as run (2 shared CPU cores).
# SQuAD data from ../shared/data/squad (never committed); runs go to runs/ (not committed); only the
# metrics.json files are copied here (predictions hold text from the CC BY-SA contexts).
set -euo pipefail
D=../shared/data/squad
N=${N:-64}            # training questions (the first N of train-v1.1)
E=${E:-50}            # evaluation questions (the first E of dev-v1.1 and of dev-v2.0)
R=${R:-runs/gen-compare}
OUT=docs/results/generative
q() { /usr/bin/time -f "%e s wall, %M KB peak RSS" nice -n 5 python -m qatune "$@"; }
mkdir -p "$R" "$OUT"
for v in v1.1:dev-v1.1.json.gz v2.0:dev-v2.0.reconstructed.json.gz; do
  name=${v%%:*}; file=${v#*:}
  q evaluate smollm2 --task generative --data "$D/$file" --max-eval-samples "$E" --batch-size 16 \
    --output "$R/smollm2-zero-shot-$name" --no-progress
  cp "$R/smollm2-zero-shot-$name/metrics.json" "$OUT/smollm2-zero-shot-$name.json"
done
q train --config configs/generative_smollm2_lora.yaml --max-train-samples "$N" --no-eval --output "$R/smollm2-lora" \
  --no-progress
for v in v1.1:dev-v1.1.json.gz v2.0:dev-v2.0.reconstructed.json.gz; do
  name=${v%%:*}; file=${v#*:}
  q evaluate "$R/smollm2-lora" --data "$D/$file" --max-eval-samples "$E" --batch-size 16 \
    --output "$R/smollm2-lora/eval-$name" --no-progress
  cp "$R/smollm2-lora/eval-$name/metrics.json" "$OUT/smollm2-lora-$name.json"
done
for m in full lora; do
  q train --model minilm --method "$m" --train "$D/train-v1.1.reconstructed.json.gz" --max-train-samples "$N" \
    --epochs 1 --batch-size 4 --no-eval --no-tracking --seed 42 --output "$R/minilm-$m" --no-progress
  for v in v1.1:dev-v1.1.json.gz v2.0:dev-v2.0.reconstructed.json.gz; do
    name=${v%%:*}; file=${v#*:}
    q evaluate "$R/minilm-$m" --data "$D/$file" --max-eval-samples "$E" --output "$R/minilm-$m/eval-$name" \
      --no-progress
    cp "$R/minilm-$m/eval-$name/metrics.json" "$OUT/minilm-$m-$name.json"
  done
done
