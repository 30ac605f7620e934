"""Metric sanity on controlled inputs: FD, KID, precision/recall, per-class FD, nearest neighbours."""

from __future__ import annotations

import math

import pytest
import torch

from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.evaluate import features
from ganaug.evaluate.metrics import (
    frechet_distance,
    kernel_distance,
    memorisation,
    nearest_neighbours,
    per_class_fd,
    precision_recall,
    quality_metrics,
    variety_ratio,
    within_class_spread,
)


def gaussian(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def modes(per_mode: int, mode_ids: list[int], seed: int, dim: int = 2) -> torch.Tensor:
    """Unit-variance clusters around ten centres 30 apart on a line (no ball reaches another mode)."""
    centres = torch.zeros(10, dim, dtype=torch.float64)
    centres[:, 0] = torch.arange(10, dtype=torch.float64) * 30
    noise = torch.randn(per_mode * len(mode_ids), dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return centres[torch.tensor(mode_ids)].repeat_interleave(per_mode, 0) + noise


# ------------------------------------------------------------------------------ FD and KID


def test_fd_of_a_set_with_itself_is_zero():
    x = gaussian(500, 16, seed=0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fd_grows_as_the_square_of_a_known_shift():
    # A mean shift of s in every one of D dimensions adds exactly s^2 * D (covariances unchanged).
    x = gaussian(500, 16, seed=0)
    values = [frechet_distance(x, x + s) for s in (0.25, 0.5, 1.0, 2.0)]
    assert values == pytest.approx([s * s * 16 for s in (0.25, 0.5, 1.0, 2.0)], rel=1e-4)
    assert values == sorted(values)


def test_fd_of_two_samples_of_one_distribution_is_small_next_to_a_shift():
    a, b = gaussian(2000, 8, seed=1), gaussian(2000, 8, seed=2)
    assert frechet_distance(a, b) < 0.1 * frechet_distance(a, b + 0.5)


def test_export_and_evaluate_compute_the_same_fd():
    """Export's parity check keeps its own scipy FD (torchmetrics' import pulls in torchvision and its
    audio metrics: seconds on every `ganaug export`); both implement one formula, pinned here."""
    from ganaug.export.distance import frechet_distance as export_fd

    a, b = gaussian(300, 17, seed=4), gaussian(300, 17, seed=5) * 1.5 + 0.3
    for x, y in ((a, a), (a, b), (a, a + 2.0)):
        assert export_fd(x.double().numpy(), y.double().numpy()) == pytest.approx(frechet_distance(x, y),
                                                                                   rel=1e-6, abs=1e-6)


def test_kid_of_identical_sets_is_about_zero_and_grows_with_a_shift():
    x, y = gaussian(600, 16, seed=0), gaussian(600, 16, seed=3)
    same_set, _ = kernel_distance(x, x, subset_size=300)
    same_distribution, spread = kernel_distance(x, y, subset_size=300)
    shifted, _ = kernel_distance(x, x + 1.0, subset_size=300)
    assert shifted > 1.0
    # Identical sets: only the estimator's finite-sample terms remain.
    assert abs(same_set) < 0.02 * shifted
    assert abs(same_distribution) < 0.02 * shifted


def test_kid_is_seeded_and_leaves_the_global_rng_alone():
    x, y = gaussian(300, 8, seed=0), gaussian(300, 8, seed=1, shift=0.3)
    before = torch.get_rng_state()
    first = kernel_distance(x, y, subset_size=100, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert kernel_distance(x, y, subset_size=100, seed=5) == first


# ------------------------------------------------------------------------------ precision / recall


def test_precision_recall_of_identical_sets_is_one():
    x = modes(200, list(range(10)), seed=0)
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_of_a_second_sample_is_close_to_one():
    precision, recall = precision_recall(modes(300, list(range(10)), seed=0), modes(300, list(range(10)), seed=1))
    assert precision > 0.95 and recall > 0.95


def test_fake_covering_half_the_modes_has_recall_one_half_and_full_precision():
    real = modes(300, list(range(10)), seed=0)
    fake = modes(600, list(range(5)), seed=1)  # as many images, all in modes 0..4
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert recall == pytest.approx(0.5, abs=0.05)


def test_fake_off_the_real_manifold_has_low_precision():
    real = modes(300, list(range(5)), seed=0)
    fake = torch.cat([modes(150, list(range(5)), seed=1), modes(150, list(range(5, 10)), seed=2)])
    precision, recall = precision_recall(real, fake)
    assert precision == pytest.approx(0.5, abs=0.05)
    assert recall > 0.9


# ------------------------------------------------------------------------------ per class, on real digits


@pytest.fixture(scope="module")
def digits_features(tmp_path_factory):
    """The digits at 16x16, split in two halves, and a (briefly trained) domain feature net."""
    data = load_dataset(DataConfig(resolution=16))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    a, b = order[: len(order) // 2], order[len(order) // 2:]
    steps = features.FEATURE_NET_STEPS
    features.FEATURE_NET_STEPS = 120  # enough to separate digits; the test is about the metrics
    try:
        extractor = features.load_or_train_domain_features(data.images[a], data.labels[a], 10,
                                                           tmp_path_factory.mktemp("features"))
    finally:
        features.FEATURE_NET_STEPS = steps
    return data, a, b, extractor


def test_per_class_fd_catches_a_generator_that_swaps_two_classes(digits_features):
    data, a, b, extractor = digits_features
    real_f, real_y = extractor(data.images[a]), data.labels[a]
    fake_f, fake_y = extractor(data.images[b]), data.labels[b].clone()
    honest = per_class_fd(real_f, real_y, fake_f, fake_y, 10)
    swapped_y = fake_y.clone()
    swapped_y[fake_y == 3], swapped_y[fake_y == 8] = 8, 3  # "draws 3s when asked for 8s" and vice versa
    swapped = per_class_fd(real_f, real_y, fake_f, swapped_y, 10)
    worst_honest = max(honest)
    assert swapped[3] > 3 * worst_honest and swapped[8] > 3 * worst_honest
    for c in set(range(10)) - {3, 8}:
        assert swapped[c] == pytest.approx(honest[c])
    # The overall FD cannot see it: the images are the same.
    assert frechet_distance(real_f, fake_f) == pytest.approx(frechet_distance(real_f, extractor(data.images[b])))


def test_within_class_spread_is_the_trace_of_each_class_covariance():
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 9.0], [7.0, 7.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    spread = within_class_spread(points, labels, 4)
    # class 0: both points 1 from their centroid; class 1: both 2 away; a class of one or none: nan
    assert spread[:2] == pytest.approx([1.0, 4.0]) and math.isnan(spread[2]) and math.isnan(spread[3])


def test_variety_ratio_sees_a_generator_that_shrinks_each_class_toward_its_mean():
    real = modes(200, list(range(10)), seed=0)
    labels = torch.arange(10).repeat_interleave(200)
    centres = torch.stack([real[labels == c].mean(0) for c in range(10)])
    half = centres[labels] + 0.5 * (real - centres[labels])  # every image halfway to its class mean
    mean, per_class = variety_ratio(real, labels, half, labels, 10)
    assert mean == pytest.approx(0.25) and per_class == pytest.approx([0.25] * 10)  # spread is squared
    honest, _ = variety_ratio(real, labels, modes(200, list(range(10)), seed=1), labels, 10)
    assert honest == pytest.approx(1.0, abs=0.15)
    # recall sees only part of it: a quarter of the variety still reaches most real points
    precision, recall = precision_recall(real, half)
    assert precision > 0.95 and recall > 0.6


def test_quality_metrics_report_on_real_digits(digits_features):
    data, a, b, extractor = digits_features
    names = data.class_names
    fake_y = data.labels[b].clone()
    fake_y[data.labels[b] == 3], fake_y[data.labels[b] == 8] = 8, 3
    result, memo = quality_metrics(extractor, data.images[a], data.labels[a], data.images[b], fake_y, names)
    assert set(result) >= {"fd", "kid_mean", "kid_std", "precision", "recall", "per_class_fd",
                           "class_agreement", "class_agreement_real", "memorisation", "feature_dim",
                           "variety", "per_class_variety", "pixel_variety"}
    # Two random halves of one dataset vary alike; the swap of 3 and 8 makes those two classes differ.
    assert 0.8 < result["pixel_variety"] < 1.25 and 0.8 < result["per_class_variety"]["0"] < 1.25
    assert result["feature_dim"] == extractor.num_features
    assert result["precision"] > 0.5 and result["recall"] > 0.5  # two halves of one dataset
    # The feature net's own classifier sees that the "8"s are 3s.
    assert result["class_agreement"]["8"] < 0.2 and result["class_agreement"]["3"] < 0.2
    assert result["class_agreement"]["0"] > 0.8
    assert min(result["class_agreement_real"].values()) > 0.8
    assert len(memo.fake_index) == len(b)


def test_the_extractor_follows_the_torchmetrics_feature_contract(digits_features):
    """FrechetInceptionDistance(feature=extractor) takes uint8 images (or floats in [0, 1] with
    normalize=True) and gives the FD our precomputed-feature path gives."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    data, a, b, extractor = digits_features
    expected = frechet_distance(extractor(data.images[a]), extractor(data.images[b]))
    for normalize, convert in ((False, lambda x: x), (True, lambda x: x.float() / 255)):
        metric = FrechetInceptionDistance(feature=extractor, normalize=normalize)
        metric.update(convert(data.images[a]), real=True)
        metric.update(convert(data.images[b]), real=False)
        assert float(metric.compute()) == pytest.approx(expected, rel=1e-3)


# ------------------------------------------------------------------------------ memorisation


def test_nearest_neighbours_find_copies_at_distance_zero():
    train = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pick = torch.tensor([7, 3, 41])
    index, distance = nearest_neighbours(train[pick], train)
    assert index.tolist() == pick.tolist()
    assert distance.tolist() == [0.0, 0.0, 0.0]
    index, distance = nearest_neighbours(train, train, exclude_self=True)
    assert (index != torch.arange(50)).all() and (distance > 0).all()
    black, white = torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    assert float(nearest_neighbours(black, white)[1]) == pytest.approx(1.0)  # RMS pixel distance


def test_memorisation_flags_a_generator_that_copies():
    data = load_dataset(DataConfig(resolution=8))
    train, unseen = data.images[:300], data.images[300:600]
    copier = memorisation(train[:100], train, unseen).summary()
    assert copier["near_copy_fraction"] == 1.0 and copier["min_distance"] == 0.0
    assert copier["median_ratio"] == 0.0
    honest = memorisation(data.images[600:900], train, unseen).summary()
    assert honest["near_copy_fraction"] < 0.2
    assert 0.7 < honest["median_ratio"] < 1.3
    assert not math.isnan(memorisation(train[:10], train).summary()["median_ratio"])  # leave-one-out baseline
