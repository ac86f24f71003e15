#!/usr/bin/env bash
# The GPU training run of the generator's stages, in one short call on a machine with no network:
# unpacks the dataset pack that travelled with the tree, trains the 64×64 base and the 64 → 256
# super-resolution stage in bf16 for a few minutes each (configs base64_gpu / sr64to256_gpu),
# exports both as stage folders (f16, shards ≤ 15 MB) and leaves everything in OUT as at most
# 8 files: the exports and training records in a tar split into 15 MiB parts, plus a summary.
#
# Here, first:  python training/gpu/pack.py pack --data DATASET --out .gpu-pack
#               echo /.gpu-pack/ >> .git/info/exclude
# There (carry .gpu-pack):  BASE_MIN=3.5 SR_MIN=3.5 bash training/gpu/run_gpu.sh
# Back here:    cat $FILES/gpu-run.tar.part-* | tar x -C runs/gpu   (then copy the exports to models/)
#
# Retry-safe: every run folder starts fresh unless RESUME=1 and the folder is still there (a warm
# machine); nothing outside /tmp and OUT is written.
# Not here: the trainer (train_reimagen.py), the packing (pack.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?OUT must name the folder the results go to}
PACK=${PACK:-.gpu-pack}
CLIP=${CLIP:-models/clip}
BASE_MIN=${BASE_MIN:-3.5}
SR_MIN=${SR_MIN:-3.5}
BASE_CONFIG=${BASE_CONFIG:-training/reimagen/configs/base64_gpu.json}
SR_CONFIG=${SR_CONFIG:-training/reimagen/configs/sr64to256_gpu.json}
DATA=${WORK:-/tmp}/reimagen-emoji
RUNS=${WORK:-/tmp}/reimagen-runs
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}            # DEVICE=cpu for a smoke test of this script without a GPU
bf16=(); [[ "$DEVICE" == cuda ]] && bf16=(--bf16)
export PYTHONUNBUFFERED=1
resume=()
if [[ "${RESUME:-0}" == 1 ]]; then resume=(--resume); else rm -rf "$RUNS"; fi
mkdir -p "$RUNS/export" "$OUT"
summary="$OUT/summary.txt"
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} | tee "$summary"
[[ -d "$DATA" ]] || $PY training/gpu/pack.py unpack --pack "$PACK" --out "$DATA"

stage() {  # name config minutes
  local name=$1 config=$2 minutes=$3 start
  start=$(date +%s)
  $PY training/train_reimagen.py train --data "$DATA" --clip "$CLIP" --config "$config" \
    --out "$RUNS/$name" --device "$DEVICE" "${bf16[@]}" --minutes "$minutes" --sheet "${resume[@]}" \
    --export "$RUNS/export/$name" 2>&1 | tee "$RUNS/$name.log" | grep -E "eval|export|data:|error|Error" || true
  echo "$name: $config, $minutes min budget, $(( $(date +%s) - start )) s wall" | tee -a "$summary"
  tail -n 2 "$RUNS/$name/log.jsonl" >> "$summary" 2>/dev/null || true
}
stage base "$BASE_CONFIG" "$BASE_MIN"
stage sr "$SR_CONFIG" "$SR_MIN"

# Exports, logs, loss curves and sample sheets; never the optimiser checkpoints. A stage that
# failed leaves its log: whatever exists is packed.
paths=()
for p in export base.log sr.log base/log.jsonl sr/log.jsonl base/loss.png base/samples.png \
         sr/loss.png sr/samples.png; do
  [[ -e "$RUNS/$p" ]] && paths+=("$p")
done
tar -C "$RUNS" -cf - "${paths[@]}" | split -b 15M -d - "$OUT/gpu-run.tar.part-"
ls -la "$OUT" | tee -a "$summary"
