"""Real multi-process runs: torchrun with gloo on loopback, and preemption by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def worker_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_process_torchrun_keeps_g_and_d_identical_on_both_ranks(tmp_path):
    run = tmp_path / "run"
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2",
               str(ROOT / "tests" / "workers" / "dump_rank_state.py"), "train", "--run-dir", str(run),
               *TINY, "train.steps=6", "ckpt.every=3", "train.precision=bf16", "train.r1_gamma=1", "train.r1_every=2"]
    result = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2, batch 16 per process, global batch 32" in result.stderr
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ranks[0]["step"] == ranks[1]["step"] == saved["step"] == 6
    for net in ("G", "D"):
        for name, tensor in ranks[0][net].items():
            assert torch.equal(tensor, ranks[1][net][name]), f"{net}.{name} differs between ranks"
            assert torch.equal(tensor, saved[net][name]), f"{net}.{name} differs from the checkpoint"
    # The ranks saw different data and noise, so the averaged gradients moved the weights.
    assert len(saved["rng"]) == 2 and not torch.equal(saved["rng"][0]["cpu"], saved["rng"][1]["cpu"])
    assert len(list((run / "tb").iterdir())) == 1  # rank 0 alone writes TensorBoard files


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_twice_finishes_the_step_saves_and_exits_zero_then_resume_continues(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ganaug", "train", "--run-dir", str(run), *TINY, "train.steps=100000",
               "ckpt.every=100000", "log.every=5"]
    process = subprocess.Popen(command, env=worker_env(), stderr=subprocess.PIPE, text=True)
    try:
        # Wait until training is under way (the first scalars are logged to TensorBoard).
        deadline = time.monotonic() + 90
        while not list((run / "tb").glob("events*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # schedulers may signal twice: the save must not be cut short
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by signal 15" in stderr
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 100000
    resumed = subprocess.run([sys.executable, "-m", "ganaug", "train", "--run-dir", str(run), f"train.steps={step + 3}"],
                             env=worker_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {step}" in resumed.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == step + 3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_to_the_whole_process_group_while_data_streams_saves_and_exits_zero(tmp_path):
    """A scheduler signals every process of the job, DataLoader workers included: the workers leave
    the stop to the training process, which finishes the step and saves, instead of dying under it."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data" / "only"
    data.mkdir(parents=True)
    for i in range(64):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(data / f"{i}.png")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ganaug", "train", "--run-dir", str(run), *TINY, "train.steps=100000",
               "ckpt.every=100000", "log.every=5", f"data.source={data.parent}", "data.in_memory=false",
               "data.num_workers=2"]
    process = subprocess.Popen(command, env=worker_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not list((run / "tb").glob("events*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by signal 15" in stderr and "streaming 64 images" in stderr
    assert 0 < torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] < 100000


def test_ranks_that_found_different_checkpoints_stop_with_one_clear_error(monkeypatch):
    from ganaug.errors import UserError
    from ganaug.train import api as entry

    monkeypatch.setattr(entry, "gather_objects", lambda step: [8, 4])
    with pytest.raises(UserError, match=r"checkpoints of different steps \(8, 4 by rank\).*shared filesystem"):
        entry._check_same_resume_step(8)
    monkeypatch.setattr(entry, "gather_objects", lambda step: [8, 8])
    entry._check_same_resume_step(8)  # agreeing ranks pass


def test_a_bare_torchrun_with_restarts_and_a_shared_store_is_warned_about():
    from ganaug.train.dist import shared_store_warning

    bare = {"TORCHELASTIC_MAX_RESTARTS": "3"}  # what torchrun --max-restarts 3 gives its workers
    assert "a restart after rank 0 dies fails to connect" in shared_store_warning(bare)
    assert "python -m ganaug.launch" in shared_store_warning({**bare, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"})
    assert shared_store_warning({**bare, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}) is None  # ganaug.launch's
    assert shared_store_warning({"TORCHELASTIC_MAX_RESTARTS": "0"}) is None  # no restarts: nothing to share
    assert shared_store_warning({}) is None  # not under torchrun
