#!/usr/bin/env bash
# One-GPU benchmark of the large-v3 -> 2-layer distillation step (batch 64 per device, bf16,
# decoder remat, as configs/distil_large_v3_2dec.yaml says): MFU against a bf16 matmul measured
# in the same process (target >= 45%), and the per-device memory that `flax-distil train
# --dry-run` prints vs the measured peak. Random weights of large-v3's shapes unless CHECKPOINT
# names a teacher. Bounded to 10 minutes.
#
# Usage: bash run_scripts/bench_gpu.sh [--tiny] [--batch N] [--steps N] [section.key=value ...]
#   --tiny      small shapes on whatever jax finds (a CPU check of the script)
#   Variables: PYTHON (an env with jax[cuda12] and flax-distil; default .venv/bin/python),
#              CHECKPOINT (teacher: HF directory or hub id), DEVICE (GPU index, default 0),
#              LIMIT_S (default 570).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-0}
LIMIT_S=${LIMIT_S:-570}
args=("$@")
[ -n "${CHECKPOINT:-}" ] && args=(--checkpoint "$CHECKPOINT" "${args[@]}")

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "$DEVICE"
  export CUDA_VISIBLE_DEVICES=$DEVICE
fi
# Let the step use (nearly) all of the GPU's memory; the measured peak is what it allocated.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
"$PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())'
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PYTHON" run_scripts/bench_gpu.py "${args[@]}"
