#!/usr/bin/env bash
# The CPU training run of the project's CLIP, in the background at low priority (nice 19, torch
# threads 2), resumable: run this same command again and it continues from OUT/ckpt.pt.
# Log: OUT/train.log; pid: OUT/pid; exports: OUT/export (every 20 min and at the end).
#   training/clip/run_clip.sh                      # the real run (defaults below)
#   DATA=/tmp/x OUT=/tmp/y training/clip/run_clip.sh --steps 50   # extra args go to the trainer
# Not here: the trainer itself (train_clip.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-~/.local/share/reimagen/emoji}
OUT=${OUT:-runs/clip}
PY=${PY:-python}
mkdir -p "$OUT"
if [[ -f "$OUT/pid" ]] && kill -0 "$(cat "$OUT/pid")" 2>/dev/null; then
  echo "already running: pid $(cat "$OUT/pid") (log $OUT/train.log)" >&2
  exit 1
fi
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 nohup nice -n 19 "$PY" training/clip/train_clip.py \
  --data "$DATA" --out "$OUT" --threads 2 "$@" >>"$OUT/train.log" 2>&1 &
echo $! >"$OUT/pid"
echo "started pid $! (log $OUT/train.log)"
