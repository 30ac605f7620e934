"""The package's import rules: the command line calls the library, never the reverse, and the
torch-free parts stay torch-free (config, cli, models' spec, files, nested, the contract)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ganaug"
CLI_USERS_ALLOWED = {"ganaug/cli.py", "ganaug/__main__.py", "ganaug/launch/__main__.py"}  # the entry points


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_library_module_imports_the_command_line():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where in CLI_USERS_ALLOWED:
            continue
        if {"ganaug.cli", "ganaug.cli.main"} & imported_modules(path):
            offenders.append(where)
    assert offenders == [], f"library modules import ganaug.cli: {offenders}"


def test_the_scan_sees_an_import_of_the_command_line(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from ganaug.cli import main\n    return main\n")
    assert "ganaug.cli" in imported_modules(sample)


@pytest.mark.parametrize("module", ["ganaug.cli", "ganaug.config", "ganaug.models", "ganaug.files", "ganaug.nested", "ganaug.sampler",
                                    "ganaug.contract"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0, module
