"""A folder of images: class sub-folders give labels (as torchvision's ImageFolder), a flat folder none.

The tree is read by torchvision's own ImageFolder rules, so class i is the i-th folder name in
sorted order and `cat/indoor/1.png` is a cat; what those rules would take wrongly (a hidden folder as
a class, a link into another class) is refused in one line.

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
from ganaug.data.convert import RANGELESS_MODES, is_grey, pil_to_array
from ganaug.errors import UserError
from ganaug.memory import check_fits

log = logging.getLogger(__name__)

BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_image(path: str) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    return has_file_allowed_extension(path, IMG_EXTENSIONS)


def _check_class_folder(root: Path, name: str) -> int:
    """What ImageFolder would read differently or wrongly: refused, never guessed around. A hidden
    folder is a class to ImageFolder; a name that is not UTF-8 cannot go into a model's metadata; a
    link out of the class folder (to another class, or a loop back up) gives its images this label.
    Returns how many of its files are not images ImageFolder reads."""
    if name.startswith("."):
        raise DataError(f"{root / name} is a hidden folder, which torchvision's ImageFolder takes for a class; "
                        "move it out of the data folder")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # repr: the name itself cannot be printed (its undecodable bytes are lone surrogates)
        raise DataError(f"class folder {name!r} in {root} has a name that is not valid UTF-8; rename it") from None
    top = os.path.realpath(root / name)
    seen, ignored = set(), 0
    for directory, subdirs, files in os.walk(root / name, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen or os.path.commonpath([top, real]) != top:
            raise DataError(f"{directory} leads out of its class folder {root / name} (a link to another folder "
                            "or back up the tree): its images would take this class's label; remove the link")
        seen.add(real)
        subdirs.sort()
        ignored += sum(not _is_image(file) for file in files)
    return ignored


def scan_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Files, labels (None for a flat folder) and class names, in a sorted, reproducible order.

    Class folders and their images are exactly what torchvision's ImageFolder takes (its own
    find_classes and make_dataset: every folder is a class, images at any depth, its extensions), so
    a model's labels are ImageFolder's indices of the same tree; what it would read differently is
    refused (_check_class_folder). A flat folder's images follow the same extensions."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
        subdirs = [entry.name for entry in entries if entry.is_dir()]
        loose = [Path(entry.path) for entry in entries if entry.is_file() and _is_image(entry.path)]
        ignored = sum(entry.is_file() and not _is_image(entry.path) for entry in entries)
    except OSError as exc:
        raise DataError(f"cannot read folder {root}: {exc.strerror or exc}") from None
    if subdirs and loose:
        raise DataError(f"{root} has both image files and class sub-folders; "
                        f"use one layout (e.g. move {loose[0].name} into a class folder)")
    if not subdirs:
        if ignored:
            log.warning("data: ignored %d files under %s that ImageFolder does not read (extensions: %s)",
                        ignored, root, " ".join(IMG_EXTENSIONS))
        if not loose:
            raise DataError(f"no images found in {root}")
        return loose, None, []
    ignored += sum(_check_class_folder(root, name) for name in subdirs)
    if ignored:
        log.warning("data: ignored %d files under %s that ImageFolder does not read (extensions: %s)", ignored, root,
                    " ".join(IMG_EXTENSIONS))
    names, class_to_index = find_classes(root)
    samples = make_dataset(str(root), class_to_index, extensions=IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(names) - {names[label] for _, label in samples})
    if empty:  # ImageFolder refuses it too
        raise DataError(f"class folder {root / empty[0]} has no images (extensions: {' '.join(IMG_EXTENSIONS)})")
    return [Path(path) for path, _ in samples], [label for _, label in samples], names


def _refuse_rangeless(image: Image.Image, path: Path) -> None:
    if image.mode in RANGELESS_MODES:
        raise UserError(f"data: image {path} has {RANGELESS_MODES[image.mode]} pixels (mode {image.mode}), whose "
                        "range the file does not give; save it as 8- or 16-bit")


def open_image(path: Path) -> Image.Image:
    """Decode a whole image now (PIL is lazy), so a truncated file fails here, naming itself."""
    try:
        with Image.open(path) as image:
            _refuse_rangeless(image, path)
            image.load()
            return image.copy()
    except BAD_IMAGE_ERRORS as exc:
        raise UserError(f"data: cannot read image {path}: {exc}") from None


def _channels_of(files: list[Path], skip_bad: bool) -> int:
    """data.channels=auto: grey (1) when every image is grey, else colour (3). Every file's header is
    read (PIL's open reads no pixels): one colour image among grey ones makes the set colour, which
    a sample could miss. Set data.channels to skip the scan on a huge folder."""
    if len(files) > 10_000:
        log.info("data.channels=auto: reading the mode of %d image headers (set data.channels to skip)", len(files))
    colour = False
    for path in files:
        try:
            with Image.open(path) as image:
                _refuse_rangeless(image, path)
                colour = colour or not is_grey(image)
        except BAD_IMAGE_ERRORS as exc:
            if not skip_bad:
                raise UserError(f"data: cannot read image {path}: {exc}") from None
        except UserError:
            if not skip_bad:
                raise
    return 3 if colour else 1


def load_folder(root: Path, cfg: DataConfig) -> ImageData:
    files, labels, names = scan_folder(root)
    channels = cfg.channels or _channels_of(files, cfg.skip_bad)
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
