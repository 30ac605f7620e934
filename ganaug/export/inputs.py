"""Random generator inputs (latents and labels), the same for PyTorch and onnxruntime."""

from __future__ import annotations

import numpy as np

from ganaug.models import ModelSpec


def random_inputs(spec: ModelSpec, n: int, seed: int) -> dict[str, np.ndarray]:
    """ONNX feeds for n images: z ~ N(0, 1) float32 [n, z_dim] and, when conditional, uniform labels int64 [n]."""
    rng = np.random.default_rng(seed)
    feeds = {"z": rng.standard_normal((n, spec.z_dim), dtype=np.float32)}
    if spec.num_classes:
        feeds["labels"] = rng.integers(0, spec.num_classes, n, dtype=np.int64)
    return feeds
