"""Write this process's part of a sample set: the PNG or .npz files of its shard, in a bounded pipeline.

The main thread runs inference batch after batch; a bounded pool of writer threads encodes and
writes the previous batches meanwhile. Only files that are missing, or that an interrupted run left
damaged (verify.py), are generated, and each file's bytes depend only on (model, seed, index), so a
resumed or sharded run ends byte-identical to one uninterrupted, unsharded run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ganaug.sampler.labels import labels_for
from ganaug.sampler.outdir import png_pattern
from ganaug.sampler.progress import Progress
from ganaug.sampler.sampler import Sampler
from ganaug.sampler.shards import Shard
from ganaug.sampler.verify import PngCheck, npz_is_whole
from ganaug.sampler.writers import WritePool, encode_png, write_file_atomic, write_npz

_PNG_CHUNK = 64  # images per write job: enough to amortise the hand-off, small enough to balance


class Layout:
    """Where image i lives, for one format and class naming."""

    def __init__(self, out_dir: str, fmt: str, class_dirs: list[str], shard_size: int):
        self.out_dir = out_dir
        self.format = fmt
        self.class_dirs = class_dirs  # per model class index
        self.shard_size = shard_size

    def relative_path(self, index: int, label: int) -> str:
        if self.format == "png":
            directory = self.class_dirs[label]
            return f"{directory}/{directory}_{index:08d}.png"
        return f"shard_{index // self.shard_size:05d}.npz"

    def path(self, index: int, label: int) -> str:
        return os.path.join(self.out_dir, *self.relative_path(index, label).split("/"))

    def file_path(self, k: int) -> str:
        return os.path.join(self.out_dir, f"shard_{k:05d}.npz")


@dataclass(frozen=True)
class Part:
    """What one process writes: its shard of images 0..n-1 of the selected classes."""

    format: str  # png | npz
    n: int
    classes: tuple[int, ...]
    shard: Shard
    seed: int
    truncation: float
    batch_size: int
    shard_size: int  # images per .npz file

    @property
    def files(self) -> range:
        """The .npz files k this part writes."""
        return range(self.shard.index, -(-self.n // self.shard_size), self.shard.count)

    def file_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n)

    @property
    def images(self) -> int:
        """How many images this part holds."""
        if self.format == "png":
            return self.shard.image_count(self.n)
        return sum(hi - lo for lo, hi in map(self.file_range, self.files))


@dataclass
class Counts:
    written: int = 0
    skipped: int = 0  # whole files of an earlier run, left as they are
    damaged: int = 0  # files an earlier run left incomplete, written again


def count_present_pngs(part: Part, layout: Layout) -> int:
    """This part's PNGs already in place, judged by their names only (for the space estimate)."""
    present = 0
    for label in part.classes:
        directory = layout.class_dirs[label]
        pattern, offset = png_pattern(directory), len(directory) + 1
        try:
            entries = list(os.scandir(os.path.join(layout.out_dir, directory)))
        except OSError:
            continue
        for entry in entries:
            if pattern.fullmatch(entry.name):
                index = int(entry.name[offset:-4])
                if (index < part.n and index % part.shard.count == part.shard.index
                        and part.classes[index % len(part.classes)] == label):
                    present += 1
    return present


def count_present_files(part: Part, layout: Layout) -> int:
    """This part's .npz files already in place, by name."""
    return sum(os.path.exists(layout.file_path(k)) for k in part.files)


# ------------------------------------------------------------------------------------------ png

def _missing_batches(part: Part, layout: Layout, check: PngCheck | None, counts: Counts,
                     progress: Progress) -> Iterator[np.ndarray]:
    """Index batches of this part's PNGs still to write: all of them on a fresh start (check None),
    else those missing or damaged."""
    step = part.batch_size * part.shard.count
    pending: list[int] = []
    for start in range(0, part.n, step):
        indices = part.shard.image_indices(start, min(start + step, part.n))
        if check is None:
            yield indices
            continue
        whole = 0
        for index, label in zip(indices.tolist(), labels_for(indices, part.classes).tolist(), strict=True):
            path = layout.path(index, label)
            if check.is_whole(path):
                whole += 1
                continue
            if os.path.lexists(path):
                counts.damaged += 1
            pending.append(index)
        counts.skipped += whole
        progress.update(whole)
        while len(pending) >= part.batch_size:
            yield np.asarray(pending[: part.batch_size], dtype=np.int64)
            pending = pending[part.batch_size :]
    if pending:
        yield np.asarray(pending, dtype=np.int64)


def _write_png_chunk(layout: Layout, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> int:
    for index, label, image in zip(indices.tolist(), labels.tolist(), images, strict=True):
        write_file_atomic(layout.path(index, label), encode_png(image))
    return len(indices)


def write_png_part(sampler: Sampler, part: Part, layout: Layout, check: PngCheck | None, progress: Progress,
                   workers: int) -> Counts:
    counts = Counts()

    def done(count: int) -> None:
        counts.written += count
        progress.update(count)

    chunk = max(1, min(_PNG_CHUNK, -(-part.batch_size // workers)))
    # Enough queued work to keep every writer busy while the next batch is inferred, no more.
    max_pending = max(2 * workers, 2 * -(-part.batch_size // chunk))
    with WritePool(workers, max_pending, on_done=done) as pool:
        for indices in _missing_batches(part, layout, check, counts, progress):
            labels = labels_for(indices, part.classes)
            images = sampler.images_for(indices, labels, part.seed, part.truncation)
            for lo in range(0, len(indices), chunk):
                pool.submit(_write_png_chunk, layout, indices[lo : lo + chunk], labels[lo : lo + chunk],
                            images[lo : lo + chunk])
    return counts


# ------------------------------------------------------------------------------------------ npz

def _write_npz_file(path: str, images: np.ndarray, labels: np.ndarray) -> int:
    write_npz(path, {"images": images, "labels": labels})
    return len(labels)


def write_npz_part(sampler: Sampler, part: Part, layout: Layout, resuming: bool, progress: Progress) -> Counts:
    counts = Counts()
    shape = sampler.meta.image_shape
    # One file being written while the next is generated: memory stays at about two files.
    with WritePool(workers=1, max_pending=1) as pool:
        for k in part.files:
            lo, hi = part.file_range(k)
            path = layout.file_path(k)
            labels = labels_for(np.arange(lo, hi), part.classes)
            if resuming and npz_is_whole(path, shape, labels):
                counts.skipped += hi - lo
                progress.update(hi - lo)
                continue
            if resuming and os.path.lexists(path):
                counts.damaged += 1
            images = np.empty((hi - lo, *shape), dtype=np.uint8)
            for start in range(lo, hi, part.batch_size):
                indices = np.arange(start, min(start + part.batch_size, hi), dtype=np.int64)
                images[indices - lo] = sampler.images_for(indices, labels[indices - lo], part.seed, part.truncation)
                progress.update(len(indices))
            pool.submit(_write_npz_file, path, images, labels)
            counts.written += hi - lo
    return counts
