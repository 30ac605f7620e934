"""Several `ganaug sample` processes on one --out: a short state lock, a claim per shard, done markers.

- The state lock (flock on the --out directory itself) is held only while a process reads or
  changes the set's state: checking sample_info.json, creating directories, removing temporaries,
  marking its shard done, finishing the set. Images are written outside it.
- A claim (flock on DIR/.shard-I-of-N.lock) keeps two processes of the same shard apart and tells
  who is writing now. Claims are taken and dropped only under the state lock, and a dropped claim's
  file is removed, so a lock file is never removed while another process could be taking it.
- A done marker (DIR/.shard-I-of-N.done) says shard I of N has all its files, verified. The process
  that then finds the markers of every shard of its N writes manifest.csv and "complete": true, and
  removes the markers.

An unsharded run is shard 0/1: it claims, marks and finishes like any shard, so it also finishes a
partly sharded set. The kernel drops a killed process's flocks; its lock file stays behind, unheld,
until the next claim of that shard or the end of the set removes it. Where there are no advisory
locks (Windows, or a file system mounted without flock support), concurrent runs are not detected
(one WARNING line says so); markers still work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.sampler.shards import Shard

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

_LOCK = re.compile(r"\.shard-([0-9]{1,9})-of-([0-9]{1,9})\.lock")
_DONE = re.compile(r"\.shard-([0-9]{1,9})-of-([0-9]{1,9})\.done")


def lock_name(shard: Shard) -> str:
    return f".shard-{shard.index}-of-{shard.count}.lock"


def done_name(shard: Shard) -> str:
    return f".shard-{shard.index}-of-{shard.count}.done"


def is_coordination_file(name: str) -> bool:
    return bool(_LOCK.fullmatch(name) or _DONE.fullmatch(name))


def _shards(out_dir: str, pattern: re.Pattern) -> dict[Shard, str]:
    found = {}
    for entry in os.scandir(out_dir):
        match = pattern.fullmatch(entry.name)
        if match and int(match[1]) < int(match[2]) and entry.is_file(follow_symlinks=False):
            found[Shard(int(match[1]), int(match[2]))] = entry.path
    return found


# What flock raises where the file system cannot lock (e.g. Lustre mounted without -o flock).
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_warned: set[str] = set()


def _flock(fd: int, flags: int, out_dir: str) -> bool:
    """flock(fd, flags): True when locked, False where locks are unsupported (with one WARNING line
    per directory); a lock held elsewhere raises BlockingIOError (LOCK_NB) as flock does."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, flags)
        return True
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise UserError(f"cannot lock {out_dir}: {exc.strerror or exc}") from None
        if out_dir not in _warned:
            _warned.add(out_dir)
            log.warning("the file system of %s does not support file locks (%s): runs writing to it at the same "
                        "time are not detected", out_dir, exc.strerror or exc)
        return False


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


def _describe(shard: Shard) -> str:
    return "`ganaug sample`" if shard.whole else f"`ganaug sample --shard {shard}`"


@contextlib.contextmanager
def state_lock(out_dir: str):
    """Hold the directory's state lock (waits: other holders hold it for a moment only)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"cannot open {out_dir}: {exc.strerror or exc}") from None
    try:
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, out_dir)
        except BlockingIOError:
            log.info("waiting for another `ganaug sample` to finish setting up or finishing %s", out_dir)
            _flock(fd, fcntl.LOCK_EX, out_dir)
        yield
    finally:
        os.close(fd)  # releases the lock


class Claim:
    """This process's claim on its shard of the set in out_dir. Take and drop it under state_lock."""

    def __init__(self, out_dir: str, shard: Shard):
        self.shard = shard
        self.path = os.path.join(out_dir, lock_name(shard))
        self._out_dir = out_dir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if fcntl is None:
            return
        try:
            fd = _open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise UserError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, self._out_dir)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise UserError(f"another {_describe(self.shard)} is writing to {self._out_dir}") from None
            raise
        self._fd = fd  # held even unlocked: release() removes the file either way

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before unlocking: nobody can take a claim meanwhile (state lock)
        os.close(self._fd)
        self._fd = None


def running_shards(out_dir: str, claim: Claim) -> list[Shard]:
    """The shards other processes are writing now (their claims are held). Under state_lock."""
    if fcntl is None:
        return []
    running = []
    for shard, path in sorted(_shards(out_dir, _LOCK).items()):
        if path == claim.path:
            continue
        try:
            fd = _open_no_follow(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            _flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, out_dir)
        except BlockingIOError:
            running.append(shard)
        finally:
            os.close(fd)
    return running


def check_same_split(running: list[Shard], shard: Shard, out_dir: str) -> None:
    """Concurrent runs on one set must split it the same way (markers of one COUNT finish it)."""
    other = next((s for s in running if s.count != shard.count), None)
    if other is not None:
        raise UserError(
            f"{_describe(other)} is writing to {out_dir}; runs at the same time on one --out must use the "
            f"same --shard COUNT ({other.count}), so wait for it or use --shard INDEX/{other.count}"
        )


def mark_done(out_dir: str, shard: Shard) -> None:
    write_atomic(os.path.join(out_dir, done_name(shard)), b"", fsync=True)


def missing_shards(out_dir: str, count: int) -> list[int]:
    """Shard indices of a COUNT-way split that have not marked themselves done."""
    done = {shard.index for shard in _shards(out_dir, _DONE) if shard.count == count}
    return [index for index in range(count) if index not in done]


def remove_coordination_files(out_dir: str, keep: Claim) -> None:
    """Remove every done marker and every lock file nobody holds (a killed run's). Under state_lock."""
    for path in _shards(out_dir, _DONE).values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    busy = set(running_shards(out_dir, keep))
    for shard, path in _shards(out_dir, _LOCK).items():
        if path != keep.path and shard not in busy:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
