"""`ganaug export` on bad input: one clear line on stderr, non-zero exit, nothing written.

None of these gets as far as exporting, so they are fast.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch

import ganaug.export.api as entry
from ganaug.cli import main
from ganaug.errors import UserError
from ganaug.export.output import OutputFile


def export_error(capsys, source, out, *flags: str) -> str:
    """Run the export, expect exit status 2 and exactly one stderr line; return that line."""
    capsys.readouterr()  # drop what fixtures (e.g. the training run) printed
    code = main(["export", str(source), "--out", str(out), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("ganaug export: error: ")
    return lines[0]


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def checkpoint(trained_run) -> Path:
    return trained_run() / "checkpoints" / "last.pt"


def state_of(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)


# ------------------------------------------------------------------------------ the source


def test_missing_source(capsys, tmp_path, out_dir):
    line = export_error(capsys, tmp_path / "nowhere", out_dir / "g.onnx")
    assert "does not exist" in line
    assert os.listdir(out_dir) == []


def test_directory_without_checkpoint(capsys, tmp_path, out_dir):
    (tmp_path / "empty_run").mkdir()
    assert "checkpoints/last.pt" in export_error(capsys, tmp_path / "empty_run", out_dir / "g.onnx")
    assert os.listdir(out_dir) == []


def write_zip_without_checkpoint(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


@pytest.mark.parametrize("kind, expected", [
    ("truncated", "truncated"),
    ("random_bytes", "truncated"),
    ("zip_not_checkpoint", "truncated"),
    ("plain_tensor", "not a ganaug checkpoint (got Tensor)"),
    ("dict_without_keys", "not a ganaug checkpoint (no 'schema' entry)"),
    ("empty_file", "truncated"),
])
def test_files_that_are_not_checkpoints(capsys, checkpoint, tmp_path, out_dir, kind, expected):
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "random_bytes":
        bad.write_bytes(os.urandom(4096))
    elif kind == "zip_not_checkpoint":
        write_zip_without_checkpoint(bad)
    elif kind == "plain_tensor":
        torch.save(torch.zeros(3), bad)
    elif kind == "dict_without_keys":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        bad.write_bytes(b"")
    line = export_error(capsys, bad, out_dir / "g.onnx")
    assert expected in line and str(bad) in line
    assert os.listdir(out_dir) == []


class _CreatesMarker:
    """Unpickling this calls open(marker, 'w'): code running at load time, which a checkpoint must not do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused(capsys, checkpoint, tmp_path, out_dir):
    state = state_of(checkpoint)
    marker = tmp_path / "code_ran"
    state["G_ema"] = _CreatesMarker(marker)
    hostile = tmp_path / "hostile.pt"
    torch.save(state, hostile)
    line = export_error(capsys, hostile, out_dir / "g.onnx")
    assert "refused by the safe loader (weights_only=True)" in line
    assert not marker.exists()
    assert os.listdir(out_dir) == []
    # The payload is real: an unsafe load runs it (so the test above can fail).
    canary = tmp_path / "canary"
    torch.save({"x": _CreatesMarker(canary)}, tmp_path / "canary.pt")
    torch.load(tmp_path / "canary.pt", weights_only=False)
    assert canary.exists()


def test_other_checkpoint_schema(capsys, checkpoint, tmp_path, out_dir):
    state = state_of(checkpoint)
    state["schema"] = 3
    torch.save(state, tmp_path / "future.pt")
    assert "has schema 3; this ganaug reads schema 2" in export_error(capsys, tmp_path / "future.pt",
                                                                              out_dir / "g.onnx")
    assert os.listdir(out_dir) == []


def test_unknown_architecture(capsys, checkpoint, tmp_path, out_dir):
    state = state_of(checkpoint)
    state["model"]["arch"] = "stylegan9"
    torch.save(state, tmp_path / "other.pt")
    assert "unknown architecture 'stylegan9'" in export_error(capsys, tmp_path / "other.pt", out_dir / "g.onnx")
    assert os.listdir(out_dir) == []


def test_weights_of_another_architecture(capsys, checkpoint, tmp_path, out_dir):
    state = state_of(checkpoint)  # dcgan weights, described as the article's architecture
    state["model"].update(arch="article28", resolution=28)
    torch.save(state, tmp_path / "mismatch.pt")
    line = export_error(capsys, tmp_path / "mismatch.pt", out_dir / "g.onnx")
    assert "G_ema weights do not fit the article28 generator at 28x28 (" in line and "missing" in line
    assert os.listdir(out_dir) == []


# ------------------------------------------------------------------------------ the output


def test_existing_out_is_refused_without_force(capsys, checkpoint, out_dir):
    existing = out_dir / "g.onnx"
    existing.write_bytes(b"keep me")
    assert "--force" in export_error(capsys, checkpoint, existing)
    assert existing.read_bytes() == b"keep me" and os.listdir(out_dir) == ["g.onnx"]


def test_out_under_a_regular_file(capsys, checkpoint, tmp_path):
    (tmp_path / "plain").write_text("a file")
    assert "is a file, not a directory" in export_error(capsys, checkpoint, tmp_path / "plain" / "g.onnx")


def test_out_in_a_missing_directory(capsys, checkpoint, tmp_path):
    assert "does not exist" in export_error(capsys, checkpoint, tmp_path / "missing" / "g.onnx")
    assert not (tmp_path / "missing").exists()


def test_out_is_a_directory(capsys, checkpoint, out_dir):
    assert "is a directory" in export_error(capsys, checkpoint, out_dir)


def test_out_is_the_checkpoint(capsys, checkpoint):
    before = checkpoint.read_bytes()
    assert "is the checkpoint being exported" in export_error(capsys, checkpoint, checkpoint, "--force")
    assert checkpoint.read_bytes() == before


def test_unwritable_out_fails_before_exporting(capsys, checkpoint, out_dir, monkeypatch):
    real_open = os.open

    def no_writes_in_out_dir(file, *args, **kwargs):  # root ignores chmod, so refuse here instead
        if str(file).startswith(str(out_dir)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded although --out cannot be written")

    monkeypatch.setattr(os, "open", no_writes_in_out_dir)
    monkeypatch.setattr(entry, "load_generator", must_not_load)
    assert "cannot be written: Permission denied" in export_error(capsys, checkpoint, out_dir / "g.onnx")
    assert os.listdir(out_dir) == []


def test_output_file_replaces_only_on_commit(tmp_path):
    path = tmp_path / "g.onnx"
    path.write_bytes(b"old")
    output = OutputFile(path, force=True)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["g.onnx"]  # checked, untouched
    output.commit(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["g.onnx"]  # no temporary file left


def test_two_exports_to_one_path_without_force_cannot_both_win(tmp_path):
    """The second export checked --out before the first wrote it: its commit is refused, the first
    export's model stays, no temporary is left."""
    path = tmp_path / "g.onnx"
    first, second = OutputFile(path), OutputFile(path)
    first.commit(b"first")
    with pytest.raises(UserError, match="appeared while exporting .* pass --force to replace it"):
        second.commit(b"second")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["g.onnx"]
    OutputFile(path, force=True).commit(b"forced")  # with --force, the last one wins by design
    assert path.read_bytes() == b"forced"


def test_commit_removes_a_killed_exports_temporaries_but_not_one_in_flight(tmp_path):
    stale, in_flight = tmp_path / ".ganaug-0123456789abcdef-42-0.tmp", tmp_path / ".ganaug-fedcba9876543210-43-0.tmp"
    for path in (stale, in_flight):
        path.write_bytes(b"half a model")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    OutputFile(tmp_path / "g.onnx").commit(b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(["g.onnx", in_flight.name])


def test_out_that_is_a_device_node_is_refused_even_with_force(capsys, checkpoint, tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # a special file anyone can make; a copied device node is refused the same way
    assert "is not a regular file" in export_error(capsys, checkpoint, fifo, "--force")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ------------------------------------------------------------------------------ the options


def test_unknown_precision_is_an_argparse_error(capsys, checkpoint, out_dir):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--out", str(out_dir / "g.onnx"), "--precision", "int4"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--precision" in errors[0] and "int4" in errors[0]
    assert os.listdir(out_dir) == []


def test_unsupported_opset(capsys, checkpoint, out_dir):
    assert "--opset 9 is not supported" in export_error(capsys, checkpoint, out_dir / "g.onnx", "--opset", "9")
    assert os.listdir(out_dir) == []
