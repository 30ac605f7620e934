"""Labels are never silently wrong: torchvision's ImageFolder over the PNG tree gives every image the
model's label, whatever the class names; subsets and the synthetic datasets map labels right."""

from __future__ import annotations

import csv
import os
import random

import numpy as np
import pytest
from onnx_models import make_model

from ganaug.cli import main
from ganaug.contract import class_dir_names

torchvision = pytest.importorskip("torchvision")

NUMERIC_12 = [str(i) for i in range(12)]  # sorted() gives 0, 1, 10, 11, 2, ...
CLASS_LISTS = {
    "sorted": (["cat", "dog", "fox"], ["cat", "dog", "fox"]),
    "unsorted": (["b", "a", "10", "9"], ["0_b", "1_a", "2_10", "3_9"]),
    "numeric-past-9": (NUMERIC_12, [f"{i:02d}_{i}" for i in range(12)]),
    "case": (["apple", "Zebra"], ["0_apple", "1_Zebra"]),  # "Z" sorts before "a"
    "wrong-after-sanitising": (["a/", "a0"], ["0_a_", "1_a0"]),  # "a/" < "a0" but "a_" > "a0"
    "wrong-after-dedup": (["x", "x", "x0"], ["0_x", "1_x_1", "2_x0"]),  # "x_1" > "x0"
    "hostile": (["../../evil", "", "CON", "dup", "DUP"], None),
}


def sample(model, out, *args) -> int:
    return main(["sample", str(model), "--out", str(out), "--no-progress", *map(str, args)])


def manifest_labels(out) -> dict[str, int]:
    with open(os.path.join(out, "manifest.csv"), newline="", encoding="utf-8") as f:
        return {row["path"]: int(row["label"]) for row in csv.DictReader(f)}


def image_folder_targets(out) -> dict[str, int]:
    dataset = torchvision.datasets.ImageFolder(str(out))
    return {os.path.relpath(path, out).replace(os.sep, "/"): target for path, target in dataset.samples}


@pytest.mark.parametrize("which", list(CLASS_LISTS))
def test_image_folder_index_is_the_model_label(tmp_path, which):
    names, expected_dirs = CLASS_LISTS[which]
    model = make_model(tmp_path / "m.onnx", class_names=names)
    out = tmp_path / "out"
    assert sample(model, out, "--per-class", 2) == 0
    labels = manifest_labels(out)
    assert sorted(labels.values()) == sorted(list(range(len(names))) * 2)
    assert image_folder_targets(out) == labels  # every image, by its path
    dirs = sorted(entry.name for entry in os.scandir(out) if entry.is_dir())
    if expected_dirs is not None:
        assert dirs == expected_dirs


def test_a_subset_keeps_the_model_s_directory_names_and_image_folder_counts_from_zero(tmp_path):
    model = make_model(tmp_path / "m.onnx", class_names=NUMERIC_12)
    out = tmp_path / "out"
    assert sample(model, out, "--classes", "3,7,10", "--per-class", 2) == 0
    assert sorted(entry.name for entry in os.scandir(out) if entry.is_dir()) == ["03_3", "07_7", "10_10"]
    labels = manifest_labels(out)
    assert sorted(set(labels.values())) == [3, 7, 10]  # the manifest keeps the model's labels
    # ImageFolder sees three classes and numbers them 0, 1, 2 in label order (documented).
    targets = image_folder_targets(out)
    assert {path: [3, 7, 10][target] for path, target in targets.items()} == labels


def test_fewer_images_than_classes_leaves_no_empty_class_directory(tmp_path):
    model = make_model(tmp_path / "m.onnx", class_names=["cat", "dog", "fox"])
    assert sample(model, tmp_path / "out", "--n", 2) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["cat", "dog", "manifest.csv", "sample_info.json"]
    assert image_folder_targets(tmp_path / "out") == manifest_labels(tmp_path / "out")


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_synthetic_folder_gives_the_model_labels(tmp_path, fmt):
    from ganaug.data.synthetic import SyntheticFolder

    model = make_model(tmp_path / "m.onnx", class_names=NUMERIC_12)
    assert sample(model, tmp_path / "out", "--classes", "2,11", "--n", 6, "--format", fmt) == 0
    dataset = SyntheticFolder(tmp_path / "out")
    assert dataset.targets == [2, 11] * 3
    assert [dataset[i][1] for i in range(6)] == [2, 11] * 3
    assert dataset.classes == NUMERIC_12 and dataset.class_to_idx["11"] == 11


def test_directory_names_always_sort_in_label_order():
    """Random class lists from an alphabet of characters that sort, sanitise or dedupe oddly."""
    rng = random.Random(0)
    alphabet = ["a", "A", "b", "0", "1", "9", "_", "/", ".", " ", "é", "E\u0301", "Z", "-"]
    for _ in range(2000):
        names = ["".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 15))]
        dirs = class_dir_names(names)
        assert sorted(dirs) == dirs, names
        assert len({d.casefold() for d in dirs}) == len(dirs), names
        # A subset's directories are the same names, so they sort in label order too.
        subset = sorted(rng.sample(range(len(names)), k=rng.randint(1, len(names))))
        assert sorted(dirs[i] for i in subset) == [dirs[i] for i in subset]


def test_the_prefix_is_decided_by_all_classes_not_the_selection():
    names = ["b", "a", "c"]
    assert class_dir_names(names) == ["0_b", "1_a", "2_c"]
    assert class_dir_names(["a", "b", "c"]) == ["a", "b", "c"]
    assert class_dir_names(["x" * 300, "y"])[0] == "x" * 200  # long names are cut, order kept
    long_unsorted = class_dir_names(["y" * 300, "x"])
    assert long_unsorted[0] == "0_" + "y" * 198 and len(long_unsorted[0].encode()) == 200


def test_image_folder_sorts_with_sorted(tmp_path):
    """The assumption the naming rests on, checked on torchvision itself."""
    for name in ["b", "a", "10", "9", "B", "_", "é"]:
        (tmp_path / name).mkdir()
    classes, class_to_idx = torchvision.datasets.folder.find_classes(str(tmp_path))
    assert classes == sorted(["b", "a", "10", "9", "B", "_", "é"])
    assert list(class_to_idx.values()) == list(np.arange(7))
