"""Checkpoint files: atomic writes, safe loads, and pruning old ones. Knows nothing of GANs.

A checkpoint holds only tensors and plain Python values, so it loads with weights_only=True:
a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from ganaug.errors import UserError
from ganaug.files import write_atomic

log = logging.getLogger(__name__)

STEP_PATTERN = re.compile(r"step_(\d{7,})\.pt$")


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a torn one; a write
    error (a full disk, a quota) is a UserError and leaves the old file as it was.
    """
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


def load_checkpoint(path: Path) -> dict:
    """A ganaug checkpoint, loaded safely; any unreadable, truncated or unsafe file is a UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    state = safe_load(path, f"checkpoint {path}")
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is not a ganaug checkpoint (got {type(state).__name__})")
    return state


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


def step_checkpoints(folder: Path) -> list[Path]:
    """step_NNNNNNN.pt files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if STEP_PATTERN.search(p.name)),
                  key=lambda p: int(STEP_PATTERN.search(p.name).group(1)))


def prune(folder: Path, keep: int) -> None:
    for old in step_checkpoints(folder)[: max(0, len(step_checkpoints(folder)) - keep)]:
        old.unlink(missing_ok=True)
