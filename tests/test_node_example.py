"""The Node.js example in docs/sampler.md, run as it is written: its npm install line, then the
script on a ganaug model, with Math.random replaced by a known generator so that Python can
rebuild the same latents and check the images with onnxruntime here.

Skipped where node or npm is not installed; npm installs into a temporary folder.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx_models import make_model

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "sampler.md").read_text()
# Park-Miller: every product stays below 2**53, so JavaScript numbers and Python ints agree exactly.
SEED, MULTIPLIER, MODULUS = 42, 48271, 2147483647
DETERMINISTIC_RANDOM = f"let seed = {SEED}; Math.random = () => (seed = (seed * {MULTIPLIER}) % {MODULUS}) / {MODULUS};\n"

pytestmark = pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are needed")


def example_code() -> str:
    block = re.search(r"<!-- node-example -->\n```js\n(.*?)```", DOC, re.S)
    assert block, "docs/sampler.md has no <!-- node-example --> js block"
    return block.group(1)


def install_line() -> str:
    (line,) = [line.split("#")[0].strip() for line in DOC.splitlines() if "npm install onnxruntime-node" in line]
    return line


def js_latents(n: int, z_dim: int) -> np.ndarray:
    """The z the example draws (Box-Muller, left operand first) from the replaced Math.random."""
    state = SEED

    def random() -> float:
        nonlocal state
        state = state * MULTIPLIER % MODULUS
        return state / MODULUS

    values = []
    for _ in range(n * z_dim):
        radius = math.sqrt(-2 * math.log(1 - random()))
        values.append(radius * math.cos(2 * math.pi * random()))
    return np.array(values, dtype=np.float32).reshape(n, z_dim)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_node_example_reads_the_metadata_and_generates_the_models_images(tmp_path):
    project = tmp_path / "node"
    project.mkdir()
    (project / "package.json").write_text('{"private": true, "type": "module"}\n')
    installed = subprocess.run(["bash", "-c", install_line()], cwd=project, capture_output=True, text=True,
                               timeout=240)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    (project / "sample.mjs").write_text(DETERMINISTIC_RANDOM + example_code())

    names = ["cat", "dog", "eel"]
    model = make_model(tmp_path / "model.onnx", z_dim=8, class_names=names, shape=(8, 8, 3))
    n = 7
    result = subprocess.run(["node", "sample.mjs", model, str(n)], cwd=project, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header == f"{model}: {n}x8x8x3 uint8, trained 1234 steps"

    labels = np.arange(n, dtype=np.int64) % len(names)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (images,) = session.run(["images"], {"z": js_latents(n, 8), "labels": labels})
    assert len(lines) == n
    for i, line in enumerate(lines):
        match = re.fullmatch(r"image (\d+): (\w+), mean ([\d.]+)", line)
        assert match, line
        assert int(match.group(1)) == i and match.group(2) == names[labels[i]]
        # The same pixels up to a rare one-level rounding difference between onnxruntime builds.
        assert abs(float(match.group(3)) - images[i].mean()) < 0.05, (line, images[i].mean())
