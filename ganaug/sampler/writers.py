"""Files that encode deterministically, and a bounded pool that writes them.

Every file goes through `ganaug.files.write_atomic`, so a crash, SIGKILL or full disk never leaves
a half file under a final name. The bytes depend only on the pixels: PNG with a fixed compression level and no metadata, .npz with
fixed zip timestamps (numpy.savez would stamp the current time).
"""

from __future__ import annotations

import collections
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

from ganaug.files import write_atomic, write_bytes

# The PNG bytes are a function of the pixels alone, fixed by these settings (recorded in
# sample_info.json, so a resumed run never mixes encodings): no scanline filter; zlib level 1, or
# stored (level 0) when the pixels fit in one 4 KiB filesystem block. Below a block, compression
# saves no disk (a file takes a whole block) and its CPU is most of a small PNG's cost
# (docs/performance.md has the figures).
PNG_COMPRESS_LEVEL = 1
PNG_STORED_BELOW = 4096
PNG_ENCODING = f"filter0-zlib{PNG_COMPRESS_LEVEL}-stored-below-{PNG_STORED_BELOW}"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # grey, RGB, RGBA; 8 bits per sample
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def write_file_atomic(path: str, data: bytes, fsync: bool = False) -> None:
    write_atomic(path, lambda f: write_bytes(f, data), fsync=fsync)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1, 3 or 4) -> PNG bytes; same pixels, same bytes.

    Written out rather than through PIL: on the small images a GAN makes, PIL's per-image
    overhead is many times what the encoding needs (docs/performance.md), and the sampler writes
    one file per image. The subset of the format used is the
    simplest one: 8-bit samples, one IDAT chunk, filter type 0 on every scanline (see
    PNG_ENCODING for the compression).
    """
    height, width, channels = image.shape
    scanlines = np.empty((height, 1 + width * channels), dtype=np.uint8)
    scanlines[:, 0] = 0  # filter type: none
    scanlines[:, 1:] = image.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    level = 0 if scanlines.size < PNG_STORED_BELOW else PNG_COMPRESS_LEVEL
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), level)),
                     _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_npz(path: str, arrays: dict[str, np.ndarray], fsync: bool = True) -> None:
    """An uncompressed .npz (readable by numpy.load) with deterministic bytes.

    Entries are stored, not deflated: fast to write, and a reader can memory-map one entry.
    """

    def fill(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    array = np.ascontiguousarray(array)
                    header = io.BytesIO()
                    np.lib.format.write_array_header_2_0(
                        header, np.lib.format.header_data_from_array_1_0(array)
                    )
                    write_bytes(member, header.getvalue())
                    # As flat bytes; reshape first, as a memoryview of an empty array cannot be cast.
                    write_bytes(member, memoryview(array.reshape(-1).view(np.uint8)))

    write_atomic(path, fill, fsync=fsync)


class WritePool:
    """Write jobs on worker threads, at most `max_pending` queued or running at once.

    Encoding (zlib) and file writes release the GIL, so they overlap with inference on the main
    thread. submit() blocks while the queue is full, which bounds memory whatever N is. The first
    failure is raised in the main thread at the next submit() or drain(); on exit with an error,
    queued jobs are cancelled and running ones finish (each cleans up its own temporary file).
    """

    def __init__(self, workers: int, max_pending: int, on_done: Callable[[int], None] | None = None):
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ganaug-write")
        self._pending: collections.deque[Future] = collections.deque()
        self._max_pending = max(1, max_pending)
        self._on_done = on_done or (lambda count: None)

    def submit(self, job: Callable[..., int], *args) -> None:
        """Queue job(*args), which returns how many images it wrote."""
        while self._pending and (len(self._pending) >= self._max_pending or self._pending[0].done()):
            self._collect_oldest()
        self._pending.append(self._executor.submit(job, *args))

    def _collect_oldest(self) -> None:
        self._on_done(self._pending.popleft().result())

    def drain(self) -> None:
        while self._pending:
            self._collect_oldest()

    def __enter__(self) -> WritePool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.drain()
            except BaseException:
                self._executor.shutdown(wait=True, cancel_futures=True)
                raise
        self._executor.shutdown(wait=True, cancel_futures=exc_type is not None)
