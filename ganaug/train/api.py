"""Training as a library: `run(cfg, run_dir) -> TrainResult`, one process or one rank under torchrun.

User errors (config, data, run directory, a second trainer on the same directory) are found on
every rank before init_process_group, so a bad run fails fast with one line instead of hanging
in a collective. The command line (`ganaug train`) is a thin layer over `resolve_config` and `run`;
the study and the benchmark call them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ganaug.config import Config, dump_yaml, load_config, read_yaml
from ganaug.errors import UserError
from ganaug.logs import setup_logging
from ganaug.train.checks import check_compile
from ganaug.train.dist import cpu_threads, destroy_distributed, gather_objects, init_distributed, read_env
from ganaug.train.rundir import RunDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int  # the step the run stands at now
    completed: bool  # False when a signal (preemption, Ctrl-C) stopped it early; it was saved and can resume
    skipped_steps: int  # steps skipped for non-finite gradients
    checkpoint: Path  # last.pt
    stop_signal: int | None = None  # the signal that stopped it, where this process received one


def resolve_config(run_dir: Path | None, config_file: str | Path | None = None, overrides=()) -> Config:
    """Defaults < a resumed run's RUN/config.yaml < the config file < key=value overrides."""
    saved = RunDirectory(Path(run_dir)).saved_config() if run_dir is not None else None
    return load_config(config_file, list(overrides), base=read_yaml(saved) if saved else None)


def preflight(run_dir: Path, config_file: str | Path | None = None, overrides=()) -> Config:
    """The checks `run` makes that need neither the data nor the workers: the config, the run
    directory's layout and the data sources' names. `python -m ganaug.launch` makes them once, before
    it starts any worker, so that a typo is one line instead of one failed worker per process."""
    from ganaug.data import check_sources

    cfg = resolve_config(run_dir, config_file, overrides)
    RunDirectory(Path(run_dir), cfg.ckpt.keep).check(config_file)
    check_sources(cfg.data)
    return cfg


def run(cfg: Config, run_dir: str | Path, config_file: str | Path | None = None,
        live_metrics: Callable | None = None) -> TrainResult:
    """Train `cfg` in `run_dir`, resuming the checkpoint there if it has one (then `cfg` must describe
    the same model and data). `config_file`, if the config came from one, is never overwritten.
    live_metrics: what measures FD and KID every log.metric_every steps, called as
    live_metrics(data, features_dir, samples, seed) on rank 0 (`ganaug.evaluate.live.LiveMetrics`;
    the command line passes it); needed only when log.metric_every > 0."""
    if cfg.log.metric_every and live_metrics is None:
        raise UserError("log.metric_every: in-training metrics need live_metrics=ganaug.evaluate.live.LiveMetrics "
                        "in ganaug.train.run (ganaug train passes it)")
    from ganaug.data import load_dataset, load_unlabelled
    from ganaug.data.loader import worker_died
    from ganaug.models import ModelSpec
    from ganaug.train.trainer import Trainer

    run_dir = RunDirectory(Path(run_dir), cfg.ckpt.keep)
    env = read_env()
    resume = run_dir.checkpoints.latest()
    run_dir.check(config_file)
    if cfg.train.compile:
        check_compile(env.device)
    threads = torch.get_num_threads()
    try:
        if not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads(cfg.train.threads, env.local_world_size))
        data = load_dataset(cfg.data)
        unlabelled = load_unlabelled(cfg.data, data)
        spec = ModelSpec.from_config(cfg.model, data)
        if resume:
            _check_same_model(resume, spec, data.class_names if spec.num_classes else [], run_dir.path)
        with run_dir.lock() if env.rank == 0 else contextlib.nullcontext():
            if env.rank == 0:
                run_dir.prepare()
            info = init_distributed()
            setup_logging(info.rank)
            try:
                _check_same_resume_step(resume["step"] if resume else 0)
                trainer = Trainer(cfg, run_dir, info, data, spec, unlabelled, live_metrics)
                if resume:
                    _restore(trainer, resume, run_dir.checkpoints.resumed_from)
                    del resume
                if info.is_main:
                    run_dir.write_config(dump_yaml(cfg))
                try:
                    completed = trainer.fit()
                except RuntimeError as exc:  # a dead DataLoader worker, raised wherever the loop was
                    died = worker_died(exc, cfg.data.num_workers)
                    if died is None:
                        raise
                    raise died from None
            finally:
                destroy_distributed()
    finally:
        torch.set_num_threads(threads)
    return TrainResult(run_dir.path, trainer.step, completed, trainer.skipped_steps, run_dir.checkpoints.last,
                       None if completed else trainer.stop_signal)


def _check_same_model(state: dict, spec, class_names: list[str], run_dir: Path) -> None:
    """A resumed run must train the same networks on the same classes in the same order: a renamed,
    added or removed class folder would otherwise swap labels silently."""
    from ganaug.models import ModelSpec

    before = list(state["class_names"])
    if before != class_names:
        added = [c for c in class_names if c not in before]
        removed = [c for c in before if c not in class_names]
        what = "; ".join(part for part in (f"added {', '.join(map(repr, added))}" if added else "",
                                           f"removed {', '.join(map(repr, removed))}" if removed else "") if part)
        raise UserError(f"the run in {run_dir} was trained on classes {before} and the data now has {class_names}"
                        f" ({what or 'the same names in another order'}): resuming would swap labels; "
                        "restore the data or use a new --run-dir")
    saved = ModelSpec.from_dict(state["model"]).to_dict()
    changed = [f"{k}: {saved[k]} -> {v}" for k, v in spec.to_dict().items() if saved[k] != v]
    if changed:
        raise UserError(f"the run in {run_dir} was trained with another model or data shape "
                        f"({', '.join(changed)}); use a new --run-dir")


def _restore(trainer, state: dict, path: Path) -> None:
    """The trainer from a checkpoint whose plain values checkpoint.check has validated: what still
    does not fit (a network's, an optimiser's or a scaler's state of another shape or kind) is a
    file from elsewhere, one line naming it, not a traceback."""
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {first[:200]}); "
                        "move it aside or use a new --run-dir") from None


def _check_same_resume_step(step: int) -> None:
    """Every rank must continue from the same checkpoint, or they would desynchronise in a collective."""
    steps = gather_objects(step)
    if len(set(steps)) > 1:
        raise UserError(f"the processes found checkpoints of different steps ({', '.join(map(str, steps))} by rank): "
                        "every node must see the same --run-dir (a shared filesystem)")


def with_overrides(cfg: Config, **sections: dict) -> Config:
    """A copy of cfg with some keys replaced, e.g. with_overrides(cfg, train={"steps": 10})."""
    replaced = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **replaced).validate()
