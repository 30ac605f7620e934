#!/usr/bin/env bash
# Train on one machine: torchrun starts NPROC workers (one per GPU by default) that rendezvous on
# a local store (--standalone), so nothing here needs a hostname or a port.
#
#   launch/train.sh                                      # defaults, run directory runs/train
#   NPROC=2 RUN_DIR=runs/digits launch/train.sh train.steps=500 data.resolution=16
#   CONFIG=configs/demo.yaml launch/train.sh log.every=10
#
# Arguments are config overrides (dotted key=value), passed to `ganaug train` as they are.
# Running it again with the same RUN_DIR resumes from RUN_DIR/checkpoints/last.pt.
#
# torchrun runs as `python -m ganaug.launch`: the same torchrun (same flags, same PET_* variables),
# but a user error (a typo in the config, unreadable data) ends in one `ganaug train: error: ...`
# line, printed last, and exit status 2, instead of torchrun's traceback of the failed workers.
set -euo pipefail

# One worker per GPU. Without a GPU, one CPU worker: torchrun's "auto" would start one per CPU
# core, and every worker then gets a single core and its own batch, which is rarely what you want.
if [[ -z "${NPROC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --list-gpus >/dev/null 2>&1; then
        NPROC=gpu
    else
        NPROC=1
    fi
fi
CONFIG=${CONFIG:-}             # a YAML config file; empty: the built-in defaults
RUN_DIR=${RUN_DIR:-runs/train}
PYTHON=${PYTHON:-python3}      # the Python that has ganaug[train] installed

# exec: torchrun takes this shell's PID, so a SIGTERM or Ctrl-C sent to the script reaches
# torchrun, which forwards it to the workers: they finish the step, save last.pt and exit.
exec "$PYTHON" -m ganaug.launch --standalone --nproc-per-node "$NPROC" \
    -m ganaug train --run-dir "$RUN_DIR" ${CONFIG:+--config "$CONFIG"} "$@"
