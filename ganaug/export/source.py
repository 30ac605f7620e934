"""The export's input: a run directory or checkpoint file -> a generator in eval mode, checked.

The checkpoint is read by `train.checkpoint.load` (weights_only=True), so a file that would run
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
from ganaug.models import ModelSpec, build_generator
from ganaug.train import checkpoint
from ganaug.train.checkpoint import resolve_source

log = logging.getLogger(__name__)

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
    path = resolve_source(source)
    sha256 = sha256_of(path)
    state = checkpoint.load(path)
    if sha256_of(path) != sha256:  # a live run replaced last.pt meanwhile: the hash would lie
        raise UserError(f"checkpoint {path} changed while it was read (is training writing it?); try again")
    spec = ModelSpec.from_dict(state["model"])  # checked by checkpoint.load
    class_names = _check_class_names(state["class_names"], spec, path)
    try:
        generator = build_generator(spec)
    except (ConfigError, ValueError) as exc:  # e.g. a resolution the architecture cannot make
        raise UserError(f"checkpoint {path}: cannot build its generator: {exc}") from None
    key = WEIGHTS_KEYS[weights]
    mismatch = _state_mismatch(generator, state[key])
    if mismatch:
        raise UserError(f"checkpoint {path}: the {key} weights do not fit the {spec.arch} generator at "
                        f"{spec.resolution}x{spec.resolution} ({mismatch})")
    generator.load_state_dict(state[key])
    # Eval mode: BatchNorm uses its running statistics (for G_ema, recalibrated during training).
    generator.eval()
    log.info("loaded %s weights of a %s generator (step %d) from %s", weights, spec.arch, state["step"], path)
    return LoadedGenerator(generator, spec, class_names, state["step"], weights, path, sha256)
