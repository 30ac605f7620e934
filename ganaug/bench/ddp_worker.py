"""Timed training steps under torchrun, for the DDP scaling figure: `torchrun -m ganaug.bench.ddp_worker`.

Every rank trains the same config with one thread; after warm-up the ranks synchronise, time a
fixed number of steps, and rank 0 writes the global images/s to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from ganaug.config import load_config
    from ganaug.data import load_dataset
    from ganaug.models import ModelSpec
    from ganaug.train.dist import barrier, destroy_distributed, init_distributed
    from ganaug.train.rundir import RunDirectory
    from ganaug.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(None, args.overrides)
    data = load_dataset(cfg.data)
    info = init_distributed()
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, RunDirectory(Path(run_dir)), info, data, ModelSpec.from_config(cfg.model, data))
            for _ in range(args.warmup):
                trainer.train_step()
            barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            barrier()
            elapsed = time.perf_counter() - start
            trainer.tb.close()
        if info.is_main:
            images = args.steps * cfg.train.batch_size * info.world_size
            Path(args.out).write_text(json.dumps({"world_size": info.world_size, "images_per_sec": images / elapsed}))
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
