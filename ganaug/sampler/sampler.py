"""`Sampler`: a ganaug ONNX model loaded in onnxruntime, turning image indices into images."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ganaug.contract import ModelMeta, TensorSpec, read_model_meta
from ganaug.errors import UserError
from ganaug.sampler.labels import class_index_of, labels_for
from ganaug.sampler.rng import LatentSource
from ganaug.sampler.runtime import ort
from ganaug.sampler.session import (
    GPU_PROVIDERS,
    ORT_ERRORS,
    cache_dir_from_env,
    create_session,
    ort_message,
    run_options,
    short_provider,
)

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    indices: np.ndarray  # int64 [B]: image indices
    images: np.ndarray  # uint8 [B, H, W, C]
    labels: np.ndarray  # int64 [B]: model class indices


def read_model_file(path, what: str = "model") -> bytes:
    """The model's bytes, with a clear error for a missing, empty or unreadable file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} path {path} is a directory, not an .onnx file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if not data:
        raise UserError(f"{what} file {path} is empty")
    return data


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _RunFailed(UserError):
    """onnxruntime failed on a batch: one line, never its multi-line report."""

    def __init__(self, source: str, count: int, reason: str):
        super().__init__(f"{source}: onnxruntime failed on a batch of {count} images: {reason}")
        self.reason = reason


class _SessionRunner:
    """Plain session.run: onnxruntime copies numpy inputs in and the output out."""

    def __init__(self, session: ort.InferenceSession):
        self._session = session
        self._options = run_options()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(["images"], feeds, self._options)[0]


class _IoBindingRunner:
    """On a GPU: inputs copied once into device buffers, the output left on the device until the
    one copy of the (small, uint8) images back to host memory, with no intermediate host copies."""

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int = 0):
        self._session = session
        self._device = device
        self._device_id = device_id
        self._options = run_options()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(array), self._device, self._device_id
            )
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("images", self._device, self._device_id)
        self._session.run_with_iobinding(binding, self._options)
        return binding.copy_outputs_to_cpu()[0]


class Sampler:
    """A ganaug generator in onnxruntime. Image i depends only on (model, seed, i, label of i).

    >>> sampler = Sampler.load("model.onnx")
    >>> images, labels = sampler.generate(16, seed=0)  # uint8 [16, H, W, C], int64 [16]
    """

    def __init__(
        self, session: ort.InferenceSession, meta: ModelMeta, provider: str, source: str = "<model>"
    ):
        self.session = session
        self.meta = meta
        self.provider = provider  # the onnxruntime provider really in use
        self.source = source
        on_gpu = provider in GPU_PROVIDERS
        self._run = _IoBindingRunner(session, "cuda") if on_gpu else _SessionRunner(session)
        self._latents: dict[tuple[int, float], LatentSource] = {}

    @classmethod
    def load(cls, path, provider: str = "auto", threads: int = 0, cache_dir: str | None = None) -> Sampler:
        """Load and check a model. provider: auto|cpu|cuda|tensorrt; threads: 0 = physical cores;
        cache_dir: optimised-model cache (default: from GANAUG_ORT_CACHE, off when unset)."""
        data = read_model_file(path)
        sha256 = hashlib.sha256(data).hexdigest()
        if cache_dir is None:
            cache_dir = cache_dir_from_env()
        session, actual = create_session(
            data, sha256, str(path), provider=provider, threads=threads, cache_dir=cache_dir
        )
        meta = read_model_meta(
            dict(session.get_modelmeta().custom_metadata_map),
            [TensorSpec.from_node_arg(arg) for arg in session.get_inputs()],
            [TensorSpec.from_node_arg(arg) for arg in session.get_outputs()],
            sha256=sha256,
            source=str(path),
        )
        log.debug("loaded %s on %s: %s", path, short_provider(actual), meta)
        sampler = cls(session, meta, actual, source=str(path))
        sampler.probe()
        return sampler

    def probe(self) -> None:
        """Check the metadata against what the graph really does, before anything is written.

        A batch of 2 shows that N is dynamic, that z takes z_dim values and that the output is
        uint8 [N, H, W, C] of ganaug.image_shape; one image of the last class shows that the label
        embedding has ganaug.num_classes rows (a smaller one fails, or on some providers reads past
        its end, for the highest labels only).
        """
        meta, z = self.meta, np.zeros((2, self.meta.z_dim), np.float32)
        try:
            self.run(z, np.zeros(2, np.int64))
        except _RunFailed as exc:
            raise UserError(
                f"{self.source}: the model fails on a batch of 2 latents of ganaug.z_dim={meta.z_dim} "
                f"values ({exc.reason}); the metadata does not match the graph"
            ) from None
        if meta.conditional and meta.num_classes > 1:
            last = meta.num_classes - 1
            try:
                self.run(z[:1], np.array([last], np.int64))
            except _RunFailed as exc:
                raise UserError(
                    f"{self.source}: the model cannot generate label {last} although ganaug.num_classes is "
                    f"{meta.num_classes} (its label embedding is smaller: {exc.reason})"
                ) from None

    # -- latents and labels -------------------------------------------------------------------

    def latents(self, indices: np.ndarray, seed: int = 0, truncation: float = 0.0) -> np.ndarray:
        """float32 [len(indices), z_dim]: the latent of each image index."""
        key = (seed, float(truncation))
        source = self._latents.get(key)
        if source is None:
            try:
                source = LatentSource(seed, self.meta.z_dim, truncation)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            self._latents = {key: source}  # one (seed, truncation) at a time is the normal use
        return source.latents(indices)

    def _label_indices(self, labels, n: int, start: int, classes) -> np.ndarray:
        """Per-image model class indices from the flexible `labels` / `classes` arguments."""
        if labels is not None and classes is not None:
            raise ValueError("give labels or classes, not both")
        if labels is None:
            selected = (
                tuple(range(self.meta.num_classes))
                if classes is None
                else tuple(sorted(self.class_index(c) for c in classes))
            )
            return labels_for(np.arange(start, start + n), selected)
        if isinstance(labels, (str, int, np.integer)):
            return np.full(n, self.class_index(labels), dtype=np.int64)
        values = [self.class_index(label) for label in labels]
        if len(values) != n:
            raise ValueError(f"labels has {len(values)} entries for n={n} images")
        return np.asarray(values, dtype=np.int64)

    def class_index(self, label) -> int:
        """A class given by index or by name -> model class index."""
        if isinstance(label, str):
            return class_index_of(self.meta, label)
        index = int(label)
        if not 0 <= index < self.meta.num_classes:
            raise UserError(f"class index {index} out of range 0..{self.meta.num_classes - 1}")
        return index

    # -- inference ----------------------------------------------------------------------------

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """One inference call: z float32 [B, z_dim], labels int64 [B] -> uint8 [B, H, W, C]."""
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.meta.conditional:
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        try:
            images = self._run(feeds)
        except ORT_ERRORS as exc:
            raise _RunFailed(self.source, len(z), _short(ort_message(exc))) from None
        expected = (len(z), *self.meta.image_shape)
        if images.dtype != np.uint8 or images.shape != expected:
            raise UserError(
                f"{self.source}: the model returned {images.dtype} {list(images.shape)}; the contract "
                f"is uint8 {list(expected)} (N, H, W, C)"
            )
        return images

    def images_for(
        self, indices: np.ndarray, labels: np.ndarray, seed: int = 0, truncation: float = 0.0
    ) -> np.ndarray:
        """Images for explicit image indices and their labels (the primitive everything else uses)."""
        return self.run(self.latents(indices, seed, truncation), labels)

    def batches(
        self,
        n: int,
        labels=None,
        seed: int = 0,
        start: int = 0,
        batch_size: int = 256,
        classes: Sequence | None = None,
        truncation: float = 0.0,
    ) -> Iterator[Batch]:
        """Images start .. start+n-1 in batches of at most batch_size.

        labels: None (class-balanced: image i gets class i % k of `classes`, all classes by default),
        one class (index or name) for every image, or one class per image (length n).
        """
        if n < 0 or start < 0 or batch_size < 1:
            raise ValueError("n and start must be non-negative and batch_size positive")
        all_labels = self._label_indices(labels, n, start, classes)
        for offset in range(0, n, batch_size):
            indices = np.arange(start + offset, start + min(offset + batch_size, n), dtype=np.int64)
            batch_labels = all_labels[offset : offset + len(indices)]
            yield Batch(indices, self.images_for(indices, batch_labels, seed, truncation), batch_labels)

    def generate(
        self,
        n: int,
        labels=None,
        seed: int = 0,
        start: int = 0,
        batch_size: int = 256,
        classes: Sequence | None = None,
        truncation: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [n, H, W, C], int64 [n]) for images start .. start+n-1; see `batches` for labels."""
        images = np.empty((n, *self.meta.image_shape), dtype=np.uint8)
        all_labels = np.empty(n, dtype=np.int64)
        for batch in self.batches(n, labels, seed, start, batch_size, classes, truncation):
            rows = batch.indices - start
            images[rows] = batch.images
            all_labels[rows] = batch.labels
        return images, all_labels
