"""`pip install 'ganaug[cpu]'` gives a working `ganaug sample`, and no torch, pillow or CUDA.

Slow (a fresh venv, numpy and onnxruntime from PyPI) but part of the default run: it is the only
test that sees the package as a user of the slim CPU sampler container does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import make_model
from PIL import Image

from ganaug.sampler import Sampler

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Local state that is not part of the source and can be large.
_SKIP_ANYWHERE = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "runs"}
_SKIP_AT_ROOT = {"data"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in _SKIP_ANYWHERE or n.startswith(".venv") or n.endswith(".egg-info")}
    if os.path.abspath(directory) == REPO_ROOT:
        skipped |= _SKIP_AT_ROOT & set(names)
    return skipped


def _run(command: list[str], timeout: float, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torch_free_install_runs_ganaug_sample(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=_ignore)  # the build must not touch the working tree
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", f"{source}[cpu]"],
        timeout=500,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    # Exactly one onnxruntime, the CPU build, and nothing of CUDA: no nvidia-* wheel, no CUDA or
    # TensorRT provider library, no CUDA runtime library anywhere in the venv.
    listed = _run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"], timeout=60)
    assert listed.returncode == 0, listed.stderr
    packages = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"ganaug", "numpy", "onnxruntime"} <= packages, packages
    assert not {p for p in packages if p.startswith(("nvidia-", "torch", "onnxruntime-", "pillow"))}, packages
    cuda_files = [os.path.join(folder, name) for folder, _, names in os.walk(venv) for name in names
                  if name.startswith(("libcuda", "libcudart", "libcublas", "libcudnn", "libnccl", "libnvinfer",
                                      "libonnxruntime_providers_cuda", "libonnxruntime_providers_tensorrt"))]
    assert cuda_files == []
    checked = _run([str(python), "-m", "pip", "check", "--disable-pip-version-check"], timeout=60)
    assert checked.returncode == 0 and "No broken requirements found" in checked.stdout, checked.stdout + checked.stderr
    size = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(venv) for name in names)
    print(f"fresh venv with ganaug[cpu]: {size / 2**20:.0f} MiB, packages: {sorted(packages)}")

    for heavy in ("torch", "PIL"):  # the sampler encodes its PNGs itself
        missing = _run([str(python), "-c", f"import {heavy}"], timeout=60, cwd=tmp_path)
        assert missing.returncode != 0 and f"No module named '{heavy}'" in missing.stderr

    model = make_model(tmp_path / "model.onnx", class_names=["cat", "dog"], shape=(8, 8, 3))
    out = tmp_path / "out"
    result = _run(
        [str(venv / "bin" / "ganaug"), "sample", str(model), "--n", "10", "--out", str(out), "--seed", "2"],
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 10 images" in result.stderr
    assert sorted(os.listdir(out)) == ["cat", "dog", "manifest.csv", "sample_info.json"]
    expected, _ = Sampler.load(model, provider="cpu").generate(10, seed=2)
    with Image.open(out / "dog" / "dog_00000007.png") as image:
        assert np.array_equal(np.asarray(image), expected[7])
