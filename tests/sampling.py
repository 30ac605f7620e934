"""Helpers the sampler's tests share: run `ganaug sample` in-process, read an output tree."""

from __future__ import annotations

import os
import signal
import time

from conftest import error_line

from ganaug.cli import main


def sample(model, out, *args) -> int:
    return main(["sample", str(model), "--out", str(out), "--no-progress", *map(str, args)])


def tree(root) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def sample_error(capsys) -> str:
    """The one `ganaug sample: error: ...` line a failed run printed (no traceback)."""
    return error_line(capsys.readouterr().err, "sample")


def kill_once_written(process, out, files: int = 100, timeout_s: float = 120) -> None:
    """SIGKILL a sampler process once `files` files exist under out (or at the timeout), as a power cut."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        written = sum(len(names) for _, _, names in os.walk(out)) if out.exists() else 0
        if written >= files:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
