"""The README: its two set-up commands at the top, and a config reference equal to --help-config."""

from __future__ import annotations

import re
from pathlib import Path

from ganaug.config import help_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_config_reference_is_the_help_config_output():
    block = re.search(r"<!-- config-reference:start -->\n```\n(.*?)\n```\n<!-- config-reference:end -->", README, re.S)
    assert block, "config reference markers missing"
    assert block.group(1) == help_config(), "README config reference is stale: paste `ganaug train --help-config`"


def test_readme_starts_with_exactly_the_two_setup_commands():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
