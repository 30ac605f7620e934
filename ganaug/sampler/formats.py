"""The bytes of a sample set's files: written deterministically, checked before a resume trusts them
(image files are not fsynced, so a power cut can leave one empty or cut short under its name), and
bounded from above before a run starts (docs/sampler.md, "Interruptions and resume", "Before anything
is written"). The PNG encoder is our own: PIL's per-image overhead is many times the encoding's here.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from ganaug.errors import UserError
from ganaug.files import write_atomic, write_bytes

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


def write_file(path: str, data: bytes, fsync: bool = False) -> None:
    write_atomic(path, lambda f: write_bytes(f, data), fsync=fsync)


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
                    write_bytes(member, header.getvalue())
                    # reshape first: a memoryview of an empty array cannot be cast
                    write_bytes(member, memoryview(array.reshape(-1).view(np.uint8)))

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
        if not _PNG_HEAD + 24 <= len(data) <= self._max_bytes:
            return False
        if data[:_PNG_HEAD] != self._head or data[-12:] != _IEND:
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
SCORE_BYTES = 16  # a manifest's ",score": the shortest float32 text is at most 13 characters


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


def manifest_bytes_bound(n: int, classes: list[tuple[int, int, int, str]], seed: int, score_column: bool = False) -> int:
    """manifest.csv of n rows; classes: (rows, label, longest path in bytes, class name) per class."""
    digits, score = len(str(max(n - 1, 0))), SCORE_BYTES if score_column else 0
    return 64 + sum(  # a quoted name doubles its quotes at worst
        rows * (path_bytes + 2 * len(name.encode()) + 2 + len(str(label)) + digits + len(str(seed)) + 5 + score)
        for rows, label, path_bytes, name in classes)


def disk_bytes(file_sizes: list[tuple[int, int]], block: int) -> int:
    """Disk taken by (count, size) groups of files in `block`-byte blocks (large files take an index block)."""
    return sum(count * (-(-size // block) * block + _ENTRY_BYTES + (block if size > 64 * block else 0))
               for count, size in file_sizes)


def human(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def check_free_space(out_dir: str, file_sizes: list[tuple[int, int]], what: str) -> None:
    """Refuse, in one line, files (count, size) that cannot fit on out_dir's file system."""
    try:
        fs = os.statvfs(out_dir)
    except (AttributeError, OSError):  # no statvfs (Windows) or an odd mount: the writers will tell
        return
    block = fs.f_frsize or fs.f_bsize or 4096
    need, available = disk_bytes(file_sizes, block), fs.f_bavail * block
    if need > available:
        raise UserError(f"not enough free space for --out {out_dir}: {what} need up to {human(need)} on disk, and its "
                        f"file system has {human(available)} available; free some space, choose another --out, or "
                        "ask for fewer images")
    files = sum(count for count, _ in file_sizes)
    if fs.f_files and files > fs.f_favail:  # f_files == 0: no inode limit
        raise UserError(f"not enough free inodes for --out {out_dir}: {what} need up to {files:,} new files and its "
                        f"file system can take {fs.f_favail:,} more; choose another --out or ask for fewer images")
