"""Faults while training: killed mid-checkpoint, a full disk while checkpointing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, error_line

from ganaug.cli import main
from ganaug.files import is_temporary
from ganaug.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "tests" / "workers" / "slow_checkpoint_write.py"), "train",
               "--run-dir", str(run), *TINY, "train.steps=6", "ckpt.every=2", "ckpt.keep=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    folder = run / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        partial = []
        while not partial and time.monotonic() < deadline:
            partial = [p for p in folder.iterdir() if is_temporary(p.name) and p.stat().st_size > 0
                       ] if folder.is_dir() else []
            time.sleep(0.1)
        assert partial, "the second checkpoint write never started"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 2  # the previous checkpoint, whole
    assert main(["train", "--run-dir", str(run), "train.steps=6"]) == 0
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 6
    assert not [p for p in folder.iterdir() if is_temporary(p.name)]  # the killed writer's leftovers are gone


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_loses_nothing(tmp_path, monkeypatch, capsys):
    real_write_atomic = checkpoint.write_atomic
    calls = {"count": 0}

    def fill_until_the_disk_is_full(data):
        def fill(f):
            f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return fill

    def write_atomic(path, data, fsync=False):  # the second checkpoint write meets a full disk
        if path.suffix != ".pt":  # the step files' record (steps.json)
            return real_write_atomic(path, data, fsync)
        calls["count"] += 1
        return real_write_atomic(path, fill_until_the_disk_is_full(data) if calls["count"] > 1 else data, fsync)

    monkeypatch.setattr(checkpoint, "write_atomic", write_atomic)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.steps=4", "ckpt.every=2"]) == 2
    line = error_line(capsys.readouterr().err, "train")
    assert "cannot write checkpoint" in line and "No space left on device (the previous one is intact)" in line
    folder = run / "checkpoints"
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step_0000002.pt", "steps.json"]  # no partial file
