"""Counter-based latents: the z of image i is a pure function of (seed, i).

Indices are grouped in fixed blocks of BLOCK_SIZE. Block b of a seed is drawn from its own
Philox stream keyed by (seed, b), always whole and always in the same order, so any index range
costs at most two extra partial blocks, and the values never depend on batch size, on which
indices were generated before, or on how a run was interrupted.
"""

from __future__ import annotations

import numpy as np

BLOCK_SIZE = 1024
# Recorded in sample_info.json: changing the scheme changes every image, so resume must notice.
SCHEME = "philox-block1024-float32-v1"
# Redrawing values beyond +-t needs about 1 / P(|x| < t) rounds; below this it would crawl.
MIN_TRUNCATION = 0.01


def seed_key(seed: int) -> int:
    """Seeds are taken modulo 2**64 so any Python int (also a negative one) names one stream."""
    return seed % 2**64


def latent_block(seed: int, block: int, z_dim: int, truncation: float = 0.0) -> np.ndarray:
    """All BLOCK_SIZE latents of one block, float32 [BLOCK_SIZE, z_dim]."""
    if block < 0:
        raise ValueError(f"block must be non-negative, got {block}")
    generator = np.random.Generator(np.random.Philox(key=(block << 64) | seed_key(seed)))
    z = generator.standard_normal((BLOCK_SIZE, z_dim), dtype=np.float32)
    if truncation > 0:
        # Redraw rather than clip, so values stay normally distributed inside [-t, t]. The redraws
        # continue the same stream in the same order, so the block stays a function of (seed, block).
        outside = np.abs(z) > truncation
        while outside.any():
            z[outside] = generator.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(z) > truncation
    return z


class LatentSource:
    """Latents for arbitrary index arrays of one (seed, z_dim, truncation), with the last blocks cached."""

    def __init__(self, seed: int, z_dim: int, truncation: float = 0.0, cached_blocks: int = 4):
        if truncation < 0 or 0 < truncation < MIN_TRUNCATION:
            raise ValueError(f"truncation must be 0 (off) or at least {MIN_TRUNCATION}, got {truncation}")
        self.seed = seed
        self.z_dim = z_dim
        self.truncation = truncation
        self._cached_blocks = cached_blocks
        self._cache: dict[int, np.ndarray] = {}

    def _block(self, block: int) -> np.ndarray:
        z = self._cache.get(block)
        if z is None:
            z = latent_block(self.seed, block, self.z_dim, self.truncation)
            if len(self._cache) >= self._cached_blocks:
                self._cache.pop(next(iter(self._cache)))  # oldest first: runs move forward
            self._cache[block] = z
        return z

    def latents(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), z_dim]; row k is the latent of image indices[k]."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and indices.min() < 0:
            raise ValueError("image indices must be non-negative")
        out = np.empty((len(indices), self.z_dim), dtype=np.float32)
        blocks = indices // BLOCK_SIZE
        for block in np.unique(blocks):
            rows = blocks == block
            out[rows] = self._block(int(block))[indices[rows] % BLOCK_SIZE]
        return out
