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
            partial = [p for p in folder.glob(".last.pt.*.tmp") if p.stat().st_size > 0] if folder.is_dir() else []
            time.sleep(0.1)
        assert partial, "the second checkpoint write never started"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 2  # the previous checkpoint, whole
    assert main(["train", "--run-dir", str(run), "train.steps=6"]) == 0
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 6
    assert not list(folder.glob(".*.tmp"))  # the killed writer's leftovers are gone


def _is_checkpoint_temporary(fd: int) -> bool:
    """Is this descriptor the temporary file of a last.pt being written (not some other atomic write)?"""
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt.")


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_loses_nothing(tmp_path, monkeypatch, capsys):
    real_fdopen = os.fdopen
    opened = {"count": 0}

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        if not _is_checkpoint_temporary(fd):
            return file
        opened["count"] += 1
        return FullDisk(file) if opened["count"] > 1 else file

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.steps=4", "ckpt.every=2"]) == 2
    line = error_line(capsys.readouterr().err, "train")
    assert "cannot write checkpoint" in line and "No space left on device (the previous one is intact)" in line
    folder = run / "checkpoints"
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step_0000002.pt"]  # no partial file
