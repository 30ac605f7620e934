"""`--filter CLASSIFIER.onnx --min-confidence TAU`: keep the images a classifier gives their class.

The classifier contract (docs/sampler.md, "Filtering"): one self-contained ONNX file with
- one input: uint8 [N, H, W, C], 0..255, the generator's own image shape: the very pixels the
  sampler writes (a classifier's pre-processing, e.g. scaling to [-1, 1], lives in its graph, as
  the generator's post-processing lives in the generator's);
- one output, float32 [N, num_classes] with the generator's class count, named `logits` (the
  sampler applies the softmax) or `probabilities` (taken as they are; each in [0, 1]);
- a dynamic N; optional metadata `ganaug.class_names` and `ganaug.image_shape`, checked against the
  generator's when present (a classifier with the classes in another order would filter nonsense).

Image i is kept iff the probability of its conditioning class, computed in float64 from the float32
output and rounded to float32, is >= float32(TAU). Each image's score depends on its pixels alone,
so the kept set is a function of (model, seed, i, classifier, TAU) as the pixels are of (model, seed, i).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os

import numpy as np

from ganaug.contract import ModelMeta, TensorSpec, check_classifier_metadata
from ganaug.errors import UserError
from ganaug.sampler.runtime import ort
from ganaug.sampler.sampler import read_model_file
from ganaug.sampler.session import ORT_ERRORS, cache_dir_from_env, create_session, ort_message, run_options

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "probabilities")
# Recorded in the set's identity: how a score is computed and compared (a resume must not mix schemes).
SCHEME = "softmax-f64-of-f32-logits-score-f32-ge-f32-tau-v1"


def check_min_confidence(value: float) -> float:
    """TAU must be a probability above 0: 0 would keep everything, which is no filter."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"--min-confidence must be in (0, 1] (a probability above 0), got {value}")
    return float(value)


def format_score(score: np.float32) -> str:
    """The shortest text that reads back as the same float32 (manifest.csv's `score`)."""
    return str(np.float32(score))


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class _RunFailed(UserError):
    """The classifier failed on a batch, or broke the output contract: one line, with the reason apart."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.reason = reason


class ImageFilter:
    """A classifier in onnxruntime and a threshold: which generated images to keep.

    >>> image_filter = ImageFilter.load("classifier.onnx", sampler.meta, min_confidence=0.9)
    >>> scores = image_filter.scores(images, labels)   # float32 [N]: probability of each image's label
    >>> keep = image_filter.keeps(scores)              # bool [N]
    """

    def __init__(self, session: ort.InferenceSession, meta: ModelMeta, min_confidence: float, sha256: str,
                 output_kind: str, provider: str, source: str = "<classifier>"):
        self.session = session
        self.meta = meta  # the generator's: what the classifier must match
        self.min_confidence = check_min_confidence(min_confidence)
        self.threshold = np.float32(self.min_confidence)
        self.sha256 = sha256
        self.output_kind = output_kind
        self.provider = provider
        self.source = source
        self._input = session.get_inputs()[0].name
        self._options = run_options()

    @classmethod
    def load(cls, path, meta: ModelMeta, min_confidence: float, provider: str = "auto", threads: int = 0,
             cache_dir: str | None = None) -> ImageFilter:
        """Load and check a classifier against the generator's ModelMeta (a UserError for anything off)."""
        min_confidence = check_min_confidence(min_confidence)
        source = str(path)
        data = read_model_file(path, what="classifier")
        sha256 = hashlib.sha256(data).hexdigest()
        session, actual = create_session(data, sha256, source, provider=provider, threads=threads,
                                         cache_dir=cache_dir_from_env() if cache_dir is None else cache_dir)
        output_kind = check_classifier_graph(session, meta.image_shape, meta.num_classes, source)
        check_classifier_metadata(dict(session.get_modelmeta().custom_metadata_map), meta, source)
        image_filter = cls(session, meta, min_confidence, sha256, output_kind, actual, source)
        image_filter.probe()
        return image_filter

    def probe(self) -> None:
        """A batch of 2 black images, before anything is written: N is dynamic, the output is float32
        [2, num_classes], finite (and in [0, 1] for probabilities)."""
        images = np.zeros((2, *self.meta.image_shape), np.uint8)
        try:
            self.probabilities(images)
        except _RunFailed as exc:
            raise UserError(f"{self.source}: the classifier fails on a batch of 2 uint8 images of "
                            f"{list(self.meta.image_shape)} (H, W, C): {exc.reason}") from None

    def _run(self, images: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self._input: np.ascontiguousarray(images, dtype=np.uint8)}, self._options)[0]
        except ORT_ERRORS as exc:
            raise _RunFailed(self.source, f"onnxruntime failed on a batch of {len(images)} images: "
                                          f"{_short(ort_message(exc))}") from None
        expected = (len(images), self.meta.num_classes)
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != expected:
            shown = f"{out.dtype} {list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
            raise _RunFailed(self.source, f"the classifier returned {shown}; the contract is float32 "
                                          f"{list(expected)} (N, classes: the generator's {self.meta.num_classes})")
        return out

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 [N, classes]: the classifier's probabilities for uint8 images [N, H, W, C]."""
        out = self._run(images)
        if not np.isfinite(out).all():
            raise UserError(f"{self.source}: the classifier returned NaN or infinite {self.output_kind} "
                            f"for {int((~np.isfinite(out)).any(axis=1).sum())} of {len(out)} images")
        values = out.astype(np.float64)
        if self.output_kind == "probabilities":
            if values.min(initial=0.0) < 0 or values.max(initial=0.0) > 1:
                raise UserError(f"{self.source}: the classifier's output 'probabilities' holds values outside "
                                f"[0, 1] (from {values.min():.4g} to {values.max():.4g}); name it 'logits' if the "
                                "sampler should apply the softmax")
            return values
        values -= values.max(axis=1, keepdims=True)
        np.exp(values, out=values)
        values /= values.sum(axis=1, keepdims=True)
        return values

    def scores(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """float32 [N]: each image's probability of its own label (its conditioning class)."""
        if len(images) == 0:
            return np.empty(0, np.float32)
        probabilities = self.probabilities(images)
        return probabilities[np.arange(len(labels)), np.asarray(labels, np.int64)].astype(np.float32)

    def keeps(self, scores: np.ndarray) -> np.ndarray:
        """bool [N]: which images the filter keeps."""
        return np.asarray(scores, np.float32) >= self.threshold

    def identity(self) -> dict:
        """What of the filter decides the files (part of the set's identity in sample_info.json)."""
        return {"classifier_sha256": self.sha256, "min_confidence": self.min_confidence, "scheme": SCHEME}

    def describe(self) -> dict:
        return {"file": os.path.basename(self.source), "sha256": self.sha256, "output": self.output_kind,
                "min_confidence": self.min_confidence}


def check_classifier_graph(session: ort.InferenceSession, image_shape: tuple[int, int, int], num_classes: int,
                           source: str) -> str:
    """The classifier's declared inputs and outputs against the contract; returns the output's kind."""
    _check_input([TensorSpec.from_node_arg(arg) for arg in session.get_inputs()], image_shape, source)
    return _check_output([TensorSpec.from_node_arg(arg) for arg in session.get_outputs()], num_classes, source)


def _check_dynamic_batch(spec: TensorSpec, role: str, source: str) -> None:
    if _static(spec.shape[0]) is not None:
        raise UserError(f"{source}: classifier {role} {spec.name!r} has a fixed batch size of {spec.shape[0]}; the "
                        "contract is a dynamic N (export with a dynamic batch axis)")


def _check_input(inputs: list[TensorSpec], image_shape: tuple[int, int, int], source: str) -> None:
    contract = f"uint8 [N, {', '.join(map(str, image_shape))}] (N, H, W, C: the generator's images)"
    if len(inputs) != 1:
        names = ", ".join(repr(spec.name) for spec in inputs)
        raise UserError(f"{source}: the classifier must have one input, {contract}; it has {len(inputs)}: {names}")
    spec = inputs[0]
    if spec.type != "tensor(uint8)" or len(spec.shape) != 4:
        raise UserError(f"{source}: classifier input {spec.name!r} is {spec.type} of rank {len(spec.shape)}; "
                        f"the contract is {contract}, scaled inside the graph")
    _check_dynamic_batch(spec, "input", source)
    for axis, (dim, expected) in enumerate(zip(spec.shape[1:], image_shape, strict=True), start=1):
        if _static(dim) not in (None, expected):
            raise UserError(f"{source}: classifier input {spec.name!r} has size {dim} on axis {axis} but the "
                            f"generator's images are {list(image_shape)} (H, W, C)")


def _check_output(outputs: list[TensorSpec], num_classes: int, source: str) -> str:
    contract = f"float32 [N, {num_classes}] named 'logits' or 'probabilities'"
    if len(outputs) != 1:
        names = ", ".join(repr(spec.name) for spec in outputs)
        raise UserError(f"{source}: the classifier must have one output, {contract}; it has {len(outputs)}: {names}")
    spec = outputs[0]
    if spec.name not in OUTPUT_KINDS:
        raise UserError(f"{source}: the classifier's output is named {spec.name!r}; name it 'logits' (the sampler "
                        "applies the softmax) or 'probabilities' (taken as they are)")
    if spec.type != "tensor(float)" or len(spec.shape) != 2:
        raise UserError(f"{source}: classifier output {spec.name!r} is {spec.type} of rank {len(spec.shape)}; "
                        f"the contract is {contract}")
    _check_dynamic_batch(spec, "output", source)
    if _static(spec.shape[1]) not in (None, num_classes):
        raise UserError(f"{source}: the classifier has {spec.shape[1]} classes but the generator has {num_classes}")
    return spec.name
