"""The shared file helpers: atomic replacement, permissions as a plain write, nothing left on failure."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from ganaug.errors import UserError
from ganaug.files import check_regular_target, clean_temporaries, is_temporary, write_atomic


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


def test_write_atomic_streams_a_fill_function_and_leaves_no_temporary_when_it_fails(tmp_path):
    path = tmp_path / "manifest.csv"
    write_atomic(path, lambda f: (f.write(b"a,b\n"), f.write(b"1,2\n")))
    assert path.read_bytes() == b"a,b\n1,2\n"

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"cannot write .*manifest.csv: No space left on device"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_temporaries_are_recognised_and_cleaned_and_nothing_else_is(tmp_path):
    stale = tmp_path / ".ganaug-0123456789abcdef-42-7.tmp"
    stale.write_bytes(b"half a file")
    mine = [tmp_path / "keep.tmp", tmp_path / ".ganaug-notes.txt", tmp_path / "last.pt"]
    for path in mine:
        path.write_bytes(b"user data")
    assert is_temporary(stale.name) and not any(is_temporary(p.name) for p in mine)
    assert clean_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in mine)
    assert clean_temporaries(tmp_path / "missing") == 0


def test_a_special_file_is_never_replaced(tmp_path):
    fifo = tmp_path / "null"
    os.mkfifo(fifo)  # what a copied /dev/null would be, without needing root to make a device node
    with pytest.raises(UserError, match="not a regular file"):
        write_atomic(fifo, b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(UserError, match="is a directory"):
        check_regular_target(tmp_path)
