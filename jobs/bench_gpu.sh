#!/usr/bin/env bash
# The GPU rows of every benchmark, each writing its --json into one folder, in under 10 minutes on
# one GPU. Not part of CI: it needs a visible CUDA GPU and refuses to run without one.
#
#   bash jobs/bench_gpu.sh [OUTPUT_DIR]                    # default: $OUT
#   bash jobs/bench_gpu.sh --print-commands [OUTPUT_DIR]   # print the steps' commands, run nothing
#
# Steps (each under its own timeout, cut to what is left of the total budget; a step that fails or
# times out is reported and the next one still runs):
#   tempme        TempMe presets vs per-frame CLIP on CUDA in bf16 (ViT-B-32, batch 16)
#   index         the index pipeline with GPU embed actors, 200 videos (and the stages alone)
#   faiss         FAISS presets vs Flat built and searched on the GPU (only with faiss-gpu installed)
#   reconstruct   the reconstruction pipeline with a GPU VGGT actor (vggt-narrow, 16 scenes x 8 views)
#   vggt_100_500  VGGT-1B layout merged vs unmerged at 100, 200, 500 views: time and peak memory
#   vggt_1000     the same at 1000 views (its own step: the largest, it may need the remaining time)
# Outputs: OUTPUT_DIR/<step>.json (the bench's rows), <step>.log (its output), summary.json
# (status and seconds per step). Exit status: 0 when every step that ran succeeded, 1 otherwise,
# 2 for a usage error or no GPU.
# Environment: PYTHON (default: the repository's .venv/bin/python, else python3), BENCH_GPU_BUDGET_S
# (total seconds, default 570).
set -euo pipefail

PRINT=0
if [[ "${1:-}" == "--print-commands" ]]; then
  PRINT=1
  shift
fi
OUT_DIR="${1:-${OUT:-}}"
if [[ -z "$OUT_DIR" ]]; then
  echo "bench_gpu.sh: error: give an output folder as the argument, or set OUT" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
BUDGET_S="${BENCH_GPU_BUDGET_S:-570}"
START_S=$SECONDS
FAILED=0
SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a timeout, its output in NAME.log
  local name=$1 limit=$2
  shift 2
  if (( PRINT )); then
    printf '%s\t' "$name"
    printf '%q ' "$@"
    printf '\n'
    return 0
  fi
  local left=$(( BUDGET_S - (SECONDS - START_S) ))
  if (( left < 20 )); then
    echo "== $name: skipped, the time budget (${BUDGET_S}s) is spent"
    SUMMARY+=("{\"step\": \"$name\", \"status\": \"skipped: no time left\", \"seconds\": 0}")
    FAILED=1
    return 0
  fi
  if (( limit > left )); then limit=$left; fi
  echo "== $name (at most ${limit}s): $*"
  local began=$SECONDS status=0
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1 || status=$?
  local took=$(( SECONDS - began )) outcome=ok
  if (( status == 124 || status == 137 )); then
    outcome="timed out after ${limit}s"
  elif (( status != 0 )); then
    outcome="failed (exit $status)"
  fi
  [[ "$outcome" == ok ]] || FAILED=1
  echo "   $outcome in ${took}s; last lines of $name.log:"
  tail -n 12 "$OUT_DIR/$name.log" | sed 's/^/   | /'
  SUMMARY+=("{\"step\": \"$name\", \"status\": \"$outcome\", \"seconds\": $took}")
}

if (( ! PRINT )); then
  mkdir -p "$OUT_DIR"
  cd "$REPO"
  if ! command -v nvidia-smi >/dev/null || ! timeout 30 nvidia-smi -L | grep -q "GPU"; then
    echo "bench_gpu.sh: error: no GPU visible (nvidia-smi -L lists none); this script is for GPU machines" >&2
    exit 2
  fi
  if ! timeout 120 "$PYTHON" -c "import sys, torch, tomeray.models; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu.sh: error: $PYTHON cannot import tomeray with a CUDA torch (set PYTHON)" >&2
    exit 2
  fi
  timeout 30 nvidia-smi -L
fi

step tempme 45 "$PYTHON" -m tomeray.jobs.bench_tempme --device cuda --precision bf16 --arch ViT-B-32 \
  --batch 16 --repeats 10 --json "$OUT_DIR/tempme.json"
step index 110 "$PYTHON" -m tomeray.jobs.bench_index --videos 200 --faiss-n 0 --json "$OUT_DIR/index.json" \
  inference.device=cuda
if (( PRINT )) || timeout 60 "$PYTHON" -c "import sys, faiss; sys.exit(0 if hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0 else 1)"; then
  step faiss 45 "$PYTHON" -m tomeray.jobs.bench_faiss --gpu --n 200000 --dim 512 --queries 1000 \
    --presets ivf,ivfpq --distributed-n 0 --json "$OUT_DIR/faiss.json"
else
  echo "== faiss: skipped, faiss-gpu is not installed (the faiss module has no GPU support)"
  SUMMARY+=("{\"step\": \"faiss\", \"status\": \"skipped: no faiss-gpu\", \"seconds\": 0}")
fi
step reconstruct 70 "$PYTHON" -m tomeray.jobs.bench_reconstruct --arch vggt-narrow --scenes 16 --views 8 \
  --json "$OUT_DIR/reconstruct.json"
step vggt_100_500 120 "$PYTHON" -m tomeray.jobs.bench_vggt --arch vggt-1b --device cuda --width 518 \
  --views 100,200,500 --repeats 1 --json "$OUT_DIR/vggt_100_500.json"
step vggt_1000 180 "$PYTHON" -m tomeray.jobs.bench_vggt --arch vggt-1b --device cuda --width 518 \
  --views 1000 --repeats 1 --json "$OUT_DIR/vggt_1000.json"

if (( ! PRINT )); then
  { printf '{"total_seconds": %d, "steps": [' $(( SECONDS - START_S ))
    ( IFS=,; printf '%s' "${SUMMARY[*]}" )
    printf ']}\n'; } >"$OUT_DIR/summary.json"
  echo "total $(( SECONDS - START_S ))s; summary in $OUT_DIR/summary.json"
  exit "$FAILED"
fi
