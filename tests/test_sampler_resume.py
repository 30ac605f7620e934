"""A resume verifies what it counts as done: files a power cut left empty, cut short or damaged are
written again (PNG: structure and CRC; .npz: zip, arrays, shapes, labels), whole ones are kept."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from onnx_models import make_model
from sampling import sample, tree

from ganaug.sampler import write as job
from ganaug.sampler.layout import PngCheck, encode_png, npz_is_whole, png_bytes_bound, write_npz

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["cat", "dog", "fox"])


def _damage(data: bytes) -> dict[str, bytes]:
    """What a power cut, a bad disk or another program can leave under an image's name."""
    flipped = bytearray(data)
    flipped[45] ^= 0x01  # a pixel byte inside IDAT: only the CRC notices
    return {
        "empty": b"",
        "cut in half": data[: len(data) // 2],
        "cut before IEND": data[:-12],
        "zero-filled": bytes(len(data)),
        "one bit flipped": bytes(flipped),
        "other size": encode_png(np.zeros((8, 9, 1), np.uint8)),
        "other colour type": encode_png(np.zeros((8, 8, 3), np.uint8)),
        "trailing garbage": data + b"\0" * 16,
        "two IDATs": data[:-12] + data[33:-12] + data[-12:],
    }


def test_png_check_accepts_whole_files_only(tmp_path):
    check = PngCheck(SHAPE, png_bytes_bound(SHAPE))
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    good = tmp_path / "good.png"
    good.write_bytes(encode_png(image))
    assert check.is_whole(str(good))
    for what, data in _damage(good.read_bytes()).items():
        bad = tmp_path / "bad.png"
        bad.write_bytes(data)
        assert not check.is_whole(str(bad)), what
    assert not check.is_whole(str(tmp_path / "missing.png"))
    assert not check.is_whole(str(tmp_path))  # a directory
    (tmp_path / "link.png").symlink_to(good)
    assert not check.is_whole(str(tmp_path / "link.png"))  # a link is not what the sampler writes
    os.mkfifo(tmp_path / "fifo.png")
    assert not check.is_whole(str(tmp_path / "fifo.png"))  # and does not hang
    big = (64, 64, 3)  # past the stored-only size: zlib level 1
    assert PngCheck(big, png_bytes_bound(big)).is_whole(_write(tmp_path / "big.png", encode_png(
        np.random.default_rng(1).integers(0, 256, big, dtype=np.uint8))))


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_a_resume_rewrites_damaged_pngs_and_keeps_whole_ones(model, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert sample(model, reference, "--n", 60) == 0
    out = tmp_path / "out"
    assert sample(model, out, "--n", 60) == 0
    names = sorted(p for p in tree(out) if p.endswith(".png"))
    damage = _damage((out / names[0]).read_bytes())
    for name, data in zip(names, damage.values(), strict=False):
        (out / name).write_bytes(data)
    kept = {name: os.stat(out / name).st_ino for name in names[len(damage):]}
    # As a power cut before the manifest leaves it: not complete.
    info = json.loads((out / "sample_info.json").read_text())
    (out / "sample_info.json").write_text(json.dumps({**info, "complete": False}))
    (out / "manifest.csv").unlink()

    assert sample(model, out, "--n", 60, "--batch-size", 7) == 0
    assert tree(out) == tree(reference)
    assert {name: os.stat(out / name).st_ino for name in kept} == kept  # whole files were not rewritten
    stderr = capsys.readouterr().err
    assert f"WARNING rewrote {len(damage)} damaged or incomplete files left by an interrupted run" in stderr
    assert f"wrote {len(damage)} images ({60 - len(damage)} already there, {len(damage)} damaged files rewritten)" in stderr


def test_a_complete_set_is_verified_again_when_rerun(model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 9) == 0
    before = tree(out)
    (out / "dog" / "dog_00000004.png").write_bytes(b"")  # a power cut after "complete": the file was never flushed
    assert sample(model, out, "--n", 9) == 0
    assert tree(out) == before


def test_pngs_are_flushed_to_disk_before_the_set_is_recorded_complete(model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []

    def sync():
        info = out / "sample_info.json"
        seen.append((len(list(out.glob("*/*.png"))), info.exists() and json.loads(info.read_text())["complete"]))

    monkeypatch.setattr(job, "sync_filesystems", sync)
    assert sample(model, out, "--n", 9) == 0
    assert seen == [(9, False)]  # once, with every PNG written and nothing recorded done yet
    assert sample(model, out, "--n", 9, "--format", "npz", "--overwrite") == 0
    assert len(seen) == 1  # .npz shards are fsynced one by one instead


def test_npz_check_accepts_whole_files_only(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1], np.int64)
    good = tmp_path / "good.npz"
    write_npz(str(good), {"images": images, "labels": labels})
    assert npz_is_whole(str(good), SHAPE, labels)
    data = good.read_bytes()
    assert not npz_is_whole(str(good), SHAPE, labels[::-1].copy())  # other labels
    assert not npz_is_whole(str(good), (8, 9, 1), labels)  # other shape
    assert not npz_is_whole(str(good), SHAPE, labels[:4])  # other count
    variants = {
        "empty": b"",
        "cut in half": data[: len(data) // 2],
        "cut before the directory end": data[:-10],
        "zero-filled": bytes(len(data)),
    }
    for what, variant in variants.items():
        assert not npz_is_whole(_write(tmp_path / "bad.npz", variant), SHAPE, labels), what
    write_npz(str(tmp_path / "extra.npz"), {"images": images, "labels": labels, "more": labels})
    assert not npz_is_whole(str(tmp_path / "extra.npz"), SHAPE, labels)
    np.savez_compressed(tmp_path / "deflated.npz", images=images, labels=labels)
    assert not npz_is_whole(str(tmp_path / "deflated.npz"), SHAPE, labels)  # not what the sampler writes
    write_npz(str(tmp_path / "float.npz"), {"images": images.astype(np.float32), "labels": labels})
    assert not npz_is_whole(str(tmp_path / "float.npz"), SHAPE, labels)


def test_a_resume_rewrites_damaged_npz_files(model, tmp_path):
    args = ("--n", 40, "--format", "npz", "--shard-size", 10)
    reference = tmp_path / "reference"
    assert sample(model, reference, *args) == 0
    out = tmp_path / "out"
    assert sample(model, out, *args) == 0
    whole = (out / "shard_00000.npz").read_bytes()
    (out / "shard_00000.npz").write_bytes(whole[: len(whole) // 3])  # cut short
    (out / "shard_00001.npz").write_bytes(b"")  # empty
    (out / "shard_00002.npz").write_bytes((reference / "shard_00000.npz").read_bytes())  # shard 0's labels
    inode = os.stat(out / "shard_00003.npz").st_ino
    assert sample(model, out, *args) == 0
    assert tree(out) == tree(reference)
    assert os.stat(out / "shard_00003.npz").st_ino == inode
