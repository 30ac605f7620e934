"""Free space first: a sound upper bound of what a run writes, checked before its first image.

Without it a very large --n runs until the disk is full, and the error comes hours in (nothing is
lost: the same command finishes the set once there is room, but the time is). Each bound is the
worst case of what the writers can produce, so a refused run could not have fitted, and one that
passes can only fail if something else fills the disk meanwhile.
"""

from __future__ import annotations

import math
import os

from ganaug.errors import UserError

# Per file, beyond its data rounded up to whole blocks: the directory entry (8 bytes + the name,
# which stays under 230 bytes) and, for large files, extent or indirect blocks.
_ENTRY_BYTES = 256
_NPZ_OVERHEAD = 4096  # zip headers, zip64 records, two .npy headers and the central directory


def png_bytes_bound(image_shape: tuple[int, int, int]) -> int:
    """No PNG the sampler encodes for this shape is longer (bytes in the file)."""
    height, width, channels = image_shape
    raw = height * (1 + width * channels)  # scanlines with their filter byte
    # zlib's compressBound(raw): the longest stream any level (stored blocks included) produces.
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13
    return 8 + (12 + 13) + (12 + deflated) + 12  # signature, IHDR, IDAT, IEND


def npz_bytes_bound(count: int, image_shape: tuple[int, int, int], extra_bytes_per_image: int = 0) -> int:
    """No .npz shard of `count` images is longer (extra_bytes_per_image: arrays beyond images and labels,
    each with its own headers)."""
    overhead = _NPZ_OVERHEAD * (2 if extra_bytes_per_image else 1)
    return count * (math.prod(image_shape) + 8 + extra_bytes_per_image) + overhead


# A filtered manifest's `score`: a comma and the shortest float32 text, at most 13 characters
# ("1.1754942e-38"); 16 leaves room.
SCORE_BYTES = 16


def manifest_bytes_bound(n: int, classes: list[tuple[int, int, int, str]], seed: int, score_column: bool = False) -> int:
    """manifest.csv of n rows; classes: (rows, label, longest path in bytes, class name) per selected class."""
    digits = len(str(max(n - 1, 0)))
    score = SCORE_BYTES if score_column else 0
    return 64 + sum(  # the header, then each row; a quoted name doubles its quotes at worst
        rows * (path_bytes + (2 * len(name.encode()) + 2) + len(str(label)) + digits + len(str(seed)) + 5 + score)
        for rows, label, path_bytes, name in classes
    )


def _blocks(size: int, block: int) -> int:
    return -(-size // block) * block


def disk_bytes(file_sizes: list[tuple[int, int]], block: int) -> int:
    """Disk taken by (count, size) groups of files on a file system of `block`-byte blocks."""
    return sum(count * (_blocks(size, block) + _ENTRY_BYTES + (block if size > 64 * block else 0))
               for count, size in file_sizes)


def human(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_free_space(out_dir: str, file_sizes: list[tuple[int, int]], what: str) -> None:
    """Refuse, in one line, a run whose files (count, size in bytes) cannot fit where --out is."""
    try:
        fs = os.statvfs(out_dir)
    except (AttributeError, OSError):  # no statvfs (Windows) or an odd mount: the writers will tell
        return
    block = fs.f_frsize or fs.f_bsize or 4096
    need, available = disk_bytes(file_sizes, block), fs.f_bavail * block
    if need > available:
        raise UserError(
            f"not enough free space for --out {out_dir}: {what} need up to {human(need)} on disk, and its file "
            f"system has {human(available)} available; free some space, choose another --out, or ask for fewer images"
        )
    files = sum(count for count, _ in file_sizes)
    if fs.f_files and files > fs.f_favail:  # f_files == 0: a file system without an inode limit
        raise UserError(
            f"not enough free inodes for --out {out_dir}: {what} need up to {files:,} new files and its file "
            f"system can take {fs.f_favail:,} more; choose another --out or ask for fewer images"
        )
