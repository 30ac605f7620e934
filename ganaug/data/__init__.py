"""Datasets for training: the embedded digits, mnist5k and animal_shape, image folders, .npz files and torchvision datasets.

`load_dataset` returns an `ImageData`: uint8 images at the model's resolution held in memory, or,
for an image folder too large for memory, the list of files to stream. Labels are int64 class
indices into `class_names`; an unlabelled dataset has `labels=None` and no class names.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_SOURCES = ("digits", "mnist5k", "animal_shape")  # read from files installed packages ship: never downloaded
TORCHVISION_SOURCES = ("mnist", "fashion_mnist", "cifar10")


class DataError(UserError):
    """A problem with one data source; `load_dataset` prefixes the config key that named it."""


@dataclass
class ImageData:
    images: torch.Tensor | None  # uint8 [N, C, H, W] at the target resolution, or None when streaming
    labels: torch.Tensor | None  # int64 [N], or None for an unlabelled dataset
    class_names: list[str]
    channels: int
    resolution: int
    files: list[Path] | None = None  # streaming only: one file per image, labels as above

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.files is None


def load_dataset(cfg: DataConfig, key: str = "data.source", labels_used: bool = True) -> ImageData:
    """Read `cfg.source` into an ImageData; every problem with the data is a UserError naming `key`.
    labels_used: the labels will be trained on, so every class named must have images (a model of a
    class it never saw would draw noise under its name, silently)."""
    try:
        data = _load(cfg)
    except DataError as exc:
        raise UserError(f"{key}: {exc}") from None
    if len(data) == 0:
        raise UserError(f"{key}: {cfg.source!r} holds no images")
    if labels_used and data.labels is not None and data.class_names:
        present = torch.bincount(data.labels, minlength=len(data.class_names))
        missing = [data.class_names[i] for i in torch.nonzero(present == 0).flatten().tolist()]
        if missing:
            raise UserError(f"{key}: {cfg.source} names classes without any image ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}); every class needs images: add them or drop "
                            "the class from its class names")
    return data


def check_sources(cfg: DataConfig) -> None:
    """What can be told of data.source and data.unlabelled without reading them: a name that is no
    dataset and no existing path (a launcher checks this once, before it starts its workers)."""
    for key, source in (("data.source", cfg.source), ("data.unlabelled", cfg.unlabelled)):
        if key == "data.source" or source:
            try:
                _check_name(source)
            except DataError as exc:
                raise UserError(f"{key}: {exc}") from None


def _check_name(source: str) -> None:
    if not source.strip():
        raise DataError("is empty; name a dataset (digits, mnist5k, animal_shape, mnist, fashion_mnist, cifar10), a folder or a .npz file")
    if source in EMBEDDED_SOURCES or source in TORCHVISION_SOURCES or Path(source).exists():
        return
    if Path(source).suffix.lower() == ".npz":
        raise DataError(f"{Path(source)} does not exist")
    raise DataError(f"{source!r} is not a known dataset name, a folder or a .npz file")


def _load(cfg: DataConfig) -> ImageData:
    source = cfg.source
    _check_name(source)
    if source == "digits":
        from ganaug.data.digits import load_digits

        return load_digits(cfg.resolution, cfg.channels)
    if source == "mnist5k":
        from ganaug.data.mnist5k import load_mnist5k

        return load_mnist5k(cfg.resolution, cfg.channels)
    if source == "animal_shape":
        from ganaug.data.animal_shape import load_animal_shape

        return load_animal_shape(cfg.resolution, cfg.channels)
    if source in TORCHVISION_SOURCES:
        from ganaug.data.torchvision_sets import load_torchvision

        return load_torchvision(source, cfg)
    path = Path(source)
    if path.suffix.lower() == ".npz" or path.is_file():
        from ganaug.data.npz import load_npz

        return load_npz(path, cfg.resolution, cfg.channels)
    if path.is_dir():
        from ganaug.data.folder import load_folder

        return load_folder(path, cfg)
    raise DataError(f"{source!r} is not a known dataset name, a folder or a .npz file")


# The side of each named source's images as they ship.
NATIVE_SIDES = {"digits": 8, "mnist5k": 28, "animal_shape": 28, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}
SIDE_SAMPLE = 64  # a folder's images whose sizes are read to judge its side


def native_side(source: str) -> int | None:
    """The side of `source`'s images where they are square and all of one size: a named source, an
    .npz (its array header), or a folder whose images agree (the headers of SIDE_SAMPLE of them,
    spread evenly over its sorted files, so over its classes). None where they do not, or where the source cannot be read: reading it is left to the
    loader, which says what is wrong."""
    if source in NATIVE_SIDES:
        return NATIVE_SIDES[source]
    path = Path(source)
    try:
        if path.is_file():
            sizes = {_npz_image_size(path)}
        elif path.is_dir():
            from PIL import Image

            from ganaug.data import folder

            quiet = folder.log.disabled
            folder.log.disabled = True  # the loader warns about the folder's layout, once
            try:
                files = folder.scan_folder(path)[0]
            finally:
                folder.log.disabled = quiet
            sizes = set()
            for file in files[::max(1, len(files) // SIDE_SAMPLE)][:SIDE_SAMPLE]:  # spread over the classes
                with Image.open(file) as image:
                    sizes.add(image.size)
        else:
            return None
    except (OSError, ValueError, KeyError, SyntaxError, zipfile.BadZipFile, DataError):
        return None
    if len(sizes) != 1:
        return None
    width, height = sizes.pop()  # PIL's order; an .npz's pair is (height, width): square either way
    return height if height == width else None


def _npz_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an .npz's 'images' array (NHW or NHWC), from its header alone."""
    with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(member)
    if len(shape) not in (3, 4):
        raise ValueError(f"images of shape {shape}")
    return shape[1], shape[2]


def load_unlabelled(cfg: DataConfig, labelled: ImageData) -> ImageData | None:
    """data.unlabelled: more images for the GAN at the labelled data's size and channels; any labels
    the source has are not used (that is what makes them unlabelled)."""
    if not cfg.unlabelled:
        return None
    data = load_dataset(dataclasses.replace(cfg, source=cfg.unlabelled, channels=labelled.channels),
                        key="data.unlabelled", labels_used=False)
    if data.labels is not None:
        log.info("data.unlabelled: %s has labels; they are not used", cfg.unlabelled)
    return dataclasses.replace(data, labels=None, class_names=[])
