"""`ganaug sample`: output layout, labels, class balance, npz shards, resume, refusal, hostile names."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import make_model
from PIL import Image
from sampling import kill_once_written, sample, tree

import ganaug.files as writers
from ganaug.sampler import Sampler

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_manifest(out) -> list[dict]:
    with open(os.path.join(out, "manifest.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["cat", "dog", "fox"])


def test_png_tree_manifest_and_info(model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 10, "--seed", 4) == 0
    files = tree(out)
    assert sorted(files) == sorted(
        ["manifest.csv", "sample_info.json"]
        + [f"{c}/{c}_{i:08d}.png" for i, c in zip(range(10), ["cat", "dog", "fox"] * 4, strict=False)]
    )
    rows = read_manifest(out)
    assert [row["index"] for row in rows] == [str(i) for i in range(10)]
    assert [(row["label"], row["class_name"]) for row in rows[:3]] == [
        ("0", "cat"),
        ("1", "dog"),
        ("2", "fox"),
    ]
    assert {row["seed"] for row in rows} == {"4"}
    # Pixels on disk are exactly what the Sampler API generates for (seed, index).
    expected, _ = Sampler.load(model, provider="cpu").generate(10, seed=4)
    for row in rows:
        assert np.array_equal(png_pixels(out / row["path"]), expected[int(row["index"])])
    info = json.loads(files["sample_info.json"])
    assert info["complete"] is True
    assert info["identity"]["model_sha256"] == Sampler.load(model, provider="cpu").meta.sha256
    assert info["identity"]["seed"] == 4 and info["images"] == 10
    assert info["counts"] == {"cat": 4, "dog": 3, "fox": 3}
    assert info["arguments"]["n"] == 10 and info["ganaug_version"]


def test_png_has_no_metadata_chunks(model, tmp_path):
    sample(model, tmp_path / "out", "--n", 1)
    data = (tmp_path / "out" / "cat" / "cat_00000000.png").read_bytes()
    chunks, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        chunks.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    assert chunks == [b"IHDR", b"IDAT", b"IEND"]  # no time, text or other chunk that could vary


def test_image_folder_loads_the_tree_with_manifest_labels(model, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    out = tmp_path / "out"
    sample(model, out, "--n", 12)
    dataset = torchvision.datasets.ImageFolder(str(out))
    assert len(dataset) == 12
    label_of = {row["path"]: int(row["label"]) for row in read_manifest(out)}
    for path, target in dataset.samples:
        relative = os.path.relpath(path, out).replace(os.sep, "/")
        assert target == label_of[relative]  # ImageFolder's index is the model's label
    image, _ = dataset[0]
    assert image.size == (8, 8)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_files_do_not_depend_on_batch_size(model, tmp_path, batch_size):
    sample(model, tmp_path / "reference", "--n", 40, "--batch-size", 40)
    sample(model, tmp_path / "out", "--n", 40, "--batch-size", batch_size, "--threads", 1)
    assert tree(tmp_path / "out") == tree(tmp_path / "reference")


def test_class_balance_when_n_is_not_divisible(tmp_path):
    path = make_model(tmp_path / "m.onnx", num_classes=4)
    sample(path, tmp_path / "out", "--n", 11)
    counts = {
        name: len(os.listdir(tmp_path / "out" / name)) for name in ["class0", "class1", "class2", "class3"]
    }
    assert counts == {"class0": 3, "class1": 3, "class2": 3, "class3": 2}


def test_classes_and_per_class(model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--classes", "fox,cat", "--per-class", 4) == 0
    assert sorted(os.listdir(out)) == ["cat", "fox", "manifest.csv", "sample_info.json"]
    assert len(os.listdir(out / "cat")) == 4 and len(os.listdir(out / "fox")) == 4
    rows = read_manifest(out)
    assert [int(row["label"]) for row in rows] == [0, 2] * 4  # model class indices, i % k over (cat, fox)
    expected, _ = Sampler.load(model, provider="cpu").generate(8, classes=["cat", "fox"])
    for row in rows:
        assert np.array_equal(png_pixels(out / row["path"]), expected[int(row["index"])])


def test_npz_shards(model, tmp_path):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 25, "--format", "npz", "--shard-size", 10, "--seed", 2) == 0
    assert sorted(os.listdir(out)) == [
        "manifest.csv",
        "sample_info.json",
        "shard_00000.npz",
        "shard_00001.npz",
        "shard_00002.npz",
    ]
    expected, expected_labels = Sampler.load(model, provider="cpu").generate(25, seed=2)
    images = []
    labels = []
    for shard in range(3):
        with np.load(out / f"shard_{shard:05d}.npz") as npz:
            assert npz["images"].dtype == np.uint8 and npz["labels"].dtype == np.int64
            images.append(npz["images"])
            labels.append(npz["labels"])
    assert [len(x) for x in labels] == [10, 10, 5]
    assert np.array_equal(np.concatenate(images), expected)
    assert np.array_equal(np.concatenate(labels), expected_labels)
    rows = read_manifest(out)
    assert [row["path"] for row in rows[9:12]] == ["shard_00000.npz", "shard_00001.npz", "shard_00001.npz"]
    # Deterministic bytes (no zip timestamps): a second run writes the same files.
    sample(
        model,
        tmp_path / "again",
        "--n",
        25,
        "--format",
        "npz",
        "--shard-size",
        10,
        "--seed",
        2,
        "--batch-size",
        3,
    )
    assert tree(tmp_path / "again") == tree(out)


def test_unconditional_model(tmp_path, capsys):
    path = make_model(tmp_path / "u.onnx", num_classes=0, conditional=False)
    assert sample(path, tmp_path / "out", "--per-class", 5) == 0
    assert sorted(os.listdir(tmp_path / "out" / "unconditional")) == [
        f"unconditional_{i:08d}.png" for i in range(5)
    ]
    assert {row["label"] for row in read_manifest(tmp_path / "out")} == {"0"}
    assert sample(path, tmp_path / "other", "--n", 5, "--classes", "a") == 2
    assert "needs a class-conditional model" in capsys.readouterr().err


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way handles it."""


def test_resume_after_interruption_is_byte_identical(model, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    sample(model, reference, "--n", 300, "--batch-size", 32)

    out = tmp_path / "out"
    original_write = writers.write_bytes
    calls = {"n": 0}

    def crash_after_some_writes(f, data):
        calls["n"] += 1
        if calls["n"] == 120:
            f.write(bytes(data)[: len(data) // 2])  # a half-written temporary file, as a kill would leave
            raise SimulatedCrash
        original_write(f, data)

    monkeypatch.setattr(writers, "write_bytes", crash_after_some_writes)
    with pytest.raises(SimulatedCrash):
        sample(model, out, "--n", 300, "--batch-size", 32)
    monkeypatch.setattr(writers, "write_bytes", original_write)
    partial = tree(out)
    assert "manifest.csv" not in partial and 50 < len(partial) < 300
    assert json.loads(partial["sample_info.json"])["complete"] is False
    # A stale temporary file as SIGKILL would leave it (write_atomic removed its own).
    (out / "dog" / ".ganaug-0123456789abcdef.tmp").write_bytes(b"half a png")

    assert sample(model, out, "--n", 300, "--batch-size", 7) == 0  # another batch size on resume
    assert tree(out) == tree(reference)


def test_resume_npz_after_interruption(model, tmp_path, monkeypatch):
    args = ("--n", 50, "--format", "npz", "--shard-size", 16)
    sample(model, tmp_path / "reference", *args)
    import ganaug.sampler.layout as part

    original = part.write_npz
    shards_written = []

    def crash_on_third_shard(path, arrays, fsync=True):
        if len(shards_written) == 2:
            raise SimulatedCrash
        shards_written.append(path)
        original(path, arrays, fsync)

    monkeypatch.setattr(part, "write_npz", crash_on_third_shard)
    with pytest.raises(SimulatedCrash):
        sample(model, tmp_path / "out", *args)
    monkeypatch.setattr(part, "write_npz", original)
    assert sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".npz")) == [
        "shard_00000.npz",
        "shard_00001.npz",
    ]
    assert sample(model, tmp_path / "out", *args, "--batch-size", 5) == 0
    assert tree(tmp_path / "out") == tree(tmp_path / "reference")


def test_resume_after_sigkill_is_byte_identical(model, tmp_path):
    """A real kill -9 in the middle of writing, then the same command again."""
    reference, out = tmp_path / "reference", tmp_path / "out"
    args = ["--n", "600", "--batch-size", "16", "--no-progress"]
    sample(model, reference, *args)
    # Slow the writer down (5 ms per image) so the kill surely lands mid-run.
    code = (
        "import sys, time\n"
        "import ganaug.sampler.layout as part\n"
        "encode = part.encode_png\n"
        "part.encode_png = lambda image: (time.sleep(0.005), encode(image))[1]\n"
        "from ganaug.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "sample", str(model), "--out", str(out), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_once_written(process, out, timeout_s=60)
    assert not (out / "manifest.csv").exists()
    assert sample(model, out, "--n", "600", "--batch-size", "64") == 0
    assert tree(out) == tree(reference)


def test_other_settings_are_refused_and_nothing_is_lost(model, tmp_path, capsys):
    out = tmp_path / "out"
    sample(model, out, "--n", 9, "--seed", 1)
    before = tree(out)
    assert sample(model, out, "--n", 9, "--seed", 2) == 2
    err = capsys.readouterr().err
    assert "ganaug sample: error:" in err and "seed 1 there, 2 now" in err and "--overwrite" in err
    other_model = make_model(tmp_path / "other.onnx", class_names=["cat", "dog", "fox"], seed=5)
    assert sample(other_model, out, "--n", 9, "--seed", 1) == 2
    assert "model_sha256" in capsys.readouterr().err
    assert tree(out) == before
    # Same settings: a complete set is left as it is (nothing to do, same bytes).
    assert sample(model, out, "--n", 9, "--seed", 1) == 0
    assert tree(out) == before


def test_overwrite_replaces_only_what_the_sampler_wrote(model, tmp_path):
    out = tmp_path / "out"
    sample(model, out, "--n", 9, "--seed", 1)
    (out / "cat" / "notes.txt").write_text("mine")
    assert sample(model, out, "--n", 4, "--seed", 2, "--classes", "dog", "--overwrite") == 0
    assert sorted(os.listdir(out)) == ["cat", "dog", "manifest.csv", "sample_info.json"]
    assert os.listdir(out / "cat") == ["notes.txt"]  # a file we did not write survives
    assert sorted(os.listdir(out / "dog")) == [f"dog_{i:08d}.png" for i in range(4)]
    reference = tmp_path / "reference"
    sample(model, reference, "--n", 4, "--seed", 2, "--classes", "dog")
    assert tree(out / "dog") == tree(reference / "dog")
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()


def test_foreign_directory_is_refused(model, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    assert sample(model, out, "--n", 3) == 2
    assert "not empty" in capsys.readouterr().err
    assert sample(model, out, "--n", 3, "--overwrite") == 2
    assert os.listdir(out) == ["holiday.jpg"]


HOSTILE_NAMES = [
    "../../evil",
    "/etc/x",
    "",
    "a/b",
    "dup",
    "dup",
    "DUP",
    "CON",
    "aux.txt",
    "manifest.csv",
    "..",
    ".",
    "nul\x00byte",
    "new\nline",
    "back\\slash",
    "C:",
    "  ",
    "x" * 300,
]


def test_hostile_class_names_stay_inside_out(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = make_model(tmp_path / "hostile.onnx", num_classes=len(HOSTILE_NAMES), class_names=HOSTILE_NAMES)
    jail = tmp_path / "jail"
    out = jail / "out"
    jail.mkdir()
    assert sample(path, out, "--n", 2 * len(HOSTILE_NAMES)) == 0
    assert os.listdir(jail) == ["out"]  # nothing written beside or above --out
    assert sorted(os.listdir(tmp_path)) == ["hostile.onnx", "jail"]
    directories = sorted(entry.name for entry in os.scandir(out) if entry.is_dir())
    assert len(directories) == len(HOSTILE_NAMES)  # every class got its own, distinct directory
    assert len({name.casefold() for name in directories}) == len(directories)
    for name in directories:
        assert name and not name.startswith(".") and "/" not in name and "\\" not in name
        assert all(ord(ch) >= 32 for ch in name) and len(name.encode()) <= 200
        assert name.split(".")[0].upper() not in ("CON", "AUX") and name != "manifest.csv"
        assert len(os.listdir(out / name)) == 2
    for directory, _, files in os.walk(out):
        for file in files:
            assert os.path.realpath(os.path.join(directory, file)).startswith(os.path.realpath(out) + os.sep)
    rows = read_manifest(out)
    assert [
        row["class_name"] for row in rows[: len(HOSTILE_NAMES)]
    ] == HOSTILE_NAMES  # csv keeps names intact
    assert len(torchvision.datasets.ImageFolder(str(out))) == 2 * len(HOSTILE_NAMES)
    # --classes still selects by the model's own name.
    assert sample(path, jail / "one", "--classes", "../../evil", "--n", 2) == 0
    assert sorted(os.listdir(jail / "one")) == ["00__.._evil", "manifest.csv", "sample_info.json"]


def test_tampered_sample_info_cannot_steer_deletion(model, tmp_path):
    out = tmp_path / "out"
    sample(model, out, "--n", 3)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "victim_00000000.png").write_bytes(b"precious")
    info = json.loads((out / "sample_info.json").read_text())
    info["class_dirs"] = ["../victim", str(victim), ".."]
    info["identity"]["seed"] = 99
    (out / "sample_info.json").write_text(json.dumps(info))
    assert sample(model, out, "--n", 3, "--overwrite") == 0
    assert (victim / "victim_00000000.png").read_bytes() == b"precious"


def test_progress_fallback_without_tqdm(model, tmp_path, monkeypatch):
    import logging

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails, as in a slim install
    from ganaug.sampler.write import Progress

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ganaug.sampler.write")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        progress = Progress(10, enabled=True, log_every_s=0.0)
        progress.update(4)
        progress.close()
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage().split(" (")[0] for r in records] == ["4/10 images"]
    assert sample(model, tmp_path / "out", "--n", 3) == 0
