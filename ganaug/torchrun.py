"""torchrun, with a user error as one clean line at the end (`python -m ganaug.launch`).

    python -m ganaug.launch --standalone --nproc-per-node 2 -m ganaug train --run-dir runs/a ...

It takes torchrun's arguments (and its PET_* environment) unchanged and runs torchrun's own code.
Plain torchrun reports a worker that exits with a ganaug error (status 2) as a failure of its own:
the worker's one line is buried under torchrun's traceback and failure table. Here:

- Before any worker starts, `ganaug train`'s arguments, config, run directory and data source names
  are checked once (by the command line, `ganaug.cli.launch_main`): a typo is one line, without N
  workers importing torch.
- Each worker started by this process leaves its error line in a folder of this process's (see
  ganaug.errors) instead of printing it. When torchrun reports failed workers and every failure is
  such an error (or a worker torchrun itself stopped with SIGTERM or SIGKILL after that), the line of
  the lowest failed rank is printed once, as the last line, and the exit status is 2. Any other
  failure keeps torchrun's report and exit status (1), with the workers' error lines printed after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from ganaug.errors import ERROR_DIR_ENV, LAUNCHER_PID_ENV

# How torchrun stops the other workers once one has failed: SIGTERM, then SIGKILL after a grace period.
STOPPED_BY_TORCHRUN = {-signal.SIGTERM, -signal.SIGKILL}
FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def ganaug_arguments(args) -> list[str] | None:
    """The ganaug command line torchrun will start (`-m ganaug ...` or `--no-python ganaug ...`), else None."""
    if (args.module and args.training_script in ("ganaug", "ganaug.__main__")) or (
            args.no_python and Path(args.training_script).name == "ganaug"):
        return list(args.training_script_args)
    return None


def error_lines(failures: dict, folder: Path) -> tuple[list[str], bool]:
    """(the error lines the failed workers left, lowest rank first; whether they explain every failure).

    `failures` is torchrun's {global rank: ProcessFailure}; a worker's line is in folder/<its pid>."""
    lines, explained = [], True
    for rank in sorted(failures):
        failure = failures[rank]
        path = folder / str(failure.pid)
        if failure.exitcode == 2 and path.is_file():
            lines.append(path.read_text(encoding="utf-8", errors="replace").strip())
        elif failure.exitcode not in STOPPED_BY_TORCHRUN:
            explained = False
    return lines, explained and bool(lines)


def run_torchrun(args) -> int:
    """Run torchrun's own code on its parsed arguments; a failure that only ganaug errors explain is
    the lowest failed rank's line, printed last, and status 2."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.run import run

    # A fresh rendezvous store for the workers of every restart, unless the user chose otherwise. With
    # torch's default the restarted workers share the dead group's store, read a dead worker's address
    # from it and fail to connect (pytorch/pytorch issues 135712 and 167288): with torch 2.14.1 every
    # restart after rank 0 died ended so, under `--standalone` as under a c10d endpoint.
    os.environ.setdefault(FRESH_STORE_ENV, "1")
    folder = Path(tempfile.mkdtemp(prefix="ganaug-launch-"))
    os.environ[ERROR_DIR_ENV] = str(folder)  # torchrun passes this environment on to the workers
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    try:
        record(run)(args)  # as torchrun's main: a worker's torchelastic error file becomes this agent's
    except ChildFailedError as exc:
        lines, explained = error_lines(exc.failures, folder)
        if explained:
            print(lines[0], file=sys.stderr)
            return 2
        traceback.print_exc()  # torchrun's report, as torchrun prints it
        for line in dict.fromkeys(lines):
            print(line, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
