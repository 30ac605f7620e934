"""Write a sample set (PNG tree or .npz shards, manifest, sample_info) from a Sampler.

The main thread runs inference batch after batch; a bounded pool of writer threads encodes and
writes the previous batches meanwhile. Only missing files are generated, and each file's content
depends only on (model, seed, index), so a resumed run ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ganaug import __version__
from ganaug.errors import UserError
from ganaug.files import clean_temporaries
from ganaug.sampler.labels import counts_per_class, labels_for
from ganaug.sampler.names import class_dir_names
from ganaug.sampler.outdir import (
    MANIFEST_NAME,
    create_output_dir,
    exclusive_lock,
    open_for_run,
    write_info,
)
from ganaug.sampler.progress import Progress
from ganaug.sampler.rng import SCHEME
from ganaug.sampler.sampler import Sampler
from ganaug.sampler.session import physical_cores, short_provider
from ganaug.sampler.writers import (
    PNG_ENCODING,
    WritePool,
    encode_png,
    write_atomic,
    write_file_atomic,
    write_npz,
)

log = logging.getLogger(__name__)

FORMATS = ("png", "npz")
_PNG_CHUNK = 64  # images per write job: enough to amortise the hand-off, small enough to balance


@dataclass(frozen=True)
class SampleRequest:
    out_dir: str
    n: int
    classes: tuple[int, ...]  # model class indices, model order; image i gets classes[i % len]
    seed: int = 0
    format: str = "png"
    truncation: float = 0.0
    batch_size: int = 256
    shard_size: int = 10000
    overwrite: bool = False
    progress: bool = True
    writers: int = 0  # writer threads; 0: physical cores
    arguments: dict = field(default_factory=dict)  # recorded in sample_info.json


@dataclass(frozen=True)
class SampleResult:
    out_dir: str
    written: int
    skipped: int  # already present from an earlier run
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.written / max(self.seconds, 1e-9)

    def summary(self) -> str:
        resumed = f" ({self.skipped} already there)" if self.skipped else ""
        return (
            f"wrote {self.written} images{resumed} in {self.seconds:.1f} s "
            f"({self.images_per_second:.0f} images/s) to {self.out_dir}"
        )


class Layout:
    """Where image i lives, for one format and class naming."""

    def __init__(self, request: SampleRequest, class_dirs: list[str]):
        self.out_dir = request.out_dir
        self.format = request.format
        self.class_dirs = class_dirs  # per model class index
        self.shard_size = request.shard_size

    def relative_path(self, index: int, label: int) -> str:
        if self.format == "png":
            directory = self.class_dirs[label]
            return f"{directory}/{directory}_{index:08d}.png"
        return f"shard_{index // self.shard_size:05d}.npz"

    def path(self, index: int, label: int) -> str:
        return os.path.join(self.out_dir, *self.relative_path(index, label).split("/"))

    def shard_path(self, shard: int) -> str:
        return os.path.join(self.out_dir, f"shard_{shard:05d}.npz")


def _identity(sampler: Sampler, request: SampleRequest) -> dict:
    """Everything that decides the files' contents: equal identity = same files."""
    identity = {
        "model_sha256": sampler.meta.sha256,
        "seed": request.seed,
        "n": request.n,
        "classes": [sampler.meta.class_names[c] for c in request.classes],
        "format": request.format,
        "truncation": request.truncation,
        "latent_scheme": SCHEME,
    }
    if request.format == "png":
        identity["png_encoding"] = PNG_ENCODING
        # Where the files go is part of what they are (the naming rule may change between versions).
        identity["class_dirs"] = [class_dir_names(sampler.meta.class_names)[c] for c in request.classes]
    else:
        identity["shard_size"] = request.shard_size
    return identity


def _info(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, complete: bool) -> dict:
    names = sampler.meta.class_names
    counts = counts_per_class(request.n, request.classes)
    return {
        "ganaug_version": __version__,
        "identity": identity,
        "model": {"file": os.path.basename(sampler.source), **sampler.meta.to_dict()},
        "arguments": request.arguments,
        "class_dirs": [layout.class_dirs[c] for c in request.classes],
        "counts": {names[c]: count for c, count in zip(request.classes, counts, strict=True)},
        "images": request.n,
        "complete": complete,
    }


def _missing_batches(
    request: SampleRequest, layout: Layout, resuming: bool, progress: Progress
) -> Iterator[np.ndarray]:
    """Index batches of the PNG files still to write (all of them on a fresh run)."""
    batch: list[int] = []
    for start in range(0, request.n, request.batch_size):
        indices = np.arange(start, min(start + request.batch_size, request.n), dtype=np.int64)
        if not resuming:
            yield indices
            continue
        labels = labels_for(indices, request.classes)
        present = 0
        for index, label in zip(indices.tolist(), labels.tolist(), strict=True):
            if os.path.exists(layout.path(index, label)):
                present += 1
            else:
                batch.append(index)
        progress.update(present)
        if len(batch) >= request.batch_size:
            yield np.asarray(batch[: request.batch_size], dtype=np.int64)
            batch = batch[request.batch_size :]
    if batch:
        yield np.asarray(batch, dtype=np.int64)


def _write_png_chunk(layout: Layout, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> int:
    for index, label, image in zip(indices.tolist(), labels.tolist(), images, strict=True):
        write_file_atomic(layout.path(index, label), encode_png(image))
    return len(indices)


def _write_pngs(
    sampler: Sampler, request: SampleRequest, layout: Layout, resuming: bool, progress: Progress, workers: int
) -> int:
    written = 0

    def done(count: int) -> None:
        nonlocal written
        written += count
        progress.update(count)

    chunk = max(1, min(_PNG_CHUNK, -(-request.batch_size // workers)))
    # Enough queued work to keep every writer busy while the next batch is inferred, no more.
    max_pending = max(2 * workers, 2 * -(-request.batch_size // chunk))
    with WritePool(workers, max_pending, on_done=done) as pool:
        for indices in _missing_batches(request, layout, resuming, progress):
            labels = labels_for(indices, request.classes)
            images = sampler.images_for(indices, labels, request.seed, request.truncation)
            for lo in range(0, len(indices), chunk):
                pool.submit(
                    _write_png_chunk,
                    layout,
                    indices[lo : lo + chunk],
                    labels[lo : lo + chunk],
                    images[lo : lo + chunk],
                )
    return written


def _write_shard(path: str, images: np.ndarray, labels: np.ndarray) -> int:
    write_npz(path, {"images": images, "labels": labels})
    return len(labels)


def _write_shards(
    sampler: Sampler, request: SampleRequest, layout: Layout, resuming: bool, progress: Progress
) -> tuple[int, int]:
    written = skipped = 0
    shards = -(-request.n // request.shard_size)
    # One shard being written while the next is generated: memory stays at about two shards.
    with WritePool(workers=1, max_pending=1) as pool:
        for shard in range(shards):
            lo, hi = shard * request.shard_size, min((shard + 1) * request.shard_size, request.n)
            path = layout.shard_path(shard)
            if resuming and os.path.exists(path):
                skipped += hi - lo
                progress.update(hi - lo)
                continue
            labels = labels_for(np.arange(lo, hi), request.classes)
            images = np.empty((hi - lo, *sampler.meta.image_shape), dtype=np.uint8)
            for start in range(lo, hi, request.batch_size):
                indices = np.arange(start, min(start + request.batch_size, hi), dtype=np.int64)
                images[indices - lo] = sampler.images_for(
                    indices, labels[indices - lo], request.seed, request.truncation
                )
                progress.update(len(indices))
            pool.submit(_write_shard, path, images, labels)
            written += hi - lo
    return written, skipped


def _write_manifest(request: SampleRequest, layout: Layout, class_names: tuple[str, ...]) -> None:
    """manifest.csv rebuilt from the index range (never from what happens to be on disk), streamed."""

    def fill(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "class_name", "index", "seed"])
        for start in range(0, request.n, 65536):
            indices = np.arange(start, min(start + 65536, request.n), dtype=np.int64)
            labels = labels_for(indices, request.classes)
            writer.writerows(
                (layout.relative_path(i, label), label, class_names[label], i, request.seed)
                for i, label in zip(indices.tolist(), labels.tolist(), strict=True)
            )
        text.flush()
        text.detach()  # leave closing the file to write_atomic

    write_atomic(os.path.join(request.out_dir, MANIFEST_NAME), fill, fsync=True)


def _make_class_dir(directory: str) -> None:
    if os.path.islink(directory):
        # A link could lead the writes out of --out.
        raise UserError(f"{directory} is a symbolic link; refusing to write through it")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {directory}: {exc.strerror or exc}") from None


def write_samples(sampler: Sampler, request: SampleRequest) -> SampleResult:
    """Generate request.n images into request.out_dir, resuming an earlier identical run."""
    if request.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {request.format!r}")
    assert request.n > 0 and request.classes, "the entry point checks the count and the classes"
    layout = Layout(request, class_dir_names(sampler.meta.class_names))
    identity = _identity(sampler, request)
    create_output_dir(request.out_dir)
    with exclusive_lock(request.out_dir):
        resuming = open_for_run(request.out_dir, identity, request.overwrite)
        write_info(request.out_dir, _info(sampler, request, layout, identity, complete=False))
        directories = [request.out_dir]
        if request.format == "png":
            # Only classes that get images: ImageFolder refuses an empty class directory.
            counts = counts_per_class(request.n, request.classes)
            directories += [os.path.join(request.out_dir, layout.class_dirs[c])
                            for c, count in zip(request.classes, counts, strict=True) if count]
            for directory in directories[1:]:
                _make_class_dir(directory)
        stale = sum(clean_temporaries(directory) for directory in directories)
        if stale:
            log.info("removed %d temporary files left by an interrupted run", stale)
        if resuming:
            log.info("resuming the sample set in %s", request.out_dir)
        log.info(
            "sampling %d images on %s into %s", request.n, short_provider(sampler.provider), request.out_dir
        )

        started = time.monotonic()
        with Progress(request.n, enabled=request.progress) as progress:
            if request.format == "png":
                workers = request.writers or physical_cores()
                written = _write_pngs(sampler, request, layout, resuming, progress, workers)
                skipped = request.n - written
            else:
                written, skipped = _write_shards(sampler, request, layout, resuming, progress)
        _write_manifest(request, layout, sampler.meta.class_names)
        write_info(request.out_dir, _info(sampler, request, layout, identity, complete=True))
        seconds = time.monotonic() - started
    return SampleResult(request.out_dir, written, skipped, seconds)
