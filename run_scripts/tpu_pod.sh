#!/usr/bin/env bash
# Distil Whisper large-v3 into a 2-decoder-layer student on a Cloud TPU VM or pod slice
# (Distil-Whisper's recipe: configs/distil_large_v3_2dec.yaml), from a workstation with gcloud.
#
# Usage: bash run_scripts/tpu_pod.sh STAGE [STAGE ...]
#   create     create the TPU VM / pod slice ($ACCELERATOR; every host is a "worker")
#   install    uv + Python 3.12 venv + jax[tpu] + this package (a `git archive` of HEAD) and
#              gcsfuse mounts of $BUCKET on every worker
#   student    create-student on every worker (deterministic: each host writes its own copy)
#   label      pseudo-label LibriSpeech and Common Voice with the teacher, all hosts together
#              (--distributed: each host labels its own shards into the shared bucket)
#   train      start `flax-distil train --distributed` on every worker (in the background,
#              logs in ~/train.log); rerun to resume after a preemption
#   logs       follow worker 0's training log
#   eval       WER of the exported student and of the teacher on LibriSpeech test-clean
#   delete     delete the TPU
#   all        create install student label train
#
# Settings (environment variables): PROJECT, ZONE, TPU_NAME, ACCELERATOR, RUNTIME, SPOT=1,
# BUCKET (gs://..., holds labels/ and runs/), RUN (run name), HF_TOKEN (for gated datasets).
# On the TPU the bucket's labels/ is mounted at /mnt/labels (the paths the config names) and its
# runs/ at /mnt/runs (the workdir: every host must see the same checkpoint directory).
# The package installed is `git archive HEAD`: commit first. Gated hub datasets need HF_TOKEN
# and their terms accepted; swap in your own sources in `label` and in the config's data.train.
# TensorBoard: tensorboard --logdir $BUCKET/runs/$RUN (from any machine with gcloud credentials).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-flax-distil}
ACCELERATOR=${ACCELERATOR:-v4-32}           # v4-8 is one host; v4-32 four hosts
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}
RUN=${RUN:-large-v3-2dec}
TEACHER=${TEACHER:-openai/whisper-large-v3}
CONFIG=${CONFIG:-configs/distil_large_v3_2dec.yaml}
# Per host (4 chips): `flax-distil plan ... --device v4 --devices 16` puts the bfloat16 large-v3
# labelling program at 2.9 GiB + 0.94 GiB per row per chip, so 30 rows fit 32 GiB; 24 per chip
# leave room. Training (batch 256 over 16 chips: 16 rows each) fits up to 45 with remat.
LABEL_BATCH=${LABEL_BATCH:-96}
HF_TOKEN=${HF_TOKEN:-}

VENV='$HOME/venv'
CLI="$VENV/bin/flax-distil"
STUDENT='$HOME/students/large-v3-2dec'
WORKDIR=/mnt/runs/$RUN
BUCKET_NAME=${BUCKET#gs://}

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" --project="$PROJECT"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }
on_first() { tpu ssh "$TPU_NAME" --worker=0 --command="$1"; }
env_line="export HF_TOKEN='$HF_TOKEN' TOKENIZERS_PARALLELISM=false;"

create() {
  local spot=()
  [ "$SPOT" = 1 ] && spot=(--spot)
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
}

install() {
  local archive
  archive=$(mktemp -d)/flax-distil.tar.gz
  git archive --format=tar.gz -o "$archive" HEAD
  tpu scp "$archive" "$TPU_NAME:flax-distil.tar.gz" --worker=all
  # The TPU images ship Python 3.10; flax-distil needs >= 3.12, which uv provides.
  on_all "set -e
    mkdir -p ~/flax-distil && tar -xzf ~/flax-distil.tar.gz -C ~/flax-distil
    command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=\$HOME/.local/bin:\$PATH
    uv venv --python 3.12 --allow-existing $VENV
    uv pip install --python $VENV/bin/python -U 'jax[tpu]' -e ~/flax-distil
    if ! command -v gcsfuse >/dev/null; then
      echo 'deb https://packages.cloud.google.com/apt gcsfuse-jammy main' |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
        sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
    fi
    for dir in labels runs; do
      sudo mkdir -p /mnt/\$dir && sudo chown \$USER /mnt/\$dir
      mountpoint -q /mnt/\$dir || gcsfuse --implicit-dirs --only-dir \$dir $BUCKET_NAME /mnt/\$dir
    done
    $VENV/bin/python -c 'import jax; print(jax.process_count(), jax.local_devices())'"
}

student() {
  on_all "$env_line $CLI create-student --teacher $TEACHER --decoder-layers 2 --output $STUDENT"
}

label() {
  # Every host runs the same command; --distributed lets jax find the other hosts. Parquet
  # datasets only: datasets >= 4 refuses loading-script repos (mozilla-foundation/...).
  on_all "$env_line cd /mnt/labels &&
    $CLI pseudo-label --distributed --model $TEACHER --batch-size $LABEL_BATCH \
      --dtype bfloat16 --language en \
      --dataset openslr/librispeech_asr --dataset-config clean --split train.100 \
      --text-column text --output /mnt/labels/librispeech --wer-threshold 0.1 &&
    $CLI pseudo-label --distributed --model $TEACHER --batch-size $LABEL_BATCH \
      --dtype bfloat16 --language en \
      --dataset fixie-ai/common_voice_17_0 --dataset-config en --split train \
      --text-column sentence --output /mnt/labels/common_voice --wer-threshold 0.1"
}

train() {
  # nohup: the job outlives the ssh session. The same command resumes from the last checkpoint.
  # The workdir is a gcsfuse mount: orbax commits a checkpoint with a commit file, not a
  # directory rename (which gcsfuse refuses without --rename-dir-limit).
  on_all "$env_line nohup $CLI train --config ~/flax-distil/$CONFIG --workdir $WORKDIR \
    --distributed model.student=$STUDENT checkpoint.atomicity=commit_file \
    > ~/train.log 2>&1 < /dev/null &
    sleep 5; tail -n 5 ~/train.log"
}

logs() { on_first "tail -n 50 -f ~/train.log"; }

evaluate() {
  on_first "$env_line
    $CLI evaluate --model $WORKDIR/student --dataset openslr/librispeech_asr \
      --dataset-config clean --split test --text-column text --batch-size 64 \
      --output $WORKDIR/eval-student-test-clean &&
    $CLI evaluate --model $TEACHER --dataset openslr/librispeech_asr \
      --dataset-config clean --split test --text-column text --batch-size 64 \
      --output $WORKDIR/eval-teacher-test-clean &&
    grep -h '\"wer\"' $WORKDIR/eval-*-test-clean/metrics.json"
}

delete() { tpu delete "$TPU_NAME" --quiet; }

[ $# -gt 0 ] || { sed -n '2,26p' "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    create | install | student | label | train | logs | delete) "$stage" ;;
    eval) evaluate ;;
    all) create; install; student; label; train ;;
    *) echo "tpu_pod.sh: unknown stage $stage" >&2; exit 2 ;;
  esac
done
