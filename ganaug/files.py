"""Small file helpers shared by the commands (torch-free)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
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


def write_atomic(path: Path, data: bytes | memoryview | str, fsync: bool = False) -> None:
    """Replace `path` with `data` in one step: a reader, or a crash, sees the old file or the new one.

    The temporary file sits beside `path` (so the rename is atomic) under an unguessable name,
    created with O_EXCL (never through a link or over another file) and mode 0o666, so the umask
    gives it a plain write's permissions. On any failure it is removed and the OSError
    propagates, with `path` untouched.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    binary = not isinstance(data, str)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
