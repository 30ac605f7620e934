"""A .npz file with `images` (uint8, NHWC or NHW), optional `labels` and optional `class_names`."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ganaug.data import DataError, ImageData
from ganaug.data.convert import array_to_nchw, to_model_images

MAX_CLASSES = 100_000  # ImageNet-21k has about 22,000


def load_npz(path: Path, resolution: int, channels: int = 0) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as archive:  # no pickles: a data file must not run code
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None
    if "images" not in arrays:
        raise DataError(f"{path} has no 'images' array (found: {', '.join(arrays) or 'nothing'})")
    images = arrays["images"]
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8, got {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{path}: 'images' must be NHW or NHWC with 1, 3 or 4 channels, "
                        f"got shape {list(images.shape)}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{path}: 'images' have no pixels (shape {list(images.shape)})")
    tensor = to_model_images(array_to_nchw(images), resolution, channels)
    labels, class_names = _labels(path, arrays, len(images))
    return ImageData(tensor, labels, class_names, tensor.shape[1], resolution)


def _labels(path: Path, arrays: dict, count: int) -> tuple[torch.Tensor | None, list[str]]:
    if "labels" not in arrays:
        return None, []
    labels = arrays["labels"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
        raise DataError(f"{path}: 'labels' must be {count} integers, got {labels.dtype} "
                        f"of shape {list(labels.shape)}")
    if count and labels.min() < 0:
        raise DataError(f"{path}: 'labels' has negative values")
    num_classes = int(labels.max()) + 1 if count else 0
    if num_classes > MAX_CLASSES:  # a stray huge label would otherwise mean billions of class names
        raise DataError(f"{path}: 'labels' go up to {num_classes - 1}; at most {MAX_CLASSES} "
                        "classes are supported")
    if "class_names" in arrays:
        class_names = _class_names(path, arrays["class_names"])
        if len(class_names) < num_classes:
            raise DataError(f"{path}: label {num_classes - 1} has no entry in 'class_names' "
                            f"({len(class_names)} names)")
    else:
        class_names = [str(i) for i in range(num_classes)]
    # astype: native int64 whatever the file's byte order (torch takes no big-endian array)
    return torch.from_numpy(labels.astype(np.int64)), class_names


def _class_names(path: Path, names: np.ndarray) -> list[str]:
    """'class_names' as text: a 1-D array of str, or of UTF-8 bytes (decoded); distinct names only,
    or two classes would share one label downstream."""
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: 'class_names' must be a 1-D array of strings, got {names.dtype} "
                        f"of shape {list(names.shape)}")
    if names.dtype.kind == "S":
        try:
            decoded = [name.decode("utf-8") for name in names.tolist()]
        except UnicodeDecodeError:
            raise DataError(f"{path}: 'class_names' holds bytes that are not UTF-8 text") from None
    else:
        decoded = [str(name) for name in names.tolist()]
    seen = set()
    for name in decoded:
        if name in seen:
            raise DataError(f"{path}: class name {name!r} appears twice in 'class_names'")
        seen.add(name)
    return decoded
