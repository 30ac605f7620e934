"""The export's input: a run directory or checkpoint file -> a generator in eval mode, checked.

The checkpoint is loaded by `load_checkpoint` with weights_only=True, so a file that would run
code when unpickled is refused. Everything else a user can get wrong (no checkpoint, a file of
another kind, another schema, weights that do not fit the recorded architecture) is a UserError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ganaug.config import ConfigError
from ganaug.errors import UserError
from ganaug.files import sha256_of
from ganaug.models import ARCHS, ModelSpec, build_generator
from ganaug.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = 1  # the checkpoint layout this exporter reads (Trainer.state_dict)
REQUIRED_KEYS = ("schema", "step", "model", "class_names", "G", "G_ema")
WEIGHTS_KEYS = {"ema": "G_ema", "raw": "G"}


@dataclass(frozen=True)
class LoadedGenerator:
    generator: nn.Module  # in eval mode
    spec: ModelSpec
    class_names: list[str]
    step: int
    weights: str  # "ema" | "raw"
    checkpoint: Path
    checkpoint_sha256: str


def resolve_checkpoint(source: str | Path) -> Path:
    """A run directory means RUN/checkpoints/last.pt; anything else must be a checkpoint file."""
    path = Path(source)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt; pass a run directory "
                            "or a checkpoint file")
        return last
    if not path.exists():
        raise UserError(f"{path} does not exist (expected a run directory or a checkpoint file)")
    return path


def _spec_from(state: dict, path: Path) -> ModelSpec:
    values = state["model"]
    if not isinstance(values, dict):
        raise UserError(f"checkpoint {path}: 'model' is not a model description")
    try:
        spec = ModelSpec.from_dict(values)
    except TypeError as exc:
        raise UserError(f"checkpoint {path}: the model description does not fit this ganaug ({exc})") from None
    if spec.arch not in ARCHS:
        raise UserError(f"checkpoint {path} holds a {spec.arch!r} generator; this ganaug exports "
                        f"{', '.join(ARCHS)}")
    return spec


def _check_class_names(names, spec: ModelSpec, path: Path) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"checkpoint {path}: 'class_names' is not a list of names")
    if spec.num_classes and len(names) != spec.num_classes:
        raise UserError(f"checkpoint {path}: {len(names)} class names for a generator of {spec.num_classes} classes")
    return names


def _state_mismatch(generator: nn.Module, weights) -> str | None:
    """What keeps `weights` from loading into `generator`, in a few words; None if they fit."""
    if not isinstance(weights, dict):
        return f"got {type(weights).__name__} instead of a state dict"
    expected = generator.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [name for name in expected if name in weights and tuple(getattr(weights[name], "shape", ()))
                != tuple(expected[name].shape)]
    problems = [f"{len(names)} {what}, e.g. {names[0]!r}" for names, what in
                ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if names]
    return "; ".join(problems) or None


def load_generator(source: str | Path, weights: str = "ema") -> LoadedGenerator:
    """Load a checkpoint safely and rebuild its (EMA or raw) generator in eval mode."""
    path = resolve_checkpoint(source)
    sha256 = sha256_of(path)
    state = load_checkpoint(path)
    if sha256_of(path) != sha256:  # a live run replaced last.pt meanwhile: the hash would lie
        raise UserError(f"checkpoint {path} changed while it was read (is training writing it?); try again")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is not a ganaug checkpoint (no {missing[0]!r} entry)")
    if state["schema"] != CHECKPOINT_SCHEMA:
        raise UserError(f"checkpoint {path} has schema {state['schema']!r}; this ganaug reads schema "
                        f"{CHECKPOINT_SCHEMA} (export it with the ganaug version that wrote it)")
    if not isinstance(state["step"], int):
        raise UserError(f"checkpoint {path}: 'step' is {state['step']!r}, not a step number")
    spec = _spec_from(state, path)
    class_names = _check_class_names(state["class_names"], spec, path)
    try:
        generator = build_generator(spec)
    except (ConfigError, ValueError) as exc:  # e.g. a resolution the architecture cannot make
        raise UserError(f"checkpoint {path}: cannot build its generator: {exc}") from None
    key = WEIGHTS_KEYS[weights]
    mismatch = _state_mismatch(generator, state[key])
    if mismatch:
        raise UserError(f"checkpoint {path}: the {key} weights do not fit a {spec.arch} generator at "
                        f"{spec.resolution}x{spec.resolution} ({mismatch})")
    generator.load_state_dict(state[key])
    # Eval mode: BatchNorm uses its running statistics (for G_ema, recalibrated during training).
    generator.eval()
    log.info("loaded %s weights of a %s generator (step %d) from %s", weights, spec.arch, state["step"], path)
    return LoadedGenerator(generator, spec, class_names, state["step"], weights, path, sha256)
