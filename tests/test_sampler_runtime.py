"""Which onnxruntime the sampler finds: none at all (one line naming the extra) or two at once (one WARNING)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys

import pytest
from onnx_models import make_model

import ganaug.sampler.runtime as runtime
from ganaug.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_versions(monkeypatch, installed: dict[str, str]) -> None:
    def version(name: str) -> str:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(runtime.importlib.metadata, "version", version)


def test_two_runtimes_at_once_are_one_warning_with_the_fix(monkeypatch, caplog):
    _fake_versions(monkeypatch, {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"})
    with caplog.at_level(logging.WARNING, logger="ganaug.sampler.runtime"):
        assert runtime.warn_if_several_installed()
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in message
    assert message.startswith("onnxruntime 1.31.1 and onnxruntime-gpu 1.31.1 are installed at once")
    assert "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'ganaug[cpu]'" in message
    assert "'ganaug[gpu]'" in message


@pytest.mark.parametrize("installed", [{"onnxruntime": "1.31.1"}, {"onnxruntime-gpu": "1.31.1"}, {}])
def test_one_runtime_is_no_warning(monkeypatch, caplog, installed):
    _fake_versions(monkeypatch, installed)
    with caplog.at_level(logging.WARNING, logger="ganaug.sampler.runtime"):
        assert not runtime.warn_if_several_installed()
    assert caplog.records == []


def test_the_real_environment_is_read():
    """No fake: the distribution this test runs under is found under its real name."""
    found = runtime.installed_distributions()
    assert found and all(entry.split()[0] in runtime.DISTRIBUTIONS for entry in found)


def test_a_missing_runtime_is_an_import_error_and_a_user_error():
    assert issubclass(runtime.RuntimeMissing, ImportError) and issubclass(runtime.RuntimeMissing, UserError)


def test_sample_without_onnxruntime_is_one_line_naming_the_extra(tmp_path):
    model = make_model(tmp_path / "g.onnx")
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # `import onnxruntime` now fails, as without the package\n"
        "from ganaug.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "sample", model, "--n", "3", "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganaug sample: error: onnxruntime cannot be imported")
    assert "pip install 'ganaug[cpu]'" in lines[0]
    assert not (tmp_path / "out").exists()
