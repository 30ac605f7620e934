"""The one exception type for mistakes a user can fix (bad config, bad data, bad files), and how
its one line reaches the user.

The command line turns a UserError into one line on stderr and exit status 2; anything else is a
bug and keeps its traceback. Torch-free on purpose: the sampler raises it too.

Under `python -m ganaug.launch` (torchrun with one clean line), a worker does not print its line:
it leaves it in the launcher's folder (GANAUG_ERROR_DIR, one file named by the worker's pid), and
the launcher prints it once, after torchrun's own report of the failed workers.
"""

from __future__ import annotations

import os

ERROR_DIR_ENV = "GANAUG_ERROR_DIR"  # the launcher's folder for its workers' error lines
LAUNCHER_PID_ENV = "GANAUG_LAUNCHER_PID"  # only the launcher's own workers use it, not their children


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class Stopped(KeyboardInterrupt):
    """A signal stopped the work early, saved and resumable: the command line says which and exits
    with 128 + its number, as a shell reports a process that signal ended (SIGTERM, a cluster's
    preemption: 143; Ctrl-C: 130). None: the signal is not known here (a peer rank's)."""

    def __init__(self, signum: int | None):
        super().__init__(signum)
        self.signum = signum


def one_line(text: object) -> str:
    """A message as one line: messages passed on from other libraries may hold several."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def leave_for_launcher(line: str) -> bool:
    """Under `python -m ganaug.launch`, hand `line` to the launcher instead of printing it.

    True when it was handed over; False when this process is not one of the launcher's workers
    (or the launcher's folder is gone), and the caller prints it itself."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder or os.environ.get(LAUNCHER_PID_ENV) != str(os.getppid()):
        return False
    try:
        with open(os.path.join(folder, str(os.getpid())), "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        return False
    return True
