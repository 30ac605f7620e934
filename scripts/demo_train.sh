#!/usr/bin/env bash
# The machinery under `ganaug augment`, on the embedded digits: train under torchrun (2 processes; as
# python -m ganaug.launch, so a mistake is one line), export, sample, evaluate (`make demo-train`).
# Re-running resumes training and sampling where they stopped.
set -euo pipefail

RUN_DIR=${RUN_DIR:-runs/demo-train}
NPROC=${NPROC:-2}
MODEL="$RUN_DIR/generator.onnx"
SAMPLES="$RUN_DIR/synthetic"
STUDY="$RUN_DIR/study"

# Each training process gets one of the cores; more threads would only fight over them. (Only there:
# the study after it runs one process, which should use every core.)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m ganaug.launch --standalone --nproc-per-node "$NPROC" -m ganaug train --run-dir "$RUN_DIR" --config configs/demo.yaml "$@"
ganaug export "$RUN_DIR" --out "$MODEL" --force
ganaug sample "$MODEL" --per-class 200 --out "$SAMPLES" --seed 0
# The quick study at K = 5 alone, where the synthetic images help most: about 5 minutes here.
# Drop --k 5 for K = 5 and 20, or --quick too for the full protocol (docs/evaluation.md).
ganaug evaluate study --quick --k 5 --out "$STUDY" --config configs/demo.yaml

cat <<DONE

Demo finished.
  model (ONNX):      $MODEL
  synthetic images:  $SAMPLES  (ImageFolder tree + manifest.csv)
  sample grids:      $RUN_DIR/samples/
  checkpoints:       $RUN_DIR/checkpoints/
  TensorBoard:       tensorboard --logdir $RUN_DIR/tb
  study report:      $STUDY/report.md
DONE
