"""Datasets for training: the embedded digits, mnist5k and animal_shape, image folders, .npz files and torchvision datasets.

`load_dataset` returns an `ImageData`: uint8 images at the model's resolution held in memory, or,
for an image folder too large for memory, the list of files to stream. Labels are int64 class
indices into `class_names`; an unlabelled dataset has `labels=None` and no class names.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

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
