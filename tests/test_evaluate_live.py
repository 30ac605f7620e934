"""In-training metrics: FD/KID scalars in TensorBoard every log.metric_every steps, and best.pt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, copy_run

from ganaug.evaluate import features

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
METRICS = ("log.metric_every=2", "log.metric_samples=64")


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


@pytest.fixture
def short_feature_training(monkeypatch):
    monkeypatch.setattr(features, "FEATURE_NET_STEPS", 20)


def test_metrics_are_logged_and_the_best_checkpoint_is_kept(trained_run, short_feature_training):
    run = trained_run(*METRICS, steps=4)
    fd, kid = scalars(run, "metrics/fd"), scalars(run, "metrics/kid")
    assert [step for step, _ in fd] == [2, 4] and [step for step, _ in kid] == [2, 4]
    assert all(value > 0 for _, value in fd + kid)

    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)  # plain tensors and values only
    best_step, best_fd = min(fd, key=lambda item: item[1])
    assert best["step"] == best["metrics"]["step"] == best_step
    assert best["metrics"]["fd"] == pytest.approx(best_fd, rel=1e-5)  # TensorBoard stores float32
    assert json.loads((run / "checkpoints" / "best.json").read_text())["step"] == best_step
    assert set(best) >= {"G", "D", "G_ema", "opt_g", "opt_d", "config", "model"}
    assert len(list((run / "features").glob("feature_net_*.pt"))) == 1


def test_metrics_do_not_change_what_is_trained(trained_run, short_feature_training):
    """The feature net and the metric sample use their own random streams: training with metrics
    on gives bit-identical weights to training with them off."""
    with_metrics = torch.load(trained_run(*METRICS, steps=4) / "checkpoints" / "last.pt", weights_only=True)
    without = torch.load(trained_run(steps=4) / "checkpoints" / "last.pt", weights_only=True)
    for net in ("G", "D"):
        for name, tensor in without[net].items():
            assert torch.equal(tensor, with_metrics[net][name]), f"{net}.{name}"


def test_a_resumed_run_keeps_a_better_earlier_best(trained_run, short_feature_training, tmp_path):
    from ganaug.cli import main

    run = copy_run(trained_run(*METRICS, steps=4), tmp_path / "run")
    best_json = run / "checkpoints" / "best.json"
    record = json.loads(best_json.read_text())
    best_json.write_text(json.dumps({**record, "fd": -1.0}))  # nothing can beat this
    before = (run / "checkpoints" / "best.pt").read_bytes()
    assert main(["train", "--run-dir", str(run), "train.steps=6", "ckpt.every=6"]) == 0
    assert [step for step, _ in scalars(run, "metrics/fd")][-1] == 6
    assert (run / "checkpoints" / "best.pt").read_bytes() == before
    assert len(list((run / "features").glob("feature_net_*.pt"))) == 1  # the cached net, not a new one


WORKER = """
import sys
from ganaug.evaluate import features
features.FEATURE_NET_STEPS = 20  # a quick feature net: this test is about the collectives
from ganaug.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_process_training_with_metrics_finishes_and_keeps_best(tmp_path):
    """Rank 0 measures while rank 1 waits in the broadcast; both take part in state_dict()."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run = tmp_path / "run"
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(worker), "train", "--run-dir", str(run),
               *TINY, *METRICS, "train.steps=4", "ckpt.every=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [step for step, _ in scalars(run, "metrics/fd")] == [2, 4]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert len(best["rng"]) == 2  # both ranks contributed to the collective state_dict()


def test_training_as_a_library_is_told_to_pass_the_metrics_hook(tmp_path):
    """Training knows nothing of evaluation (no package cycle): the command line hands it LiveMetrics;
    a library caller who asks for metrics without the hook is told what to pass, before any work."""
    from ganaug import train
    from ganaug.config import load_config
    from ganaug.errors import UserError

    cfg = load_config(None, [*TINY, *METRICS, "train.steps=2"])
    with pytest.raises(UserError, match="live_metrics=ganaug.evaluate.live.LiveMetrics"):
        train.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
