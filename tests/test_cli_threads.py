"""The command line makes OpenMP's idle threads sleep (before torch loads OpenMP), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

from ganaug.cli import main


def test_idle_threads_sleep_by_default(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["train", "--help-config"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_users_wait_policy_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["train", "--help-config"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_it_is_set_before_torch_is_imported():
    """Set after torch loaded OpenMP, it would change nothing: the command line imports torch lazily."""
    code = ("import os, sys; from ganaug import cli; cli.main(['train', '--help-config']); "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[-1] == "PASSIVE False"
