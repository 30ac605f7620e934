"""`ganaug sample --shard INDEX/COUNT`: COUNT processes into one --out equal one unsharded run, byte for
byte (files, manifest, sample_info), also when they run at once, one is killed and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from onnx_models import make_model
from sampling import sample, sample_error, tree

from ganaug.sampler.layout import Shard, parse_shard

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fcntl = pytest.importorskip("fcntl")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["b", "a", "c"])


def test_parse_shard():
    assert parse_shard(None) == Shard(0, 1) and parse_shard("3/8") == Shard(3, 8) and parse_shard("0/1").whole
    assert Shard(1, 3).image_indices(0, 10).tolist() == [1, 4, 7]
    assert Shard(1, 3).image_indices(5, 12).tolist() == [7, 10]
    assert [Shard(i, 3).image_count(10) for i in range(3)] == [4, 3, 3]


@pytest.mark.parametrize(("text", "message"), [
    ("0/0", "--shard 0/0: COUNT must be 1 .. 1048576, got 0"),
    ("3/2", "--shard 3/2: INDEX must be 0 .. 1 (COUNT - 1), got 3"),
    ("2/2", "--shard 2/2: INDEX must be 0 .. 1 (COUNT - 1), got 2"),
    ("-1/4", "--shard '-1/4' is not INDEX/COUNT"),
    ("a/b", "--shard 'a/b' is not INDEX/COUNT"),
    ("3", "--shard '3' is not INDEX/COUNT"),
    ("1/2/3", "--shard '1/2/3' is not INDEX/COUNT"),
    ("", "--shard '' is not INDEX/COUNT"),
    ("1/" + "9" * 5000, "COUNT must be 1 .. 1048576, got 999"),
])
def test_a_bad_shard_is_one_line_before_anything_is_read(model, tmp_path, capsys, text, message):
    assert sample(model, tmp_path / "out", "--n", 3, f"--shard={text}") == 2
    assert message in sample_error(capsys)
    assert not (tmp_path / "out").exists()


def _reference(model, tmp_path, *args):
    reference = tmp_path / "reference"
    assert sample(model, reference, *args) == 0
    return tree(reference)


def _incomplete(out) -> bool:
    info = json.loads((out / "sample_info.json").read_text())
    return info["complete"] is False and not (out / "manifest.csv").exists()


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_shards_one_after_another_equal_one_unsharded_run(model, tmp_path, fmt):
    args = ("--n", 50, "--format", fmt, "--shard-size", 7)
    reference = _reference(model, tmp_path, *args)
    out = tmp_path / "out"
    assert sample(model, out, *args, "--shard", "2/3") == 0
    assert sample(model, out, *args, "--shard", "0/3", "--batch-size", 4) == 0
    assert _incomplete(out)
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [".shard-0-of-3.done", ".shard-2-of-3.done"]
    if fmt == "npz":  # whole files k with k % 3 == shard
        assert sorted(n for n in os.listdir(out) if n.endswith(".npz")) == [
            "shard_00000.npz", "shard_00002.npz", "shard_00003.npz", "shard_00005.npz", "shard_00006.npz"]
    else:  # images i with i % 3 == shard
        indices = sorted(int(n[-12:-4]) for _, _, names in os.walk(out) for n in names if n.endswith(".png"))
        assert indices == [i for i in range(50) if i % 3 != 1]
    assert sample(model, out, *args, "--shard", "1/3") == 0  # the last one finishes the set
    assert tree(out) == reference
    with open(out / "manifest.csv", newline="") as f:
        assert [int(row["index"]) for row in csv.DictReader(f)] == list(range(50))  # each image once


def test_an_unsharded_run_finishes_a_partly_sharded_set(model, tmp_path):
    reference = _reference(model, tmp_path, "--n", 40)
    out = tmp_path / "out"
    assert sample(model, out, "--n", 40, "--shard", "1/4") == 0
    assert sample(model, out, "--n", 40, "--shard", "3/4") == 0
    assert sample(model, out, "--n", 40) == 0
    assert tree(out) == reference


def test_more_shards_than_images(model, tmp_path):
    reference = _reference(model, tmp_path, "--n", 2)
    out = tmp_path / "out"
    for index in (4, 0, 2, 3, 1):
        assert sample(model, out, "--n", 2, "--shard", f"{index}/5") == 0
    assert tree(out) == reference


def test_shards_of_different_settings_are_refused_by_name(model, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 10, "--seed", 1, "--shard", "0/2") == 0
    before = tree(out)
    assert sample(model, out, "--n", 10, "--seed", 2, "--shard", "1/2") == 2
    assert "holds samples made with other settings (seed 1 there, 2 now)" in sample_error(capsys)
    assert sample(model, out, "--n", 12, "--seed", 1, "--shard", "1/2") == 2
    assert "n 10 there, 12 now" in sample_error(capsys)
    assert tree(out) == before


class HeldClaim:
    """Holds the claim of one shard as a running `ganaug sample --shard` process would."""

    def __init__(self, out, shard: str):
        index, count = shard.split("/")
        out.mkdir(exist_ok=True)
        self.fd = os.open(out / f".shard-{index}-of-{count}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def test_the_same_shard_twice_is_refused_other_shards_run_alongside(model, tmp_path, capsys):
    reference = _reference(model, tmp_path, "--n", 20)
    out = tmp_path / "out"
    assert sample(model, out, "--n", 20, "--shard", "1/2") == 0  # the set exists, shard 1 is done
    with HeldClaim(out, "0/2"):
        assert sample(model, out, "--n", 20, "--shard", "0/2") == 2
        assert f"another `ganaug sample --shard 0/2` is writing to {out}" in sample_error(capsys)
        assert sample(model, out, "--n", 20) == 2
        assert "runs at the same time on one --out must use the same --shard COUNT (2)" in sample_error(capsys)
        assert sample(model, out, "--n", 20, "--shard", "1/3") == 2
        assert "same --shard COUNT (2)" in sample_error(capsys)
        assert sample(model, out, "--n", 20, "--shard", "1/2") == 0  # another shard: allowed
        assert _incomplete(out)
    assert sample(model, out, "--n", 20, "--shard", "0/2") == 0
    assert tree(out) == reference  # the held claim's lock file is gone with the set complete


def test_overwrite_waits_for_no_one_but_refuses_while_a_shard_writes(model, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(model, out, "--n", 20, "--shard", "1/2") == 0
    before = tree(out)
    with HeldClaim(out, "0/2"):
        assert sample(model, out, "--n", 20, "--seed", 5, "--overwrite", "--shard", "1/2") == 2
        assert f"cannot --overwrite {out} while `ganaug sample --shard 0/2` is writing to it" in sample_error(capsys)
    assert {k: v for k, v in tree(out).items() if not k.endswith(".lock")} == before
    assert sample(model, out, "--n", 20, "--seed", 5, "--overwrite") == 0


def test_a_second_unsharded_run_is_refused(model, tmp_path, capsys):
    out = tmp_path / "out"
    with HeldClaim(out, "0/1"):
        assert sample(model, out, "--n", 3) == 2
        assert f"another `ganaug sample` is writing to {out}" in sample_error(capsys)
        assert sorted(os.listdir(out)) == [".shard-0-of-1.lock"]
    assert sample(model, out, "--n", 3) == 0
    assert sorted(os.listdir(out)) == ["0_b", "1_a", "2_c", "manifest.csv", "sample_info.json"]


# -------------------------------------------------------------------------------- real processes

_SLOW_SAMPLER = (
    "import os, sys, time\n"
    "import ganaug.sampler.layout as part\n"
    "encode, delay = part.encode_png, float(os.environ.get('SLOW_PNG_S', '0'))\n"
    "part.encode_png = lambda image: (time.sleep(delay), encode(image))[1]\n"
    "from ganaug.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _start(model, out, shard: str, n: int, delay_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "SLOW_PNG_S": str(delay_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAMPLER, "sample", str(model), "--out", str(out), "--n", str(n),
         "--shard", shard, "--threads", "1", "--batch-size", "16", "--no-progress"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _written_by(out, shard: Shard) -> int:
    if not out.exists():
        return 0
    return sum(1 for _, _, names in os.walk(out) for name in names
               if name.endswith(".png") and int(name[-12:-4]) % shard.count == shard.index)


def test_shard_processes_at_once_one_killed_and_resumed_equal_one_unsharded_run(model, tmp_path):
    n = 300
    reference = _reference(model, tmp_path, "--n", n)
    out = tmp_path / "out"
    # Shard 1 is slowed down (10 ms an image) so that the kill surely lands while it writes.
    processes = {index: _start(model, out, f"{index}/3", n, delay_s=0.01 if index == 1 else 0.0)
                 for index in range(3)}
    deadline = time.monotonic() + 120
    while _written_by(out, Shard(1, 3)) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    processes[1].send_signal(signal.SIGKILL)
    assert processes[1].wait(timeout=60) == -signal.SIGKILL
    for index in (0, 2):
        assert processes[index].wait(timeout=120) == 0, processes[index].stderr.read()
    assert 20 <= _written_by(out, Shard(1, 3)) < 100
    assert _incomplete(out)
    assert sorted(n for n in os.listdir(out) if n.startswith(".shard")) == [
        ".shard-0-of-3.done", ".shard-1-of-3.lock", ".shard-2-of-3.done"]  # the killed one's lock is left

    resumed = _start(model, out, "1/3", n)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert "shard 1/3: the set is complete" in resumed.stderr.read()
    assert tree(out) == reference  # files, manifest and sample_info, byte for byte; no marker or lock left


def test_a_file_system_without_locks_is_one_warning_not_a_failure(model, tmp_path, capsys, monkeypatch):
    """e.g. Lustre mounted without flock support: flock fails with ENOLCK."""
    import errno

    import ganaug.sampler.layout as layout

    def no_locks(fd, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    reference = _reference(model, tmp_path, "--n", 12)
    monkeypatch.setattr(layout.fcntl, "flock", no_locks)
    out = tmp_path / "out"
    assert sample(model, out, "--n", 12, "--shard", "0/2") == 0
    assert sample(model, out, "--n", 12, "--shard", "1/2") == 0
    assert tree(out) == reference
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "does not support file locks (No locks available)" in warnings[0]
