"""`--shard INDEX/COUNT`: which part of one logical sample set a process writes.

COUNT processes (a Kubernetes Indexed Job, a SLURM array) write disjoint parts of the same set into
one --out. Image i depends only on (model, seed, i), so the parts together are byte for byte the
set one unsharded run writes.
- png: shard INDEX writes the images i with i % COUNT == INDEX (every shard gets every class).
- npz: an .npz file is written by one process, so shard INDEX writes the whole files k
  (images k x S .. (k+1) x S - 1) with k % COUNT == INDEX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ganaug.errors import UserError

_SPEC = re.compile(r"([0-9]+)/([0-9]+)")
MAX_COUNT = 1 << 20


@dataclass(frozen=True, order=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        assert 0 <= self.index < self.count, self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def image_indices(self, start: int, stop: int) -> np.ndarray:
        """int64 image indices in [start, stop) that this shard writes (png)."""
        first = start + (self.index - start) % self.count
        return np.arange(first, stop, self.count, dtype=np.int64)

    def image_count(self, n: int) -> int:
        """How many of images 0..n-1 this shard writes (png)."""
        return len(range(self.index, n, self.count))

    def owns_file(self, k: int) -> bool:
        """Does this shard write .npz file k?"""
        return k % self.count == self.index


def parse_shard(text: str | None) -> Shard:
    """'3/8' -> Shard(3, 8); None -> the whole set. Anything else is one UserError line."""
    if text is None:
        return Shard()
    match = _SPEC.fullmatch(text.strip())
    if not match:
        raise UserError(f"--shard {text!r} is not INDEX/COUNT (e.g. --shard 3/8, indices 0 .. COUNT-1)")
    index, count = (int(part) if len(part) <= 9 else MAX_COUNT + 1 for part in match.groups())
    if not 1 <= count <= MAX_COUNT:
        raise UserError(f"--shard {text}: COUNT must be 1 .. {MAX_COUNT}, got {match[2]}")
    if index >= count:
        raise UserError(f"--shard {text}: INDEX must be 0 .. {count - 1} (COUNT - 1), got {match[1]}")
    return Shard(index, count)
