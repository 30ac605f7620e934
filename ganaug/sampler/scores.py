"""The scores of a filtered PNG set, recorded as it is written: a resume re-scores only what no record holds.

A filtered PNG set has no file for a rejected image, so a missing file alone cannot tell "rejected"
from "not generated yet". Each process records the classifier's score of every image it classifies,
kept or rejected, in files DIR/.scores-*.npy: one small float32 .npy per RECORD_IMAGES images of its
shard, written atomically once that block is scored. They are files beside manifest.csv, not a
folder: torchvision's ImageFolder takes every folder of DIR for a class (a `.scores/` folder shifted
every label by one). Before or after the block's PNGs, either order is
safe: a recorded kept image whose file is missing or damaged is generated again (not re-scored), and
an image no record holds is generated and scored again.

Record `.scores-S-of-N-BBBBBBBBB.npy` holds the scores of shard S of an N-way split (--shard S/N; 0-of-1
unsharded) for the images at positions j = i // N of that shard in block B: i = S + N x j, j in
[B x R, (B + 1) x R). A score is a fact about image i, whichever split recorded it, so a run looks
it up in every split's records. The run that finishes the set rewrites them as the unsharded
split's (0-of-1: blocks of R consecutive indices) and removes the others: a finished set's files do
not depend on how it was split, and a re-run of a finished set verifies its PNGs without scoring.
(.npz sets need no records: each .npz file holds the indices and scores of its kept images.)
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re

import numpy as np

from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.sampler.shards import Shard

RECORD_PREFIX = ".scores-"
RECORD_IMAGES = 4096  # images of one shard per record: 16 KiB of scores
WHOLE = Shard(0, 1)
_NAME = re.compile(re.escape(RECORD_PREFIX) + r"([0-9]{1,9})-of-([0-9]{1,9})-([0-9]{9,18})\.npy")
_CACHED = 64  # records kept in memory: a block of split N touches up to N records of the unsharded split


def record_name(shard: Shard, block: int) -> str:
    return f"{RECORD_PREFIX}{shard.index}-of-{shard.count}-{block:09d}.npy"


def is_record_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def block_count(shard: Shard, n: int) -> int:
    """How many records shard `shard` of a set of n images has."""
    return -(-shard.image_count(n) // RECORD_IMAGES)


def block_indices(shard: Shard, block: int, n: int) -> np.ndarray:
    """int64 image indices of record `block` of `shard`, ascending."""
    stop = min((block + 1) * RECORD_IMAGES, shard.image_count(n))
    return shard.index + shard.count * np.arange(block * RECORD_IMAGES, stop, dtype=np.int64)


def record_bytes_bound() -> int:
    """No record file is longer: RECORD_IMAGES float32 scores and the .npy header."""
    return 4 * RECORD_IMAGES + 128


def _npy_bytes(scores: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(scores, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


class ScoreRecords:
    """The records (DIR/.scores-*.npy) of one set of n images (see the module docstring)."""

    def __init__(self, out_dir: str, n: int):
        self.directory = out_dir
        self.n = n
        self._present: dict[int, set[tuple[int, int]]] = {}  # split count -> {(shard index, block)}
        self._cache: collections.OrderedDict[tuple[Shard, int], np.ndarray | None] = collections.OrderedDict()
        self.rescan()

    def rescan(self) -> None:
        """Take stock of the records on disk (other processes may have written more since)."""
        self._present, self._cache = {}, collections.OrderedDict()
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            match = _NAME.fullmatch(entry.name)
            if match and int(match[1]) < int(match[2]) and entry.is_file(follow_symlinks=False):
                self._present.setdefault(int(match[2]), set()).add((int(match[1]), int(match[3])))

    def _load(self, shard: Shard, block: int) -> np.ndarray | None:
        """A record's scores; None when it is missing, unreadable or not what this set's record holds."""
        key = (shard, block)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        expected = len(block_indices(shard, block, self.n))
        scores = None
        try:
            with open(os.path.join(self.directory, record_name(shard, block)), "rb") as f:
                data = f.read(4 * expected + 4096)
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if (isinstance(array, np.ndarray) and array.dtype == np.dtype("<f4") and array.shape == (expected,)
                    and expected and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
                scores = array
        except (OSError, ValueError, EOFError):  # a record being replaced or removed, or a damaged one
            scores = None
        self._cache[key] = scores
        if len(self._cache) > _CACHED:
            self._cache.popitem(last=False)
        return scores

    def lookup(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(known bool [B], scores float32 [B]) of these image indices, from any split's records."""
        indices = np.asarray(indices, dtype=np.int64)
        known = np.zeros(len(indices), dtype=bool)
        scores = np.zeros(len(indices), dtype=np.float32)
        for count in sorted(self._present):
            present = self._present[count]
            positions = indices // count
            keys = (positions // RECORD_IMAGES) * count + indices % count  # block x count + shard index
            for key in np.unique(keys[~known]).tolist():
                block, index = divmod(key, count)
                if (index, block) not in present:
                    continue
                record = self._load(Shard(index, count), block)
                if record is None:
                    continue
                rows = np.flatnonzero((keys == key) & ~known)
                scores[rows] = record[positions[rows] - block * RECORD_IMAGES]
                known[rows] = True
            if known.all():
                break
        return known, scores

    def write(self, shard: Shard, block: int, scores: np.ndarray) -> None:
        assert len(scores) == len(block_indices(shard, block, self.n)), "a record holds a whole block"
        write_atomic(os.path.join(self.directory, record_name(shard, block)), _npy_bytes(scores), fsync=True)
        self._present.setdefault(shard.count, set()).add((shard.index, block))
        self._cache.pop((shard, block), None)

    def finish(self) -> None:
        """Rewrite every score as the unsharded split's records and remove all others (under the state
        lock, by the run that finishes the set, when every image has a score)."""
        self.rescan()
        for block in range(block_count(WHOLE, self.n)):
            if (0, block) in self._present.get(1, set()) and self._load(WHOLE, block) is not None:
                continue
            indices = block_indices(WHOLE, block, self.n)
            known, scores = self.lookup(indices)
            if not known.all():
                first = int(indices[np.flatnonzero(~known)[0]])
                raise UserError(
                    f"{self.directory} lacks the recorded scores of {int((~known).sum())} images (image {first} first), "
                    "which every shard should have recorded; run the same command without --shard to score them again"
                )
            self.write(WHOLE, block, scores)
        blocks = block_count(WHOLE, self.n)
        for count, records in self._present.items():
            for index, block in records:
                if count != 1 or block >= blocks:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, record_name(Shard(index, count), block)))
        self.rescan()

    def whole_set_scores(self, block: int) -> np.ndarray:
        """The scores of images block x R .. (block + 1) x R - 1 of a finished set."""
        scores = self._load(WHOLE, block)
        assert scores is not None, f"record {block} of the unsharded split was written by finish()"
        return scores


def remove_records(out_dir: str) -> None:
    """Delete the score records in DIR, nothing else (--overwrite; DIR's temporaries are cleaned apart)."""
    for entry in os.scandir(out_dir):
        if entry.is_file(follow_symlinks=False) and is_record_name(entry.name):
            os.unlink(entry.path)
