"""Free space first: the bounds hold for what the writers really produce, and a run that cannot fit is
refused in one line before it writes anything (also for lack of inodes or memory)."""

from __future__ import annotations

import csv
import io
import os
import re

import numpy as np
import pytest
from onnx_models import make_model
from sampling import sample, sample_error

from ganaug import memory
from ganaug.contract import manifest_bytes_bound
from ganaug.sampler.layout import (
    disk_bytes,
    encode_png,
    npz_bytes_bound,
    png_bytes_bound,
    write_npz,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["cat", "dog", "fox"])


@pytest.mark.parametrize("shape", [(1, 1, 1), (8, 8, 1), (32, 32, 3), (45, 45, 1), (64, 64, 4), (256, 256, 3)])
def test_the_png_bound_holds_and_is_tight_for_noise(shape):
    rng = np.random.default_rng(sum(shape))
    bound = png_bytes_bound(shape)
    noise = len(encode_png(rng.integers(0, 256, shape, dtype=np.uint8)))  # incompressible: the worst case
    flat = len(encode_png(np.zeros(shape, np.uint8)))
    assert flat <= noise <= bound
    assert bound - noise <= 0.002 * noise + 16


@pytest.mark.parametrize("count", [1, 10, 1000])
def test_the_npz_bound_holds(tmp_path, count):
    shape = (16, 16, 3)
    images = np.zeros((count, *shape), np.uint8)
    write_npz(str(tmp_path / "f.npz"), {"images": images, "labels": np.zeros(count, np.int64)})
    size = os.path.getsize(tmp_path / "f.npz")
    assert size <= npz_bytes_bound(count, shape) <= size + 4096


def test_the_manifest_bound_holds_for_awkward_names(model, tmp_path):
    names = ['a "quoted", name', "ümlaut", "line\nbreak", "x" * 300]
    hostile = make_model(tmp_path / "m.onnx", class_names=names)
    assert sample(hostile, tmp_path / "out", "--n", 20, "--seed", str(-(10**30))) == 0
    manifest = (tmp_path / "out" / "manifest.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(manifest.decode())))
    classes = []
    for label, name in enumerate(names):
        paths = [row["path"].encode() for row in rows if row["label"] == str(label)]
        classes.append((len(paths), label, max(map(len, paths)), name))
    bound = manifest_bytes_bound(20, classes, -(10**30))
    assert len(manifest) <= bound <= 1.5 * len(manifest)


def test_disk_bytes_rounds_to_blocks():
    assert disk_bytes([(10, 100)], 4096) == 10 * (4096 + 256)
    assert disk_bytes([(1, 4097)], 4096) == 8192 + 256
    assert disk_bytes([(2, 0)], 4096) == 2 * 256


class FakeFs:
    def __init__(self, free_bytes: int, free_files: int = 10**9, block: int = 4096):
        self.f_frsize = self.f_bsize = block
        self.f_bavail = free_bytes // block
        self.f_files, self.f_favail = 10**9, free_files


@pytest.fixture
def fake_fs(monkeypatch):
    def install(**kw):
        monkeypatch.setattr(os, "statvfs", lambda path: FakeFs(**kw))

    return install


def test_a_run_that_cannot_fit_is_refused_before_it_writes(model, tmp_path, capsys, fake_fs):
    fake_fs(free_bytes=10 << 20)
    out = tmp_path / "out"
    assert sample(model, out, "--n", 3000) == 2
    line = sample_error(capsys)
    # 3,000 files of 4 KiB blocks, plus one temporary per writer thread (their number is the machine's).
    assert re.fullmatch(
        f"ganaug sample: error: not enough free space for --out {re.escape(str(out))}: 3,000 PNGs \\(142 bytes each "
        "at most\\), manifest.csv and sample_info.json need up to 12\\.[5-9] MiB on disk, and its file system has "
        "10\\.0 MiB available; free some space, choose another --out, or ask for fewer images", line), line
    assert os.listdir(out) == []  # nothing written: no sample_info.json, no lock file
    assert sample(model, out, "--n", 1000) == 0  # 1000 fit in 10 MiB (4 KiB blocks)


def test_a_resume_needs_room_only_for_what_is_missing(model, tmp_path, capsys, fake_fs, monkeypatch):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 2000) == 0
    for name in os.listdir(out / "cat")[:50]:
        os.unlink(out / "cat" / name)
    fake_fs(free_bytes=2 << 20)  # room for 50 images and the manifest, not for 2000 images
    assert sample(model, out, "--n", 2000) == 0
    assert sum(len(files) for _, _, files in os.walk(out)) == 2002


def test_too_few_inodes_are_refused(model, tmp_path, capsys, fake_fs):
    fake_fs(free_bytes=1 << 40, free_files=100)
    assert sample(model, tmp_path / "out", "--n", 500) == 2
    line = sample_error(capsys)
    assert "not enough free inodes for --out" in line
    assert re.search(r"need up to 5\d\d new files and its file system can take 100 more", line)


def test_npz_runs_are_checked_too(model, tmp_path, capsys, fake_fs):
    fake_fs(free_bytes=1 << 20)
    assert sample(model, tmp_path / "out", "--n", 100_000, "--format", "npz") == 2
    assert "10 .npz files (707.1 KiB each at most), manifest.csv and sample_info.json need up to 11.0 MiB" in sample_error(capsys)


def test_a_batch_that_cannot_fit_in_memory_is_refused(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 32 * 1024)  # 32 KiB for 64-byte images
    assert sample(model, tmp_path / "out", "--n", 1000, "--batch-size", 256) == 2
    line = sample_error(capsys)
    assert "--batch-size 256: 768 images in flight needs about 48.0 KiB of memory and 32.0 KiB are available" in line
    assert "use --batch-size 170 or less" in line
    assert not (tmp_path / "out").exists()
    assert sample(model, tmp_path / "out", "--n", 1000, "--batch-size", 170) == 0
