#!/usr/bin/env bash
# Train on several machines: run this same command on every node. The torchrun agents meet at a
# c10d rendezvous (a TCP store hosted by the agent on the RDZV_ENDPOINT host), agree on ranks,
# and start NPROC workers each. With MAX_RESTARTS > 0 a failed worker or a lost node restarts
# the whole group, which resumes from RUN_DIR/checkpoints/last.pt.
#
#   # on node-a and on node-b (RUN_DIR on a filesystem both mount):
#   NNODES=2 RDZV_ENDPOINT=node-a:29400 RDZV_ID=digits-001 RUN_DIR=/shared/runs/digits \
#       launch/multinode.sh train.steps=20000
#
# NNODES=MIN:MAX (e.g. 2:4) makes the job elastic: it starts once MIN nodes have joined and
# admits more up to MAX; every membership change is a restart that resumes from last.pt.
#
# The rendezvous and the gloo/NCCL connections have no authentication and no encryption: use a
# trusted, private network, and keep the port closed to everything else.
set -euo pipefail

NNODES=${NNODES:?set NNODES to the number of nodes, or MIN:MAX for an elastic job}
RDZV_ENDPOINT=${RDZV_ENDPOINT:?set RDZV_ENDPOINT to host:port of one node that all nodes can reach}
RDZV_ID=${RDZV_ID:?set RDZV_ID to an id shared by the nodes of this job and unique to it}
# Every rank reads last.pt when it resumes, so the run directory must be the same directory
# (a shared filesystem) on every node; only rank 0 writes to it.
RUN_DIR=${RUN_DIR:?set RUN_DIR to a run directory on a filesystem shared by all nodes}
if [[ -z "${NPROC:-}" ]]; then   # one worker per GPU; without a GPU, one CPU worker
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --list-gpus >/dev/null 2>&1; then
        NPROC=gpu
    else
        NPROC=1
    fi
fi
CONFIG=${CONFIG:-}
PYTHON=${PYTHON:-python3}        # the Python that has ganaug[train] installed
MAX_RESTARTS=${MAX_RESTARTS:-3}  # worker-group restarts (failures and membership changes) before giving up

# torchrun as `python -m ganaug.launch` (see launch/train.sh): a user error is one line, printed last.
exec "$PYTHON" -m ganaug.launch --nnodes "$NNODES" --nproc-per-node "$NPROC" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
    --max-restarts "$MAX_RESTARTS" \
    -m ganaug train --run-dir "$RUN_DIR" ${CONFIG:+--config "$CONFIG"} "$@"
