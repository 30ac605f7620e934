"""Is a file of an earlier, interrupted run whole? A cheap structural check before a resume counts it.

Image files are not fsynced (speed), so a power cut can leave a PNG renamed into place but empty or
cut short; a disk can also hand back zeros. A resume must rewrite such a file, not count it as done.

- PNG: the sampler's encoder writes exactly signature, IHDR, one IDAT and IEND, and its bytes are a
  function of the pixels (PNG_ENCODING is part of the set's identity, so a resume never meets another
  encoder's files). So the first 33 bytes (signature and IHDR: size and colour type) must be exactly
  what this shape encodes to, the last 12 must be IEND, and what lies between must be one IDAT chunk
  whose length field spans it and whose CRC matches: a truncated, zero-filled or overwritten file
  fails. The pixels are not decoded (the CRC covers their bytes).
- .npz: a readable zip (its directory sits at the end, so a truncated file fails) holding exactly
  images.npy and labels.npy, each a stored .npy of the expected dtype and shape whose size matches its
  header, and labels equal to the expected labels. The image bytes are not read: shards are fsynced
  before they are renamed into place, unlike PNGs.

docs/sampler.md gives the measured cost.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np

from ganaug.sampler.writers import encode_png

_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_HEAD = 33  # signature (8) + IHDR chunk (4 + 4 + 13 + 4)


class PngCheck:
    """Checks PNG files of one image shape against what the sampler's encoder writes."""

    def __init__(self, image_shape: tuple[int, int, int], max_bytes: int):
        self._head = encode_png(np.zeros(image_shape, np.uint8))[:_HEAD]
        self._max_bytes = max_bytes  # nothing the encoder writes is larger (space.png_bytes_bound)

    def is_whole(self, path: str) -> bool:
        """True when `path` is a whole PNG of this shape; False when missing, damaged or not a file."""
        data = _read(path, self._max_bytes + 1)
        if data is None or len(data) > self._max_bytes or len(data) < _HEAD + 12 + 12:
            return False
        if data[:_HEAD] != self._head or data[-12:] != _IEND:
            return False
        length, kind = struct.unpack(">I4s", data[_HEAD : _HEAD + 8])
        body_end = _HEAD + 8 + length
        if kind != b"IDAT" or body_end + 4 != len(data) - 12:
            return False
        (crc,) = struct.unpack(">I", data[body_end : body_end + 4])
        return crc == zlib.crc32(data[_HEAD + 4 : body_end])


def _read(path: str, limit: int) -> bytes | None:
    """Up to `limit` bytes of a regular file, not following a symbolic link; None if there is none."""
    try:
        # O_NONBLOCK: a FIFO under an image's name must not hang the resume (it reads as empty).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        chunks, remaining = [], limit
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError:  # a directory, or an unreadable file
        return None
    finally:
        os.close(fd)


def npz_is_whole(path: str, image_shape: tuple[int, int, int], labels: np.ndarray) -> bool:
    """True when `path` is a whole shard of len(labels) images of image_shape with these labels."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    expected = {"images.npy": ((len(labels), *image_shape), np.dtype(np.uint8)),
                "labels.npy": ((len(labels),), np.dtype(np.int64))}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if sorted(members) != sorted(expected):
                return False
            for name, (shape, dtype) in expected.items():
                info = members[name]
                if info.compress_type != zipfile.ZIP_STORED:
                    return False
                with archive.open(info) as member:
                    if np.lib.format.read_magic(member) != (2, 0):  # what writers.write_npz writes
                        return False
                    header = np.lib.format.read_array_header_2_0(member)  # (shape, fortran order, dtype)
                    header_size = member.tell()
                    if header != (shape, False, dtype) or info.file_size != header_size + dtype.itemsize * int(
                        np.prod(shape)
                    ):
                        return False
                    if name == "labels.npy":
                        stored = np.frombuffer(member.read(labels.nbytes), dtype=dtype)
                        if not np.array_equal(stored, labels):
                            return False
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
        return False
    return True

