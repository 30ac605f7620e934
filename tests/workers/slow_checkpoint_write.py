"""Run `ganaug train` with every checkpoint write after the first stalling half-way, for kill tests."""

import sys
import time

from ganaug.cli import main
from ganaug.train import checkpoint

_write_atomic = checkpoint.write_atomic
_calls = {"count": 0}


def _half_then_stall(data):
    def fill(f):
        data_bytes = bytes(data)
        f.write(data_bytes[: len(data_bytes) // 2])
        f.flush()
        time.sleep(120)  # the test kills the process here
        f.write(data_bytes[len(data_bytes) // 2 :])

    return fill


def _stalling_after_first(path, data, fsync=False):
    _calls["count"] += 1
    return _write_atomic(path, _half_then_stall(data) if _calls["count"] > 1 else data, fsync=fsync)


checkpoint.write_atomic = _stalling_after_first
sys.exit(main(sys.argv[1:]))
