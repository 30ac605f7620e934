"""Training: `run(cfg, run_dir) -> TrainResult` (api.py) over the Trainer (trainer.py), whose maths is
the GanObjective (objective.py, losses.py, augment.py, ema.py) and whose files are owned by
RunDirectory (rundir.py) and Checkpointer (checkpoint.py)."""

from ganaug.train.api import TrainResult, resolve_config, run, with_overrides

__all__ = ["TrainResult", "resolve_config", "run", "with_overrides"]
