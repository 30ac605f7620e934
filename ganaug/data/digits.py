"""The embedded default: scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch

from ganaug.data import ImageData
from ganaug.data.convert import to_model_images


def load_digits(resolution: int, channels: int = 0) -> ImageData:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()  # ships inside scikit-learn: nothing is downloaded
    # Pixel values are 0..16 ink levels; scale to 0..255 grey.
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    tensor = to_model_images(torch.from_numpy(images)[:, None], resolution, channels or 1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ImageData(tensor, labels, [str(c) for c in bunch.target_names], tensor.shape[1], resolution)
