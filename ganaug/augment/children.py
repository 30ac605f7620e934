"""augment's child processes: how they stop, and a generator trained under torchrun in one.

A cluster stops a job with SIGTERM. augment turns it into `Stopped` (as Ctrl-C raises
KeyboardInterrupt) wherever it waits on children, so that it stops them, waits for them to save,
and exits 128 + SIGTERM. A child that outlives augment (augment SIGKILLed, out of memory) would
train or wait for nobody, so each is told to die with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ganaug.errors import Stopped, UserError, one_line
from ganaug.files import write_atomic

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM raises Stopped in this process for the duration. Only the main thread can set a
    handler; elsewhere the children's own last resort (die_with_parent) applies."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """This process gets `signum` when its parent dies. Linux only; elsewhere a no-op."""
    _parent_death_signal(signum)()


def _parent_death_signal(signum: int):
    """A call that makes the calling process get `signum` when its parent dies. prctl is looked up
    here, so that a forked child before exec (subprocess's preexec_fn) makes one libc call and no
    dynamic-loader lookup, which a thread of the parent may have held at the fork."""
    pr_set_pdeathsig = 1
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(pr_set_pdeathsig, signum)


def torchrun_command(processes: int, run_dir: Path, config_file: Path) -> list[str]:
    """`ganaug train` under ganaug's torchrun launcher, on this machine (--standalone picks a free port)."""
    return [sys.executable, "-m", "ganaug.launch", "--standalone", "--nproc-per-node", str(processes),
            "-m", "ganaug", "train", "--run-dir", str(run_dir), "--config", str(config_file)]


def train_under_torchrun(config_yaml: str, run_dir: Path, processes: int, steps: int) -> None:
    """Train the run in `run_dir` (resuming it) with `processes` DDP processes, its output in
    RUN_DIR.log. A signal here (SIGTERM, Ctrl-C) or a stop of the run itself ends in Stopped, once the
    trainers have saved; a failed run in one UserError line (the trainer's own, where it left one)."""
    from ganaug.train.checkpoint import Checkpointer, safe_load

    config_file, output = run_dir.with_suffix(".yaml"), run_dir.with_suffix(".log")
    write_atomic(config_file, config_yaml.encode())
    log.info("training a generator under torchrun, %d processes, in %s (log: %s)", processes, run_dir, output)
    with open(output, "ab") as sink:
        child = subprocess.Popen(torchrun_command(processes, run_dir, config_file), stdout=sink,
                                 stderr=subprocess.STDOUT, preexec_fn=_parent_death_signal(signal.SIGTERM))
        try:
            with sigterm_stops():
                code = child.wait()
        except BaseException:  # stopped or interrupted here: torchrun passes SIGTERM on; the trainers save
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
    if code != 0:
        lines = output.read_text(encoding="utf-8", errors="replace").splitlines()
        said = [line for line in lines if line.startswith("ganaug train: error: ")]
        reason = one_line(said[-1].removeprefix("ganaug train: error: ")) if said else f"exit status {code}"
        raise UserError(f"training a generator under torchrun failed: {reason} (log: {output})")
    last = Checkpointer(run_dir / "checkpoints").last
    if not last.is_file() or safe_load(last, f"checkpoint {last}")["step"] < steps:
        raise Stopped(signal.SIGTERM)  # a signal that reached torchrun stopped the trainers, which saved
