"""The feature network: deterministic training, the cache, and `--features` alternatives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.errors import UserError
from ganaug.evaluate import features
from ganaug.evaluate.policies import random_affine


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DataConfig(resolution=16))
    return data.images[:400], data.labels[:400]


@pytest.fixture
def short_training(monkeypatch):
    monkeypatch.setattr(features, "FEATURE_NET_STEPS", 25)


def test_retraining_with_the_same_seed_gives_identical_weights(digits, short_training, tmp_path):
    images, labels = digits
    first = features.load_or_train_domain_features(images, labels, 10, tmp_path / "a")
    second = features.load_or_train_domain_features(images, labels, 10, tmp_path / "b")
    for (name, x), (_, y) in zip(first.net.state_dict().items(), second.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    other_seed = features.load_or_train_domain_features(images, labels, 10, tmp_path / "c", seed=1)
    assert not torch.equal(first(images[:8]), other_seed(images[:8]))


def test_the_feature_net_is_trained_once_then_read_from_the_cache(digits, short_training, tmp_path, monkeypatch):
    images, labels = digits
    trained = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    assert len(list(tmp_path.glob("feature_net_*.pt"))) == 1

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached feature net was trained again")

    train = features.train_feature_net
    monkeypatch.setattr(features, "train_feature_net", must_not_train)
    cached = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    assert torch.equal(trained(images[:32]), cached(images[:32]))
    monkeypatch.setattr(features, "train_feature_net", train)
    # Other data is another key, hence another net.
    features.load_or_train_domain_features(images[:200], labels[:200], 10, tmp_path)
    assert len(list(tmp_path.glob("feature_net_*.pt"))) == 2


def test_a_corrupt_cached_feature_net_is_trained_again_with_a_warning(digits, short_training, tmp_path, caplog):
    images, labels = digits
    trained = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    (cached,) = tmp_path.glob("feature_net_*.pt")
    cached.write_bytes(cached.read_bytes()[:200])  # cut off, as by a full disk in another tool
    again = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    assert "training the feature network again" in caplog.text
    assert torch.equal(trained(images[:16]), again(images[:16]))  # the same seed, the same net
    assert torch.load(cached, weights_only=True)["format"] == features.FEATURE_NET_FORMAT  # rewritten whole


def test_the_extractor_takes_uint8_or_unit_floats_and_other_sizes(digits, short_training, tmp_path):
    images, labels = digits
    extractor = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    as_uint8 = extractor(images[:16])
    assert as_uint8.shape == (16, extractor.num_features) and as_uint8.dtype == torch.float32
    assert torch.allclose(extractor(images[:16].float() / 255), as_uint8, atol=1e-5)
    assert extractor(torch.nn.functional.interpolate(images[:4].float() / 255, size=32)).shape == (4, 64)
    assert extractor(images[:4].expand(-1, 3, -1, -1)).shape == (4, 64)  # RGB in, luma used


def test_the_trained_net_classifies_the_digits(digits, tmp_path):
    images, labels = digits
    extractor = features.load_or_train_domain_features(images, labels, 10, tmp_path)  # the real step count
    assert (extractor.classify(images) == labels).float().mean() > 0.9


def test_unlabelled_data_gets_a_seeded_random_network(digits, tmp_path):
    images, _ = digits
    a = features.load_or_train_domain_features(images, None, 0, tmp_path / "a")
    b = features.load_or_train_domain_features(images, None, 0, tmp_path / "b")
    assert torch.equal(a(images[:8]), b(images[:8]))


# ------------------------------------------------------------------------------ --features PATH


class TinyFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def test_a_torchscript_feature_network(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    extractor = features.load_features(str(path), 1, 16)
    assert extractor.num_features == 2
    out = extractor(images[:5])
    assert torch.allclose(out[:, 0], images[:5].float().div(255).mean(dim=(1, 2, 3)))


def test_a_ganaug_feature_net_file(tmp_path, digits, short_training):
    images, labels = digits
    extractor = features.load_or_train_domain_features(images, labels, 10, tmp_path)
    path = next(tmp_path.glob("feature_net_*.pt"))
    loaded = features.load_features(str(path), 1, 16)
    assert torch.equal(loaded(images[:8]), extractor(images[:8]))


def test_a_torchvision_architecture_with_its_state_dict(tmp_path, digits):
    import torchvision

    images, _ = digits
    path = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    extractor = features.load_features(f"resnet18:{path}", 1, 16)
    assert extractor.num_features == 512
    assert extractor(images[:2]).shape == (2, 512)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "is not a file"),
    (lambda p: (p.write_text("not a model"), p)[1], "is not a PyTorch checkpoint"),
    (lambda p: (torch.save({"w": torch.zeros(2)}, p), p)[1], "neither a ganaug feature net nor a TorchScript"),
])
def test_bad_feature_files_are_one_clear_error(tmp_path, make, message):
    path = make(tmp_path / "features.pt")
    with pytest.raises(UserError, match=message):
        features.load_features(str(path), 1, 16)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(UserError, match="not a torchvision model"):
        features.load_features(f"no_such_net:{path}", 1, 16)
    with pytest.raises(UserError, match="not a state dict for torchvision's resnet18"):
        features.load_features(f"resnet18:{path}", 1, 16)


def test_classical_augmentation_is_a_random_but_seeded_warp(digits):
    images, _ = digits
    x = images[:32].float() / 255
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
    # A small warp: the ink moves, but most of it stays.
    assert (a.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))).mean() == pytest.approx(1.0, abs=0.2)
