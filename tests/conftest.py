"""Shared fixtures: tiny real training runs made once per session and reused by every test file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Keep each test process from oversubscribing the two cores when torchrun tests run beside it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = ["data.resolution=16", "model.g_channels=8", "model.d_channels=8", "model.z_dim=16",
        "model.embed_dim=8", "train.batch_size=16", "log.progress=false", "log.image_every=0",
        "train.threads=1"]  # one thread: tiny nets run faster without the thread pool


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """make(*overrides) -> run directory of a short real `ganaug train` run (cached per overrides).

    Callers must not modify the returned directory; copy it (`copy_run`) to change it.
    """
    from ganaug.cli import main

    cache: dict[tuple[str, ...], Path] = {}

    def make(*overrides: str, steps: int = 4) -> Path:
        key = (*overrides, f"train.steps={steps}")
        if key not in cache:
            run_dir = tmp_path_factory.mktemp("run")
            code = main(["train", "--run-dir", str(run_dir), *TINY, f"train.steps={steps}",
                         f"ckpt.every={steps}", *overrides])
            assert code == 0, f"training fixture failed with {code}"
            cache[key] = run_dir
        return cache[key]

    return make


def error_line(stderr: str, command: str) -> str:
    """The one error line a failed command printed; logs may precede it, a traceback may not."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"ganaug {command}: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
