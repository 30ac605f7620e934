"""The sample set on disk (docs/sampler.md, "Output layout"; its names are the contract's): the split into
shards and the locks of the processes that share it, the bytes of its files, and sample_info.json, ganaug's
only proof of which files there it wrote (without a readable one, a non-empty directory is never written
into and --overwrite deletes nothing).

Files are written deterministically (the PNG encoder is our own: PIL's per-image overhead is many times
the encoding's on small images; .npz entries are stored, with fixed timestamps), checked before a resume
trusts them (image files are not fsynced: a power cut can leave one empty or cut short under its name),
and bounded from above before a run starts ("Before anything is written").
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from ganaug import files, memory, safejson
from ganaug.contract import INFO_NAME, MANIFEST_NAME, png_pattern, shorten
from ganaug.errors import UserError
from ganaug.files import is_temporary, write_atomic
from ganaug.nested import changed_leaves

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

NPZ_PATTERN = re.compile(r"shard_\d{5,}\.npz")
# a shard's lock file and done marker (.shard-I-of-N.lock|done), a score record (.scores-I-of-N-B.npy)
_OWN_FILE = re.compile(r"\.(?:shard|scores)-([0-9]{1,9})-of-([0-9]{1,9})(?:-([0-9]{9,18}))?\.(lock|done|npy)")
MAX_SHARDS = 1 << 20
# The class names appear three times: 16 Mi characters of names at most (contract.MAX_VALUE_CHARS).
MAX_INFO_CHARS, MAX_INFO_DEPTH = 128 << 20, 8
_UNPROVEN = "ganaug cannot tell which files there it wrote, so it deletes none: move them aside or choose another --out"


@dataclass(frozen=True, order=True)
class Shard:
    """`--shard INDEX/COUNT`: PNG images i with i % COUNT == INDEX; .npz files k with k % COUNT == INDEX."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        assert 0 <= self.index < self.count, self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def image_indices(self, start: int, stop: int) -> np.ndarray:
        """int64 image indices in [start, stop) of this shard."""
        return np.arange(start + (self.index - start) % self.count, stop, self.count, dtype=np.int64)

    def image_count(self, n: int) -> int:
        return len(range(self.index, n, self.count))


def parse_shard(text: str | None) -> Shard:
    """'3/8' -> Shard(3, 8); None -> the whole set."""
    if text is None:
        return Shard()
    if not (match := re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())):
        raise UserError(f"--shard {text!r} is not INDEX/COUNT (e.g. --shard 3/8, indices 0 .. COUNT-1)")
    index, count = (int(part) if len(part) <= 9 else MAX_SHARDS + 1 for part in match.groups())
    if not 1 <= count <= MAX_SHARDS:
        raise UserError(f"--shard {text}: COUNT must be 1 .. {MAX_SHARDS}, got {match[2]}")
    if index >= count:
        raise UserError(f"--shard {text}: INDEX must be 0 .. {count - 1} (COUNT - 1), got {match[1]}")
    return Shard(index, count)


def shard_file_name(shard: Shard, kind: str) -> str:
    """A shard's lock file (kind "lock": held while it writes) or done marker ("done")."""
    return f".shard-{shard.index}-of-{shard.count}.{kind}"


def record_name(shard: Shard, block: int) -> str:
    return f".scores-{shard.index}-of-{shard.count}-{block:09d}.npy"


def scan(out_dir: str, kind: str) -> list[tuple[Shard, int, str]]:
    """(shard, block (0 but for records), path) of the "lock" files, "done" markers or score records ("npy")."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(out_dir):
            match = _OWN_FILE.fullmatch(entry.name)
            if match and match[4] == kind and int(match[1]) < int(match[2]) and entry.is_file(follow_symlinks=False):
                found.append((Shard(int(match[1]), int(match[2])), int(match[3] or 0), entry.path))
    return sorted(found)


def read_info(out_dir: str) -> dict | None:
    """The set's sample_info.json, None when there is none. A file from disk: its size and nesting are
    bounded before it is parsed, and the fields that steer resuming and deleting checked."""
    path = os.path.join(out_dir, INFO_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_INFO_CHARS + 1)
        if len(text) > MAX_INFO_CHARS:
            raise ValueError(f"longer than {MAX_INFO_CHARS >> 20} Mi characters")
        info = safejson.loads(text, max_depth=MAX_INFO_DEPTH)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"cannot read {path} ({shorten(str(exc), 200)}); {_UNPROVEN}") from None
    class_dirs = info.get("class_dirs", []) if isinstance(info, dict) else None
    if not (isinstance(info, dict) and isinstance(info.get("identity"), dict) and isinstance(class_dirs, list)
            and all(isinstance(name, str) for name in class_dirs)):
        raise UserError(f"{path} is not a ganaug sample_info.json (no identity object, or class_dirs not a "
                        f"list of names); {_UNPROVEN}")
    return info


def write_info(out_dir: str, info: dict) -> None:
    data = json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(os.path.join(out_dir, INFO_NAME), data, fsync=True)


def open_for_run(out_dir: str, identity: dict, overwrite: bool, running: list[Shard], keep: str) -> bool:
    """Check the directory against this run (under the state lock): True to resume the same set, False for a
    fresh start; a refusal is a UserError. `running`: shards other processes write; `keep`: our lock file."""
    old_info = read_info(out_dir)
    if old_info is not None and old_info["identity"] == identity:
        return True
    if old_info is not None and not overwrite:
        differences = "; ".join(f"{key} {shorten(repr(a), 80)} there, {shorten(repr(b), 80)} now"
                                for key, a, b in changed_leaves(old_info["identity"], identity))
        raise UserError(f"{out_dir} holds samples made with other settings ({differences}); "
                        "choose another --out or pass --overwrite to replace them")
    if old_info is None:
        foreign = [name for name in os.listdir(out_dir) if not is_temporary(name) and not re.fullmatch(
            r"\.shard-[0-9]{1,9}-of-[0-9]{1,9}\.(lock|done)", name)]
        if foreign:
            raise UserError(f"{out_dir} is not empty and has no {INFO_NAME} (e.g. {sorted(foreign)[0]!r}); refusing "
                            "to mix synthetic images into it: choose a new or empty directory")
        return False
    if running:
        raise UserError(f"cannot --overwrite {out_dir} while `ganaug sample --shard {running[0]}` is writing to it")
    # --overwrite: delete what the recorded run wrote, nothing else (a tampered record steers nothing elsewhere)
    for class_dir in old_info.get("class_dirs", []):
        directory, pattern = os.path.join(out_dir, class_dir), png_pattern(class_dir)
        if (class_dir in ("", ".", "..") or os.path.basename(class_dir) != class_dir or {"\\", "\x00"} & set(class_dir)
                or not os.path.isdir(directory) or os.path.islink(directory)):
            continue
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) and (pattern.fullmatch(entry.name) or is_temporary(entry.name)):
                os.unlink(entry.path)
        if not os.listdir(directory):  # a directory that also holds files of the user's stays
            os.rmdir(directory)
    for entry in os.scandir(out_dir):
        if entry.path != keep and entry.is_file(follow_symlinks=False) and (
                NPZ_PATTERN.fullmatch(entry.name) or is_temporary(entry.name) or entry.name == MANIFEST_NAME
                or _OWN_FILE.fullmatch(entry.name)):
            os.unlink(entry.path)
    # Last: until it is gone, an interrupted --overwrite can be repeated and still knows what to remove.
    if os.path.isfile(info_path := os.path.join(out_dir, INFO_NAME)) and not os.path.islink(info_path):
        os.unlink(info_path)
    return False


# ------------------------------------------------------------------------------------------- the bytes
# zlib level 1, or stored when the pixels fit in one 4 KiB block: below a block, compression saves no
# disk and its CPU is most of a small PNG's cost (docs/performance.md).
PNG_COMPRESS_LEVEL = 1
PNG_STORED_BELOW = 4096
PNG_ENCODING = f"filter0-zlib{PNG_COMPRESS_LEVEL}-stored-below-{PNG_STORED_BELOW}"
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # grey, RGB, RGBA
_PNG_HEAD = 33  # signature (8) + IHDR chunk (12 + 13)
_IEND = struct.pack(">I4sI", 0, b"IEND", zlib.crc32(b"IEND"))
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
NPZ_DTYPES = {"images": np.uint8, "labels": np.int64, "indices": np.int64, "scores": np.float32}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1, 3 or 4) -> PNG bytes; same pixels, same bytes."""
    height, width, channels = image.shape
    scanlines = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # column 0: filter type none
    scanlines[:, 1:] = image.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    level = 0 if scanlines.size < PNG_STORED_BELOW else PNG_COMPRESS_LEVEL
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), level)), _IEND))


def write_npz(path: str, arrays: dict[str, np.ndarray], fsync: bool = True) -> None:
    """An uncompressed .npz (numpy.load reads it) whose bytes depend on the arrays only."""

    def fill(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                array = np.ascontiguousarray(array)
                header = io.BytesIO()
                np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(array))
                with archive.open(info, "w", force_zip64=True) as member:
                    files.write_bytes(member, header.getvalue())  # one place to inject a full disk
                    # reshape first: a memoryview of an empty array cannot be cast
                    files.write_bytes(member, memoryview(array.reshape(-1).view(np.uint8)))

    write_atomic(path, fill, fsync=fsync)


class PngCheck:
    """Is a file what encode_png writes for this shape: its signature and IHDR, one IDAT whose length spans
    the file and whose CRC matches (the pixels are not decoded), and IEND?"""

    def __init__(self, image_shape: tuple[int, int, int], max_bytes: int):
        self._head = encode_png(np.zeros(image_shape, np.uint8))[:_PNG_HEAD]
        self._max_bytes = max_bytes  # png_bytes_bound: nothing the encoder writes is longer

    def is_whole(self, path: str) -> bool:
        # Not through a link; O_NONBLOCK: a FIFO under an image's name must not hang the resume.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            with open(path, "rb", opener=lambda name, _: os.open(name, flags)) as f:
                data = f.read(self._max_bytes + 1)
        except OSError:  # missing, a link, a directory or unreadable
            return False
        if not _PNG_HEAD + 24 <= len(data) <= self._max_bytes or data[:_PNG_HEAD] != self._head or data[-12:] != _IEND:
            return False
        length, kind = struct.unpack(">I4s", data[_PNG_HEAD:_PNG_HEAD + 8])
        end = _PNG_HEAD + 8 + length
        return (kind == b"IDAT" and end + 16 == len(data)
                and data[end:end + 4] == struct.pack(">I", zlib.crc32(data[_PNG_HEAD + 4:end])))


def npz_arrays(path: str, image_shape: tuple[int, int, int], names: tuple[str, ...]) -> dict | None:
    """The arrays but `images` of an .npz file as write_npz writes them (members exactly `names`, images first,
    each a stored .npy of its dtype and of one count, sizes matching their headers); None if it is not so."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    arrays, count = {}, None
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if sorted(members) != sorted(f"{name}.npy" for name in names):
                return None
            for name in names:
                info = members[f"{name}.npy"]
                with archive.open(info) as member:
                    if info.compress_type != zipfile.ZIP_STORED or np.lib.format.read_magic(member) != (2, 0):
                        return None
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
                    count = shape[0] if count is None and shape else count
                    expected = (count, *image_shape) if name == "images" else (count,)
                    size = dtype.itemsize * math.prod(shape)
                    if ((shape, fortran_order, dtype) != (expected, False, np.dtype(NPZ_DTYPES[name]))
                            or info.file_size != member.tell() + size):
                        return None
                    if name != "images":
                        arrays[name] = np.frombuffer(member.read(size), dtype=dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
        return None
    return arrays


def npz_is_whole(path: str, image_shape: tuple[int, int, int], labels: np.ndarray) -> bool:
    """Is `path` a whole unfiltered .npz file of these labels' images?"""
    arrays = npz_arrays(path, image_shape, ("images", "labels"))
    return arrays is not None and np.array_equal(arrays["labels"], labels)


# Free space: each bound is the worst case the writers can produce, so a refused run could not have fitted.
_ENTRY_BYTES = 256  # per file beyond its blocks: the directory entry (the names stay under 230 bytes)
_NPZ_OVERHEAD = 4096  # zip headers, zip64 records, .npy headers, the central directory


def png_bytes_bound(image_shape: tuple[int, int, int]) -> int:
    """No PNG encode_png writes for this shape is longer."""
    height, width, channels = image_shape
    raw = height * (1 + width * channels)
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13  # zlib's compressBound: any level
    return 8 + 25 + 12 + deflated + 12


def npz_bytes_bound(count: int, image_shape: tuple[int, int, int], extra_bytes_per_image: int = 0) -> int:
    """No .npz file of `count` images is longer (extra: the bytes per image of arrays beyond labels)."""
    overhead = _NPZ_OVERHEAD * (2 if extra_bytes_per_image else 1)
    return count * (math.prod(image_shape) + 8 + extra_bytes_per_image) + overhead


def disk_bytes(file_sizes: list[tuple[int, int]], block: int) -> int:
    """Disk taken by (count, size) groups of files in `block`-byte blocks (large files take an index block)."""
    return sum(count * (-(-size // block) * block + _ENTRY_BYTES + (block if size > 64 * block else 0))
               for count, size in file_sizes)


def check_free_space(out_dir: str, file_sizes: list[tuple[int, int]], what: str) -> None:
    """Refuse, in one line, files (count, size) that cannot fit on out_dir's file system."""
    try:
        fs = os.statvfs(out_dir)
    except (AttributeError, OSError):  # no statvfs (Windows) or an odd mount: the writers will tell
        return
    block = fs.f_frsize or fs.f_bsize or 4096
    need, available = disk_bytes(file_sizes, block), fs.f_bavail * block
    if need > available:
        raise UserError(f"not enough free space for --out {out_dir}: {what} need up to {memory.size(need)} on disk, and its "
                        f"file system has {memory.size(available)} available; free some space, choose another --out, or "
                        "ask for fewer images")
    new_files = sum(count for count, _ in file_sizes)
    if fs.f_files and new_files > fs.f_favail:  # f_files == 0: no inode limit
        raise UserError(f"not enough free inodes for --out {out_dir}: {what} need up to {new_files:,} new files and its "
                        f"file system can take {fs.f_favail:,} more; choose another --out or ask for fewer images")


# ------------------------------------------------------------------------------------------- the locks
# Several `ganaug sample` processes on one --out (docs/sampler.md, "Sharding"): a short state lock (flock
# on the directory) guards the set's state; a claim (flock on DIR/.shard-I-of-N.lock), taken and dropped
# under it, keeps two processes of a shard apart; a done marker (DIR/.shard-I-of-N.done) says a shard has
# all its files. Without advisory locks (Windows, some mounts) concurrent runs go undetected, said once.
# What flock raises where the file system cannot lock (e.g. Lustre mounted without -o flock).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_warned_no_locks: set[str] = set()


def _flock(fd: int, flags: int, out_dir: str) -> None:
    """flock, or one WARNING line per directory where locks are unsupported; a lock held elsewhere
    raises BlockingIOError (with LOCK_NB)."""
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise UserError(f"cannot lock {out_dir}: {exc.strerror or exc}") from None
        if out_dir not in _warned_no_locks:
            _warned_no_locks.add(out_dir)
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
