"""The unlabelled images: in memory when they fit, else decoded from disk a chunk at a time.

A data source too large for memory (an image folder above data.max_memory_mb) arrives as a list of
files (`ImageData.files`); `chunks` decodes only the images asked for, so pseudo-labelling millions
of images holds one chunk at a time. `--shard I/N` takes the images i with i % N == I.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.data import ImageData, load_dataset

CHUNK = 512  # images decoded and classified at a time


class UnlabelledPool:
    def __init__(self, data: ImageData):
        self.data = data

    @classmethod
    def load(cls, source: str, labelled: DataConfig, channels: int) -> UnlabelledPool:
        cfg = dataclasses.replace(labelled, source=source, channels=channels, in_memory=None)
        return cls(load_dataset(cfg, key="--unlabelled", labels_used=False))

    def __len__(self) -> int:
        return len(self.data)

    def origin(self, index: int) -> str:
        """Where image `index` came from, for the manifest: its file, or its row in the source."""
        return str(self.data.files[index]) if self.data.files is not None else str(index)

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [len(indices), C, H, W]."""
        if self.data.in_memory:
            return self.data.images[torch.as_tensor(indices, dtype=torch.int64)]
        from ganaug.data.convert import pil_to_array
        from ganaug.data.folder import open_image

        return torch.from_numpy(np.stack([pil_to_array(open_image(self.data.files[i]), self.data.channels,
                                                       self.data.resolution) for i in indices]))

    def chunks(self, indices: np.ndarray, size: int = CHUNK) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for start in range(0, len(indices), size):
            part = indices[start:start + size]
            yield part, self.images(part)

    def subsample(self, count: int, seed: int) -> np.ndarray:
        """At most `count` indices, seeded and sorted: the images the estimate pseudo-labels."""
        if count >= len(self):
            return np.arange(len(self))
        return np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
