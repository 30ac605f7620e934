"""`ganaug train`: resolve the config, read the data, then train (one process or under torchrun).

User errors (config, data, run directory) are found on every rank before init_process_group, so
a bad run fails fast with one line instead of hanging in a collective.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ganaug.config import Config, dump_yaml, load_config
from ganaug.errors import UserError
from ganaug.files import clean_temporaries, ensure_writable_dir, write_atomic
from ganaug.logs import setup_logging
from ganaug.train import checkpoint
from ganaug.train.dist import destroy_distributed, gather_objects, init_distributed, read_env

log = logging.getLogger(__name__)


def find_resume_state(run_dir: Path) -> dict | None:
    """The newest loadable checkpoint of a run directory: last.pt, else the newest step file."""
    folder = run_dir / "checkpoints"
    candidates = [folder / "last.pt", *reversed(checkpoint.step_checkpoints(folder))]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = checkpoint.load_checkpoint(path)
        except UserError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            continue
        if state.get("schema") != 1:
            raise UserError(f"checkpoint {path} has schema {state.get('schema')!r}; this ganaug reads schema 1")
        _check_resume_entries(state, path)
        log.info("resuming from %s (step %d)", path, state["step"])
        return state
    if any(p.is_file() for p in candidates):
        raise UserError(f"no loadable checkpoint in {folder}; move the directory aside to start afresh")
    return None


RESUME_ENTRIES = ("step", "config", "model", "G", "D", "G_ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "data", "rng")


def _check_resume_entries(state: dict, path: Path) -> None:
    """A checkpoint of schema 1 that lacks what a resume reads is refused by name, not by a KeyError."""
    from dataclasses import fields

    from ganaug.models import ModelSpec

    missing = [key for key in RESUME_ENTRIES if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: not a complete ganaug checkpoint")
    names = {f.name for f in fields(ModelSpec)}
    if not isinstance(state["model"], dict) or set(state["model"]) != names:
        raise UserError(f"checkpoint {path} has no valid 'model' entry (expected the fields {', '.join(sorted(names))})")


def set_threads(cfg: Config, local_world_size: int) -> None:
    if torch.cuda.is_available():
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cfg.train.threads or max(1, cores // local_world_size))


def _check_same_resume_step(step: int) -> None:
    """Every rank must continue from the same checkpoint, or they would desynchronise in a collective."""
    steps = gather_objects(step)
    if len(set(steps)) > 1:
        raise UserError(f"the processes found checkpoints of different steps ({', '.join(map(str, steps))} by rank): "
                        "every node must see the same --run-dir (a shared filesystem)")


def _refuse_to_overwrite_config(config: str | None, run_dir: Path, resumed: bool) -> None:
    """A fresh run writes its resolved config to run_dir/config.yaml: never over the user's own file."""
    written = run_dir / "config.yaml"
    if not resumed and config and written.exists() and written.samefile(config):
        raise UserError(f"--config {config} is the file a run writes its resolved config to "
                        f"({written}); give the run a --run-dir of its own")


def main(args) -> int:
    if not args.run_dir and not args.dry_run:
        raise UserError("--run-dir is required")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a directory")
    resume = find_resume_state(run_dir) if run_dir is not None else None
    cfg = load_config(args.config, args.overrides, base=resume["config"] if resume else None)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0

    from ganaug.data import load_dataset
    from ganaug.models import ModelSpec
    from ganaug.train.trainer import Trainer, model_spec

    env = read_env()
    set_threads(cfg, env.local_world_size)
    data = load_dataset(cfg.data)
    spec = model_spec(cfg, data)
    if resume:
        saved = ModelSpec.from_dict(resume["model"])
        if saved != spec:
            changed = [k for k, v in spec.to_dict().items() if saved.to_dict()[k] != v]
            raise UserError(f"the run in {run_dir} was trained with another model or data shape "
                            f"({', '.join(f'{k}: {saved.to_dict()[k]} -> {spec.to_dict()[k]}' for k in changed)}); "
                            "use a new --run-dir")
    ensure_writable_dir(run_dir, "--run-dir")
    _refuse_to_overwrite_config(args.config, run_dir, resumed=resume is not None)

    info = init_distributed()
    setup_logging(info.rank)
    try:
        _check_same_resume_step(resume["step"] if resume else 0)
        trainer = Trainer(cfg, run_dir, info, data, spec)
        if resume:
            trainer.load_state_dict(resume)
            del resume
        if info.is_main:
            clean_temporaries(run_dir / "checkpoints")  # left by a writer that was killed
            write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        trainer.fit()
    finally:
        destroy_distributed()
    return 0
