"""Datasets for training: the embedded digits, image folders, .npz files and torchvision datasets.

`load_dataset` returns an `ImageData`: uint8 images at the model's resolution held in memory, or,
for an image folder too large for memory, the list of files to stream. Labels are int64 class
indices into `class_names`; an unlabelled dataset has `labels=None` and no class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ganaug.config import DataConfig
from ganaug.errors import UserError

TORCHVISION_SOURCES = ("mnist", "fashion_mnist", "cifar10")


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


def load_dataset(cfg: DataConfig) -> ImageData:
    """Read `data.source` into an ImageData; every problem with the data is a UserError."""
    source = cfg.source
    if source == "digits":
        from ganaug.data.digits import load_digits

        data = load_digits(cfg.resolution, cfg.channels)
    elif source in TORCHVISION_SOURCES:
        from ganaug.data.torchvision_sets import load_torchvision

        data = load_torchvision(source, cfg)
    else:
        path = Path(source)
        if path.suffix.lower() == ".npz" or path.is_file():
            from ganaug.data.npz import load_npz

            data = load_npz(path, cfg.resolution, cfg.channels)
        elif path.is_dir():
            from ganaug.data.folder import load_folder

            data = load_folder(path, cfg)
        else:
            raise UserError(f"data.source: {source!r} is not a known dataset name, a folder or a .npz file")
    if len(data) == 0:
        raise UserError(f"data.source: {source!r} holds no images")
    return data
