"""A folder of images: class sub-folders give labels (as torchvision's ImageFolder), a flat folder none.

A class folder's images are taken at any depth (ImageFolder does the same), so `cat/indoor/1.png`
is a cat; class folders are sorted by name, so class i is the i-th name in sorted order.

Images of any size and mode are decoded once into memory when they fit (`data.in_memory`), else
streamed from disk by DataLoader workers. An unreadable file is an error naming it, or with
`data.skip_bad=true` a warning naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ganaug.config import DataConfig
from ganaug.data import DataError, ImageData
from ganaug.data.convert import is_grey, pil_to_array
from ganaug.errors import UserError
from ganaug.memory import check_fits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _images_in(folder: Path) -> tuple[list[Path], int]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(files) - len(images)


def _images_under(folder: Path) -> tuple[list[Path], int]:
    """A class folder's images at any depth, as torchvision's ImageFolder takes them (sorted walk,
    links followed), minus hidden entries; a folder reached twice through links is read once."""
    images, ignored, seen = [], 0, set()
    for directory, subdirs, _ in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found, skipped = _images_in(Path(directory))
        images += found
        ignored += skipped
    return images, ignored


def scan_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Files, labels (None for a flat folder) and class names, in a sorted, reproducible order."""
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose, ignored = _images_in(root)
    except OSError as exc:
        raise DataError(f"cannot read folder {root}: {exc.strerror or exc}") from None
    if subdirs and loose:
        raise DataError(f"{root} has both image files and class sub-folders; "
                        f"use one layout (e.g. move {loose[0].name} into a class folder)")
    if not subdirs:
        files, labels, names = loose, None, []
    else:
        files, labels, names = [], [], []
        for label, subdir in enumerate(subdirs):
            images, skipped = _images_under(subdir)
            ignored += skipped
            if not images:
                raise DataError(f"class folder {subdir} has no images "
                                f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
            files += images
            labels += [label] * len(images)
            names.append(subdir.name)
    if ignored:
        log.warning("data: ignored %d files without an image suffix under %s", ignored, root)
    if not files:
        raise DataError(f"no images found in {root}")
    return files, labels, names


def open_image(path: Path) -> Image.Image:
    """Decode a whole image now (PIL is lazy), so a truncated file fails here, naming itself."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except BAD_IMAGE_ERRORS as exc:
        raise UserError(f"data: cannot read image {path}: {exc}") from None


def _guess_channels(files: list[Path], skip_bad: bool) -> int:
    """Grey (1) when every one of a sample of images is grey, else colour (3)."""
    step = max(1, len(files) // 64)
    for path in files[::step]:
        try:
            if not is_grey(Image.open(path)):
                return 3
        except BAD_IMAGE_ERRORS as exc:
            if not skip_bad:
                raise UserError(f"data: cannot read image {path}: {exc}") from None
    return 1


def load_folder(root: Path, cfg: DataConfig) -> ImageData:
    files, labels, names = scan_folder(root)
    channels = cfg.channels or _guess_channels(files, cfg.skip_bad)
    decoded_mb = len(files) * channels * cfg.resolution**2 / 2**20
    stream = cfg.in_memory is False or (cfg.in_memory is None and decoded_mb > cfg.max_memory_mb)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    if stream:
        log.info("data: streaming %d images from %s (%.0f MB decoded)", len(files), root, decoded_mb)
        return ImageData(None, label_tensor, names, channels, cfg.resolution, files=files)
    # Decoded one by one, then stacked: two copies at the end.
    check_fits(len(files), 2 * channels * cfg.resolution**2,
               f"holding {len(files)} images of {channels}x{cfg.resolution}x{cfg.resolution} in memory",
               lambda fits: "stream them from disk (data.in_memory=false) or lower data.resolution",
               error=DataError)
    arrays, kept, bad = [], [], []
    for i, path in enumerate(files):
        try:
            arrays.append(pil_to_array(open_image(path), channels, cfg.resolution))
            kept.append(i)
        except UserError as exc:
            if not cfg.skip_bad:
                raise
            bad.append(path)
            log.warning("%s (skipped: data.skip_bad=true)", exc)
    if bad:
        log.warning("data: skipped %d unreadable images of %d", len(bad), len(files))
    if not arrays:
        raise DataError(f"no readable images in {root}")
    images = torch.from_numpy(np.stack(arrays))
    if label_tensor is not None:
        label_tensor = label_tensor[torch.as_tensor(kept)]
    return ImageData(images, label_tensor, names, channels, cfg.resolution)


class StreamingImages(torch.utils.data.Dataset):
    """Decodes one file per item (in DataLoader workers); a bad file yields None when skipping."""

    def __init__(self, data: ImageData, skip_bad: bool):
        self.files, self.labels = data.files, data.labels
        self.channels, self.resolution, self.skip_bad = data.channels, data.resolution, skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        label = -1 if self.labels is None else int(self.labels[index])
        try:
            array = pil_to_array(open_image(self.files[index]), self.channels, self.resolution)
        except UserError as exc:
            if not self.skip_bad:
                raise
            log.warning("%s (skipped: data.skip_bad=true)", exc)
            return None
        return torch.from_numpy(array.copy()), label  # a writable copy: PIL hands out read-only memory
