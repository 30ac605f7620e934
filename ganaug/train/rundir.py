"""The run directory: its layout, its lock, and which files in it a run may replace.

    RUN/config.yaml      the resolved config (marked as ganaug's on its first line); a resumed run
                         starts from it (train/api.py resolve_config), never from a checkpoint's copy
    RUN/checkpoints/     see train/checkpoint.py
    RUN/tb/              TensorBoard event files (rank 0 only)
    RUN/samples/         image grids
    RUN/features/        the in-training metrics' feature network

Everything a run will write is checked before step 1: a name taken by a file of another kind, a
config.yaml the run did not write, a second trainer already running on the directory (an flock
held for the whole run, released by the kernel if the process dies).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ganaug.errors import UserError
from ganaug.files import ensure_writable_dir, write_atomic
from ganaug.train.checkpoint import Checkpointer

CONFIG_MARK = "# ganaug train: the resolved config of this run (rewritten when it resumes)\n"
LOCK_NAME = ".ganaug.lock"


class RunDirectory:
    def __init__(self, path: Path, keep: int = 3):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.checkpoints = Checkpointer(self.path / "checkpoints", keep)
        self.tb = self.path / "tb"
        self.samples = self.path / "samples"
        self.features = self.path / "features"

    def check(self, config_file: str | Path | None = None) -> None:
        """Refuse, before any training, every layout the run could not write into without loss."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--run-dir {self.path} is a file, not a directory")
        self.checkpoints.check_layout()
        for folder in (self.tb, self.samples, self.features):
            if folder.exists() and not folder.is_dir():
                raise UserError(f"{folder} exists and is not a directory; move it aside or use another --run-dir")
        if self.config.exists():
            if not self.config.is_file():
                raise UserError(f"{self.config} exists and is not a file; move it aside")
            if config_file is not None and Path(config_file).exists() and self.config.samefile(config_file):
                raise UserError(f"--config {config_file} is the file a run writes its resolved config to "
                                f"({self.config}); give the run a --run-dir of its own")
            self._check_mark()

    def _check_mark(self) -> None:
        with open(self.config, "rb") as f:
            if f.read(len(CONFIG_MARK.encode())) != CONFIG_MARK.encode():
                raise UserError(f"{self.config} was not written by ganaug train; move it aside or use another "
                                "--run-dir (a run never overwrites files it did not write, nor trains on them)")

    def saved_config(self) -> Path | None:
        """The config.yaml a resumed run starts from: the one this run wrote (None for a new run, or
        a run whose config.yaml is gone: its checkpoint's model is still checked against the data)."""
        if not (self.checkpoints.exist() and self.config.is_file()):
            return None
        self._check_mark()
        return self.config

    def prepare(self) -> None:
        """Create the folders the run writes into, proving they take files (rank 0, before step 1)."""
        for folder in (self.path, self.checkpoints.folder, self.tb, self.samples):
            ensure_writable_dir(folder, "--run-dir")
        self.checkpoints.clean_temporaries()

    def write_config(self, text: str) -> None:
        write_atomic(self.config, CONFIG_MARK + text)

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory for this process: a second trainer on it is refused with one line."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            yield
            return
        ensure_writable_dir(self.path, "--run-dir")
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another `ganaug train` is running on {self.path} (it holds {LOCK_NAME}); "
                                "wait for it to finish or stop it first") from None
            yield
        finally:
            os.close(fd)
