"""Quality metrics of generated images against real ones.

FD and KID are torchmetrics' (FrechetInceptionDistance / KernelInceptionDistance with a custom
feature module). Features are computed once per image set and handed to every metric through a
pass-through module, so FD, KID, per-class FD and precision/recall all measure the same vectors
and no image goes through the feature network twice. torchmetrics' own cross-process sync is
switched off: during DDP training only rank 0 computes metrics, and a sync would wait for ranks
that never call it.

Improved precision and recall (Kynkäänniemi et al., 2019) are written here because torchmetrics
has none: each set's manifold is the union of balls around its points reaching their k-th nearest
neighbour; precision is the share of fakes inside the real manifold (fidelity), recall the share
of reals inside the fake manifold (diversity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_K = 3  # neighbourhood size of the P/R paper


class PassThrough(nn.Module):
    """A torchmetrics feature module for features that are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD between two feature sets [N, D] (torchmetrics; statistics accumulated in float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return math.nan
    metric = FrechetInceptionDistance(feature=PassThrough(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(float(metric.compute()), 0.0)  # tiny negative values are rounding of a zero distance


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over random subsets) between two feature sets (torchmetrics, cubic kernel)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return math.nan, math.nan
    metric = KernelInceptionDistance(feature=PassThrough(real.shape[1]), subsets=subsets, subset_size=size,
                                     sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # its subsets come from the global RNG: seed it, leave it as it was
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radius(points: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    k = min(k, len(points) - 1)
    radii = []
    for block in points.split(chunk):
        distances = torch.cdist(block, points)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each query: does any ball (points[j], radii[j]) contain it?"""
    inside = []
    for block in queries.split(chunk):
        inside.append((torch.cdist(block, points) <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K) -> tuple[float, float]:
    """Improved precision and recall of fake features against real ones (float64 distances)."""
    if len(real) < 2 or len(fake) < 2:
        return math.nan, math.nan
    real, fake = real.double(), fake.double()
    precision = _inside_manifold(fake, real, _kth_neighbour_radius(real, k)).double().mean()
    recall = _inside_manifold(real, fake, _kth_neighbour_radius(fake, k)).double().mean()
    return float(precision), float(recall)


def per_class_fd(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
                 num_classes: int) -> list[float]:
    """FD between the real and the generated images of each class (nan where a class has < 2).

    A generator that draws 3s when asked for 8s has a small overall FD (the 3s are fine 3s) but a
    large FD for class 8. With a few hundred images per class the values are biased upwards; compare
    models measured with the same counts.
    """
    return [frechet_distance(real[real_labels == c], fake[fake_labels == c]) for c in range(num_classes)]


def within_class_spread(points: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class: the mean squared distance of its points to their centroid (the trace of the class's
    covariance; nan where a class has < 2 points). How much one class's images vary."""
    spreads = []
    for c in range(num_classes):
        members = points[labels == c].double()
        spreads.append(float((members - members.mean(0)).square().sum(1).mean()) if len(members) >= 2 else math.nan)
    return spreads


def variety_ratio(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
                  num_classes: int) -> tuple[float, list[float]]:
    """How much the generated images of a class vary, relative to the real images of that class:
    within_class_spread(fake) / within_class_spread(real), per class and its mean over classes. 1 is
    the real data's variety; a generator that draws a few typical images per class scores well below 1
    however good each image is (and recall sees it only partly: a few images can sit near many reals)."""
    real_spread = within_class_spread(real, real_labels, num_classes)
    fake_spread = within_class_spread(fake, fake_labels, num_classes)
    ratios = [f / r if r > 0 else math.nan for f, r in zip(fake_spread, real_spread, strict=True)]
    finite = [r for r in ratios if not math.isnan(r)]
    return (sum(finite) / len(finite) if finite else math.nan), ratios


def nearest_neighbours(queries_u8: torch.Tensor, references_u8: torch.Tensor, exclude_self: bool = False,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, the nearest reference image in pixel space and the RMS pixel distance
    (0 = identical, 1 = black vs white). Pixel space because a copy is a copy there, whatever a
    feature network thinks. exclude_self: queries are the references (leave-one-out)."""
    queries = queries_u8.flatten(1).float().div(255.0)
    references = references_u8.flatten(1).float().div(255.0)
    pixels = queries.shape[1]
    indices, distances = [], []
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        d = torch.cdist(block, references)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = math.inf
        nearest = d.min(dim=1).indices
        indices.append(nearest)
        # cdist finds the neighbour through |a|^2 + |b|^2 - 2ab, whose float32 cancellation leaves an
        # exact copy at ~1e-4 on some CPUs' kernels; the distance reported is taken directly.
        distances.append((block - references[nearest]).norm(dim=1) / math.sqrt(pixels))
    return torch.cat(indices), torch.cat(distances)


@dataclass
class Memorisation:
    """How close generated images come to the images the generator was trained on."""

    fake_index: torch.Tensor  # int64 [N_fake]: the nearest training image of each fake
    fake_distance: torch.Tensor  # float [N_fake]: its RMS pixel distance
    baseline_distance: torch.Tensor  # real images the generator never saw (or leave-one-out) -> training set
    baseline: str  # what the baseline is

    def summary(self) -> dict:
        threshold = float(torch.quantile(self.baseline_distance, 0.05))
        fake_median = float(self.fake_distance.median())
        baseline_median = float(self.baseline_distance.median())
        return {
            "baseline": self.baseline,
            "fake_to_train_median": fake_median,
            "baseline_to_train_median": baseline_median,
            "median_ratio": fake_median / baseline_median if baseline_median > 0 else math.nan,
            # 5% of unseen real images are this close to a training image; many more fakes is copying.
            "near_copy_threshold": threshold,
            "near_copy_fraction": float((self.fake_distance < threshold).float().mean()),
            "min_distance": float(self.fake_distance.min()),
        }


def memorisation(fake_u8: torch.Tensor, train_u8: torch.Tensor, unseen_u8: torch.Tensor | None = None) -> Memorisation:
    """Nearest training image of every fake, against the same distance for real images the
    generator did not see (unseen_u8), or leave-one-out within the training set without them."""
    index, distance = nearest_neighbours(fake_u8, train_u8)
    if unseen_u8 is not None and len(unseen_u8):
        _, baseline = nearest_neighbours(unseen_u8, train_u8)
        label = "held-out real images to the training images"
    else:
        _, baseline = nearest_neighbours(train_u8, train_u8, exclude_self=True)
        label = "each real image to the other real images (leave-one-out)"
    return Memorisation(index, distance, baseline, label)


def class_agreement(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class: the share of images a classifier assigns to the class they carry."""
    return [float((predicted[labels == c] == c).float().mean()) if (labels == c).any() else math.nan
            for c in range(num_classes)]


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no NaN: missing values are null."""
    return [None if math.isnan(v) else v for v in values]


def quality_metrics(extractor: nn.Module, real_u8: torch.Tensor, real_labels: torch.Tensor | None,
                    fake_u8: torch.Tensor, fake_labels: torch.Tensor | None, class_names: list[str],
                    train_u8: torch.Tensor | None = None, unseen_u8: torch.Tensor | None = None,
                    k: int = DEFAULT_K, seed: int = 0) -> tuple[dict, Memorisation]:
    """Everything `ganaug evaluate metrics` reports, as a JSON-ready dict, and the memorisation
    details (for the nearest-neighbour grid). train_u8: what the generator was trained on
    (default: real_u8); unseen_u8: real images it never saw (the memorisation baseline)."""
    real_f, fake_f = extractor(real_u8), extractor(fake_u8)
    kid_mean, kid_std = kernel_distance(real_f, fake_f, seed=seed)
    precision, recall = precision_recall(real_f, fake_f, k)
    result = {
        "feature_network": getattr(extractor, "name", type(extractor).__name__),
        "feature_dim": int(real_f.shape[1]),
        "n_real": len(real_u8), "n_fake": len(fake_u8),
        "fd": frechet_distance(real_f, fake_f), "kid_mean": kid_mean, "kid_std": kid_std,
        "precision": precision, "recall": recall, "pr_k": k,
    }
    conditional = real_labels is not None and fake_labels is not None and class_names
    if conditional:
        per_class = per_class_fd(real_f, real_labels, fake_f, fake_labels, len(class_names))
        result["per_class_fd"] = dict(zip(class_names, _finite(per_class), strict=True))
        # Variety in the feature space and in pixel space (where a feature net cannot smooth it over).
        result["variety"], per_class_variety = variety_ratio(real_f, real_labels, fake_f, fake_labels,
                                                             len(class_names))
        result["per_class_variety"] = dict(zip(class_names, _finite(per_class_variety), strict=True))
        result["pixel_variety"], _ = variety_ratio(real_u8.flatten(1).float().div(255), real_labels,
                                                   fake_u8.flatten(1).float().div(255), fake_labels, len(class_names))
        classify = getattr(extractor, "classify", None)  # the domain net is a classifier too
        if classify is not None and extractor.spec.num_classes == len(class_names):
            fake_agree = class_agreement(classify(fake_u8), fake_labels, len(class_names))
            real_agree = class_agreement(classify(real_u8), real_labels, len(class_names))
            result["class_agreement"] = dict(zip(class_names, _finite(fake_agree), strict=True))
            result["class_agreement_real"] = dict(zip(class_names, _finite(real_agree), strict=True))
    memo = memorisation(fake_u8, real_u8 if train_u8 is None else train_u8, unseen_u8)
    result["memorisation"] = memo.summary()
    return result, memo
