"""The shared file helpers: atomic replacement, permissions as a plain write, nothing left on failure."""

from __future__ import annotations

import os
import stat

import pytest

from ganaug.files import write_atomic


def test_write_atomic_replaces_text_and_bytes_with_a_plain_writes_permissions(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    old_mask = os.umask(0o027)
    try:
        write_atomic(path, "new é")
        assert path.read_text(encoding="utf-8") == "new é"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        write_atomic(path, memoryview(b"\x00\x01"), fsync=True)
        assert path.read_bytes() == b"\x00\x01"
    finally:
        os.umask(old_mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("keep me")

    class Unwritable:  # not str, bytes or a buffer: the write itself fails half-way through the call
        pass

    with pytest.raises(TypeError):
        write_atomic(path, Unwritable())
    assert path.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
