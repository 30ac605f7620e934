"""ganaug.data.synthetic: torch Datasets over sampler output and over a model, mixing, the doc recipe."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch
from onnx_models import make_model
from torch.utils.data import ConcatDataset, DataLoader

from ganaug.cli import main
from ganaug.data.synthetic import (
    SyntheticFolder,
    SyntheticModelDataset,
    image_to_tensor,
    mix_by_share,
    mix_datasets,
)
from ganaug.sampler import Sampler

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(model, out, *args) -> int:
    return main(["sample", str(model), "--out", str(out), "--no-progress", *map(str, args)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Class names in non-alphabetical order, so model indices and ImageFolder's indices differ.
    return make_model(
        tmp_path_factory.mktemp("models") / "g.onnx", class_names=["zebra", "ant", "moth"], shape=(6, 6, 3)
    )


@pytest.fixture(scope="module")
def expected(model):
    return Sampler.load(model, provider="cpu").generate(20, seed=3)


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_synthetic_folder_reads_sampler_output(model, expected, tmp_path, fmt):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 20, "--seed", 3, "--format", fmt, "--shard-size", 8) == 0
    dataset = SyntheticFolder(out)
    images, labels = expected
    assert len(dataset) == 20
    assert dataset.classes == ["zebra", "ant", "moth"]
    assert dataset.targets == labels.tolist()  # the model's class indices
    for i in (0, 7, 8, 19):  # across shard boundaries for npz
        image, label = dataset[i]
        assert image.dtype == torch.float32 and image.shape == (3, 6, 6)
        assert torch.equal(image, torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)
        assert label == labels[i]
    if fmt == "npz":
        assert isinstance(dataset._shards[os.path.join(str(out), "shard_00000.npz")], np.memmap)
        restored = pickle.loads(pickle.dumps(dataset))  # what a spawn-started DataLoader worker gets
        assert restored._shards == {} and torch.equal(restored[19][0], dataset[19][0])


def test_synthetic_folder_transform_gets_a_pil_image(model, tmp_path):
    sample(model, tmp_path / "out", "--n", 3)
    seen = []
    dataset = SyntheticFolder(tmp_path / "out", transform=lambda image: seen.append(image.size) or "t")
    assert dataset[0] == ("t", 0) and seen == [(6, 6)]


def test_synthetic_folder_refuses_an_unfinished_set(model, tmp_path, monkeypatch):
    import ganaug.sampler.write as job

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(job._Run, "write_manifest", interrupt)
    assert sample(model, tmp_path / "out", "--n", 3) == 130  # Ctrl-C just before the manifest
    with pytest.raises(ValueError, match="unfinished sample set"):
        SyntheticFolder(tmp_path / "out")


def test_model_dataset_equals_the_sampler_output(model, expected, tmp_path):
    images, labels = expected
    dataset = SyntheticModelDataset(model, n=20, seed=3)
    assert len(dataset) == 20 and dataset.targets == labels.tolist()
    image, label = dataset[5]
    assert torch.equal(image, image_to_tensor(images[5])) and label == labels[5]
    assert torch.equal(dataset[-1][0], image_to_tensor(images[19]))
    # A DataLoader batch goes through __getitems__ (one inference call) and equals item-wise access.
    batch_images, batch_labels = next(iter(DataLoader(dataset, batch_size=20)))
    assert torch.equal(batch_images, torch.stack([image_to_tensor(x) for x in images]))
    assert batch_labels.tolist() == labels.tolist()
    with pytest.raises(IndexError):
        dataset.__getitems__([20])


def test_model_dataset_with_classes_matches_cli_selection(model, tmp_path):
    sample(model, tmp_path / "out", "--n", 6, "--classes", "moth,zebra", "--seed", 1)
    folder = SyntheticFolder(tmp_path / "out")
    dataset = SyntheticModelDataset(model, n=6, seed=1, classes=["moth", "zebra"])
    assert dataset.targets == folder.targets == [0, 2, 0, 2, 0, 2]
    for i in range(6):
        assert torch.equal(dataset[i][0], folder[i][0])


def test_model_dataset_in_worker_processes(model, expected):
    dataset = SyntheticModelDataset(model, n=20, seed=3)
    state = pickle.loads(pickle.dumps(dataset))
    assert state._sampler is None  # sessions do not pickle: each worker loads its own
    images = torch.cat([batch for batch, _ in DataLoader(dataset, batch_size=5, num_workers=2)])
    assert torch.equal(images, torch.stack([image_to_tensor(x) for x in expected[0]]))


def test_mix_datasets_ratio_and_determinism(model):
    real = [(torch.zeros(3, 6, 6), 1)] * 10
    synthetic = SyntheticModelDataset(model, n=20, seed=3)
    mixed = mix_datasets(real, synthetic, ratio=0.6)
    assert isinstance(mixed, ConcatDataset)
    assert len(mixed) == 16  # 10 real + 6 synthetic
    # The synthetic part is its first items: deterministic and class-balanced (i % 3).
    assert [mixed[10 + i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(mixed[15][0], synthetic[5][0])
    assert len(mix_datasets(real, synthetic, ratio=0.0)) == 10
    assert len(mix_datasets(real, synthetic, ratio=2.0)) == 30
    with pytest.raises(ValueError, match="needs 30 synthetic items"):
        mix_datasets(real, synthetic, ratio=3.0)
    with pytest.raises(ValueError):
        mix_datasets(real, synthetic, ratio=-1)
    labels = torch.cat([y for _, y in DataLoader(mixed, batch_size=4, shuffle=True)])
    assert sorted(labels.tolist()) == sorted([1] * 10 + [0, 1, 2, 0, 1, 2])


def test_mix_by_share_draws_the_share_asked_for_from_every_synthetic_image(model):
    real = [(torch.zeros(3, 6, 6), 1)] * 5
    synthetic = SyntheticModelDataset(model, n=20, seed=3)
    mixed, sampler = mix_by_share(real, synthetic, synthetic_fraction=0.25, num_samples=8000,
                                  generator=torch.Generator().manual_seed(0))
    drawn = torch.tensor(list(sampler))
    assert len(drawn) == 8000 and len(mixed) == 25
    synthetic_drawn = drawn[drawn >= 5]
    assert abs(len(synthetic_drawn) / 8000 - 0.25) < 0.02  # the share, not 20 / 25
    assert set(synthetic_drawn.tolist()) == set(range(5, 25))  # all of them, about equally often
    assert torch.bincount(synthetic_drawn - 5).min() > 0.6 * 2000 / 20
    again = list(mix_by_share(real, synthetic, 0.25, 8000, generator=torch.Generator().manual_seed(0))[1])
    assert again == drawn.tolist()
    images, labels = next(iter(DataLoader(mixed, batch_size=16, sampler=sampler)))
    assert images.shape == (16, 3, 6, 6) and labels.dtype == torch.int64
    assert set(mix_by_share(real, synthetic, 0.0, 100)[1]) <= set(range(5))
    with pytest.raises(ValueError, match="synthetic_fraction"):
        mix_by_share(real, synthetic, 1.5, 10)
    with pytest.raises(ValueError, match="cannot draw from 0 real"):
        mix_by_share([], synthetic, 0.5, 10)


def test_doc_recipe_runs(tmp_path, monkeypatch):
    """The code example in docs/sampler.md, run as written (model.onnx and synthetic/ in the cwd)."""
    with open(os.path.join(REPO_ROOT, "docs", "sampler.md"), encoding="utf-8") as f:
        text = f.read()
    recipe = re.search(r"<!-- recipe -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    make_model(tmp_path / "model.onnx", num_classes=3, shape=(8, 8, 1))
    assert sample("model.onnx", "synthetic", "--n", 60) == 0
    namespace: dict = {}
    exec(compile(recipe, "docs/sampler.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert len(namespace["train_set"]) == 45
    assert namespace["steps"] == 3  # ceil(45 / 16) batches seen by the stand-in training step
    assert len(namespace["study_set"]) == 90 and namespace["study_steps"] == 4
