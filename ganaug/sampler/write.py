"""`write_samples`: one process's run on a sample set (docs/sampler.md): claim its shard; under the state
lock, open the directory, check that its files fit, record the set; write its part (inference on the main
thread, writer threads behind it, only the files missing or not whole); mark its shard done, and finish
the set if it is the last.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ganaug import __version__, memory
from ganaug.contract import Layout, class_dir_names, format_score, manifest_bytes_bound, write_manifest
from ganaug.errors import UserError
from ganaug.files import clean_temporaries, ensure_writable_dir, sync_filesystems, write_atomic
from ganaug.sampler import layout
from ganaug.sampler.filter import WHOLE, ImageFilter, ScoreRecords, block_count, block_indices
from ganaug.sampler.layout import Shard
from ganaug.sampler.runtime import physical_cores, short_provider
from ganaug.sampler.sampler import SCHEME, Sampler, labels_for

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
    shard_size: int = 10000  # images per .npz file
    overwrite: bool = False
    progress: bool = True
    writers: int = 0  # writer threads; 0: physical cores
    arguments: dict = field(default_factory=dict)  # recorded in sample_info.json
    shard: Shard = Shard()  # the part of the set this process writes (--shard INDEX/COUNT)


@dataclass(frozen=True)
class SampleResult:
    out_dir: str
    written: int
    skipped: int  # already present from an earlier run
    seconds: float
    damaged: int = 0  # files an interrupted run left incomplete, written again
    shard: Shard = Shard()
    waiting_for: tuple[int, ...] = ()  # shards of the split that have not finished yet
    rejected: int | None = None  # images of this part the filter did not keep; None: no filter

    @property
    def complete(self) -> bool:
        return not self.waiting_for

    @property
    def images_per_second(self) -> float:
        return self.written / max(self.seconds, 1e-9)

    def summary(self) -> str:
        notes = [f"{self.rejected} rejected by the filter"] * (self.rejected is not None) + \
            [f"{self.skipped} already there"] * bool(self.skipped) + \
            [f"{self.damaged} damaged files rewritten"] * bool(self.damaged)
        text = (f"wrote {self.written} images{' (' + ', '.join(notes) + ')' if notes else ''} in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} images/s) to {self.out_dir}")
        if self.shard.whole:
            return text
        if self.complete:
            return f"{text}; shard {self.shard}: the set is complete"
        waiting = ", ".join(map(str, self.waiting_for[:10])) + (", ..." if len(self.waiting_for) > 10 else "")
        return f"{text}; shard {self.shard} is done, the set waits for shards {waiting} of {self.shard.count}"


class Progress:
    """A tqdm bar where tqdm is installed (it is optional), else a log line now and then."""

    def __init__(self, total: int, enabled: bool = True, log_every_s: float = 10.0):
        self.total, self.done, self._enabled, self._bar, self._log_every_s = total, 0, enabled, None, log_every_s
        self._start = self._last_log = time.monotonic()
        if enabled:
            with contextlib.suppress(ImportError):
                from tqdm import tqdm
                self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._enabled and (now := time.monotonic()) - self._last_log >= self._log_every_s:
            self._last_log = now
            log.info("%d/%d images (%.0f images/s)", self.done, self.total, self.done / max(now - self._start, 1e-9))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class WritePool:
    """Write jobs (returning the images they wrote) on threads, at most `max_pending` at once: memory stays
    bounded, and zlib and file writes (which release the GIL) overlap with inference. A failure is raised
    at the next submit() or on exit; an error cancels the queued jobs (running ones clean up after them)."""

    def __init__(self, workers: int, max_pending: int, on_done=lambda count: None):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ganaug-write")
        self._pending, self._max_pending, self._on_done = collections.deque(), max_pending, on_done

    def submit(self, job, *args) -> None:
        while self._pending and (len(self._pending) >= self._max_pending or self._pending[0].done()):
            self._on_done(self._pending.popleft().result())
        self._pending.append(self._executor.submit(job, *args))

    def __enter__(self) -> WritePool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            while exc_type is None and self._pending:
                self._on_done(self._pending.popleft().result())
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _write_pngs(paths: Layout, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> int:
    for index, label, image in zip(indices.tolist(), labels.tolist(), images, strict=True):
        write_atomic(paths.path(index, label), layout.encode_png(image))
    return len(indices)


class _Run:
    """One process's run on one set: its request, and the paths and identity they imply."""

    def __init__(self, sampler: Sampler, request: SampleRequest, image_filter: ImageFilter | None):
        self.sampler, self.request, self.filter, self.out_dir = sampler, request, image_filter, request.out_dir
        self.paths = Layout(request.out_dir, request.format, class_dir_names(sampler.meta.class_names),
                             request.shard_size)
        k = len(request.classes)  # image i has class i % k: the first n % k classes get one image more
        self.counts = [request.n // k + (position < request.n % k) for position in range(k)]
        self.claim, self.workers = layout.Claim(request.out_dir, request.shard), request.writers or physical_cores()
        self.npz_files = range(request.shard.index, -(-request.n // request.shard_size), request.shard.count)
        self.part_images = request.shard.image_count(request.n) if request.format == "png" else sum(
            min(request.shard_size, request.n - j * request.shard_size) for j in self.npz_files)
        self.identity = self.info()["identity"]

    def info(self, complete: bool = False, kept: list[int] | None = None) -> dict:
        """sample_info.json; its identity is all that decides the files (same identity, same files, any shard)."""
        request, names, class_dirs = self.request, self.sampler.meta.class_names, self.paths.class_dirs
        identity = {"model_sha256": self.sampler.meta.sha256, "seed": request.seed, "n": request.n,
                    "classes": [names[c] for c in request.classes], "format": request.format,
                    "truncation": request.truncation, "latent_scheme": SCHEME}
        if request.format == "png":  # where the files go is part of what they are
            identity |= {"png_encoding": layout.PNG_ENCODING, "class_dirs": [class_dirs[c] for c in request.classes]}
        else:
            identity["shard_size"] = request.shard_size
        info = {"ganaug_version": __version__, "identity": identity,
                "model": {"file": os.path.basename(self.sampler.source), **self.sampler.meta.to_dict()},
                "arguments": request.arguments, "class_dirs": [class_dirs[c] for c in request.classes],
                "counts": dict(zip(identity["classes"], self.counts, strict=True)), "images": request.n,
                "complete": complete}
        if self.filter is not None:  # absent without a filter: unfiltered sets keep their identity
            identity["filter"], info["filter"] = self.filter.identity(), self.filter.describe()
            if kept is not None:
                info["filter"] |= {"images_kept": sum(kept), "kept": dict(zip(identity["classes"], kept, strict=True)),
                                   "rejected": {names[c]: total - count for c, total, count
                                                in zip(request.classes, self.counts, kept, strict=True)}}
        return info

    def class_directories(self) -> list[str]:
        """A PNG set's class directories, of the classes that get images (ImageFolder refuses an empty one)."""
        return [os.path.join(self.out_dir, self.paths.class_dirs[c]) for c, count
                in zip(self.request.classes, self.counts, strict=True) if count and self.request.format == "png"]

    def clean_temporaries(self) -> None:  # only while no other run writes: they could be its own
        if stale := sum(clean_temporaries(d) for d in [self.out_dir, *self.class_directories()]):
            log.info("removed %d temporary files left by an interrupted run", stale)

    def check_space(self) -> None:
        """Refuse a run whose missing files cannot fit where --out is (a filter only removes images)."""
        request, paths, shape, filtered = self.request, self.paths, self.sampler.meta.image_shape, self.filter
        if request.format == "png":
            present = sum(i < request.n and i % request.shard.count == request.shard.index  # judged by their names
                          and request.classes[i % len(request.classes)] == label
                          for label in request.classes for i in paths.png_indices(label))
            count, size = self.part_images - present, layout.png_bytes_bound(shape)
            files = [(count + self.workers, size)]  # + one temporary per writer
            if filtered:  # this part's records, and the whole set's when this run finishes it
                files.append((block_count(request.shard, request.n) + block_count(WHOLE, request.n) + 1,
                              ScoreRecords.bytes_bound()))
            what = f"{count:,} PNGs ({memory.size(size)} each at most)"
        else:
            count = sum(not os.path.exists(paths.file_path(k)) for k in self.npz_files)
            # filtered: the kept images' indices (int64) and scores (float32) beside them
            size = layout.npz_bytes_bound(request.shard_size, shape, extra_bytes_per_image=12 if filtered else 0)
            files = [(count + 1, size)]  # + the file rewritten when one is damaged
            what = f"{count:,} .npz files ({memory.size(size)} each at most)"
        rows = [(count, c, len(paths.relative_path(request.n - 1, c).encode()), self.sampler.meta.class_names[c])
                for c, count in zip(request.classes, self.counts, strict=True)]
        info = 2 * len(json.dumps(self.info(), ensure_ascii=False).encode()) + 64 + 128 * len(rows) * bool(filtered)
        files += [(1, manifest_bytes_bound(request.n, rows, request.seed, score_column=bool(filtered))),
                  (1, info), (2, 0)]  # the manifest: whichever shard finishes last writes it
        layout.check_free_space(self.out_dir, files, f"{what}, manifest.csv and sample_info.json")

    def open(self) -> bool:
        """Under the state lock: a fresh set, or this set resumed (True); anything else is refused."""
        running = self.claim.others_running()
        resuming = layout.open_for_run(self.out_dir, self.identity, self.request.overwrite, running, self.claim.path)
        self.check_space()
        if not resuming:
            layout.write_info(self.out_dir, self.info())
        for directory in self.class_directories():
            if os.path.islink(directory):  # a link could lead the writes out of --out
                raise UserError(f"{directory} is a symbolic link; refusing to write through it")
            ensure_writable_dir(Path(directory), "class directory")
        if not running:
            self.clean_temporaries()
        return resuming

    def npz_kept(self, path: str, indices: np.ndarray, labels: np.ndarray) -> int | None:
        """The images a whole .npz file of these images keeps; None when it is not whole (filtered: its indices
        ascending inside the range, each label its index's, its scores in [TAU, 1])."""
        shape = self.sampler.meta.image_shape
        if self.filter is None:
            return len(indices) if layout.npz_is_whole(path, shape, labels) else None
        arrays = layout.npz_arrays(path, shape, ("images", "labels", "indices", "scores"))
        if arrays is None:
            return None
        kept, scores = arrays["indices"], arrays["scores"]
        if len(kept) and not (indices[0] <= kept[0] and kept[-1] <= indices[-1] and (np.diff(kept) > 0).all()):
            return None
        whole = (np.array_equal(arrays["labels"], labels[kept - indices[0]]) and np.isfinite(scores).all()
                 and (scores >= self.filter.threshold).all() and (scores <= 1).all())
        return len(kept) if whole else None

    def write_part(self, resuming: bool, progress: Progress) -> collections.Counter:
        """This process's files; resuming, only those missing or not whole, and a filtered PNG resume trusts
        the score records (a recorded rejected image is done, a recorded kept one is not scored again)."""
        request, paths, image_filter = self.request, self.paths, self.filter
        counts, shape, npz = collections.Counter(), self.sampler.meta.image_shape, request.format == "npz"
        check = layout.PngCheck(shape, layout.png_bytes_bound(shape)) if resuming and not npz else None
        records = ScoreRecords(self.out_dir, request.n) if image_filter is not None and not npz else None

        def needs_writing(index: int, label: int) -> bool:
            """Must a kept image's PNG be written? Not when a resume finds it whole."""
            if check.is_whole(path := paths.path(index, label)):
                counts["skipped"] += 1
                return False
            counts["damaged"] += os.path.lexists(path)
            return True

        if npz:  # one file written while the next is generated: memory stays at about two files
            units = ((np.arange(k * request.shard_size, min((k + 1) * request.shard_size, request.n), dtype=np.int64),
                      k) for k in self.npz_files)
            pool, chunk = WritePool(1, 1), 0
        else:  # the shard's images, block by block of the score records
            units = ((block_indices(request.shard, b, request.n), b) for b in range(block_count(request.shard, request.n)))
            chunk = max(1, min(_PNG_CHUNK, -(-request.batch_size // self.workers)))
            # enough queued work to keep every writer busy while the next batch is inferred, no more
            pool = WritePool(self.workers, max(2 * self.workers, 2 * -(-request.batch_size // chunk)),
                             lambda count: counts.update(written=count))
        with pool:
            for indices, unit in units:
                labels, count = labels_for(indices, request.classes), len(indices)
                known, scores = np.zeros(count, bool), np.zeros(count, np.float32)
                if npz:
                    path = paths.file_path(unit)
                    if resuming and (kept := self.npz_kept(path, indices, labels)) is not None:
                        counts.update(skipped=kept, rejected=count - kept)
                        progress.update(count)
                        continue
                    counts["damaged"] += resuming and os.path.lexists(path)
                    generate, images_of_unit = ~known, np.empty((count, *shape), np.uint8)
                else:
                    if records is None:  # unfiltered: every image is known and kept
                        known[:], scores[:] = True, 1
                    elif resuming:
                        known, scores = records.lookup(indices)
                    keep = known & (image_filter.keeps(scores) if image_filter is not None else True)
                    counts["rejected"] += int((known & ~keep).sum())
                    generate = ~known | keep  # known and kept: generated again only if its file is not whole
                    for row in np.flatnonzero(keep).tolist() if check is not None else ():
                        generate[row] = needs_writing(int(indices[row]), int(labels[row]))
                rows = np.flatnonzero(generate)
                progress.update(count - len(rows))
                for start in range(0, len(rows), request.batch_size):
                    batch = rows[start:start + request.batch_size]
                    images = self.sampler.images_for(indices[batch], labels[batch], request.seed, request.truncation)
                    new = ~known[batch]
                    progress.update(len(batch))
                    if image_filter is not None and new.any():
                        scores[batch[new]] = image_filter.scores(images[new], labels[batch[new]])
                    if npz:
                        images_of_unit[batch] = images
                        continue
                    take = image_filter.keeps(scores[batch]) if image_filter is not None else ~new
                    counts["rejected"] += int((~take).sum())
                    for position in np.flatnonzero(take & new).tolist() if check is not None else ():
                        # a newly scored kept image may have been written before its record was
                        take[position] = needs_writing(int(indices[batch[position]]), int(labels[batch[position]]))
                    kept = np.flatnonzero(take)
                    for lo in range(0, len(kept), chunk):
                        part = kept[lo:lo + chunk]
                        pool.submit(_write_pngs, paths, indices[batch[part]], labels[batch[part]], images[part])
                if npz:
                    keep = image_filter.keeps(scores) if image_filter is not None else slice(None)
                    arrays = {"images": images_of_unit[keep], "labels": labels[keep]}
                    if image_filter is not None:
                        arrays |= {"indices": indices[keep], "scores": scores[keep]}
                    pool.submit(layout.write_npz, path, arrays)
                    counts.update(written=len(arrays["labels"]), rejected=count - len(arrays["labels"]))
                elif records is not None and not known.all():
                    records.write(request.shard, unit, scores)
        return counts

    def write_manifest(self) -> list[int]:
        """manifest.csv from the index range (not from what happens to be on disk) or, filtered, the score
        records (png) or the .npz files, streamed; returns the rows per selected class."""
        request, paths, image_filter, names = self.request, self.paths, self.filter, self.sampler.meta.class_names
        listed = np.zeros(len(names), dtype=np.int64)

        def chunks():
            if image_filter is None:
                for start in range(0, request.n, 65536):
                    indices = np.arange(start, min(start + 65536, request.n))
                    yield indices, labels_for(indices, request.classes), None
            elif request.format == "png":
                records = ScoreRecords(self.out_dir, request.n)
                for block in range(block_count(WHOLE, request.n)):
                    scores, indices = records.load(WHOLE, block), block_indices(WHOLE, block, request.n)
                    keep = image_filter.keeps(scores)
                    yield indices[keep], labels_for(indices[keep], request.classes), scores[keep]
            else:
                for k in range(-(-request.n // request.shard_size)):
                    with np.load(paths.file_path(k), allow_pickle=False) as arrays:
                        yield arrays["indices"], arrays["labels"], arrays["scores"]

        def rows():
            for indices, labels, scores in chunks():
                listed[:] += np.bincount(labels, minlength=len(listed))
                rows = ((paths.relative_path(i, label), label, names[label], i, request.seed)
                        for i, label in zip(indices.tolist(), labels.tolist(), strict=True))
                yield from (rows if scores is None else
                            (row + (format_score(score),) for row, score in zip(rows, scores, strict=True)))

        write_manifest(paths.manifest_path, rows(), scored=image_filter is not None)
        return [int(listed[c]) for c in request.classes]

    def finish(self) -> list[int]:
        """Under the state lock: mark this shard done, and finish the set if every shard is; the shards missing."""
        request, missing = self.request, self.claim.mark_done()
        info = layout.read_info(self.out_dir) or {}
        if missing and (info.get("complete") is not True or info.get("identity") != self.identity):
            return missing  # the last shard to finish writes manifest.csv
        if self.filter is not None and request.format == "png":
            ScoreRecords(self.out_dir, request.n).finish()
        kept = self.write_manifest()
        if self.filter is None:
            kept = None
        elif request.format == "png":  # ImageFolder refuses an empty class directory
            for c, count in zip(request.classes, kept, strict=True):
                directory = os.path.join(self.out_dir, self.paths.class_dirs[c])
                if count == 0 and os.path.isdir(directory) and not os.path.islink(directory) \
                        and not os.listdir(directory):
                    os.rmdir(directory)
                    log.warning("the filter kept no image of class %r: its directory is left out, so ImageFolder "
                                "numbers the classes after it one lower (manifest.csv and SyntheticFolder keep the "
                                "model's labels)", self.sampler.meta.class_names[c])
        layout.write_info(self.out_dir, self.info(True, kept))
        self.claim.remove_coordination_files()
        if not self.claim.others_running():
            self.clean_temporaries()
        return []


def write_samples(sampler: Sampler, request: SampleRequest, filter: ImageFilter | None = None) -> SampleResult:
    """Write this request's part (its shard) of the set of request.n images into request.out_dir, resuming an
    earlier identical run, and finish the set when every part is there. filter: keep only the images this
    ImageFilter.load(path, sampler.meta, min_confidence) keeps (part of the set's identity)."""
    if request.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {request.format!r}")
    assert request.n > 0 and request.classes, "the entry point checks the count and the classes"
    if filter is not None and filter.meta != sampler.meta:
        raise ValueError("the filter was loaded for another generator (ImageFilter.load(path, sampler.meta, ...))")
    ensure_writable_dir(Path(request.out_dir), "--out")
    run = _Run(sampler, request, filter)
    try:
        with layout.state_lock(request.out_dir):
            run.claim.acquire()
            resuming = run.open()
        which = "" if request.shard.whole else f" (shard {request.shard}: {run.part_images} of them)"
        kept = "" if filter is None else f", keeping those {filter.source} gives their class >= {filter.min_confidence}"
        log.info("%s %d images%s on %s into %s%s", "resuming" if resuming else "sampling", request.n, which,
                 short_provider(sampler.provider), request.out_dir, kept)
        started, progress = time.monotonic(), Progress(run.part_images, enabled=request.progress)
        try:
            counts = run.write_part(resuming, progress)
        finally:
            progress.close()
        if request.format == "png":  # a shard is recorded done, and a set complete, once its PNGs are on disk
            sync_filesystems()
        with layout.state_lock(request.out_dir):
            missing = run.finish()
            run.claim.release()
    finally:
        with layout.state_lock(request.out_dir):
            run.claim.release()  # a claim not taken is left alone
    if counts["damaged"]:
        log.warning("rewrote %d damaged or incomplete files left by an interrupted run", counts["damaged"])
    return SampleResult(request.out_dir, counts["written"], counts["skipped"], time.monotonic() - started,
                        counts["damaged"], request.shard, tuple(missing),
                        counts["rejected"] if filter is not None else None)
