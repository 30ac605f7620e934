"""Files every command writes: one atomic writer, one temporary-name scheme, one cleaner (torch-free).

Every file ganaug writes appears atomically: its bytes go to a temporary file beside the target,
created with O_EXCL under an unguessable name (never through a link or over another file), and the
temporary is renamed over the target. A reader, a crash or a full disk sees the old file or the
new one, never half of one. A writer killed outright leaves its temporary behind; the next run on
that directory removes it with `clean_temporaries` (the names are recognisable by `is_temporary`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ganaug.errors import UserError

TEMP_PREFIX = ".ganaug-"
TEMP_SUFFIX = ".tmp"
_TEMP_TOKEN = secrets.token_hex(8)  # one random draw per process, a counter per file (cheap for many files)
_temp_counter = itertools.count()  # next() is atomic under the GIL: writer threads never share a name


def is_temporary(name: str) -> bool:
    """Is this file name one of ganaug's temporaries?"""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temporary_beside(path: str | os.PathLike) -> str:
    """A fresh temporary name in `path`'s directory (for writers that must name their file up front)."""
    # The pid keeps a forked child, which inherits the token and the counter, off its parent's names.
    name = f"{TEMP_PREFIX}{_TEMP_TOKEN}-{os.getpid()}-{next(_temp_counter):x}{TEMP_SUFFIX}"
    return os.path.join(os.path.dirname(os.fspath(path)) or ".", name)


def write_bytes(f: BinaryIO, data: bytes | memoryview) -> None:
    """The one place file contents are written (tests inject disk-full errors here)."""
    f.write(data)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | memoryview | str | Callable[[BinaryIO], None],
                 fsync: bool = False, replace: bool = True) -> None:
    """Create or replace `path` atomically with `data`: bytes, text (UTF-8), or `fill(file)` that
    streams the contents into a binary file.

    fsync=True makes the new file durable before it replaces the old one (checkpoints, models,
    manifests). replace=False creates `path` only if nothing is there at that moment (a hard link
    fails where a name exists, so two writers cannot both win). On any failure the temporary is
    removed and `path` is untouched; an OSError becomes a UserError naming `path` and the reason.
    """
    check_regular_target(path)
    temp = temporary_beside(path)
    try:
        # O_EXCL on an unguessable name never follows or reuses anything already there; mode 0o666 so
        # the umask decides the permissions, as for any other file the user creates.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                write_bytes(f, data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise UserError(f"{path} was created by someone else meanwhile; it was left as it is") from None
            os.unlink(temp)
        if fsync:
            fsync_dir(os.path.dirname(os.fspath(path)) or ".")
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def clean_temporaries(directory: str | os.PathLike, older_than_s: float = 0.0) -> int:
    """Remove the temporaries a killed writer left in `directory`; return how many.

    In a folder ganaug owns (a run's checkpoints, a sample set, both locked) every temporary is
    stale. In a folder it shares with others (`export --out`), pass `older_than_s`: only temporaries
    untouched that long go, so another writer's file in flight is left alone.
    """
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if not (is_temporary(entry.name) and entry.is_file(follow_symlinks=False)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if older_than_s and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            os.unlink(entry.path)
            removed += 1
    return removed


def sync_filesystems() -> None:
    """Flush every file written so far to disk: one call instead of an fsync per file, for sets of
    many small files (PNGs) that must be durable before they are recorded as done."""
    sync = getattr(os, "sync", None)  # absent on Windows, where there is no cheap equivalent
    if sync is not None:
        sync()


def check_regular_target(path: str | os.PathLike, flag: str | None = None) -> None:
    """Refuse to replace anything but a regular file: a device node, a FIFO or a socket (e.g. a copy
    of /dev/null given as --out) would be swapped for a plain file, or worse, written into."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise UserError(f"{flag + ' ' if flag else ''}{path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{flag + ' ' if flag else ''}{path} is a directory, not a file")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UserError(f"{flag + ' ' if flag else ''}{path} exists and is not a regular file "
                        "(a device, pipe or socket); refusing to replace it")


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
