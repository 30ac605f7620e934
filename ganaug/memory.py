"""How much memory this process may still take, and the check made before allocating N images.

numpy and torch fail on an allocation beyond the machine with a traceback, or worse, succeed (the
kernel overcommits) and the process is killed later. Counts that allocate N x image bytes are
checked against `available_memory()` first, and refused in one line naming the way out.
Torch-free on purpose.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from ganaug.errors import UserError


def available_memory() -> int | None:
    """Bytes this process may still take: the kernel's MemAvailable, within a container's cgroup
    limit and this process's address-space limit (ulimit -v); None where none of them is known."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    with contextlib.suppress(OSError, ValueError, IndexError, ImportError):
        import resource  # POSIX only

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            found.append(limit - mapped)
    if not found:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    return max(min(found), 0) if found else None


def check_fits(count: int, bytes_each: int, what: str, advice: Callable[[int], str], error=UserError) -> None:
    """Refuse `count` items of `bytes_each` bytes that do not fit in the memory available, before they
    are allocated: `what` needs about X GiB ...; advice(the largest count that fits) says what to do."""
    memory = available_memory()
    if memory is None or count * bytes_each <= memory:
        return
    raise error(f"{what} needs about {size(count * bytes_each)} of memory and {size(memory)} are available here; "
                f"{advice(memory // max(bytes_each, 1))}")


def size(count: float) -> str:
    """Bytes for people: '64 bytes', '48.0 KiB', '28.0 MiB', '1.5 GiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TiB"
