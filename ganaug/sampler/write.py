"""`write_samples`: a Sampler's images into a sample set (docs/sampler.md): one process's run.

A run claims its shard (locks.py) and, under the directory's state lock, opens the directory (fresh,
resume or refusal: layout.py), checks that its files fit on the disk and records the set's identity in
sample_info.json. It then writes its part: inference (and the filter's classifier) on the main thread,
batch after batch, while a bounded pool of writer threads encodes and writes the previous batches. A
resume generates only the files missing or not whole, and each file's bytes depend only on (model,
seed, index), so a resumed or sharded set ends byte-identical to one uninterrupted, unsharded run.
Its shard done, the run that finds every shard done writes manifest.csv and `"complete": true`.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ganaug import __version__
from ganaug.errors import UserError
from ganaug.files import clean_temporaries, sync_filesystems, write_atomic
from ganaug.sampler import formats, locks
from ganaug.sampler.filter import WHOLE, ImageFilter, ScoreRecords, block_count, block_indices, format_score
from ganaug.sampler.layout import Layout, Shard, class_dir_names, open_for_run, read_info, write_info
from ganaug.sampler.runtime import physical_cores, short_provider
from ganaug.sampler.sampler import SCHEME, Sampler, counts_per_class, labels_for

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

    @property
    def npz_files(self) -> range:
        """The .npz files k this request's shard writes."""
        return range(self.shard.index, -(-self.n // self.shard_size), self.shard.count)

    @property
    def part_images(self) -> int:
        if self.format == "png":
            return self.shard.image_count(self.n)
        return sum(min(self.shard_size, self.n - k * self.shard_size) for k in self.npz_files)


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
        notes = [f"{self.rejected} rejected by the filter"] if self.rejected is not None else []
        notes += [f"{self.skipped} already there"] if self.skipped else []
        notes += [f"{self.damaged} damaged files rewritten"] if self.damaged else []
        text = (f"wrote {self.written} images{' (' + ', '.join(notes) + ')' if notes else ''} in {self.seconds:.1f} s "
                f"({self.images_per_second:.0f} images/s) to {self.out_dir}")
        if self.shard.whole:
            return text
        if self.complete:
            return f"{text}; shard {self.shard}: the set is complete"
        return f"{text}; shard {self.shard} is done, the set waits for shards {_listed(self.waiting_for)} of " \
               f"{self.shard.count}"


def _listed(shards) -> str:
    return ", ".join(map(str, shards[:10])) + (", ..." if len(shards) > 10 else "")


@dataclass
class Counts:
    written: int = 0
    skipped: int = 0  # whole files of an earlier run, left as they are
    damaged: int = 0  # files an earlier run left incomplete, written again
    rejected: int = 0  # images the filter did not keep (this run's and those recorded before)


class Progress:
    """A tqdm bar where tqdm is installed (it is optional), else a log line now and then."""

    def __init__(self, total: int, enabled: bool = True, log_every_s: float = 10.0):
        self.total, self.done, self._enabled, self._bar, self._log_every_s = total, 0, enabled, None, log_every_s
        self._start = self._last_log = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
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

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class WritePool:
    """Write jobs on worker threads, at most `max_pending` queued or running, so memory is bounded
    whatever N is. zlib and file writes release the GIL: they overlap with inference. The first failure
    is raised at the next submit() or on exit; on exit with an error, queued jobs are cancelled and
    running ones finish (each removes its own temporary file)."""

    def __init__(self, workers: int, max_pending: int, on_done=None):
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ganaug-write")
        self._pending, self._max_pending = collections.deque(), max(1, max_pending)
        self._on_done = on_done or (lambda count: None)

    def submit(self, job, *args) -> None:
        """Queue job(*args), which returns how many images it wrote."""
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


# ------------------------------------------------------------------------------------------ the part
def _write_pngs(layout: Layout, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> int:
    for index, label, image in zip(indices.tolist(), labels.tolist(), images, strict=True):
        formats.write_file(layout.path(index, label), formats.encode_png(image))
    return len(indices)


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> int:
    formats.write_npz(path, arrays)
    return len(arrays["labels"])


def _units(request: SampleRequest, filtered: bool):
    """(image indices, .npz path or None) of this part, in order: PNG blocks (the score records' when
    filtered), .npz files."""
    if request.format == "npz":
        for k in request.npz_files:
            yield np.arange(k * request.shard_size, min((k + 1) * request.shard_size, request.n), dtype=np.int64), k
        return
    size = 0 if filtered else max(request.batch_size, 4096)  # 0: the records' size
    for block in range(block_count(request.shard, request.n, size)):
        yield block_indices(request.shard, block, request.n, size), block


def _npz_kept(path: str, shape: tuple, indices: np.ndarray, labels: np.ndarray,
              image_filter: ImageFilter | None) -> int | None:
    """How many images a whole .npz file of these images keeps; None when it is not whole (filtered:
    its indices ascending inside the range, each label its index's, its scores in [TAU, 1])."""
    if image_filter is None:
        return len(indices) if formats.npz_is_whole(path, shape, labels) else None
    arrays = formats.npz_arrays(path, shape, ("images", "labels", "indices", "scores"))
    if arrays is None:
        return None
    kept, scores = arrays["indices"], arrays["scores"]
    if len(kept) and not (indices[0] <= kept[0] and kept[-1] <= indices[-1] and (np.diff(kept) > 0).all()):
        return None
    if not (np.array_equal(arrays["labels"], labels[kept - indices[0]]) and np.isfinite(scores).all()
            and (scores >= image_filter.threshold).all() and (scores <= 1).all()):
        return None
    return len(kept)


def _write_part(sampler: Sampler, request: SampleRequest, layout: Layout, resuming: bool, progress: Progress,
                workers: int, image_filter: ImageFilter | None) -> Counts:
    """This process's files: only those missing or not whole when resuming (a filtered PNG resume also
    trusts the score records: a recorded rejected image is done, only unrecorded images are scored)."""
    counts, shape, npz = Counts(), sampler.meta.image_shape, request.format == "npz"
    check = formats.PngCheck(shape, formats.png_bytes_bound(shape)) if resuming and not npz else None
    records = ScoreRecords(request.out_dir, request.n) if image_filter is not None and not npz else None

    def needs_writing(index: int, label: int) -> bool:
        """A kept image's PNG must be written unless a resume finds it whole."""
        path = layout.path(index, label)
        if check.is_whole(path):
            counts.skipped += 1
            progress.update(1)
            return False
        counts.damaged += os.path.lexists(path)
        return True

    if npz:  # one file written while the next is generated: memory stays at about two files
        pool, chunk = WritePool(1, 1), 0
    else:
        def done(count: int) -> None:
            counts.written += count
            progress.update(count)

        chunk = max(1, min(_PNG_CHUNK, -(-request.batch_size // workers)))
        # enough queued work to keep every writer busy while the next batch is inferred, no more
        pool = WritePool(workers, max(2 * workers, 2 * -(-request.batch_size // chunk)), on_done=done)
    with pool:
        for indices, unit in _units(request, image_filter is not None):
            labels, count = labels_for(indices, request.classes), len(indices)
            if npz:
                path = layout.file_path(unit)
                kept = _npz_kept(path, shape, indices, labels, image_filter) if resuming else None
                if kept is not None:
                    counts.skipped, counts.rejected = counts.skipped + kept, counts.rejected + count - kept
                    progress.update(count)
                    continue
                counts.damaged += resuming and os.path.lexists(path)
                known, scores = np.zeros(count, bool), np.zeros(count, np.float32)
                generate, images_of_unit = ~known, np.empty((count, *shape), np.uint8)
            else:
                if records is None:  # unfiltered: every image is known and kept
                    known, scores = np.ones(count, bool), np.ones(count, np.float32)
                else:
                    known, scores = records.lookup(indices) if resuming else (np.zeros(count, bool), np.zeros(count, np.float32))
                keep = image_filter.keeps(scores) if image_filter is not None else known
                rejected = int((known & ~keep).sum())
                counts.rejected += rejected
                progress.update(rejected)
                # Known and kept: generated again only if its file is not whole.
                generate = ~known | keep
                if check is not None:
                    for row in np.flatnonzero(known & keep).tolist():
                        generate[row] = needs_writing(int(indices[row]), int(labels[row]))
            rows = np.flatnonzero(generate)
            for start in range(0, len(rows), request.batch_size):
                batch = rows[start:start + request.batch_size]
                images = sampler.images_for(indices[batch], labels[batch], request.seed, request.truncation)
                new = ~known[batch]
                if image_filter is not None and new.any():
                    scores[batch[new]] = image_filter.scores(images[new], labels[batch[new]])
                if npz:
                    images_of_unit[batch] = images
                    progress.update(len(batch))
                    continue
                take = image_filter.keeps(scores[batch]) if image_filter is not None else np.ones(len(batch), bool)
                counts.rejected += int((~take).sum())
                progress.update(int((~take).sum()))
                if check is not None:  # a newly scored kept image may have been written before its record
                    for position in np.flatnonzero(take & new).tolist():
                        take[position] = needs_writing(int(indices[batch[position]]), int(labels[batch[position]]))
                kept = np.flatnonzero(take)
                for lo in range(0, len(kept), chunk):
                    part = kept[lo:lo + chunk]
                    pool.submit(_write_pngs, layout, indices[batch[part]], labels[batch[part]], images[part])
            if npz:
                if image_filter is None:
                    arrays = {"images": images_of_unit, "labels": labels}
                else:
                    keep = image_filter.keeps(scores)
                    arrays = {"images": images_of_unit[keep], "labels": labels[keep], "indices": indices[keep],
                              "scores": scores[keep]}
                pool.submit(_write_npz, path, arrays)
                counts.written += len(arrays["labels"])
                counts.rejected += count - len(arrays["labels"])
            elif records is not None and not known.all():
                records.write(request.shard, unit, scores)
    return counts


# ---------------------------------------------------------------------------- the set around the part
def _identity(sampler: Sampler, request: SampleRequest, image_filter: ImageFilter | None) -> dict:
    """Everything that decides the files' contents: equal identity, same files (whatever the shard)."""
    identity = {"model_sha256": sampler.meta.sha256, "seed": request.seed, "n": request.n,
                "classes": [sampler.meta.class_names[c] for c in request.classes], "format": request.format,
                "truncation": request.truncation, "latent_scheme": SCHEME}
    if request.format == "png":
        identity["png_encoding"] = formats.PNG_ENCODING
        # where the files go is part of what they are (the naming rule may change between versions)
        identity["class_dirs"] = [class_dir_names(sampler.meta.class_names)[c] for c in request.classes]
    else:
        identity["shard_size"] = request.shard_size
    if image_filter is not None:  # absent without a filter: unfiltered sets keep their identity
        identity["filter"] = image_filter.identity()
    return identity


def _info(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, complete: bool,
          image_filter: ImageFilter | None = None, kept: list[int] | None = None) -> dict:
    """sample_info.json; `kept`: per selected class, the images the filter kept (once complete)."""
    names, counts = sampler.meta.class_names, counts_per_class(request.n, request.classes)
    extra = {}
    if image_filter is not None:
        extra["filter"] = image_filter.describe()
        if kept is not None:
            extra["filter"] |= {
                "images_kept": sum(kept),
                "kept": {names[c]: count for c, count in zip(request.classes, kept, strict=True)},
                "rejected": {names[c]: total - count for c, total, count in zip(request.classes, counts, kept,
                                                                                 strict=True)}}
    return {"ganaug_version": __version__, "identity": identity,
            "model": {"file": os.path.basename(sampler.source), **sampler.meta.to_dict()},
            "arguments": request.arguments, "class_dirs": [layout.class_dirs[c] for c in request.classes],
            "counts": {names[c]: count for c, count in zip(request.classes, counts, strict=True)},
            "images": request.n, "complete": complete, **extra}


def _manifest_rows(request: SampleRequest, layout: Layout, image_filter: ImageFilter | None):
    """(indices, labels, scores or None) of every image the finished set holds, by index, a bounded
    amount at a time; filtered: from the score records (png) or the .npz files themselves."""
    if image_filter is None:
        for start in range(0, request.n, 65536):
            indices = np.arange(start, min(start + 65536, request.n), dtype=np.int64)
            yield indices, labels_for(indices, request.classes), None
    elif request.format == "png":
        records = ScoreRecords(request.out_dir, request.n)
        for block in range(block_count(WHOLE, request.n)):
            scores, indices = records.whole_set_scores(block), block_indices(WHOLE, block, request.n)
            keep = image_filter.keeps(scores)
            yield indices[keep], labels_for(indices[keep], request.classes), scores[keep]
    else:
        for k in range(-(-request.n // request.shard_size)):
            with np.load(layout.file_path(k), allow_pickle=False) as arrays:
                yield arrays["indices"], arrays["labels"], arrays["scores"]


def _write_manifest(request: SampleRequest, layout: Layout, class_names: tuple[str, ...],
                    image_filter: ImageFilter | None) -> list[int]:
    """manifest.csv, rebuilt from the index range (never from what happens to be on disk), streamed;
    returns the images it lists per selected class."""
    listed = np.zeros(len(class_names), dtype=np.int64)

    def fill(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "class_name", "index", "seed"] + (["score"] if image_filter else []))
        for indices, labels, scores in _manifest_rows(request, layout, image_filter):
            listed[:] += np.bincount(labels, minlength=len(listed))
            rows = ((layout.relative_path(i, label), label, class_names[label], i, request.seed)
                    for i, label in zip(indices.tolist(), labels.tolist(), strict=True))
            writer.writerows(rows if scores is None else
                             (row + (format_score(score),) for row, score in zip(rows, scores, strict=True)))
        text.flush()
        text.detach()  # write_atomic closes the file

    write_atomic(layout.manifest_path, fill, fsync=True)
    return [int(listed[c]) for c in request.classes]


def _class_directories(request: SampleRequest, layout: Layout) -> list[str]:
    """A PNG set's class directories: of the classes that get images (ImageFolder refuses an empty one)."""
    if request.format != "png":
        return []
    counts = counts_per_class(request.n, request.classes)
    return [os.path.join(request.out_dir, layout.class_dirs[c])
            for c, count in zip(request.classes, counts, strict=True) if count]


def _clean_temporaries(request: SampleRequest, layout: Layout) -> None:
    """Remove temporaries of killed runs; only while no other run writes (they could be its own)."""
    stale = sum(clean_temporaries(d) for d in [request.out_dir, *_class_directories(request, layout)])
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)


def _check_space(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, workers: int,
                 image_filter: ImageFilter | None) -> None:
    """Refuse, before the first image, a run whose files cannot fit where --out is. A filter only removes
    images, so the unfiltered bound holds; its records and scores are added to it."""
    shape, filtered = sampler.meta.image_shape, image_filter is not None
    if request.format == "png":
        present = sum(i < request.n and i % request.shard.count == request.shard.index  # judged by their names
                      and request.classes[i % len(request.classes)] == label
                      for label in request.classes for i in layout.png_indices(label))
        count, size = request.part_images - present, formats.png_bytes_bound(shape)
        files = [(count + workers, size)]  # + one temporary per writer
        what = f"{count:,} PNGs ({formats.human(size)} each at most)"
        if filtered:  # this part's records, and the whole set's when this run finishes it
            files.append((block_count(request.shard, request.n) + block_count(WHOLE, request.n) + 1,
                          ScoreRecords.bytes_bound()))
    else:
        count = sum(not os.path.exists(layout.file_path(k)) for k in request.npz_files)
        # filtered: the kept images' indices (int64) and scores (float32) beside them
        size = formats.npz_bytes_bound(request.shard_size, shape, extra_bytes_per_image=12 if filtered else 0)
        files = [(count + 1, size)]  # + the file rewritten when one is damaged
        what = f"{count:,} .npz files ({formats.human(size)} each at most)"
    # The manifest is written by whichever shard finishes last: any of them.
    rows = [(count, c, len(layout.relative_path(request.n - 1, c).encode()), sampler.meta.class_names[c])
            for c, count in zip(request.classes, counts_per_class(request.n, request.classes), strict=True)]
    info = json.dumps(_info(sampler, request, layout, identity, False, image_filter), ensure_ascii=False)
    files += [(1, formats.manifest_bytes_bound(request.n, rows, request.seed, score_column=filtered)),
              (1, 2 * len(info.encode()) + 64 + (128 * len(rows) if filtered else 0)), (2, 0)]
    formats.check_free_space(request.out_dir, files, f"{what}, manifest.csv and sample_info.json")


def _open(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, claim: locks.Claim, workers: int,
          image_filter: ImageFilter | None) -> bool:
    """Under the state lock: a fresh set, or this set resumed (True); anything else is refused, and so is
    a run whose files cannot fit, before it writes anything."""
    running = locks.running_shards(request.out_dir, claim)
    locks.check_same_split(running, request.shard, request.out_dir)
    resuming = open_for_run(request.out_dir, identity, request.overwrite, running, claim.path)
    _check_space(sampler, request, layout, identity, workers, image_filter)
    if not resuming:
        write_info(request.out_dir, _info(sampler, request, layout, identity, False, image_filter))
    for directory in _class_directories(request, layout):
        if os.path.islink(directory):  # a link could lead the writes out of --out
            raise UserError(f"{directory} is a symbolic link; refusing to write through it")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {directory}: {exc.strerror or exc}") from None
    if not running:
        _clean_temporaries(request, layout)
    return resuming


def _finish(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, claim: locks.Claim,
            image_filter: ImageFilter | None) -> list[int]:
    """Under the state lock: mark this shard done; the run that finds every shard of its split done
    finishes the set. Returns the shards still missing."""
    locks.mark_done(request.out_dir, request.shard)
    info = read_info(request.out_dir) or {}
    complete = info.get("complete") is True and info.get("identity") == identity
    missing = [] if complete else locks.missing_shards(request.out_dir, request.shard.count)
    if missing:
        log.info("shard %s is done; the set waits for shards %s of %d (the last to finish writes manifest.csv)",
                 request.shard, _listed(missing), request.shard.count)
        return missing
    names = sampler.meta.class_names
    if image_filter is not None and request.format == "png":
        ScoreRecords(request.out_dir, request.n).finish()
    kept = _write_manifest(request, layout, names, image_filter)
    if image_filter is None:
        kept = None
    elif request.format == "png":
        for c, count in zip(request.classes, kept, strict=True):  # ImageFolder refuses an empty directory
            directory = os.path.join(request.out_dir, layout.class_dirs[c])
            if count == 0 and os.path.isdir(directory) and not os.path.islink(directory) and not os.listdir(directory):
                os.rmdir(directory)
                log.warning("the filter kept no image of class %r: its directory is left out, so ImageFolder numbers "
                            "the classes after it one lower (manifest.csv and SyntheticFolder keep the model's "
                            "labels)", names[c])
    write_info(request.out_dir, _info(sampler, request, layout, identity, True, image_filter, kept))
    locks.remove_coordination_files(request.out_dir, claim)
    if not locks.running_shards(request.out_dir, claim):
        _clean_temporaries(request, layout)
    return []


def write_samples(sampler: Sampler, request: SampleRequest, filter: ImageFilter | None = None) -> SampleResult:
    """Generate this request's part of the set of request.n images into request.out_dir (all of it when
    unsharded), resuming an earlier identical run; finish the set when every part is there.

    filter: write only the images this classifier and threshold keep (ImageFilter.load(path, sampler.meta,
    min_confidence)); a set is filtered or not from its first run on (part of its identity)."""
    image_filter = filter
    if request.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {request.format!r}")
    assert request.n > 0 and request.classes, "the entry point checks the count and the classes"
    if image_filter is not None and image_filter.meta != sampler.meta:
        raise ValueError("the filter was loaded for another generator (ImageFilter.load(path, sampler.meta, ...))")
    layout = Layout(request.out_dir, request.format, class_dir_names(sampler.meta.class_names), request.shard_size)
    identity, workers = _identity(sampler, request, image_filter), request.writers or physical_cores()
    if os.path.exists(request.out_dir) and not os.path.isdir(request.out_dir):
        raise UserError(f"--out {request.out_dir} exists and is not a directory")
    try:
        os.makedirs(request.out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {request.out_dir}: {exc.strerror or exc}") from None
    claim = locks.Claim(request.out_dir, request.shard)
    with locks.state_lock(request.out_dir):
        claim.acquire()
        try:
            resuming = _open(sampler, request, layout, identity, claim, workers, image_filter)
        except BaseException:
            claim.release()
            raise
    try:
        which = "" if request.shard.whole else f" (shard {request.shard}: {request.part_images} of them)"
        kept = "" if image_filter is None else (
            f", keeping those {image_filter.source} gives their class >= {image_filter.min_confidence}")
        log.info("%s %d images%s on %s into %s%s", "resuming" if resuming else "sampling", request.n, which,
                 short_provider(sampler.provider), request.out_dir, kept)
        started = time.monotonic()
        with Progress(request.part_images, enabled=request.progress) as progress:
            counts = _write_part(sampler, request, layout, resuming, progress, workers, image_filter)
        if request.format == "png":
            # A shard is recorded done, and a set complete, only once its PNGs are on disk: a resume of a
            # complete set does not trust them blindly, but power cuts should find little to rewrite.
            sync_filesystems()
        with locks.state_lock(request.out_dir):
            missing = _finish(sampler, request, layout, identity, claim, image_filter)
            claim.release()
    finally:
        if claim.held:
            with locks.state_lock(request.out_dir):
                claim.release()
    if counts.damaged:
        log.warning("rewrote %d damaged or incomplete files left by an interrupted run", counts.damaged)
    return SampleResult(request.out_dir, counts.written, counts.skipped, time.monotonic() - started, counts.damaged,
                        request.shard, tuple(missing), counts.rejected if image_filter is not None else None)
