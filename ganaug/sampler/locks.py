"""Several `ganaug sample` processes on one --out: a short state lock, a claim per shard, done markers.

- The state lock (flock on the --out directory) is held only while a process reads or changes the
  set's state: checking sample_info.json, creating directories, removing temporaries, marking its
  shard done, finishing the set. Images are written outside it.
- A claim (flock on DIR/.shard-I-of-N.lock) keeps two processes of one shard apart and tells who is
  writing now. Claims are taken and dropped only under the state lock, and a dropped claim's file is
  removed first, so a lock file is never removed while another process could be taking it.
- A done marker (DIR/.shard-I-of-N.done) says shard I of N has all its files, verified; the process
  that finds the markers of every shard of its N finishes the set.

An unsharded run is shard 0/1, so it also finishes a partly sharded set. The kernel drops a killed
process's flocks; its lock file stays, unheld, until that shard's next claim or the set's end. Where
there are no advisory locks (Windows, or a file system mounted without them) concurrent runs are
not detected (one WARNING line says so); markers still work.
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


def describe(shard: Shard) -> str:
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
        self.shard, self.out_dir = shard, out_dir
        self.path = os.path.join(out_dir, shard_file_name(shard, "lock"))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise UserError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, self.out_dir)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another {describe(self.shard)} is writing to {self.out_dir}") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # held even where locks are unsupported: release() removes the file either way

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # before unlocking: nobody can take the claim meanwhile (state lock)
            os.close(self._fd)
            self._fd = None


def running_shards(out_dir: str, claim: Claim) -> list[Shard]:
    """The shards other processes are writing now (their claims are held). Under state_lock."""
    if fcntl is None:
        return []
    running = []
    for shard, _, path in scan(out_dir, "lock"):
        if path == claim.path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
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
    """Runs at the same time on one set must split it the same way (markers of one COUNT finish it)."""
    other = next((s for s in running if s.count != shard.count), None)
    if other is not None:
        raise UserError(f"{describe(other)} is writing to {out_dir}; runs at the same time on one --out must use the "
                        f"same --shard COUNT ({other.count}), so wait for it or use --shard INDEX/{other.count}")


def mark_done(out_dir: str, shard: Shard) -> None:
    write_atomic(os.path.join(out_dir, shard_file_name(shard, "done")), b"", fsync=True)


def missing_shards(out_dir: str, count: int) -> list[int]:
    """Shard indices of a COUNT-way split that have not marked themselves done."""
    done = {shard.index for shard, _, _ in scan(out_dir, "done") if shard.count == count}
    return [index for index in range(count) if index not in done]


def remove_coordination_files(out_dir: str, claim: Claim) -> None:
    """Remove every done marker and every lock file nobody holds (a killed run's). Under state_lock."""
    busy = set(running_shards(out_dir, claim))
    stale = [path for shard, _, path in scan(out_dir, "lock") if path != claim.path and shard not in busy]
    for path in [path for _, _, path in scan(out_dir, "done")] + stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
