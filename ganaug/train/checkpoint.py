"""The one owner of checkpoint files: schema, names, retention, resume discovery, safe loading.

A checkpoint holds only tensors and plain Python values (the trainer's `state_dict()`), so it
loads with weights_only=True: a file that would run code when unpickled is refused. The folder
RUN/checkpoints holds

    last.pt                  the newest state, replaced atomically
    step_NNNNNNN.pt          the newest `ckpt.keep` states (hard links to what last.pt was)
    steps.json               the step files ganaug wrote: retention deletes these and nothing else
    best.pt, best.json       the state with the best in-training FD, and its measurement
    diverged_step_NNNNNNN.pt the state when training stopped on non-finite gradients

Nothing else in ganaug names these files or opens a checkpoint by hand. A file of another schema
is refused by name (ganaug keeps no upgrade paths for files written before its first release).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import torch

from ganaug.errors import UserError
from ganaug.files import clean_temporaries, write_atomic

log = logging.getLogger(__name__)

SCHEMA = 2
STEP_PATTERN = re.compile(r"step_(\d{7,})\.pt$")
MAX_RECORD_CHARS = 1 << 20  # steps.json lists ckpt.keep names
# What each use reads from a checkpoint; a file without them is refused by name.
EXPORT_ENTRIES = ("step", "model", "class_names", "G", "G_ema")
RESUME_ENTRIES = (*EXPORT_ENTRIES, "config", "D", "opt_g", "opt_d", "scaler_g", "scaler_d", "data", "rng",
                  "objective", "ada_pending", "images_seen")


# ---------------------------------------------------------------------------------- torch files


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to `path` atomically and durably; a write error is a UserError, the old file intact."""
    # Serialise in memory first: a failed write then surfaces as an OSError with its errno
    # (ENOSPC, EFBIG, EDQUOT) instead of torch's opaque "unexpected pos" error.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getbuffer(), fsync=True)
    except (OSError, UserError) as exc:
        reason = exc.__cause__ if isinstance(exc, UserError) and exc.__cause__ else exc
        raise UserError(f"cannot write checkpoint {path}: {getattr(reason, 'strerror', None) or reason} "
                        "(the previous one is intact)") from None


def safe_load(path: Path, name: str):
    """torch.load with weights_only=True (a hostile pickle is refused without running); errors name `name`."""
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise UserError(f"{name} is not a PyTorch checkpoint, or is truncated")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{name} was refused by the safe loader (weights_only=True): "
                        f"{_refusal_reason(str(exc))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name} is unreadable or truncated: {first}") from None


def _refusal_reason(message: str) -> str:
    """The line of torch's long weights_only message that names what was blocked."""
    for line in message.splitlines():
        if "GLOBAL" in line:  # e.g. "Trying to load unsupported GLOBAL posix.system whose module ..."
            # torch goes on to suggest allow-listing the class: not advice for a user of a CLI.
            return line.split(" was not an allowed global")[0].split(" Please")[0].strip()
    return "it holds objects other than tensors and plain values"


# ---------------------------------------------------------------------------------- reading


def load(path: Path, entries: tuple[str, ...] = EXPORT_ENTRIES) -> dict:
    """A ganaug checkpoint, loaded safely, upgraded to the current schema and checked for `entries`."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return check(safe_load(path, f"checkpoint {path}"), path, entries)


def check(state, path: Path, entries: tuple[str, ...] = EXPORT_ENTRIES) -> dict:
    """A loaded checkpoint's contents, upgraded to the current schema; what does not fit is refused
    by name (a file of another kind, another schema, missing entries, a model that cannot be built)."""
    from ganaug.models import ModelSpec

    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is not a ganaug checkpoint (got {type(state).__name__})")
    if "schema" not in state:
        raise UserError(f"checkpoint {path} is not a ganaug checkpoint (no 'schema' entry)")
    if state["schema"] != SCHEMA:
        raise UserError(f"checkpoint {path} has schema {state['schema']!r}; this ganaug reads schema {SCHEMA} "
                        "(use the ganaug version that wrote it, or train again)")
    missing = [key for key in entries if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: not a complete ganaug checkpoint")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise UserError(f"checkpoint {path}: 'step' is {state['step']!r}, not a step number")
    if not isinstance(state["model"], dict):
        raise UserError(f"checkpoint {path}: 'model' is not a model description")
    try:
        ModelSpec.from_dict(state["model"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path}: the model description does not fit this ganaug ({exc})") from None
    if not (isinstance(state["class_names"], list) and all(isinstance(n, str) for n in state["class_names"])):
        raise UserError(f"checkpoint {path}: 'class_names' is not a list of names")
    for key in entries:
        problem = _resume_value_problem(key, state[key]) if key in RESUME_VALUE_CHECKS else None
        if problem:
            raise UserError(f"checkpoint {path}: '{key}' {problem}; not a checkpoint this ganaug wrote")
    return state


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _data_position(value) -> bool:
    return isinstance(value, dict) and _count(value.get("epoch")) and _count(value.get("batch"))


# The plain values a resume restores, checked like input before any of them steers the run (the
# tensors are checked by load_state_dict itself, whose errors train/api.py turns into one line).
RESUME_VALUE_CHECKS = {
    "images_seen": (_count, "is not a count of images"),
    "data": (_data_position, "is not a data position (epoch and batch counts)"),
    "ada_pending": (lambda v: isinstance(v, dict) and _finite(v.get("sign_sum")) and _count(v.get("steps")),
                    "is not ADA's pending signs"),
    "objective": (lambda v: isinstance(v, dict) and isinstance(v.get("augment"), dict)
                  and _finite(v["augment"].get("p")) and 0 <= v["augment"]["p"] <= 1
                  and isinstance(v.get("lecam"), list) and len(v["lecam"]) == 2 and all(map(_finite, v["lecam"])),
                  "is not the objective's state (augmentation p in [0, 1], two LeCam anchors)"),
    "rng": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(r, dict) and "cpu" in r for r in v),
            "is not a list of each rank's random state"),
}


def _resume_value_problem(key: str, value) -> str | None:
    valid, problem = RESUME_VALUE_CHECKS[key]
    return None if valid(value) else problem


# ---------------------------------------------------------------------------------- the folder


class Checkpointer:
    """RUN/checkpoints: what is saved, under which name, what is kept, and what a resume reads."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder, self.keep = Path(folder), keep
        self.last = self.folder / "last.pt"
        self.best = self.folder / "best.pt"
        self.best_json = self.folder / "best.json"
        self.record = self.folder / "steps.json"
        self.resumed_from: Path | None = None

    def step_path(self, step: int) -> Path:
        return self.folder / f"step_{step:07d}.pt"

    def diverged_path(self, step: int) -> Path:
        return self.folder / f"diverged_step_{step:07d}.pt"

    def step_files(self) -> list[Path]:
        """step_NNNNNNN.pt files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if STEP_PATTERN.search(p.name)),
                      key=lambda p: int(STEP_PATTERN.search(p.name).group(1)))

    def check_layout(self) -> None:
        """Found before step 1, not after the training time is spent: names that are not files."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} exists and is not a directory")
        for path in (self.last, self.best, self.best_json):
            if path.exists() and not path.is_file():
                raise UserError(f"{path} exists and is not a file; move it aside")

    # -- writing ------------------------------------------------------------------------------

    def save(self, state: dict) -> None:
        """last.pt, and a step file linked to it when any are kept (the oldest beyond `keep` that
        steps.json lists go: a step file ganaug did not write is never replaced or deleted)."""
        save_atomic(state, self.last)
        if not self.keep:
            return
        written = self._written_steps()
        target = self.step_path(state["step"])
        if os.path.lexists(target) and target.name not in written:
            log.warning("%s exists and ganaug did not write it: left alone, step %d kept in last.pt only",
                         target, state["step"])
            return
        target.unlink(missing_ok=True)
        try:
            os.link(self.last, target)  # no space or time; replacing last.pt later leaves it alone
        except OSError:
            shutil.copyfile(self.last, target)
        written = sorted({*written, target.name}, key=lambda name: int(STEP_PATTERN.search(name).group(1)))
        write_atomic(self.record, json.dumps(written[-self.keep:]))
        for name in written[: -self.keep]:
            (self.folder / name).unlink(missing_ok=True)

    def _written_steps(self) -> list[str]:
        """The step files steps.json lists, read back as input: an unreadable record lists nothing,
        so nothing is deleted on its word."""
        if not self.record.is_file():
            return []
        try:
            with open(self.record, encoding="utf-8") as f:
                text = f.read(MAX_RECORD_CHARS + 1)
            if len(text) > MAX_RECORD_CHARS:
                raise ValueError("too long")
            names = json.loads(text)
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s): no old step file is deleted", self.record, exc)
            return []
        if not (isinstance(names, list) and all(isinstance(n, str) and STEP_PATTERN.fullmatch(n) for n in names)):
            log.warning("%s is not a list of step files: no old step file is deleted", self.record)
            return []
        return names

    def save_best(self, state: dict, metrics: dict) -> None:
        save_atomic({**state, "metrics": metrics}, self.best)
        write_atomic(self.best_json, json.dumps(metrics, indent=2))

    def save_diverged(self, state: dict) -> Path:
        path = self.diverged_path(state["step"])
        save_atomic(state, path)
        return path

    def clean_temporaries(self) -> None:
        clean_temporaries(self.folder)  # left by a writer that was killed

    # -- reading ------------------------------------------------------------------------------

    def best_fd(self) -> float:
        """The FD of the existing best.pt, so a resumed run only replaces it with a better one."""
        if not (self.best.is_file() and self.best_json.is_file()):
            return math.inf
        try:
            return float(json.loads(self.best_json.read_text())["fd"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; the next measurement becomes the best", self.best_json)
            return math.inf

    def exist(self) -> bool:
        """Whether a resume would find a checkpoint to continue (loadable or not)."""
        return self.last.is_file() or any(p.is_file() for p in self.step_files())

    def latest(self) -> dict | None:
        """The state to resume: last.pt, else the newest loadable step file (its path then in
        `resumed_from`); None for a new run."""
        candidates = [self.last, *reversed(self.step_files())]
        for path in candidates:
            if not path.is_file():
                continue
            try:
                state = safe_load(path, f"checkpoint {path}")
            except UserError as exc:  # torn, truncated or unsafe: an older one may be whole
                log.warning("%s; trying an older checkpoint", exc)
                continue
            state = check(state, path, RESUME_ENTRIES)  # a whole file of the wrong kind is refused by name
            log.info("resuming from %s (step %d)", path, state["step"])
            self.resumed_from = path
            return state
        if any(p.is_file() for p in candidates):
            raise UserError(f"no loadable checkpoint in {self.folder}; move the directory aside to start afresh")
        return None


def resolve_source(source: str | Path) -> Path:
    """What `ganaug export` reads: a run directory means RUN/checkpoints/last.pt, else a checkpoint file."""
    path = Path(source)
    if path.is_dir():
        last = Checkpointer(path / "checkpoints").last
        if not last.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt; pass a run directory "
                            "or a checkpoint file")
        return last
    if not path.exists():
        raise UserError(f"{path} does not exist (expected a run directory or a checkpoint file)")
    return path
