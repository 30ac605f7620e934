"""scripts/gpu_check.sh on this CPU-only machine: the CPU parts run for real on a tiny model (train,
stop, resume, export, sample, the PyTorch baseline, the table, ganaug augment twice) and the GPU parts say they were
skipped; a GPU that torch cannot use, a required GPU that is missing and a failing step each stop
it with a non-zero status and one error line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BIN = Path(sys.executable).parent
TINY = ("data.resolution=16 model.g_channels=8 model.d_channels=8 model.z_dim=16 model.embed_dim=8 "
        "train.batch_size=16 train.threads=1")
TINY_AUGMENT = ("--folds 2 --policy affine --synthetic never --classifier-steps 10 --teacher-steps 10 "
                "--estimate-unlabelled 40 --jobs 1 data.resolution=8")


def run_check(tmp_path: Path, path_prefix: str = "", timeout: float = 200, **knobs: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "STEPS", "N", "PROVIDERS", "PRECISIONS",
                                                            "OVERRIDES", "REQUIRE_GPU", "AUGMENT_ARGS")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OUT=str(tmp_path / "check"), STEPS="4", N="64",
               BATCH="32", OVERRIDES=TINY, PRECISIONS="fp32",
               AUGMENT_ARGS=TINY_AUGMENT)
    env["PATH"] = f"{path_prefix}{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(knobs)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cpu_machine_runs_the_cpu_parts_and_says_what_it_skipped(tmp_path):
    result = run_check(tmp_path)
    out = tmp_path / "check"
    assert result.returncode == 0, result.stderr[-4000:]
    assert "no NVIDIA GPU: skipping" in result.stderr
    assert "no GPU: skipping the cuda provider" in result.stderr
    assert "no GPU: skipping the tensorrt provider" in result.stderr
    assert "the GPU parts were skipped (no GPU)" in result.stderr
    # Trained in two runs, the second resumed from the first's checkpoint.
    log = (out / "train_auto.log").read_text()
    assert "resumed at step 2" in log and "training dcgan on cpu" in log
    # Every result has a positive rate; the table names each run with its ratios.
    rows = [line.split("\t") for line in (out / "results.tsv").read_text().splitlines()]
    assert [row[0] for row in rows] == ["sample generator_fp32 cpu", "torch cpu fp32"]
    assert all(int(row[1]) == 64 and float(row[3]) > 0 for row in rows), rows
    # The table is the one thing on stdout: a header, then each run against the CPU run and PyTorch.
    table = result.stdout.splitlines()
    assert table[0].split() == ["run", "images/s", "vs", "cpu", "vs", "torch", "cpu"], result.stdout
    assert re.fullmatch(r"sample generator_fp32 cpu +\d+ +1\.00x +\d+\.\d\dx", table[1]), table
    assert re.fullmatch(r"torch cpu fp32 +\d+ +- +1\.00x", table[2]), table
    assert sorted(p.name for p in (out / "samples" / "generator_fp32_cpu").glob("*.npz")) == ["shard_00000.npz"]
    # ganaug augment ran twice here, its classifiers on the CPU, and the two runs wrote the same set.
    assert "the estimate's classifiers train on cpu" in (out / "augment" / "cpu_a.log").read_text()
    assert re.search(r"augment on cpu: \d+ s; the two runs wrote the same manifest.csv and report.json",
                     result.stderr), result.stderr[-3000:]
    manifest = (out / "augment" / "cpu_a" / "manifest.csv").read_text().splitlines()
    assert len(manifest) > 50 and manifest == (out / "augment" / "cpu_b" / "manifest.csv").read_text().splitlines()
    assert re.fullmatch(r"augment cpu\t\d+ s\n", (out / "augment.tsv").read_text())


def fake_nvidia_smi(folder: Path) -> str:
    """An nvidia-smi that lists one GPU, as on a GPU machine; torch here still has no CUDA device."""
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    tool.chmod(0o755)
    return f"{folder}{os.pathsep}"


def test_a_gpu_that_torch_cannot_use_is_an_error_not_a_cpu_run(tmp_path):
    result = run_check(tmp_path, path_prefix=fake_nvidia_smi(tmp_path / "fake"), timeout=60)
    assert result.returncode != 0
    assert "nvidia-smi lists a GPU but torch" in result.stderr and "cannot use it" in result.stderr
    assert not (tmp_path / "check").exists()  # stopped before doing anything


def test_require_gpu_without_one_is_an_error(tmp_path):
    result = run_check(tmp_path, REQUIRE_GPU="1", timeout=60)
    assert result.returncode != 0
    assert "gpu_check.sh: error: REQUIRE_GPU=1 but nvidia-smi lists no GPU" in result.stderr


@pytest.mark.timeout(120)
def test_a_failing_step_stops_the_check_and_names_it(tmp_path):
    result = run_check(tmp_path, OVERRIDES=f"{TINY} train.no_such_key=1", timeout=100)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpu_check.sh: error:")]
    assert errors and "training" in errors[0] and "failed" in errors[0], result.stderr[-3000:]
    assert not (tmp_path / "check" / "results.tsv").read_text()  # nothing was measured
