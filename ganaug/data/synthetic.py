"""Synthetic data in your own training loop: torch Datasets over `ganaug sample` output or a model.

    synthetic = SyntheticFolder("synthetic/")                  # written by `ganaug sample`
    train_set = mix_datasets(real_set, synthetic, ratio=0.5)   # half as many synthetic as real
    loader = DataLoader(train_set, batch_size=64, shuffle=True)

    # or the augmentation study's mix: half of every batch synthetic, from all of them
    train_set, sampler = mix_by_share(real_set, synthetic, synthetic_fraction=0.5, num_samples=64 * steps)
    loader = DataLoader(train_set, batch_size=64, sampler=sampler)

Items are (image, label) like torchvision's ImageFolder: the image is a float tensor [C, H, W] in
[0, 1], or whatever `transform` makes of the PIL image; the label is the model's class index (not
ImageFolder's alphabetical index), so real and synthetic labels agree when the GAN was trained on
the real set. Unlike the sampler itself, this module needs torch.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset, WeightedRandomSampler

from ganaug.contract import INFO_NAME, read_manifest
from ganaug.sampler.sampler import labels_for, select_classes

_ZIP_LOCAL_HEADER_SIZE = 30


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float32 [C, H, W] in [0, 1]."""
    # np.array copies (PIL and memory-mapped arrays are read-only) while converting to float.
    return torch.from_numpy(np.array(image.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)


def _as_item(image: np.ndarray, label: int, transform: Callable | None):
    if transform is None:
        return image_to_tensor(image), label
    return transform(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)), label


def _open_npy_member(path: str, member: str) -> np.ndarray:
    """One array of an .npz file: memory-mapped when stored uncompressed (the sampler writes it so),
    so random access to a shard reads only the images asked for; loaded whole otherwise."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path) as npz:
            return npz[member.removesuffix(".npy")]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local_header = f.read(_ZIP_LOCAL_HEADER_SIZE)
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        f.seek(info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"
    )


class SyntheticFolder(Dataset):
    """The output directory of `ganaug sample` (PNG tree or .npz shards), read through its manifest."""

    def __init__(self, root, transform: Callable | None = None):
        self.root = os.fspath(root)
        self.transform = transform
        with open(os.path.join(self.root, INFO_NAME), encoding="utf-8") as f:
            info = json.load(f)
        if not info.get("complete"):
            raise ValueError(
                f"{self.root} is an unfinished sample set; re-run the same `ganaug sample` "
                "command to complete it"
            )
        self.format = info["identity"]["format"]
        self.shard_size = info["identity"].get("shard_size")
        self.classes: list[str] = list(info["model"]["class_names"])
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        rows = read_manifest(self.root)
        self.paths = [row["path"] for row in rows]
        self.indices = np.array([int(row["index"]) for row in rows], dtype=np.int64)
        # Where each image sits in its .npz file: rows are in index order, and so are a file's images
        # (all of its range, or only those a filter kept).
        self.positions: list[int] = []
        in_file: dict[str, int] = {}
        for path in self.paths:
            self.positions.append(in_file.get(path, 0))
            in_file[path] = self.positions[-1] + 1
        self.targets = [int(row["label"]) for row in rows]
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, item: int) -> np.ndarray:
        path = os.path.join(self.root, *self.paths[item].split("/"))
        if self.format == "png":
            with Image.open(path) as image:
                array = np.asarray(image)
            return array[..., None] if array.ndim == 2 else array
        shard = self._shards.get(path)
        if shard is None:
            shard = self._shards[path] = _open_npy_member(path, "images.npy")
        return np.asarray(shard[self.positions[item]])

    def __getitem__(self, item: int):
        return _as_item(self._image(item), self.targets[item], self.transform)

    def __getstate__(self) -> dict:
        # DataLoader workers started with spawn get a pickled copy: reopen shards there, don't copy them.
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state


class SyntheticModelDataset(Dataset):
    """n images generated on the fly from a ganaug ONNX model; item i equals image i of
    `ganaug sample MODEL --n n --seed seed [--classes ...]` (same latent, same label).

    Each DataLoader worker loads its own onnxruntime session (sessions do not pickle); `threads`
    is per session, so keep it at 1 when several workers run.
    """

    def __init__(
        self,
        model_path,
        n: int,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        truncation: float = 0.0,
        transform: Callable | None = None,
        provider: str = "cpu",
        threads: int = 1,
    ):
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        self.model_path = os.fspath(model_path)
        self.n = n
        self.seed = seed
        self.truncation = truncation
        self.transform = transform
        self.provider = provider
        self.threads = threads
        self._sampler = None
        self._sampler_pid = None
        meta = self._get_sampler().meta
        self.classes = list(meta.class_names)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.selected = select_classes(meta, list(classes) if classes is not None else None)

    def _get_sampler(self):
        # A session must not cross a fork (its thread pool does not survive it): DataLoader workers
        # started with fork load their own, like those started with spawn (see __getstate__).
        if self._sampler is None or self._sampler_pid != os.getpid():
            from ganaug.sampler import Sampler

            self._sampler = Sampler.load(self.model_path, provider=self.provider, threads=self.threads)
            self._sampler_pid = os.getpid()
        return self._sampler

    @property
    def targets(self) -> list[int]:
        return labels_for(np.arange(self.n), self.selected).tolist()

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, items: Sequence[int]) -> list:
        """A whole DataLoader batch in one inference call (torch's fetcher uses this when present)."""
        indices = np.asarray(items, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"index out of range for {self.n} images")
        labels = labels_for(indices, self.selected)
        images = self._get_sampler().images_for(indices, labels, self.seed, self.truncation)
        return [
            _as_item(image, int(label), self.transform) for image, label in zip(images, labels, strict=True)
        ]

    def __getitem__(self, item: int):
        if item < 0:
            item += self.n
        return self.__getitems__([item])[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sampler"] = None
        return state


def mix_datasets(real: Dataset, synthetic: Dataset, ratio: float) -> ConcatDataset:
    """real + round(ratio * len(real)) synthetic items, so that synthetic / real == ratio.

    The synthetic part is its first items: deterministic, and class-balanced for both datasets
    above, whose item i has class i % k.
    """
    if ratio < 0:
        raise ValueError(f"ratio must be non-negative, got {ratio}")
    count = round(ratio * len(real))
    if count > len(synthetic):
        raise ValueError(
            f"ratio {ratio} needs {count} synthetic items for {len(real)} real ones, "
            f"but the synthetic set has {len(synthetic)}"
        )
    return ConcatDataset([real, Subset(synthetic, range(count))])


def mix_by_share(real: Dataset, synthetic: Dataset, synthetic_fraction: float, num_samples: int,
                 generator: torch.Generator | None = None) -> tuple[ConcatDataset, WeightedRandomSampler]:
    """The augmentation study's mix for your own loop: (real + synthetic, a sampler for DataLoader) that
    draws `num_samples` items, a `synthetic_fraction` share of them synthetic on average, from all the
    synthetic images however few real ones there are (mix_datasets ties the synthetic count to the
    real count: a handful of synthetic images for a handful of real ones).

    Give `real` your classical augmentation as its transform and `synthetic` none: in the study, warping
    the synthetic images too made them no better than the warp alone (docs/evaluation.md).
    """
    if not 0 <= synthetic_fraction <= 1:
        raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
    if not len(real) or (synthetic_fraction > 0 and not len(synthetic)):
        raise ValueError(f"cannot draw from {len(real)} real and {len(synthetic)} synthetic items")
    weights = torch.cat([torch.full((len(real),), (1 - synthetic_fraction) / len(real), dtype=torch.float64),
                         torch.full((len(synthetic),), synthetic_fraction / max(len(synthetic), 1),
                                    dtype=torch.float64)])
    return ConcatDataset([real, synthetic]), WeightedRandomSampler(weights, num_samples, replacement=True,
                                                                   generator=generator)
