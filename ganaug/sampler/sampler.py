"""`Sampler`: a ganaug generator in onnxruntime; image i is a function of (model, seed, i) alone
(docs/sampler.md, "Determinism"): latent blocks of BLOCK_SIZE drawn whole from a Philox stream keyed by
(seed, block), and the selected class at position i % k as the label.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ganaug.contract import ModelMeta, TensorSpec, read_model_meta
from ganaug.errors import UserError
from ganaug.sampler.runtime import GPU_PROVIDERS, RunFailed, load_model, ort, run_checked, run_options

BLOCK_SIZE = 1024
SCHEME = "philox-block1024-float32-v1"  # in sample_info.json: another scheme changes every image
MIN_TRUNCATION = 0.01  # redrawing beyond +-t takes about 1 / P(|x| < t) rounds: below this it crawls


class TruncationError(UserError, ValueError):
    """A truncation the sampler refuses: one line on a command line, a ValueError to library callers."""


def check_truncation(truncation: float) -> None:
    """The one truncation rule, for the sampler and every command that passes a truncation to it."""
    if truncation < 0 or 0 < truncation < MIN_TRUNCATION:
        raise TruncationError(f"--truncation must be 0 (off) or at least {MIN_TRUNCATION}, got {truncation}")


def latent_block(seed: int, block: int, z_dim: int, truncation: float = 0.0) -> np.ndarray:
    """All BLOCK_SIZE latents of one block, float32 [BLOCK_SIZE, z_dim]; seeds are taken modulo 2**64."""
    generator = np.random.Generator(np.random.Philox(key=(block << 64) | seed % 2**64))
    z = generator.standard_normal((BLOCK_SIZE, z_dim), dtype=np.float32)
    # Redrawn rather than clipped, so values stay normal inside [-t, t]; the redraws continue the stream.
    while truncation > 0 and (outside := np.abs(z) > truncation).any():
        z[outside] = generator.standard_normal(int(outside.sum()), dtype=np.float32)
    return z


class LatentSource:
    """Latents for any index array of one (seed, z_dim, truncation), the last blocks cached."""

    def __init__(self, seed: int, z_dim: int, truncation: float = 0.0, cached_blocks: int = 4):
        check_truncation(truncation)
        self.seed, self.z_dim, self.truncation, self._cached_blocks, self._cache = seed, z_dim, truncation, cached_blocks, {}

    def latents(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), z_dim]; row k is the latent of image indices[k]."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and indices.min() < 0:
            raise ValueError("image indices must be non-negative")
        out, blocks = np.empty((len(indices), self.z_dim), dtype=np.float32), indices // BLOCK_SIZE
        for block in np.unique(blocks).tolist():
            if block not in self._cache:
                if len(self._cache) >= self._cached_blocks:
                    self._cache.pop(next(iter(self._cache)))  # the oldest: runs move forward
                self._cache[block] = latent_block(self.seed, block, self.z_dim, self.truncation)
            out[blocks == block] = self._cache[block][indices[blocks == block] % BLOCK_SIZE]
        return out


def labels_for(indices: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """int64 model class index of each image index."""
    return np.asarray(classes, dtype=np.int64)[np.asarray(indices, dtype=np.int64) % len(classes)]


def class_index_of(meta: ModelMeta, name: str) -> int:
    matches = [index for index, class_name in enumerate(meta.class_names) if class_name == name]
    if not matches:
        raise UserError(f"unknown class {name!r}; the model's classes are: "
                        + ", ".join(repr(n) for n in meta.class_names))
    if len(matches) > 1:  # picking one would label images with a class the user may not have meant
        raise UserError(f"the model has {len(matches)} classes named {name!r} (labels "
                        f"{', '.join(map(str, matches))}); a name cannot tell them apart")
    return matches[0]


def select_classes(meta: ModelMeta, names: list[str] | None) -> tuple[int, ...]:
    """Model class indices of the named classes (all when None), in model order."""
    if names is None:
        return tuple(range(meta.num_classes))
    if not meta.conditional:
        raise UserError("--classes needs a class-conditional model; this model is unconditional")
    if not names:
        raise UserError("--classes is empty")
    selected = []
    for name in names:
        if (index := class_index_of(meta, name)) in selected:
            raise UserError(f"class {name!r} is named twice in --classes")
        selected.append(index)
    return tuple(sorted(selected))


class Batch(NamedTuple):
    indices: np.ndarray  # int64 [B]: image indices
    images: np.ndarray  # uint8 [B, H, W, C]
    labels: np.ndarray  # int64 [B]: model class indices


class _IoBindingRunner:
    """On a GPU: inputs copied once into device buffers, the output left there until the one copy of the
    (small, uint8) images to host memory."""

    def __init__(self, session: ort.InferenceSession, device: str):
        self._session, self._device, self._options = session, device, run_options()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device))
        binding.bind_output("images", self._device)
        self._session.run_with_iobinding(binding, self._options)
        return binding.copy_outputs_to_cpu()[0]


class Sampler:
    """A ganaug generator in onnxruntime. Image i depends only on (model, seed, i, label of i).

    >>> sampler = Sampler.load("model.onnx")
    >>> images, labels = sampler.generate(16, seed=0)  # uint8 [16, H, W, C], int64 [16]
    """

    def __init__(self, session: ort.InferenceSession, meta: ModelMeta, provider: str, source: str = "<model>"):
        self.session, self.meta, self.provider, self.source = session, meta, provider, source  # provider: in use
        options = run_options()
        self._run = _IoBindingRunner(session, "cuda") if provider in GPU_PROVIDERS else \
            lambda feeds: session.run(["images"], feeds, options)[0]
        self._latents = LatentSource(0, meta.z_dim)

    @classmethod
    def load(cls, path, provider: str = "auto", threads: int = 0, cache_dir: str | None = None) -> Sampler:
        """Load and check a model (a UserError for a hostile or inconsistent file). provider:
        auto|cpu|cuda|tensorrt; threads: 0 = physical cores; cache_dir: see runtime.load_model."""
        model = load_model(path, "model", provider, threads, cache_dir)
        specs = [[TensorSpec.from_node_arg(arg) for arg in args]
                 for args in (model.session.get_inputs(), model.session.get_outputs())]
        meta = read_model_meta(model.metadata, *specs, sha256=model.sha256, source=model.source)
        sampler = cls(model.session, meta, model.provider, model.source)
        # The metadata against what the graph does, before anything is written: a batch of 2 shows N is
        # dynamic, z takes z_dim values and the output is uint8 [N, *image_shape]; an image of the last
        # class, that the label embedding has num_classes rows (a smaller one fails, or on some providers
        # reads past its end, for the highest labels only).
        z = np.zeros((2, meta.z_dim), np.float32)
        try:
            sampler.run(z, np.zeros(2, np.int64))
        except RunFailed as exc:
            raise UserError(f"{model.source}: the model fails on a batch of 2 latents of ganaug.z_dim={meta.z_dim} "
                            f"values ({exc.reason}); the metadata does not match the graph") from None
        try:
            if meta.conditional and meta.num_classes > 1:
                sampler.run(z[:1], np.array([meta.num_classes - 1], np.int64))
        except RunFailed as exc:
            raise UserError(f"{model.source}: the model cannot generate label {meta.num_classes - 1} although "
                            f"ganaug.num_classes is {meta.num_classes} (its label embedding is smaller: "
                            f"{exc.reason})") from None
        return sampler

    def latents(self, indices: np.ndarray, seed: int = 0, truncation: float = 0.0) -> np.ndarray:
        """float32 [len(indices), z_dim]: the latent of each image index."""
        if (self._latents.seed, self._latents.truncation) != (seed, float(truncation)):
            self._latents = LatentSource(seed, self.meta.z_dim, float(truncation))  # TruncationError: a UserError
        return self._latents.latents(indices)

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """One inference call: z float32 [B, z_dim], labels int64 [B] -> uint8 [B, H, W, C]."""
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.meta.conditional:
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        images = run_checked(self._run, feeds, len(z), self.source)
        expected = (len(z), *self.meta.image_shape)
        if images.dtype != np.uint8 or images.shape != expected:
            raise UserError(f"{self.source}: the model returned {images.dtype} {list(images.shape)}; the contract "
                            f"is uint8 {list(expected)} (N, H, W, C)")
        return images

    def images_for(self, indices: np.ndarray, labels: np.ndarray, seed: int = 0, truncation: float = 0.0) -> np.ndarray:
        """Images of explicit image indices and their labels (the primitive everything else uses)."""
        return self.run(self.latents(indices, seed, truncation), labels)

    def batches(self, n: int, labels=None, seed: int = 0, start: int = 0, batch_size: int = 256,
                classes: Sequence | None = None, truncation: float = 0.0) -> Iterator[Batch]:
        """Images start .. start+n-1 in batches of at most batch_size. labels: None (image i gets class
        i % k of `classes`, all classes by default), one class (index or name) for all, or one per image."""
        def class_index(label) -> int:
            if isinstance(label, str):
                return class_index_of(self.meta, label)
            if not 0 <= int(label) < self.meta.num_classes:
                raise UserError(f"class index {int(label)} out of range 0..{self.meta.num_classes - 1}")
            return int(label)

        if labels is not None and classes is not None:
            raise ValueError("give labels or classes, not both")
        if labels is None:
            selected = range(self.meta.num_classes) if classes is None else sorted(map(class_index, classes))
            all_labels = labels_for(np.arange(start, start + n), tuple(selected))
        elif isinstance(labels, (str, int, np.integer)):
            all_labels = np.full(n, class_index(labels), dtype=np.int64)
        elif len(all_labels := np.asarray([class_index(label) for label in labels], dtype=np.int64)) != n:
            raise ValueError(f"labels has {len(all_labels)} entries for n={n} images")
        for offset in range(0, n, batch_size):
            indices = np.arange(start + offset, start + min(offset + batch_size, n), dtype=np.int64)
            batch_labels = all_labels[offset:offset + len(indices)]
            yield Batch(indices, self.images_for(indices, batch_labels, seed, truncation), batch_labels)

    def generate(self, n: int, labels=None, seed: int = 0, start: int = 0, batch_size: int = 256,
                 classes: Sequence | None = None, truncation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [n, H, W, C], int64 [n]) of images start .. start+n-1; see `batches` for labels."""
        images, all_labels = np.empty((n, *self.meta.image_shape), dtype=np.uint8), np.empty(n, dtype=np.int64)
        for batch in self.batches(n, labels, seed, start, batch_size, classes, truncation):
            images[batch.indices - start], all_labels[batch.indices - start] = batch.images, batch.labels
        return images, all_labels
