"""mnist, fashion_mnist and cifar10 through torchvision, from data.root (downloads only when asked).

What is in data.root is used as it is; only when it is missing and data.download=true does
torchvision fetch it. The download is one process's at a time (a lock on data.root: the other
ranks of a torchrun job wait, then find the files), bounded in time (a network that drops packets
fails instead of hanging), and a failure (no network, a proxy, a corrupt archive) is one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from pathlib import Path

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.data import DataError, ImageData
from ganaug.data.convert import array_to_nchw, to_model_images
from ganaug.errors import one_line

DOWNLOAD_TIMEOUT_S = 60  # per network operation: a connection or a read that stalls this long fails

# What torchvision raises for files it finds but cannot read (its readers assert on headers) or
# cannot fetch (urllib's URLError and HTTPError are OSErrors; http.client's are not).
log = logging.getLogger(__name__)

_UNREADABLE = (RuntimeError, AssertionError, ValueError, KeyError, IndexError, TypeError, EOFError, OSError)


def load_torchvision(name: str, cfg: DataConfig) -> ImageData:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    root = Path(cfg.root)
    try:
        dataset = cls(root, train=True, download=False)
    except RuntimeError as exc:
        if "Dataset not found" not in str(exc):  # found, but a file is truncated or corrupt
            raise DataError(_unreadable(name, cfg.root, exc)) from None
        if not cfg.download:
            raise DataError(f"{name} not found under data.root={cfg.root!r}: set data.download=true to fetch it "
                            "there, or copy it there from a machine that has it") from None
        dataset = _download(cls, name, root)
    except _UNREADABLE as exc:
        raise DataError(_unreadable(name, cfg.root, exc)) from None
    data = dataset.data
    images = array_to_nchw(data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data))
    tensor = to_model_images(images, cfg.resolution, cfg.channels)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageData(tensor, labels, list(dataset.classes), tensor.shape[1], cfg.resolution)


def _unreadable(name: str, root: str, exc: BaseException) -> str:
    return (f"{name} under data.root={root!r} is unreadable ({type(exc).__name__}: {one_line(exc) or 'bad header'}); "
            "delete its folder there and fetch it again (data.download=true)")


def _download(cls, name: str, root: Path):
    import http.client
    import tarfile

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data.root={str(root)!r} cannot be created to download {name} into: "
                        f"{exc.strerror or exc}") from None
    log.info("data: downloading %s into data.root=%s", name, root)
    # torchvision prints every file and every failed mirror on stdout: keep it for the error.
    printed = io.StringIO()
    try:
        with _locked(root), _network_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stdout(printed):
            return cls(root, train=True, download=True)
    except (*_UNREADABLE, http.client.HTTPException, tarfile.TarError) as exc:
        reason = _last_line(str(exc)) or _last_line(printed.getvalue()) or type(exc).__name__
        raise DataError(f"{name} is not under data.root={str(root)!r} and downloading it failed ({reason}); "
                        "without network access here, download it on a machine that has it (data.download=true) "
                        "and copy data.root over") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on `folder` (the directory itself: no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _network_timeout(seconds: float):
    """urllib (which torchvision uses) waits forever on a stalled connection unless sockets time out."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
