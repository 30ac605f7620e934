"""Bad input to `ganaug sample`: one clear line on stderr, exit status 2, nothing already written lost."""

from __future__ import annotations

import errno
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx_models import make_model
from PIL import Image

import ganaug.files as writers
from ganaug.cli import main
from ganaug.errors import UserError
from ganaug.sampler import Sampler


def sample(model, out, *args) -> int:
    return main(["sample", str(model), "--out", str(out), "--no-progress", *map(str, args)])


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ganaug sample: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["cat", "dog", "fox"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (os.urandom(4096), "cannot load .* as an ONNX model"),
        (b"", "is empty"),
        (b"this is not a model", "cannot load .* as an ONNX model"),
    ],
)
def test_not_an_onnx_file(tmp_path, capsys, content, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert re.search(message, error_line(capsys))
    assert not (tmp_path / "out").exists()


def test_missing_model_file(tmp_path, capsys):
    assert sample(tmp_path / "nope.onnx", tmp_path / "out", "--n", 3) == 2
    assert "does not exist" in error_line(capsys)


def test_model_without_ganaug_metadata(tmp_path, capsys):
    keys = [
        f"ganaug.{k}"
        for k in (
            "schema",
            "z_dim",
            "num_classes",
            "class_names",
            "image_shape",
            "precision",
            "train_step",
            "checkpoint_sha256",
        )
    ]
    path = make_model(tmp_path / "plain.onnx", meta_overrides=dict.fromkeys(keys))
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "has no ganaug metadata (missing 'ganaug.schema'" in error_line(capsys)


def test_model_missing_one_metadata_key(tmp_path, capsys):
    path = make_model(tmp_path / "m.onnx", meta_overrides={"ganaug.image_shape": None})
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "'ganaug.image_shape' is missing" in error_line(capsys)


def test_unknown_schema_version(tmp_path, capsys):
    path = make_model(tmp_path / "m.onnx", meta_overrides={"ganaug.schema": "2"})
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "unsupported ganaug.schema '2'" in error_line(capsys)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ganaug.z_dim": "eight"}, "ganaug.z_dim='eight' is not a whole number"),
        ({"ganaug.z_dim": "16"}, "input 'z' has 8 columns but ganaug.z_dim is 16"),
        ({"ganaug.class_names": "not json"}, "ganaug.class_names='not json' is not valid JSON"),
        ({"ganaug.class_names": '["a", "b"]'}, "has 2 names but ganaug.num_classes is 3"),
        ({"ganaug.image_shape": "[8, 8]"}, "must be \\[H, W, C\\]"),
        ({"ganaug.image_shape": "[4, 16, 1]"}, "size 8 on axis 1 but ganaug.image_shape says \\[4, 16, 1\\]"),
        ({"ganaug.z_dim": "1_0"}, "ganaug.z_dim='1_0' is not a whole number"),
        ({"ganaug.train_step": "9" * 30}, r"ganaug.train_step=9{12}\.\.\.\(30 digits\) is out of range"),
        ({"ganaug.precision": "x" * 2000}, "metadata ganaug.precision is 2000 characters long \\(at most 1024\\)"),
        ({"ganaug.class_names": '["a", ["b"], "c"]'}, "must be a JSON list of strings, not nested"),
    ],
)
def test_inconsistent_metadata(tmp_path, capsys, overrides, message):
    path = make_model(tmp_path / "m.onnx", meta_overrides=overrides)
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert re.search(message, error_line(capsys))


def test_brackets_and_quotes_inside_class_names_are_not_nesting(tmp_path):
    names = ["[a]", '{"b": [1]}', 'c\\"[']
    path = make_model(tmp_path / "m.onnx", class_names=names)
    assert Sampler.load(path, provider="cpu").meta.class_names == tuple(names)


def test_output_not_uint8(tmp_path, capsys):
    path = make_model(tmp_path / "m.onnx", output_dtype=TensorProto.FLOAT)
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "output 'images' is tensor(float); the contract is uint8 [N, H, W, C]" in error_line(capsys)


def test_output_wrong_rank(tmp_path, capsys):
    path = make_model(tmp_path / "m.onnx", output_rank=2)
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "output 'images' has rank 2" in error_line(capsys)


@pytest.mark.parametrize(
    "bad_output", [np.zeros((3, 4, 16, 1), np.uint8), np.zeros((3, 8, 8, 1), np.float32)]
)
def test_output_checked_at_run_time(model, bad_output):
    """A graph whose output shape onnxruntime cannot infer passes the load check; every batch is still
    checked against the metadata."""
    sampler = Sampler.load(model, provider="cpu")
    sampler._run = lambda feeds: bad_output
    with pytest.raises(
        UserError, match=r"the model returned .* \[3, .*\]; the contract is uint8 \[3, 8, 8, 1\]"
    ):
        sampler.generate(3)


def test_wrong_input_names(tmp_path, capsys):
    path = make_model(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.graph.input[0].name = "latent"
    for node in model.graph.node:
        node.input[:] = ["latent" if name == "z" else name for name in node.input]
    onnx.save(model, path)
    assert sample(path, tmp_path / "out", "--n", 3) == 2
    assert "unexpected model input 'latent'" in error_line(capsys)


def test_unknown_class_name_lists_valid_names(model, tmp_path, capsys):
    assert sample(model, tmp_path / "out", "--n", 3, "--classes", "cat,zebra") == 2
    assert "unknown class 'zebra'; the model's classes are: 'cat', 'dog', 'fox'" in error_line(capsys)
    assert sample(model, tmp_path / "out", "--n", 3, "--classes", "cat,cat") == 2
    assert "named twice" in error_line(capsys)


def test_count_is_required_and_positive(model, tmp_path, capsys):
    assert sample(model, tmp_path / "out", "--seed", 1) == 2
    assert "--n N (in total) or --per-class K" in error_line(capsys)
    assert sample(model, tmp_path / "out", "--n", 3, "--per-class", 2) == 2
    assert "exclude each other" in error_line(capsys)
    for bad in (["--n", "0"], ["--n", "-5"], ["--per-class", "0"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse refuses before our code runs
            sample(model, tmp_path / "out", *bad)
        assert exit_info.value.code == 2
        assert "must be positive" in capsys.readouterr().err


def test_other_bad_numbers(model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a usage mistake: argparse's one line
        sample(model, tmp_path / "out", "--n", 3, "--threads", -1)
    assert exit_info.value.code == 2
    assert "argument --threads: -1 is not in 0..1024" in error_line(capsys)
    assert sample(model, tmp_path / "out", "--n", 3, "--truncation", -0.5) == 2
    assert "--truncation must be 0 (off) or at least" in error_line(capsys)


def test_out_is_an_existing_file(model, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert sample(model, target, "--n", 3) == 2
    assert "exists and is not a directory" in error_line(capsys)
    assert target.read_text() == "keep me"


def test_out_under_a_regular_file(model, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert sample(model, target / "sub" / "out", "--n", 3) == 2
    assert f"--out {target}/sub/out is not a writable directory" in error_line(capsys)
    assert target.read_text() == "keep me"


def test_out_not_writable(model, tmp_path, monkeypatch, capsys):
    # Tests run as root, which ignores permission bits: inject the error a read-only dir would give.
    def refuse(f, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writers, "write_bytes", refuse)
    assert sample(model, tmp_path / "out", "--n", 3) == 2
    line = error_line(capsys)
    assert "cannot write" in line and "sample_info.json: Permission denied" in line
    assert [name for name in os.listdir(tmp_path / "out")] == []  # no temporary file left behind


def test_disk_full_mid_run(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    original = writers.write_bytes
    calls = {"n": 0}

    def fill_up(f, data):
        calls["n"] += 1
        if calls["n"] > 40:  # sample_info.json, then 39 images fit
            f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        original(f, data)

    monkeypatch.setattr(writers, "write_bytes", fill_up)
    assert sample(model, out, "--n", 200, "--batch-size", 16) == 2
    assert "No space left on device" in error_line(capsys)
    monkeypatch.setattr(writers, "write_bytes", original)

    expected, _ = Sampler.load(model, provider="cpu").generate(200)
    pngs = {}
    for directory, _, files in os.walk(out):
        for name in files:
            assert not name.startswith(".ganaug-"), "a temporary file was left behind"
            if name.endswith(".png"):
                pngs[int(name.rsplit("_", 1)[1][:8])] = os.path.join(directory, name)
    assert len(pngs) == 39  # the images that fit are all there...
    for index, path in pngs.items():  # ...and each one whole
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(image), expected[index][..., 0])
    assert not (out / "manifest.csv").exists()
    # Space freed: the same command completes the set.
    assert sample(model, out, "--n", 200, "--batch-size", 16) == 0
    assert sum(len(files) for _, _, files in os.walk(out)) == 202
