"""DDP scaling: 2 ranks x 1 thread against twice the throughput of 1 rank x 1 thread (real torchrun, gloo).

The model is the default config's (32x32 conditional digits, batch 64 per process): what `ganaug
train` runs unless told otherwise. Smaller models scale worse, as the fixed cost of each all-reduce
weighs more against less compute (16x16: 0.84 measured, against 0.97 at 32x32, in one session).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DDP_OVERRIDES = ["log.progress=false", "log.image_every=0"]


def run_ranks(nproc: int, steps: int) -> float:
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), "-m", "ganaug.bench.ddp_worker",
                   "--out", str(out), "--steps", str(steps), *DDP_OVERRIDES]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"torchrun with {nproc} processes failed:\n{result.stderr[-2000:]}")
        return json.loads(out.read_text())["images_per_sec"]


def bench_ddp(steps: int, rounds: int) -> dict:
    one, two = [], []
    for _ in range(rounds):  # alternate, so load changes on the machine hit both
        one.append(run_ranks(1, steps))
        two.append(run_ranks(2, steps))
    best_one, best_two = max(one), max(two)
    return {"ddp_images_per_sec": {"1x1": best_one, "2x1": best_two},
            "ddp_scaling_efficiency": best_two / (2 * best_one)}
