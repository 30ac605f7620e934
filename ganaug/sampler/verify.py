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
  images.npy and labels.npy (and, filtered, indices.npy and scores.npy), each a stored .npy of the
  expected dtype and shape whose size matches its header, and labels equal to the expected labels
  (filtered: those of its indices, which lie in the file's range, with scores the filter keeps). The
  image bytes are not read: shards are fsynced before they are renamed into place, unlike PNGs.

docs/sampler.md gives the measured cost.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np

from ganaug.sampler.labels import labels_for
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


def _npz_arrays(path: str, expected: dict[str, tuple[tuple, np.dtype]], read: tuple[str, ...]) -> dict | None:
    """The arrays `read` of an .npz file whose members are exactly `expected` (name -> (shape, dtype)),
    each stored, of that dtype and shape, its size matching its header; None when it is not so. A
    shape may start with None: the same count for every member that says so, read from the file."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    arrays, count = {}, None
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if sorted(members) != sorted(f"{name}.npy" for name in expected):
                return None
            for name, (shape, dtype) in expected.items():
                info = members[f"{name}.npy"]
                if info.compress_type != zipfile.ZIP_STORED:
                    return None
                with archive.open(info) as member:
                    if np.lib.format.read_magic(member) != (2, 0):  # what writers.write_npz writes
                        return None
                    stored_shape, fortran_order, stored_dtype = np.lib.format.read_array_header_2_0(member)
                    if shape[0] is None and len(stored_shape) == len(shape):
                        count = stored_shape[0] if count is None else count
                        shape = (count, *shape[1:])
                    header_size = member.tell()
                    if (stored_shape, fortran_order, stored_dtype) != (shape, False, dtype) or (
                            info.file_size != header_size + dtype.itemsize * int(np.prod(shape))):
                        return None
                    if name in read:
                        nbytes = dtype.itemsize * int(np.prod(shape))
                        arrays[name] = np.frombuffer(member.read(nbytes), dtype=dtype).reshape(shape)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
        return None
    return arrays


def npz_is_whole(path: str, image_shape: tuple[int, int, int], labels: np.ndarray) -> bool:
    """True when `path` is a whole shard of len(labels) images of image_shape with these labels."""
    arrays = _npz_arrays(path, {"images": ((len(labels), *image_shape), np.dtype(np.uint8)),
                                "labels": ((len(labels),), np.dtype(np.int64))}, read=("labels",))
    return arrays is not None and np.array_equal(arrays["labels"], labels)


def filtered_npz_kept(path: str, image_shape: tuple[int, int, int], lo: int, hi: int, classes: tuple[int, ...],
                      threshold: np.float32) -> int | None:
    """How many images a whole filtered shard of images lo .. hi-1 keeps; None when the file is not one:
    images, labels, indices and scores of one count, indices ascending inside [lo, hi), each label that
    of its index, each score in [threshold, 1]."""
    arrays = _npz_arrays(path, {"images": ((None, *image_shape), np.dtype(np.uint8)),
                                "labels": ((None,), np.dtype(np.int64)),
                                "indices": ((None,), np.dtype(np.int64)),
                                "scores": ((None,), np.dtype(np.float32))}, read=("labels", "indices", "scores"))
    if arrays is None:
        return None
    indices, scores = arrays["indices"], arrays["scores"]
    if len(indices) > hi - lo or (len(indices) and (indices[0] < lo or indices[-1] >= hi)):
        return None
    if (np.diff(indices) <= 0).any() or not np.array_equal(arrays["labels"], labels_for(indices, classes)):
        return None
    if not (np.isfinite(scores).all() and (scores >= threshold).all() and (scores <= 1).all()):
        return None
    return len(indices)
