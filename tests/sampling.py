"""Helpers the sampler's tests share: run `ganaug sample` in-process, read an output tree."""

from __future__ import annotations

import os

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
