"""`--filter CLASSIFIER.onnx --min-confidence TAU` (docs/sampler.md, "Filtering"): the classifier, its
scores, and their records. A rejected image has no file, so each process records every score it computes,
in DIR/.scores-S-of-N-B.npy (block B of RECORD_IMAGES positions j = i // N of shard S of an N-way split;
files, as ImageFolder would take a folder for a class). A score is a fact about image i: a run looks it
up in any split's records, and the run that finishes the set rewrites them as the unsharded split's.
"""

from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np

from ganaug.contract import ModelMeta, check_classifier_graph, check_classifier_metadata
from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.sampler.layout import Shard, record_name, scan
from ganaug.sampler.runtime import RunFailed, load_model, run_checked, run_options

SCHEME = "softmax-f64-of-f32-logits-score-f32-ge-f32-tau-v1"  # in the set's identity: schemes never mix
RECORD_IMAGES = 4096  # images of one shard per record: 16 KiB of scores


def check_min_confidence(value: float) -> float:
    """TAU is a probability above 0: 0 would keep everything, which is no filter."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"--min-confidence must be in (0, 1] (a probability above 0), got {value}")
    return float(value)


class ImageFilter:
    """A classifier in onnxruntime and a threshold: which generated images to keep (docs/sampler.md)."""

    def __init__(self, session, meta: ModelMeta, min_confidence: float, sha256: str, output_kind: str,
                 provider: str, source: str = "<classifier>"):
        self.session, self.meta, self.sha256, self.source = session, meta, sha256, source  # meta: the generator's
        self.min_confidence = check_min_confidence(min_confidence)
        self.threshold = np.float32(self.min_confidence)
        self.output_kind, self.provider = output_kind, provider
        input_name, options = session.get_inputs()[0].name, run_options()
        self._run = lambda images: session.run(None, {input_name: images}, options)[0]

    @classmethod
    def load(cls, path, meta: ModelMeta, min_confidence: float, provider: str = "auto", threads: int = 0,
             cache_dir: str | None = None) -> ImageFilter:
        """Load and check a classifier against the generator's ModelMeta (a UserError for anything off),
        probing it on 2 black images (N dynamic, output float32 [2, classes], finite, probabilities in [0, 1])."""
        min_confidence = check_min_confidence(min_confidence)
        model = load_model(path, "classifier", provider, threads, cache_dir)
        output_kind = check_classifier_graph(model.session, meta.image_shape, meta.num_classes, model.source)
        check_classifier_metadata(model.metadata, meta, model.source)
        image_filter = cls(model.session, meta, min_confidence, model.sha256, output_kind, model.provider, model.source)
        try:
            image_filter.probabilities(np.zeros((2, *meta.image_shape), np.uint8))
        except RunFailed as exc:
            raise UserError(f"{model.source}: the classifier fails on a batch of 2 uint8 images of "
                            f"{list(meta.image_shape)} (H, W, C): {exc.context}{exc.reason}") from None
        return image_filter

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 [N, classes]: the classifier's probabilities for uint8 images [N, H, W, C]."""
        out = run_checked(self._run, np.ascontiguousarray(images, dtype=np.uint8), len(images), self.source)
        expected = (len(images), self.meta.num_classes)
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != expected:
            shown = f"{out.dtype} {list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
            raise RunFailed(self.source, f"the classifier returned {shown}; the contract is float32 {list(expected)} "
                                         f"(N, classes: the generator's {self.meta.num_classes})")
        if not np.isfinite(out).all():
            raise UserError(f"{self.source}: the classifier returned NaN or infinite {self.output_kind} "
                            f"for {int((~np.isfinite(out)).any(axis=1).sum())} of {len(out)} images")
        values = out.astype(np.float64)
        if self.output_kind == "probabilities":
            if values.min(initial=0.0) < 0 or values.max(initial=0.0) > 1:
                raise UserError(f"{self.source}: the classifier's output 'probabilities' holds values outside [0, 1] "
                                f"(from {values.min():.4g} to {values.max():.4g}); name it 'logits' if the sampler "
                                "should apply the softmax")
            return values
        values = np.exp(values - values.max(axis=1, keepdims=True))
        return values / values.sum(axis=1, keepdims=True)

    def scores(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """float32 [N]: each image's probability of its own label."""
        if len(images) == 0:
            return np.empty(0, np.float32)
        return self.probabilities(images)[np.arange(len(labels)), np.asarray(labels, np.int64)].astype(np.float32)

    def keeps(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, np.float32) >= self.threshold

    def identity(self) -> dict:  # what of the filter decides the files
        return {"classifier_sha256": self.sha256, "min_confidence": self.min_confidence, "scheme": SCHEME}

    def describe(self) -> dict:
        return {"file": os.path.basename(self.source), "sha256": self.sha256, "output": self.output_kind,
                "min_confidence": self.min_confidence}


# ------------------------------------------------------------------------------------ score records
WHOLE = Shard()


def block_count(shard: Shard, n: int) -> int:
    """How many records shard `shard` of a set of n images has."""
    return -(-shard.image_count(n) // RECORD_IMAGES)


def block_indices(shard: Shard, block: int, n: int) -> np.ndarray:
    """int64 image indices of record `block` of `shard`, ascending."""
    first = shard.index + shard.count * block * RECORD_IMAGES
    return shard.image_indices(first, min(n, first + shard.count * RECORD_IMAGES))


class ScoreRecords:
    """The score records (DIR/.scores-*.npy) of one set of n images."""

    def __init__(self, out_dir: str, n: int):
        self.directory, self.n, self._cache = out_dir, n, {}
        self._present = {(shard, block) for shard, block, _ in scan(out_dir, "npy")}  # other processes add more

    @staticmethod
    def bytes_bound() -> int:
        return 4 * RECORD_IMAGES + 128  # the scores and the .npy header

    def load(self, shard: Shard, block: int) -> np.ndarray | None:
        """A record's scores; None when it is missing, unreadable or not what this set's record holds."""
        if (shard, block) not in self._cache:
            if len(self._cache) >= 64:  # a block of split N touches up to N records of the unsharded split
                self._cache.clear()
            expected, scores = len(block_indices(shard, block, self.n)), None
            with contextlib.suppress(OSError, ValueError, EOFError):  # being replaced or removed, or damaged
                with open(os.path.join(self.directory, record_name(shard, block)), "rb") as f:
                    array = np.load(io.BytesIO(f.read(4 * expected + 4096)), allow_pickle=False)
                if (isinstance(array, np.ndarray) and array.dtype == np.dtype("<f4") and array.shape == (expected,)
                        and expected and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
                    scores = array
            self._cache[shard, block] = scores
        return self._cache[shard, block]

    def lookup(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(known bool [B], scores float32 [B]) of these image indices, from any split's records."""
        known, scores = np.zeros(len(indices), dtype=bool), np.zeros(len(indices), dtype=np.float32)
        for shard in {shard for shard, _ in self._present}:
            mine = np.flatnonzero(~known & (indices % shard.count == shard.index))
            positions = indices[mine] // shard.count
            for block in np.unique(positions // RECORD_IMAGES).tolist():
                if (shard, block) in self._present and (record := self.load(shard, block)) is not None:
                    rows = positions // RECORD_IMAGES == block
                    scores[mine[rows]] = record[positions[rows] - block * RECORD_IMAGES]
                    known[mine[rows]] = True
        return known, scores

    def write(self, shard: Shard, block: int, scores: np.ndarray) -> None:
        assert len(scores) == len(block_indices(shard, block, self.n)), "a record holds a whole block"
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(scores, dtype="<f4"), allow_pickle=False)
        write_atomic(os.path.join(self.directory, record_name(shard, block)), buffer.getvalue(), fsync=True)
        self._present.add((shard, block))
        self._cache.pop((shard, block), None)

    def finish(self) -> None:
        """Rewrite every score as the unsharded split's records and remove all others (by the run that
        finishes the set, under the state lock, when every image has a score)."""
        blocks = block_count(WHOLE, self.n)
        for block in range(blocks):
            if (WHOLE, block) in self._present and self.load(WHOLE, block) is not None:
                continue
            known, scores = self.lookup(indices := block_indices(WHOLE, block, self.n))
            if not known.all():
                raise UserError(f"{self.directory} lacks the recorded scores of {int((~known).sum())} images (image "
                                f"{int(indices[~known][0])} first), which every shard should have recorded; run the "
                                "same command without --shard to score them again")
            self.write(WHOLE, block, scores)
        for shard, block, path in scan(self.directory, "npy"):
            if shard != WHOLE or block >= blocks:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
