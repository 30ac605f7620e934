"""Several `ganaug sample` processes on one --out (docs/sampler.md, "Sharding"): a short state lock (flock
on the directory) guards the set's state; a claim (flock on DIR/.shard-I-of-N.lock), taken and dropped
under it, keeps two processes of a shard apart; a done marker (DIR/.shard-I-of-N.done) says a shard has
all its files. Without advisory locks (Windows, some mounts) concurrent runs go undetected, said once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.sampler.layout import Shard, scan, shard_file_name

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

# What flock raises where the file system cannot lock (e.g. Lustre mounted without -o flock).
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_warned: set[str] = set()


def _flock(fd: int, flags: int, out_dir: str) -> None:
    """flock, or one WARNING line per directory where locks are unsupported; a lock held elsewhere
    raises BlockingIOError (with LOCK_NB)."""
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise UserError(f"cannot lock {out_dir}: {exc.strerror or exc}") from None
        if out_dir not in _warned:
            _warned.add(out_dir)
            log.warning("the file system of %s does not support file locks (%s): runs writing to it at the same "
                        "time are not detected", out_dir, exc.strerror or exc)


def _describe(shard: Shard) -> str:
    return "`ganaug sample`" if shard.whole else f"`ganaug sample --shard {shard}`"


@contextlib.contextmanager
def state_lock(out_dir: str):
    """Hold the directory's state lock (waiting: others hold it for a moment only)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"cannot open {out_dir}: {exc.strerror or exc}") from None
    try:
        _flock(fd, fcntl.LOCK_EX, out_dir)
        yield
    finally:
        os.close(fd)  # releases the lock


class Claim:
    """This process's claim on its shard of the set in out_dir; every method runs under state_lock."""

    def __init__(self, out_dir: str, shard: Shard):
        self.shard, self.out_dir = shard, out_dir
        self.path = os.path.join(out_dir, shard_file_name(shard, "lock"))
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise UserError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, self.out_dir)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise UserError(f"another {_describe(self.shard)} is writing to {self.out_dir}") from None
            raise
        self._fd = fd  # held even where locks are unsupported: release() removes the file either way

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # before unlocking: nobody can take the claim meanwhile (state lock)
            os.close(self._fd)
            self._fd = None

    def others_running(self) -> list[Shard]:
        """The shards other processes write now. They must split the set as this one does: the markers of
        one COUNT finish it."""
        running = []
        for shard, _, path in scan(self.out_dir, "lock") if fcntl is not None else ():
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue
            try:
                _flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, self.out_dir)
            except BlockingIOError:
                running.append(shard)
            finally:
                os.close(fd)
        if other := next((s for s in running if s.count != self.shard.count), None):
            raise UserError(f"{_describe(other)} is writing to {self.out_dir}; runs at the same time on one --out must "
                            f"use the same --shard COUNT ({other.count}), so wait for it or use --shard "
                            f"INDEX/{other.count}")
        return running

    def mark_done(self) -> list[int]:
        """Mark this shard done; return the shards of its split that are not."""
        write_atomic(os.path.join(self.out_dir, shard_file_name(self.shard, "done")), b"", fsync=True)
        done = {shard.index for shard, _, _ in scan(self.out_dir, "done") if shard.count == self.shard.count}
        return [index for index in range(self.shard.count) if index not in done]

    def remove_coordination_files(self) -> None:
        """Remove every done marker and every lock file but those held (this one's, running ones')."""
        busy = set(self.others_running())
        for shard, _, path in scan(self.out_dir, "done") + scan(self.out_dir, "lock"):
            if path.endswith(".done") or (path != self.path and shard not in busy):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
