"""Write this process's part of a sample set: the PNG or .npz files of its shard, in a bounded pipeline.

The main thread runs inference batch after batch; a bounded pool of writer threads encodes and
writes the previous batches meanwhile. Only files that are missing, or that an interrupted run left
damaged (verify.py), are generated, and each file's bytes depend only on (model, seed, index), so a
resumed or sharded run ends byte-identical to one uninterrupted, unsharded run.

Filtered (--filter): the classifier scores each generated batch on the main thread and only the kept
images are written. A PNG part goes block by block of its score records (scores.py): what a record
already says is not scored again. A filtered .npz file holds the kept images of its index range
with their labels, indices and scores, so the file is its own record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ganaug.sampler.filter import ImageFilter
from ganaug.sampler.labels import labels_for
from ganaug.sampler.outdir import png_pattern
from ganaug.sampler.progress import Progress
from ganaug.sampler.sampler import Sampler
from ganaug.sampler.scores import ScoreRecords, block_count, block_indices
from ganaug.sampler.shards import Shard
from ganaug.sampler.verify import PngCheck, filtered_npz_kept, npz_is_whole
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
    rejected: int = 0  # images the filter did not keep (this run's and those recorded before)


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


def _png_pool(part: Part, workers: int, counts: Counts, progress: Progress) -> tuple[WritePool, int]:
    """The writer pool of a PNG part, and how many images one write job takes."""

    def done(count: int) -> None:
        counts.written += count
        progress.update(count)

    chunk = max(1, min(_PNG_CHUNK, -(-part.batch_size // workers)))
    # Enough queued work to keep every writer busy while the next batch is inferred, no more.
    max_pending = max(2 * workers, 2 * -(-part.batch_size // chunk))
    return WritePool(workers, max_pending, on_done=done), chunk


def write_png_part(sampler: Sampler, part: Part, layout: Layout, check: PngCheck | None, progress: Progress,
                   workers: int) -> Counts:
    counts = Counts()
    pool, chunk = _png_pool(part, workers, counts, progress)
    with pool:
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


# ------------------------------------------------------------------------------------- filtered

def _needs_writing(path: str, check: PngCheck | None, counts: Counts, progress: Progress) -> bool:
    """Must a kept image's file be written? Not when a resume finds it whole (counted as skipped)."""
    if check is None:
        return True
    if check.is_whole(path):
        counts.skipped += 1
        progress.update(1)
        return False
    if os.path.lexists(path):
        counts.damaged += 1
    return True


def write_filtered_png_part(sampler: Sampler, part: Part, layout: Layout, check: PngCheck | None,
                            progress: Progress, workers: int, image_filter: ImageFilter,
                            records: ScoreRecords) -> Counts:
    """The kept PNGs of this part, record block by record block; check None: a fresh start (no file
    or record of this set exists yet), else a resume that trusts whole files and valid records."""
    counts = Counts()
    pool, chunk = _png_pool(part, workers, counts, progress)
    with pool:
        for block in range(block_count(part.shard, part.n)):
            indices = block_indices(part.shard, block, part.n)
            labels = labels_for(indices, part.classes)
            if check is None:
                known, scores = np.zeros(len(indices), bool), np.zeros(len(indices), np.float32)
            else:
                known, scores = records.lookup(indices)
            # Known and rejected: done. Known and kept: generated again only if its file is not whole.
            rejected = known & ~image_filter.keeps(scores)
            counts.rejected += int(rejected.sum())
            progress.update(int(rejected.sum()))
            generate = ~known
            for row in np.flatnonzero(known & ~rejected).tolist():
                generate[row] = _needs_writing(layout.path(int(indices[row]), int(labels[row])), check, counts, progress)
            rows = np.flatnonzero(generate)
            for start in range(0, len(rows), part.batch_size):
                batch = rows[start : start + part.batch_size]
                images = sampler.images_for(indices[batch], labels[batch], part.seed, part.truncation)
                unknown = ~known[batch]
                if unknown.any():
                    scores[batch[unknown]] = image_filter.scores(images[unknown], labels[batch[unknown]])
                keep = image_filter.keeps(scores[batch])
                counts.rejected += int((~keep).sum())
                progress.update(int((~keep).sum()))
                for position in np.flatnonzero(keep & unknown).tolist():  # known ones were checked above
                    row = batch[position]
                    keep[position] = _needs_writing(layout.path(int(indices[row]), int(labels[row])), check,
                                                    counts, progress)
                kept = np.flatnonzero(keep)
                for lo in range(0, len(kept), chunk):
                    take = kept[lo : lo + chunk]
                    pool.submit(_write_png_chunk, layout, indices[batch[take]], labels[batch[take]], images[take])
            if not known.all():
                records.write(part.shard, block, scores)
    return counts


def _write_npz_arrays(path: str, arrays: dict[str, np.ndarray]) -> int:
    write_npz(path, arrays)
    return len(arrays["labels"])


def write_filtered_npz_part(sampler: Sampler, part: Part, layout: Layout, resuming: bool, progress: Progress,
                            image_filter: ImageFilter) -> Counts:
    counts = Counts()
    shape = sampler.meta.image_shape
    with WritePool(workers=1, max_pending=1) as pool:
        for k in part.files:
            lo, hi = part.file_range(k)
            path = layout.file_path(k)
            if resuming:
                kept = filtered_npz_kept(path, shape, lo, hi, part.classes, image_filter.threshold)
                if kept is not None:
                    counts.skipped += kept
                    counts.rejected += hi - lo - kept
                    progress.update(hi - lo)
                    continue
                if os.path.lexists(path):
                    counts.damaged += 1
            indices = np.arange(lo, hi, dtype=np.int64)
            labels = labels_for(indices, part.classes)
            images = np.empty((hi - lo, *shape), dtype=np.uint8)
            scores = np.empty(hi - lo, dtype=np.float32)
            for start in range(lo, hi, part.batch_size):
                rows = np.arange(start - lo, min(start + part.batch_size, hi) - lo)
                images[rows] = sampler.images_for(indices[rows], labels[rows], part.seed, part.truncation)
                scores[rows] = image_filter.scores(images[rows], labels[rows])
                progress.update(len(rows))
            keep = image_filter.keeps(scores)
            pool.submit(_write_npz_arrays, path, {"images": images[keep], "labels": labels[keep],
                                                  "indices": indices[keep], "scores": scores[keep]})
            counts.written += int(keep.sum())
            counts.rejected += int((~keep).sum())
    return counts
