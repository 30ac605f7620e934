"""How far apart two sets of generated images are: pixel errors and a Fréchet distance (torch-free).

Units are grey levels (one step of the 0..255 output); the Fréchet distance is in grey levels^2,
on a simple feature per image: the image averaged down to a 4x4 grid per channel, plus each
channel's standard deviation. A uniform shift of s grey levels on a one-channel image adds 16 s^2.
It catches what a pixel error hides: a systematic change of the distribution (brightness,
contrast, layout), where quantisation noise averages out.
"""

from __future__ import annotations

import numpy as np

FEATURE_GRID = 4


def image_features(grey: np.ndarray) -> np.ndarray:
    """[N, C, H, W] images in grey levels -> [N, C * 17] features."""
    grey = grey.astype(np.float64)
    rows = np.array_split(grey, FEATURE_GRID, axis=2)  # array_split: any size, not only multiples of 4
    blocks = [block.mean(axis=(2, 3)) for row in rows for block in np.array_split(row, FEATURE_GRID, axis=3)]
    return np.concatenate([*blocks, grey.std(axis=(2, 3))], axis=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D]. evaluate's FD is
    torchmetrics'; export keeps these lines because importing torchmetrics (torchvision, its audio
    metrics) adds seconds to every export. tests/test_evaluate_metrics.py pins the two equal."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(covmean)))
    return max(distance, 0.0)  # tiny negative values are rounding when the sets are identical


def image_distance(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """max_error, mean_error and fd between paired image sets [N, C, H, W] in grey levels."""
    if not np.isfinite(candidate).all():  # e.g. float16 overflow: infinitely far, not a crash
        return {"max_error": float("inf"), "mean_error": float("inf"), "fd": float("inf")}
    error = np.abs(candidate.astype(np.float64) - reference)
    return {"max_error": float(error.max()), "mean_error": float(error.mean()),
            "fd": frechet_distance(image_features(reference), image_features(candidate))}
