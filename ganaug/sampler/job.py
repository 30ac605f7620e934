"""Write a sample set (PNG tree or .npz files, manifest, sample_info) from a Sampler: one process's run.

A run opens the directory (fresh, resume or refusal: outdir.py) and claims its shard (locks.py),
checks that its files fit on the disk (space.py), writes the part of the set that is its shard
(part.py; the whole set for an unsharded run), then marks the shard done. The run that finds
every shard done writes manifest.csv and `"complete": true`.

With a filter (filter.py), the classifier and TAU join the set's identity, only kept images are
written, and manifest.csv (with a `score` column) and the per-class counts kept and rejected are
built from the records (PNG: scores.py) or the .npz files' own indices and scores.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ganaug import __version__
from ganaug.errors import UserError
from ganaug.files import clean_temporaries, sync_filesystems
from ganaug.sampler.filter import ImageFilter, format_score
from ganaug.sampler.labels import counts_per_class, labels_for
from ganaug.sampler.locks import (
    Claim,
    check_same_split,
    mark_done,
    missing_shards,
    remove_coordination_files,
    running_shards,
    state_lock,
)
from ganaug.sampler.names import class_dir_names
from ganaug.sampler.outdir import MANIFEST_NAME, create_output_dir, open_for_run, read_info, write_info
from ganaug.sampler.part import (
    Counts,
    Layout,
    Part,
    count_present_files,
    count_present_pngs,
    write_filtered_npz_part,
    write_filtered_png_part,
    write_npz_part,
    write_png_part,
)
from ganaug.sampler.progress import Progress
from ganaug.sampler.rng import SCHEME
from ganaug.sampler.sampler import Sampler
from ganaug.sampler.scores import ScoreRecords, block_count, block_indices, record_bytes_bound
from ganaug.sampler.session import physical_cores, short_provider
from ganaug.sampler.shards import Shard
from ganaug.sampler.space import (
    check_free_space,
    human,
    manifest_bytes_bound,
    npz_bytes_bound,
    png_bytes_bound,
)
from ganaug.sampler.verify import PngCheck
from ganaug.sampler.writers import PNG_ENCODING, write_atomic

log = logging.getLogger(__name__)

FORMATS = ("png", "npz")


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
        notes = [f"{self.rejected} rejected by the filter"] if self.rejected is not None else []
        notes += [f"{self.skipped} already there"] if self.skipped else []
        if self.damaged:
            notes.append(f"{self.damaged} damaged files rewritten")
        text = (
            f"wrote {self.written} images{' (' + ', '.join(notes) + ')' if notes else ''} in {self.seconds:.1f} s "
            f"({self.images_per_second:.0f} images/s) to {self.out_dir}"
        )
        if self.shard.whole:
            return text
        if self.complete:
            return f"{text}; shard {self.shard}: the set is complete"
        waiting = ", ".join(map(str, self.waiting_for[:10])) + (", ..." if len(self.waiting_for) > 10 else "")
        return f"{text}; shard {self.shard} is done, the set waits for shards {waiting} of {self.shard.count}"


def _identity(sampler: Sampler, request: SampleRequest, image_filter: ImageFilter | None) -> dict:
    """Everything that decides the files' contents: equal identity = same files (whatever the shard)."""
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
    if image_filter is not None:  # absent without a filter: unfiltered sets keep their identity
        identity["filter"] = image_filter.identity()
    return identity


def _info(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, complete: bool,
          image_filter: ImageFilter | None = None, kept: list[int] | None = None) -> dict:
    """sample_info.json; `kept`: per selected class, the images the filter kept (once complete)."""
    names = sampler.meta.class_names
    counts = counts_per_class(request.n, request.classes)
    extra = {}
    if image_filter is not None:
        extra["filter"] = image_filter.describe()
        if kept is not None:
            extra["filter"] |= {
                "images_kept": sum(kept),
                "kept": {names[c]: count for c, count in zip(request.classes, kept, strict=True)},
                "rejected": {names[c]: total - count
                             for c, total, count in zip(request.classes, counts, kept, strict=True)},
            }
    return {
        "ganaug_version": __version__,
        "identity": identity,
        "model": {"file": os.path.basename(sampler.source), **sampler.meta.to_dict()},
        "arguments": request.arguments,
        "class_dirs": [layout.class_dirs[c] for c in request.classes],
        "counts": {names[c]: count for c, count in zip(request.classes, counts, strict=True)},
        "images": request.n,
        "complete": complete,
        **extra,
    }


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


def _kept_images(request: SampleRequest, layout: Layout, image_filter: ImageFilter):
    """(index, label, score) of every kept image of a finished filtered set, by index; read from the
    score records (png) or from the .npz files themselves, a bounded amount at a time."""
    if request.format == "png":
        records = ScoreRecords(request.out_dir, request.n)
        for block in range(block_count(Shard(), request.n)):
            scores = records.whole_set_scores(block)
            indices = block_indices(Shard(), block, request.n)
            keep = image_filter.keeps(scores)
            yield indices[keep], labels_for(indices[keep], request.classes), scores[keep]
        return
    for k in range(-(-request.n // request.shard_size)):
        with np.load(layout.file_path(k), allow_pickle=False) as arrays:
            yield arrays["indices"], arrays["labels"], arrays["scores"]


def _write_filtered_manifest(request: SampleRequest, layout: Layout, class_names: tuple[str, ...],
                             image_filter: ImageFilter) -> list[int]:
    """manifest.csv of the kept images, with their scores; returns the images kept per selected class."""
    kept = np.zeros(max(request.classes) + 1, dtype=np.int64)

    def fill(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "class_name", "index", "seed", "score"])
        for indices, labels, scores in _kept_images(request, layout, image_filter):
            kept[:] += np.bincount(labels, minlength=len(kept))
            writer.writerows(
                (layout.relative_path(i, label), label, class_names[label], i, request.seed, format_score(score))
                for i, label, score in zip(indices.tolist(), labels.tolist(), scores, strict=True)
            )
        text.flush()
        text.detach()  # leave closing the file to write_atomic

    write_atomic(os.path.join(request.out_dir, MANIFEST_NAME), fill, fsync=True)
    return [int(kept[c]) for c in request.classes]


def _class_directories(request: SampleRequest, layout: Layout) -> list[str]:
    """The class directories of a PNG set; only classes that get images (ImageFolder refuses an empty one)."""
    if request.format != "png":
        return []
    counts = counts_per_class(request.n, request.classes)
    return [os.path.join(request.out_dir, layout.class_dirs[c])
            for c, count in zip(request.classes, counts, strict=True) if count]


def _make_class_dir(directory: str) -> None:
    if os.path.islink(directory):
        # A link could lead the writes out of --out.
        raise UserError(f"{directory} is a symbolic link; refusing to write through it")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {directory}: {exc.strerror or exc}") from None


def _clean_temporaries(request: SampleRequest, layout: Layout) -> None:
    """Remove temporaries of killed runs; only while no other run writes (they could be its own)."""
    directories = [request.out_dir, *_class_directories(request, layout)]
    stale = sum(clean_temporaries(d) for d in directories)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)


def _leave_out_empty_classes(request: SampleRequest, layout: Layout, kept: list[int],
                             class_names: tuple[str, ...]) -> None:
    """Remove the directory of a class the filter kept no image of (ImageFolder refuses an empty one)."""
    for c, count in zip(request.classes, kept, strict=True):
        directory = os.path.join(request.out_dir, layout.class_dirs[c])
        if count == 0 and os.path.isdir(directory) and not os.path.islink(directory) and not os.listdir(directory):
            os.rmdir(directory)
            log.warning("the filter kept no image of class %r: its directory is left out, so ImageFolder numbers "
                        "the classes after it one lower (manifest.csv and SyntheticFolder keep the model's labels)",
                        class_names[c])


def _open(sampler: Sampler, request: SampleRequest, part: Part, layout: Layout, identity: dict, claim: Claim,
          workers: int, image_filter: ImageFilter | None) -> bool:
    """Under the state lock: a fresh set, or this set resumed (True); anything else is refused, and so
    is a run whose files cannot fit, before it writes anything."""
    running = running_shards(request.out_dir, claim)
    check_same_split(running, request.shard, request.out_dir)
    resuming = open_for_run(request.out_dir, identity, request.overwrite, running, claim) is not None
    _check_space(sampler, request, part, layout, identity, workers, image_filter)
    if not resuming:
        write_info(request.out_dir, _info(sampler, request, layout, identity, False, image_filter))
    for directory in _class_directories(request, layout):
        _make_class_dir(directory)
    if not running:
        _clean_temporaries(request, layout)
    return resuming


def _check_space(sampler: Sampler, request: SampleRequest, part: Part, layout: Layout, identity: dict,
                 workers: int, image_filter: ImageFilter | None) -> None:
    """Refuse, before the first image, a run whose files cannot fit where --out is. A filter only
    removes images, so the unfiltered bound still holds; its records and scores are added to it."""
    shape = sampler.meta.image_shape
    filtered = image_filter is not None
    if part.format == "png":
        count, size = part.images - count_present_pngs(part, layout), png_bytes_bound(shape)
        files = [(count + workers, size)]  # + one temporary per writer
        what = f"{count:,} PNGs ({human(size)} each at most)"
        if filtered:  # this part's records, and the whole set's when this run finishes it
            records = block_count(request.shard, request.n) + block_count(Shard(), request.n) + 1
            files.append((records, record_bytes_bound()))
    else:
        count = len(part.files) - count_present_files(part, layout)
        # Filtered: the kept images' indices (int64) and scores (float32) beside them.
        size = npz_bytes_bound(request.shard_size, shape, extra_bytes_per_image=12 if filtered else 0)
        files = [(count + 1, size)]  # + the file being rewritten when one is damaged
        what = f"{count:,} .npz files ({human(size)} each at most)"
    # The manifest is written by whichever shard finishes last: any of them.
    counts = counts_per_class(request.n, request.classes)
    rows = [(count, c, len(layout.relative_path(request.n - 1, c).encode()), sampler.meta.class_names[c])
            for c, count in zip(request.classes, counts, strict=True)]
    info = json.dumps(_info(sampler, request, layout, identity, False, image_filter), ensure_ascii=False)
    manifest = manifest_bytes_bound(request.n, rows, request.seed, score_column=filtered)
    files += [(1, manifest), (1, 2 * len(info.encode()) + 64 + (128 * len(rows) if filtered else 0)), (2, 0)]
    check_free_space(request.out_dir, files, f"{what}, manifest.csv and sample_info.json")


def _finish(sampler: Sampler, request: SampleRequest, layout: Layout, identity: dict, claim: Claim,
            image_filter: ImageFilter | None) -> list[int]:
    """Under the state lock: mark this shard done; the run that finds every shard of its split done
    finishes the set. Returns the shards still missing."""
    mark_done(request.out_dir, request.shard)
    info = read_info(request.out_dir) or {}
    already_complete = info.get("complete") is True and info.get("identity") == identity
    missing = [] if already_complete else missing_shards(request.out_dir, request.shard.count)
    if missing:
        log.info("shard %s is done; the set waits for shards %s of %d (the last to finish writes manifest.csv)",
                 request.shard, ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else ""),
                 request.shard.count)
        return missing
    if image_filter is None:
        _write_manifest(request, layout, sampler.meta.class_names)
        kept = None
    else:
        if request.format == "png":
            ScoreRecords(request.out_dir, request.n).finish()
        kept = _write_filtered_manifest(request, layout, sampler.meta.class_names, image_filter)
    if kept is not None and request.format == "png":
        _leave_out_empty_classes(request, layout, kept, sampler.meta.class_names)
    write_info(request.out_dir, _info(sampler, request, layout, identity, True, image_filter, kept))
    remove_coordination_files(request.out_dir, keep=claim)
    if not running_shards(request.out_dir, claim):
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
    part = Part(request.format, request.n, request.classes, request.shard, request.seed, request.truncation,
                request.batch_size, request.shard_size)
    identity = _identity(sampler, request, image_filter)
    workers = request.writers or physical_cores()
    create_output_dir(request.out_dir)
    claim = Claim(request.out_dir, request.shard)
    with state_lock(request.out_dir):
        claim.acquire()
        try:
            resuming = _open(sampler, request, part, layout, identity, claim, workers, image_filter)
        except BaseException:
            claim.release()
            raise
    try:
        which = "" if request.shard.whole else f" (shard {request.shard}: {part.images} of them)"
        kept = "" if image_filter is None else (
            f", keeping those {image_filter.source} gives their class >= {image_filter.min_confidence}")
        log.info("%s %d images%s on %s into %s%s", "resuming" if resuming else "sampling", request.n, which,
                 short_provider(sampler.provider), request.out_dir, kept)
        started = time.monotonic()
        with Progress(part.images, enabled=request.progress) as progress:
            counts = _write_part(sampler, part, layout, resuming, progress, workers, image_filter)
        if request.format == "png":
            # A shard is recorded done, and a set complete, only once its PNGs are on disk: a resume
            # trusts a complete set without reading it again. (Shards of .npz are fsynced one by one.)
            sync_filesystems()
        with state_lock(request.out_dir):
            missing = _finish(sampler, request, layout, identity, claim, image_filter)
            claim.release()
    finally:
        if claim.held:
            with state_lock(request.out_dir):
                claim.release()
    return _result(request, counts, time.monotonic() - started, missing, image_filter is not None)


def _write_part(sampler: Sampler, part: Part, layout: Layout, resuming: bool, progress: Progress, workers: int,
                image_filter: ImageFilter | None) -> Counts:
    if part.format == "npz":
        if image_filter is None:
            return write_npz_part(sampler, part, layout, resuming, progress)
        return write_filtered_npz_part(sampler, part, layout, resuming, progress, image_filter)
    check = PngCheck(sampler.meta.image_shape, png_bytes_bound(sampler.meta.image_shape)) if resuming else None
    if image_filter is None:
        return write_png_part(sampler, part, layout, check, progress, workers)
    records = ScoreRecords(layout.out_dir, part.n)
    return write_filtered_png_part(sampler, part, layout, check, progress, workers, image_filter, records)


def _result(request: SampleRequest, counts: Counts, seconds: float, missing: list[int], filtered: bool) -> SampleResult:
    if counts.damaged:
        log.warning("rewrote %d damaged or incomplete files left by an interrupted run", counts.damaged)
    return SampleResult(request.out_dir, counts.written, counts.skipped, seconds, counts.damaged, request.shard,
                        tuple(missing), counts.rejected if filtered else None)
