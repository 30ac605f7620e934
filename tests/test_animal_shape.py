"""data.source=animal_shape: the 10,000 animal silhouettes inside the animal-shape-mnist wheel, read
offline through an unpickler that builds numpy arrays and nothing else."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch

import ganaug.data.animal_shape as animal_shape
from ganaug.cli import preflight
from ganaug.config import DataConfig
from ganaug.data import DataError, load_dataset
from ganaug.errors import UserError

# The dev extra installs animal-shape-mnist; without it only the tests that need no real file run.
needs_package = pytest.mark.skipif(importlib.util.find_spec("animal_shape_mnist") is None,
                                   reason="animal-shape-mnist not installed")


@needs_package
def test_loads_all_10000_silhouettes_at_28():
    data = load_dataset(DataConfig(source="animal_shape", resolution=28))
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.class_names[:3] == ["bear", "bird", "cat"] and data.class_names[-1] == "zebra"
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert data.images.min() == 0 and data.images.max() == 255  # bright shapes on black
    assert (data.images[:, :, 0, :] == 0).float().mean() > 0.9


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled(tmp_path, obj, name="animal_data_version_3.gz"):
    path = tmp_path / name
    path.write_bytes(gzip.compress(pickle.dumps(obj)))
    return path


def test_a_pickle_that_names_anything_but_numpy_arrays_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = _pickled(tmp_path, [np.zeros(3), _RunsCode(marker)])
    monkeypatch.setattr(animal_shape, "data_file", lambda name: path)
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(source="animal_shape", resolution=28))
    assert "posix.system, which is not part of a numpy array" in str(info.value)
    assert str(info.value).startswith("data.source: ") and not marker.exists()


def test_arrays_round_trip_through_the_restricted_unpickler(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    files = {"animal_data_version_3.gz": _pickled(tmp_path, images),
             "animal_label_version_3.gz": _pickled(tmp_path, labels, "labels.gz")}
    monkeypatch.setattr(animal_shape, "data_file", files.__getitem__)
    data = load_dataset(DataConfig(source="animal_shape", resolution=28))
    assert np.array_equal(data.images[:, 0].numpy(), images) and data.labels.tolist() == labels.tolist()


@pytest.mark.parametrize(("images", "message"), [
    (np.zeros((5, 28, 28), np.float32), "not uint8 N x 28 x 28"),
    (np.zeros((5, 16, 16), np.uint8), "not uint8 N x 28 x 28"),
    ({"images": 1}, "holds a dict, not a numpy array"),
])
def test_other_contents_are_one_line(tmp_path, monkeypatch, images, message):
    files = {"animal_data_version_3.gz": _pickled(tmp_path, images),
             "animal_label_version_3.gz": _pickled(tmp_path, np.zeros(5, np.int64), "labels.gz")}
    monkeypatch.setattr(animal_shape, "data_file", files.__getitem__)
    with pytest.raises(UserError, match=message):
        load_dataset(DataConfig(source="animal_shape", resolution=28))


def test_without_the_package_it_says_what_to_install(monkeypatch):
    monkeypatch.setattr(animal_shape.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install animal-shape-mnist"):
        animal_shape.data_file("animal_data_version_3.gz")


def test_the_name_is_known_to_the_preflight(tmp_path):
    assert preflight(["train", "--run-dir", str(tmp_path / "r"), "data.source=animal_shape"]) == 0
