"""In-training metrics: FD and KID every `log.metric_every` steps, and the best checkpoint by FD.

The trainer calls `log_training_metrics(trainer)` on every rank. Rank 0 generates
`log.metric_samples` images from the EMA generator (fixed latents and class-balanced labels, so
values are comparable across steps and resumes), measures them against a fixed sample of the real
data in the space of the run's feature network (trained once, cached in RUN/features/), and logs
`metrics/fd` and `metrics/kid`. It then broadcasts whether the FD is a new best, so every rank
takes the same path: writing `checkpoints/best.pt` needs `trainer.state_dict()`, a collective call.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

from ganaug.evaluate.features import FeatureExtractor, load_or_train_domain_features
from ganaug.evaluate.metrics import frechet_distance, kernel_distance
from ganaug.files import write_atomic

log = logging.getLogger(__name__)

REFERENCE_LIMIT = 20_000  # real images the feature net trains on (a seeded subset beyond this)
STREAMED_REFERENCE_LIMIT = 2_000  # fewer when every image must be decoded from disk
LIVE_KID_SUBSETS = 20  # fewer than torchmetrics' 100: a trend line, measured every few hundred steps
NOISE_SEED = 20_251  # the fixed latents of the metric sample, apart from training's random stream


class LiveMetrics:
    """What one run needs between calls: the feature net, the real features and the best FD so far."""

    def __init__(self, extractor: FeatureExtractor, real_features: torch.Tensor, best_fd: float):
        self.extractor, self.real_features, self.best_fd = extractor, real_features, best_fd


_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # trainer -> LiveMetrics (rank 0 only)


def best_paths(run_dir: Path) -> tuple[Path, Path]:
    folder = Path(run_dir) / "checkpoints"
    return folder / "best.pt", folder / "best.json"


def read_best_fd(run_dir: Path) -> float:
    """The FD of the existing best.pt, so a resumed run only replaces it with a better one."""
    best_pt, best_json = best_paths(run_dir)
    if not (best_pt.is_file() and best_json.is_file()):
        return math.inf
    try:
        return float(json.loads(best_json.read_text())["fd"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; the next measurement becomes the best", best_json)
        return math.inf


def _reference_images(data, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def _setup(trainer) -> LiveMetrics:
    cfg = trainer.cfg
    images, labels = _reference_images(trainer.batches.data, cfg.train.seed)
    num_classes = trainer.batches.data.num_classes
    extractor = load_or_train_domain_features(images, labels, num_classes, trainer.run_dir / "features",
                                              seed=cfg.train.seed)
    n_real = min(cfg.log.metric_samples, len(images))
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.train.seed + 1))[:n_real]
    real_features = extractor(images.index_select(0, pick))
    return LiveMetrics(extractor, real_features, read_best_fd(trainer.run_dir))


@torch.no_grad()
def generate_metric_sample(trainer, n: int) -> torch.Tensor:
    """n images (uint8 [n, C, H, W]) from the EMA generator: fixed latents, class-balanced labels."""
    spec = trainer.spec
    noise = torch.Generator(device=trainer.device).manual_seed(NOISE_SEED + trainer.cfg.train.seed)
    trainer.refresh_ema_statistics()
    generator = trainer.ema.module if trainer.ema else trainer.G
    was_training = generator.training
    generator.eval()
    out = []
    for start in range(0, n, 512):
        count = min(512, n - start)
        z = torch.randn(count, spec.z_dim, generator=noise, device=trainer.device)
        labels = (torch.arange(start, start + count, device=trainer.device) % spec.num_classes
                  if spec.num_classes else None)
        with trainer.precision.autocast():
            images = generator(z, labels)
        out.append(images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    generator.train(was_training)
    return torch.cat(out)


def _measure(trainer) -> tuple[float, float]:
    # Building and training the feature net draws from the global RNG; fork it so that training's
    # random stream is the same with metrics on or off, and after a resume (which reads the cache).
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _measure_unseeded(trainer)


def _measure_unseeded(trainer) -> tuple[float, float]:
    state = _STATE.get(trainer)
    if state is None:
        state = _STATE[trainer] = _setup(trainer)
    fake = generate_metric_sample(trainer, trainer.cfg.log.metric_samples)
    fake_features = state.extractor(fake)
    fd = frechet_distance(state.real_features, fake_features)
    kid, _ = kernel_distance(state.real_features, fake_features, subsets=LIVE_KID_SUBSETS, seed=trainer.step)
    return fd, kid


def _broadcast_from_main(value: float, device: torch.device) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def log_training_metrics(trainer) -> None:
    """Measure, log and keep the best checkpoint. Called on every rank; collective."""
    from ganaug.train import checkpoint
    from ganaug.train.dist import average_floating_buffers_, barrier

    fd = kid = math.nan
    if trainer.info.is_main:
        fd, kid = _measure(trainer)
        trainer.tb.scalar("metrics/fd", fd, trainer.step)
        trainer.tb.scalar("metrics/kid", kid, trainer.step)
        trainer.tb.flush()
        log.info("step %d: FD %.3f, KID %.5f (%d generated vs %d real images)", trainer.step, fd, kid,
                 trainer.cfg.log.metric_samples, len(_STATE[trainer].real_features))
    is_best = trainer.info.is_main and fd < _STATE[trainer].best_fd
    is_best = _broadcast_from_main(float(is_best), trainer.device) > 0.5  # every rank must take the same path
    if not is_best:
        return
    # As Trainer.save does: rank-averaged BatchNorm statistics, EMA statistics refreshed (on rank 0,
    # by the measurement above), then the collective state_dict().
    average_floating_buffers_(trainer.G)
    state = trainer.state_dict()
    if trainer.info.is_main:
        state["metrics"] = {"fd": fd, "kid": kid, "step": trainer.step}
        best_pt, best_json = best_paths(trainer.run_dir)
        checkpoint.save_atomic(state, best_pt)
        write_atomic(best_json, json.dumps(state["metrics"], indent=2))
        _STATE[trainer].best_fd = fd
        log.info("step %d: new best FD %.3f -> %s", trainer.step, fd, best_pt)
    barrier()
