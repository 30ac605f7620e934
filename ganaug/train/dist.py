"""Process group set-up for torchrun and plain runs; knows nothing of GANs.

torchrun is detected by RANK in the environment (as nanoGPT does). CUDA gets nccl and one GPU per
local rank; the CPU gets gloo. One code path serves 1 process and many processes on many nodes.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganaug.torchrun import FRESH_STORE_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs at INFO and writes files."""
        return self.rank == 0


def read_env() -> DistInfo:
    """The ranks torchrun set (or a single process), and the device this rank should use."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank, local_rank, world, local_world, device)


def cpu_threads(requested: int, local_processes: int) -> int:
    """CPU threads for one process: `requested`, or this machine's cores shared among its processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return requested or max(1, cores // local_processes)


def shared_store_warning(environ) -> str | None:
    """Why restarts of this torchrun will fail, if they will: a bare torchrun asked for restarts and
    left torch's store shared between them (ganaug.torchrun says why that fails; `python -m
    ganaug.launch` and every launcher in launch/ give each restart a fresh one)."""
    if int(environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0 and environ.get(FRESH_STORE_ENV) != "1":
        return (f"restarts share torchrun's rendezvous store, so a restart after rank 0 dies fails to connect; "
                f"launch with `python -m ganaug.launch` (same arguments) or set {FRESH_STORE_ENV}=1")
    return None


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    info = read_env()
    warning = shared_store_warning(os.environ)
    if warning and info.is_main:
        log.warning(warning)
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if info.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce that is a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (e.g. a stop signal seen by one of them)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_(value, dist.ReduceOp.MAX).item())


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every rank (a decision only rank 0 can make, that every rank must follow)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def average_floating_buffers_(module: torch.nn.Module) -> None:
    """Make rank-local floating buffers (BatchNorm running statistics) the mean over ranks."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(dist.get_world_size())


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
