"""In-training metrics: `LiveMetrics(data, ...).measure(images) -> {"fd", "kid"}`.

The trainer owns one (on rank 0) and hands it a fixed, class-balanced sample of its EMA
generator every `log.metric_every` steps. The real side is a fixed sample of the training data in
the space of the run's feature network, trained once and cached in RUN/features/. Everything here
draws from its own random streams, so a run trains to the same weights with metrics on or off.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ganaug.evaluate.features import load_or_train_domain_features
from ganaug.evaluate.metrics import frechet_distance, kernel_distance

log = logging.getLogger(__name__)

REFERENCE_LIMIT = 20_000  # real images the feature net trains on (a seeded subset beyond this)
STREAMED_REFERENCE_LIMIT = 2_000  # fewer when every image must be decoded from disk
LIVE_KID_SUBSETS = 20  # fewer than torchmetrics' 100: a trend line, measured every few hundred steps


def reference_images(data, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The real images the feature net and the FD's real side use: all of them, or a seeded subset."""
    generator = torch.Generator().manual_seed(seed)
    if data.in_memory:
        index = torch.randperm(len(data), generator=generator)[:REFERENCE_LIMIT].sort().values
        images = data.images.index_select(0, index.to(data.images.device)).cpu()
        labels = None if data.labels is None else data.labels.index_select(0, index.to(data.labels.device)).cpu()
        return images, labels
    from ganaug.data.folder import StreamingImages

    items = StreamingImages(data, skip_bad=True)
    index = torch.randperm(len(data), generator=generator)[:STREAMED_REFERENCE_LIMIT].sort().values.tolist()
    decoded = [item for item in (items[i] for i in index) if item is not None]
    images = torch.stack([image for image, _ in decoded])
    labels = None if data.labels is None else torch.as_tensor([label for _, label in decoded], dtype=torch.int64)
    return images, labels


class LiveMetrics:
    """FD and KID of generated images against a fixed sample of the real data (set up on first use)."""

    def __init__(self, data, cache_dir: Path, samples: int, seed: int):
        self.data, self.cache_dir, self.samples, self.seed = data, Path(cache_dir), samples, seed
        self.extractor = self.real_features = None

    def _setup(self) -> None:
        images, labels = reference_images(self.data, self.seed)
        self.extractor = load_or_train_domain_features(images, labels, self.data.num_classes, self.cache_dir,
                                                       seed=self.seed)
        n_real = min(self.samples, len(images))
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed + 1))[:n_real]
        self.real_features = self.extractor(images.index_select(0, pick))

    def measure(self, images_u8: torch.Tensor, kid_seed: int = 0) -> dict[str, float]:
        """FD and KID of uint8 [N, C, H, W] images against the real sample."""
        # Training the feature net draws from the global RNG: fork it, so the training stream is the
        # same with metrics on or off, and after a resume (which reads the cached net instead).
        with torch.random.fork_rng(devices=[]):
            if self.extractor is None:
                self._setup()
            fake_features = self.extractor(images_u8.cpu())
            fd = frechet_distance(self.real_features, fake_features)
            kid, _ = kernel_distance(self.real_features, fake_features, subsets=LIVE_KID_SUBSETS, seed=kid_seed)
        log.info("FD %.3f, KID %.5f (%d generated vs %d real images)", fd, kid, len(images_u8),
                 len(self.real_features))
        return {"fd": fd, "kid": kid}
