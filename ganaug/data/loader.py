"""Per-rank batches with DistributedSampler semantics, resumable mid-epoch.

Every epoch is a permutation seeded by (seed, epoch); rank r takes every world-th index of it
(the tail that does not divide evenly is dropped so all ranks step together), and each rank walks
its shard in batches. The state is (epoch, batch within the epoch), so a resumed run draws the
same batches an uninterrupted one would.

In memory, the whole dataset is one uint8 tensor on the training device and a batch is one index
operation: no per-sample Python on the hot path. Streaming decodes files in DataLoader workers.

A file a worker cannot decode does not raise in the worker (DataLoader would wrap the error in its
own multi-line text): the worker hands back a `_Failed` batch holding the one-line error, and the
training process raises it. A worker that dies (killed by a signal, out of memory) is one line too,
saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch

from ganaug.data import ImageData
from ganaug.errors import UserError, one_line


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
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not (0 <= epoch and 0 <= batch < self.batches_per_epoch):
            raise ValueError(f"data position {epoch}:{batch} is past an epoch of {self.batches_per_epoch} batches")
        self.epoch, self.batch, self._iterator = epoch, batch, None

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
        # A generator of its own: without one, each new iterator draws its workers' base seed from the
        # global RNG, so a run resumed mid-epoch (a new iterator there) would draw other noise after it.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        loader = torch.utils.data.DataLoader(
            _Caught(StreamingImages(self.data, self.skip_bad)), batch_sampler=_Batches(shard.tolist(), self.batch_size),
            num_workers=self.num_workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
            generator=generator, worker_init_fn=_leave_stop_signals_to_the_trainer)
        with _stop_signals_held():
            return iter(loader)  # starts the workers

    def _next_streamed(self):
        if self._iterator is None:
            self._iterator = self._start_epoch_stream()
        try:
            batch = next(self._iterator)
        except RuntimeError as exc:
            self._iterator = None
            died = worker_died(exc, self.num_workers)
            if died is None:
                raise
            raise died from None
        if isinstance(batch, _Failed):
            self._iterator = None
            raise UserError(batch.message)
        images, labels = batch
        self._advance()
        images = images.to(self.device, non_blocking=True)
        labels = None if self.data.labels is None else labels.to(self.device, non_blocking=True)
        return images, labels


def _leave_stop_signals_to_the_trainer(_worker_id: int) -> None:
    """A scheduler's SIGTERM (or a terminal's SIGINT) often reaches the whole process group: a worker
    that died of it would end the run with a dead-worker error before the trainer could save. The
    trainer finishes its step, saves and closes the loader, which stops its workers.

    Yet the trainer's own SIGTERM must still stop a worker: torch sends it to a worker that does not
    leave in time, and Python's exit terminates and then joins every worker still alive (after
    another worker died, say), which would wait forever on one that ignores it. So the worker keeps
    SIGTERM held (as it started, see `_stop_signals_held`) and a thread takes each one, with its
    sender: the trainer's ends the worker, anyone else's is dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender to tell by: leave stopping to the loader
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # ignored now: a held one is dropped
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torch's handler would die of a SIGTERM from anyone
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored now: a held one is dropped
    threading.Thread(target=_end_on_the_trainers_sigterm, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-trainer").start()


def _end_on_the_trainers_sigterm(trainer: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
        pass
    os._exit(0)  # exit status 0: torch's watch over its workers counts any other as a failure


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _stop_signals_held():
    """Hold SIGTERM and SIGINT in this thread while the loader starts its workers. A worker inherits
    the mask, so a signal that reaches the process group before the worker ignores it stays pending
    instead of killing it: torch's worker start installs a SIGTERM handler that dies of it, and only
    then runs worker_init_fn. This process gets its own signal when the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Batches(torch.utils.data.Sampler):
    """Yields one list of indices per batch (a batch_sampler), so a worker decodes a whole batch."""

    def __init__(self, indices: list[int], batch_size: int):
        self.indices, self.batch_size = indices, batch_size

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.indices[start : start + self.batch_size]


def worker_died(exc: BaseException, num_workers: int) -> UserError | None:
    """The one-line error for a DataLoader worker that died (killed by a signal, out of memory); None
    for any other error. torch raises RuntimeError('DataLoader worker (pid N) ...') in the training
    process at its next fetch, or from its SIGCHLD handler wherever that process is at the time."""
    if not isinstance(exc, RuntimeError) or not str(exc).startswith("DataLoader worker"):
        return None
    return UserError(f"data: {one_line(exc).rstrip('. ')} while streaming images from disk; a worker killed by "
                     "the system is most often out of memory (or of shared memory, /dev/shm): set data.num_workers "
                     f"lower than {num_workers} (0: decode in the training process) or give the job more memory, "
                     "then run the same command again to resume from the last checkpoint")


class _Failed:
    """What a worker hands back instead of a batch it could not make: the one-line error."""

    def __init__(self, message: str):
        self.message = message


class _Caught(torch.utils.data.Dataset):
    """A dataset whose unreadable item is a _Failed, not an exception raised in a worker process."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except UserError as exc:
            return _Failed(one_line(exc))


def _collate(items):
    """Stack decoded items; a skipped bad file (None) is replaced by a repeat of a good one."""
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    if failed is not None:
        return failed
    good = [item for item in items if item is not None]
    if not good:
        return _Failed("data: a whole batch of images was unreadable")
    good += [good[i % len(good)] for i in range(len(items) - len(good))]
    images = torch.stack([image for image, _ in good])
    labels = torch.as_tensor([label for _, label in good], dtype=torch.int64)
    return images, labels
