"""mnist, fashion_mnist and cifar10 through torchvision, from data.root (downloads only when asked)."""

from __future__ import annotations

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.data import DataError, ImageData
from ganaug.data.convert import array_to_nchw, match_channels, resize_batch


def load_torchvision(name: str, cfg: DataConfig) -> ImageData:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        dataset = cls(cfg.root, train=True, download=cfg.download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        hint = "" if cfg.download else " (set data.download=true to fetch it)"
        raise DataError(f"{name} not found under data.root={cfg.root!r}{hint}: {exc}") from None
    data = dataset.data
    images = array_to_nchw(data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data))
    tensor = match_channels(resize_batch(images, cfg.resolution), cfg.channels)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageData(tensor, labels, list(dataset.classes), tensor.shape[1], cfg.resolution)
