"""Run `ganaug train` with every checkpoint write after the first stalling half-way, for kill tests."""

import os
import sys
import time

from ganaug.cli import main

_fdopen = os.fdopen
_opened = {"count": 0}


class _HalfThenStall:
    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        data = bytes(data)
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        time.sleep(120)  # the test kills the process here
        return self.file.write(data[len(data) // 2 :])


def _fdopen_stalling_after_first(fd, *args, **kwargs):
    file = _fdopen(fd, *args, **kwargs)
    if not os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
        return file  # another atomic write (config.yaml): not the one under test
    _opened["count"] += 1
    return _HalfThenStall(file) if _opened["count"] > 1 else file


os.fdopen = _fdopen_stalling_after_first
sys.exit(main(sys.argv[1:]))
