"""Real write errors, not injected in Python: `ganaug train` and `ganaug sample` under RLIMIT_FSIZE.

The child process gets a file-size limit (setrlimit in preexec_fn) and ignores SIGXFSZ, so a write
past the limit fails with EFBIG ("File too large") in the kernel, as a full disk or quota fails with
ENOSPC/EDQUOT: the same OSError path, reached without monkeypatching anything.

Checkpoints of one run all have the same size (tensors of fixed shapes and a pickle of plain values:
535,749 bytes at every one of steps 1..300 of the tiny run), so a per-file limit lets either every
checkpoint of a process through or none. The train test therefore writes the first checkpoint in a
run without the limit and resumes it in a process whose limit (half the first checkpoint's size)
refuses the second: the quota that fills up between two checkpoints.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import TINY
from onnx import numpy_helper
from onnx_models import make_model

from ganaug.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]


def with_file_size_limit(limit: int):
    """preexec_fn: files of this process may not grow past `limit` bytes; a write beyond fails with EFBIG."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def run_limited(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "ganaug", *argv], capture_output=True, text=True, timeout=150,
                          env=env, cwd=ROOT, preexec_fn=with_file_size_limit(limit))


def one_error_line(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"ganaug {command}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_limit_is_real_and_survivable():
    """The mechanism itself: a write past the limit is EFBIG in the child, which lives on to report it."""
    code = ("import errno, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
            "os.write(fd, b'x' * 1000)\n"
            "partial = os.write(fd, b'y' * 5000)\n"
            "try:\n"
            "    os.write(fd, b'z')\n"
            "except OSError as e:\n"
            "    print(partial, errno.errorcode[e.errno])\n")
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"ganaug-fsize-{os.getpid()}"
    try:
        result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                                timeout=60, preexec_fn=with_file_size_limit(4096))
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["3096", "EFBIG"]  # a short write up to the limit, then EFBIG
        assert target.stat().st_size == 4096
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.timeout(240)
def test_train_checkpoint_past_the_file_size_limit_is_one_error_and_keeps_the_previous_one(tmp_path, capsys):
    common = [*TINY, "train.threads=1", "ckpt.every=2", "ckpt.keep=1"]
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *common, "train.steps=2"]) == 0
    folder = run / "checkpoints"
    first = (folder / "last.pt").read_bytes()
    listing = sorted(p.name for p in folder.iterdir())
    assert listing == ["last.pt", "step_0000002.pt", "steps.json"]

    limit = len(first) // 2  # config.yaml and TensorBoard's few hundred bytes fit; a checkpoint does not
    result = run_limited(["train", "--run-dir", str(run), "train.steps=4"], limit)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr, "train")
    assert f"cannot write checkpoint {folder / 'last.pt'}: File too large (the previous one is intact)" in line
    assert "resumed at step 2" in result.stderr  # it trained steps 3 and 4 before the save failed

    assert (folder / "last.pt").read_bytes() == first  # the first checkpoint, byte for byte
    assert load(folder / "last.pt")["step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == listing  # no temporary, no partial step file
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    # Space again: the same command resumes from step 2 and ends where an uninterrupted run ends.
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), "train.steps=4"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", "--run-dir", str(straight), *common, "train.steps=4"]) == 0
    resumed, reference = load(folder / "last.pt"), load(straight / "checkpoints" / "last.pt")
    assert resumed["step"] == reference["step"] == 4
    for net in ("G", "D", "G_ema"):
        for name, tensor in reference[net].items():
            assert torch.equal(resumed[net][name], tensor), f"{net}.{name} differs from the uninterrupted run"


def varied_model(path: Path) -> str:
    """A test generator whose PNGs differ in size from image to image: large enough to be compressed
    (smaller ones are stored, all of one size), with larger weights saturating part of the pixels
    (the default one's pixels are incompressible noise)."""
    model = onnx.load(make_model(path, class_names=CLASSES, shape=(40, 40, 3)))
    for init in model.graph.initializer:
        if init.name in ("W", "E"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
    onnx.save(model, path)
    return str(path)


def png_path(out: Path, index: int) -> Path:
    name = CLASSES[index % len(CLASSES)]
    return out / name / f"{name}_{index:08d}.png"


@pytest.mark.timeout(240)
def test_sample_past_the_file_size_limit_keeps_earlier_images_and_a_rerun_completes_the_set(tmp_path):
    model = varied_model(tmp_path / "g.onnx")
    n = 240
    # The limit: the largest of the first `first_big` images, where image `first_big` is larger than all
    # before it, so images 0..first_big-1 fit and image first_big does not. PNG sizes depend on the
    # zlib build: try seeds until one has such an image at index 10 or later.
    for seed in range(20):
        reference = tmp_path / f"reference_seed{seed}"
        assert main(["sample", model, "--n", str(n), "--out", str(reference), "--no-progress", "--provider", "cpu",
                     "--batch-size", "32", "--seed", str(seed)]) == 0
        sizes = [png_path(reference, i).stat().st_size for i in range(n)]
        first_big = next((i for i in range(10, n) if sizes[i] > max(sizes[:i])), None)
        if first_big is not None:
            break
    assert first_big is not None, "no seed gives images of growing size"
    limit = max(sizes[:first_big])
    assert (reference / "sample_info.json").stat().st_size < limit  # written before any image

    out = tmp_path / "out"
    argv = ["sample", model, "--n", str(n), "--out", str(out), "--no-progress", "--provider", "cpu",
            "--seed", str(seed), "--batch-size", "1"]  # one image per write job: jobs start in index order
    result = run_limited(argv, limit)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr, "sample")
    assert f"cannot write {png_path(out, first_big)}: File too large" in line

    written = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    expected_before = {png_path(out, i).relative_to(out) for i in range(first_big)}
    assert expected_before <= set(written)  # every image before the one that did not fit...
    for relative, content in written.items():  # ...and any written beside it, whole and right
        assert content == (reference / relative).read_bytes(), relative
    assert not png_path(out, first_big).exists()  # no partial file under a final name
    assert not [p for p in out.rglob("*") if p.name.startswith(".ganaug-")]  # no temporary left
    assert not (out / "manifest.csv").exists()  # the set is not marked complete

    # Without the limit the same command completes the set, byte-identical to the uninterrupted run.
    assert main(argv[:-1] + ["64"]) == 0
    assert tree(out) == tree(reference)
