"""Per-rank batches with DistributedSampler semantics, resumable mid-epoch.

Every epoch is a permutation seeded by (seed, epoch); rank r takes every world-th index of it
(the tail that does not divide evenly is dropped so all ranks step together), and each rank walks
its shard in batches. The state is (epoch, batch within the epoch), so a resumed run draws the
same batches an uninterrupted one would.

In memory, the whole dataset is one uint8 tensor on the training device and a batch is one index
operation: no per-sample Python on the hot path. Streaming decodes files in DataLoader workers.
"""

from __future__ import annotations

import torch

from ganaug.data import ImageData
from ganaug.errors import UserError


def epoch_shard(num_items: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    usable = num_items - num_items % world
    return order[rank:usable:world]


class ShardedBatches:
    """An endless stream of (images uint8 [B, C, H, W], labels int64 [B] or None) for one rank."""

    def __init__(self, data: ImageData, batch_size: int, rank: int, world: int, seed: int,
                 device: torch.device, num_workers: int = 0, skip_bad: bool = False):
        shard_size = len(data) // world
        if batch_size > shard_size:
            raise UserError(f"train.batch_size: {batch_size} per process is larger than each process's share "
                            f"of the dataset ({len(data)} images / {world} processes = {shard_size})")
        self.data, self.batch_size, self.rank, self.world, self.seed = data, batch_size, rank, world, seed
        self.device, self.num_workers, self.skip_bad = device, num_workers, skip_bad
        self.batches_per_epoch = shard_size // batch_size
        self.epoch, self.batch = 0, 0
        if data.in_memory:
            self.images = data.images.to(device)
            self.labels = None if data.labels is None else data.labels.to(device)
        self._iterator = None
        self._shard, self._shard_epoch = None, -1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._iterator = None

    def _batch_indices(self) -> torch.Tensor:
        if self._shard_epoch != self.epoch:
            self._shard = epoch_shard(len(self.data), self.seed, self.epoch, self.rank, self.world).to(self.device)
            self._shard_epoch = self.epoch
        shard = self._shard
        start = self.batch * self.batch_size
        return shard[start : start + self.batch_size]

    def _advance(self) -> None:
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.data.in_memory:
            index = self._batch_indices()
            images = self.images.index_select(0, index)
            labels = None if self.labels is None else self.labels.index_select(0, index)
            self._advance()
            return images, labels
        return self._next_streamed()

    # --------------------------------------------------------------------- streaming from disk

    def _start_epoch_stream(self):
        from ganaug.data.folder import StreamingImages

        shard = epoch_shard(len(self.data), self.seed, self.epoch, self.rank, self.world)
        shard = shard[self.batch * self.batch_size : self.batches_per_epoch * self.batch_size]
        loader = torch.utils.data.DataLoader(
            StreamingImages(self.data, self.skip_bad), batch_sampler=_Batches(shard.tolist(), self.batch_size),
            num_workers=self.num_workers, collate_fn=_collate, pin_memory=self.device.type == "cuda")
        return iter(loader)

    def _next_streamed(self):
        if self._iterator is None:
            self._iterator = self._start_epoch_stream()
        images, labels = next(self._iterator)
        self._advance()
        images = images.to(self.device, non_blocking=True)
        labels = None if self.data.labels is None else labels.to(self.device, non_blocking=True)
        return images, labels


class _Batches(torch.utils.data.Sampler):
    """Yields one list of indices per batch (a batch_sampler), so a worker decodes a whole batch."""

    def __init__(self, indices: list[int], batch_size: int):
        self.indices, self.batch_size = indices, batch_size

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.indices[start : start + self.batch_size]


def _collate(items):
    """Stack decoded items; a skipped bad file (None) is replaced by a repeat of a good one."""
    good = [item for item in items if item is not None]
    if not good:
        raise UserError("data: a whole batch of images was unreadable")
    good += [good[i % len(good)] for i in range(len(items) - len(good))]
    images = torch.stack([image for image, _ in good])
    labels = torch.as_tensor([label for _, label in good], dtype=torch.int64)
    return images, labels
