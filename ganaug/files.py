"""Small file helpers shared by the commands (torch-free)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from ganaug.errors import UserError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(path: Path, flag: str) -> None:
    """Create `path` if needed and prove it takes files, or raise a UserError naming the flag."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path} is not a writable directory: {exc.strerror or exc}") from None
