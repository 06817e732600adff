#!/usr/bin/env bash
# The speed and accuracy checks that need a CUDA GPU, as one command (a lent GPU machine is held by the minute):
#
#   QATUNE_SHARED=/path/to/shared bench/gpu_suite.sh MODEL_DIR OUT_DIR
#
# MODEL_DIR: MiniLM as a Hugging Face directory (or the alias minilm where its package is installed);
# QATUNE_SHARED: the folder holding data/squad and data/stackoverflow (default: ../shared beside the checkout).
# Steps, most wanted first, each under its own time limit so a slow one cannot eat the others' time:
#   native   bench/native_e2e.py: --backend native vs hf, 2,000-question training + 1,000-question evaluation (#16)
#   classify bench/classify_speed.py on the 10,122 canonical train rows (PostId % 10 in 2-3), 128 tokens (#14)
#   trainref bench/train_speed.py: qatune defaults vs the run_qa.py-style reference (#16)
#   seeds    Stack Overflow full + concat at that budget, fp32, seeds 43 and 44, scored on the test split (#14)
# STEPS picks and orders them (also classify-fp32, trainref-fp32: qatune's side in fp32); ROUNDS: native_e2e's
# rounds (2 alternates which backend goes first, so a cold first process does not favour one side).
# SMALL=1 shrinks every step to a smoke test (a CPU dry run of this script before the GPU is asked for).
# How the 2026-11-30 H200 run got its inputs (docs/benchmarks.md): MiniLM's directory with its weights saved as fp16
# (half the size a call may carry) and widened back on the machine into /tmp/m,
#   python3 -c "from safetensors.torch import load_file as l, save_file as s; s({k: v.float() if
#     v.is_floating_point() else v for k, v in l('.gpu/model/model.fp16.safetensors').items()}, '/tmp/m/model.safetensors')"
# beside its config and tokenizer files; the data as the needed part of ../shared in .gpu/shared (git-ignored).
set -u
M=${1:?MODEL_DIR}
OUT=${2:?OUT_DIR}
SHARED=${QATUNE_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
export QATUNE_SHARED=$SHARED HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}
W=${WORK:-/tmp/qatune-gpu}
mkdir -p "$W" "$OUT"
SO=$SHARED/data/stackoverflow/train-sample.partial.csv.gz
if [ "${SMALL:-0}" = 1 ]; then
  QA=(--max-train-samples 48 --max-eval-samples 24)
  CLS=(--train-split 2 --validation-split 1)
  SO_SPLIT=(classify.split_modulo=100 classify.train_split=2 classify.validation_split=1 classify.test_split=0)
  SEEDS=(43)
else
  QA=(--max-train-samples 2000 --max-eval-samples 1000)
  CLS=(--train-split 2,3,12,13,22,23,32,33,42,43,52,53,62,63,72,73,82,83,92,93
       --validation-split 1,11,21,31,41,51,61,71,81,91)
  SO_SPLIT=(classify.split_modulo=10 classify.train_split=2-3 classify.validation_split=1 classify.test_split=0)
  SEEDS=(43 44)
fi

step() {  # step NAME LIMIT_S COMMAND...: run it, keep its log, print its tail
  local name=$1 limit=$2
  shift 2
  echo "== $name: $(date -u +%T), limit ${limit}s"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "-- $name: rc=$? after $((SECONDS - t0))s"
  tail -n 14 "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  lscpu | grep -m1 "Model name"
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
    'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/machine.log"

for name in ${STEPS:-native classify trainref seeds}; do
  case $name in
    native) step native "${LIMIT_NATIVE:-180}" python3 bench/native_e2e.py --model "$M" "${QA[@]}" \
      --rounds "${ROUNDS:-1}" --workdir "$W/native" ;;
    classify | classify-fp32) step "$name" "${LIMIT_CLASSIFY:-200}" python3 bench/classify_speed.py --model "$M" \
      "${CLS[@]}" --precision "$([ "$name" = classify ] && echo auto || echo fp32)" --output "$W/$name" ;;
    trainref) step trainref "${LIMIT_TRAINREF:-150}" python3 bench/train_speed.py --model "$M" "${QA[@]}" \
      --workdir "$W/trainref" ;;
    trainref-fp32) step trainref-fp32 "${LIMIT_TRAINREF:-150}" python3 bench/train_speed.py --model "$M" \
      "${QA[@]}" --precision fp32 --skip-reference --workdir "$W/trainref-fp32" ;;
    seeds) for seed in "${SEEDS[@]}"; do
        run=$W/so-full-concat-s$seed
        step "seed$seed" "${LIMIT_SEED:-120}" bash -c "python3 -m qatune train --config configs/stackoverflow.yaml \
          method=full classify.fusion=concat ${SO_SPLIT[*]} model=$M train=$SO eval=$SO seed=$seed \
          precision=fp32 output=$run --no-progress --overwrite && python3 -m qatune evaluate $run --data $SO \
          --split test --precision fp32 --no-progress --output $run/test"
      done ;;
    *) echo "unknown step $name (native classify classify-fp32 trainref trainref-fp32 seeds)"; exit 2 ;;
  esac
done
python3 - "$W" <<'PY' 2>&1 | tee "$OUT/seeds.log"
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("so-full-concat-s*")):
    try:
        m, t = (json.loads((run / f).read_text()) for f in ("metrics.json", "test/metrics.json"))
    except OSError as e:
        print(run.name, "unfinished:", e)
        continue
    print(run.name, {"val_acc": round(m["accuracy"], 2), "test_acc": round(t["accuracy"], 2),
                     "test_macro_f1": round(t["macro_f1"], 2), "test_log_loss": round(t["log_loss"], 4),
                     "test_roc_auc": round(t["roc_auc"], 4), "train_loop_s": m["train_time_s"],
                     "rows": m["train_questions"], "best_epoch": m.get("best_epoch")})
PY
echo "== done: $(date -u +%T)"
