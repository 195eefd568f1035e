#!/usr/bin/env bash
# Distil Whisper large-v3 into a 2-decoder-layer student on NVIDIA GPUs with jax[cuda12]
# (configs/distil_large_v3_2dec.yaml: global batch 256, bf16, decoder remat).
#
# Usage: bash run_scripts/gpu.sh STAGE [STAGE ...]
#   setup      a Python >= 3.12 venv ($VENV) with jax[cuda12] and this package
#   student    create-student: large-v3's encoder + decoder layers 0 and 31
#   label      pseudo-label the training data with the teacher (every local GPU)
#   train      train (resumes from $WORKDIR's last checkpoint when rerun)
#   eval       WER of the exported student and of the teacher on LibriSpeech test-clean
#   all        setup student label train eval
#
# One GPU or several in one box: the same commands. jax sees every visible GPU and the mesh's
# `data` axis takes them all (CUDA_VISIBLE_DEVICES=0 for one). The global batch stays 256;
# train.microbatches is set so that each device holds at most $PER_DEVICE_BATCH rows at once
# (1 GPU: 4 microbatches of 64; 4 or 8 GPUs: 1).
#
# Several nodes (SLURM): one process per node (each drives its node's GPUs), all started by one
# srun; `--distributed` lets jax.distributed.initialize() read the SLURM environment:
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --wrap \
#     "srun $VENV/bin/flax-distil train --config $CONFIG --workdir /shared/runs/large-v3 --distributed"
# The workdir and the data must be on a filesystem every node sees. Without SLURM, start the same
# command on every node with --coordinator HOST0:PORT --num-processes N --process-id I instead.
#
# Batch sizes come from `flax-distil plan --config $CONFIG --device h100-80gb --devices 8`
# (BENCHMARKS.md): the bfloat16 large-v3 labelling program holds 2.9 GiB + 0.94 GiB per row per
# device (81 rows fit 80 GB; 64 leave room), the train step 0.60 GiB per row with decoder
# remat (124 fit; 64 per microbatch leave room for the accelerator's own layouts).
#
# Settings (environment variables): VENV, PYTHON (>= 3.12, for setup), TEACHER, CONFIG, WORKDIR,
# LABELS (pseudo-label output root, the config's /mnt/labels), PER_DEVICE_BATCH (training),
# LABEL_PER_DEVICE (pseudo-labelling rows per GPU), HF_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3.12}
TEACHER=${TEACHER:-openai/whisper-large-v3}
CONFIG=${CONFIG:-configs/distil_large_v3_2dec.yaml}
WORKDIR=${WORKDIR:-runs/large-v3-2dec}
LABELS=${LABELS:-/mnt/labels}
STUDENT=${STUDENT:-students/large-v3-2dec}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-64}
LABEL_PER_DEVICE=${LABEL_PER_DEVICE:-64}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
CLI=$VENV/bin/flax-distil

gpus() {
  "$VENV/bin/python" -c 'import jax; print(jax.local_device_count())'
}

setup() {
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q -U 'jax[cuda12]' -e .
  "$VENV/bin/python" -c 'import jax; print(jax.devices())'
}

student() {
  "$CLI" create-student --teacher "$TEACHER" --decoder-layers 2 --output "$STUDENT"
}

label() {
  # bfloat16 weights and caches; English sets name their language (no per-batch detection).
  # Parquet datasets only: datasets >= 4 refuses loading-script repos (mozilla-foundation/...).
  local batch=$((LABEL_PER_DEVICE * $(gpus)))
  "$CLI" pseudo-label --model "$TEACHER" --batch-size $batch --dtype bfloat16 --language en \
    --dataset openslr/librispeech_asr --dataset-config clean --split train.100 \
    --text-column text --output "$LABELS/librispeech" --wer-threshold 0.1
  "$CLI" pseudo-label --model "$TEACHER" --batch-size $batch --dtype bfloat16 --language en \
    --dataset fixie-ai/common_voice_17_0 --dataset-config en --split train \
    --text-column sentence --output "$LABELS/common_voice" --wer-threshold 0.1
}

train() {
  local devices micro
  devices=$(gpus)
  micro=$(( (GLOBAL_BATCH + devices * PER_DEVICE_BATCH - 1) / (devices * PER_DEVICE_BATCH) ))
  echo "gpu.sh: $devices GPU(s), global batch $GLOBAL_BATCH in $micro microbatch(es)"
  "$CLI" train --config "$CONFIG" --workdir "$WORKDIR" \
    "model.student=$STUDENT" "train.batch_size=$GLOBAL_BATCH" "train.microbatches=$micro" \
    "data.train=[{kind: parquet, path: $LABELS/librispeech, text_column: whisper_transcript, wer_column: wer, wer_threshold: 0.1}, {kind: parquet, path: $LABELS/common_voice, text_column: whisper_transcript, wer_column: wer, wer_threshold: 0.1}]"
}

evaluate() {
  for model in "$WORKDIR/student" "$TEACHER"; do
    "$CLI" evaluate --model "$model" --dataset openslr/librispeech_asr --dataset-config clean \
      --split test --text-column text --batch-size 64 \
      --output "$WORKDIR/eval-$(basename "$model")-test-clean"
  done
}

[ $# -gt 0 ] || { sed -n '2,33p' "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    setup | student | label | train) "$stage" ;;
    eval) evaluate ;;
    all) setup; student; label; train; evaluate ;;
    *) echo "gpu.sh: unknown stage $stage" >&2; exit 2 ;;
  esac
done
