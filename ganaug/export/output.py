"""The --out file: every check before the export starts, the file itself only at the very end.

`OutputFile(path, force)` checks the destination at once (not a directory, device or other
non-regular file; no silent replacement without --force; a folder that takes files) so a mistake
fails in a second instead of after the export. `commit(data)` then writes the model through the
shared atomic writer: --out is either absent, the old file, or the complete new model.
"""

from __future__ import annotations

import os
from pathlib import Path

from ganaug.errors import UserError
from ganaug.files import check_regular_target, clean_temporaries, temporary_beside, write_atomic

# --out's folder is the user's and may hold other writers' temporaries in flight: only ones
# untouched this long are a killed export's leftovers (a model is written in well under a minute).
STALE_TEMPORARY_S = 600


class OutputFile:
    def __init__(self, path: str | Path, force: bool = False):
        self.path, self.force = Path(path), force
        self._check(force)

    def _check(self, force: bool) -> None:
        path, parent = self.path, self.path.parent
        if path.is_dir():
            raise UserError(f"--out {path} is a directory; give the path of the .onnx file to write")
        check_regular_target(path, "--out")
        if path.exists() and not force:
            raise UserError(f"--out {path} already exists; pass --force to replace it")
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {path} cannot be created: {parent} is a file, not a directory")
        if not parent.is_dir():
            raise UserError(f"--out {path} cannot be created: directory {parent} does not exist")
        probe = temporary_beside(path)
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"--out {path} cannot be written: {exc.strerror or exc}") from None

    def commit(self, data: bytes) -> None:
        """Write the model, durable before it replaces an older file; without --force, only where no
        file appeared meanwhile (two exports to one path: the second is refused, not a silent winner)."""
        try:
            write_atomic(self.path, data, fsync=True, replace=self.force)  # checks the path again, too
        except UserError as exc:
            if self.force or not self.path.exists():
                raise
            raise UserError(f"--out {self.path} appeared while exporting (another export?); nothing was "
                            "replaced: pass --force to replace it") from exc
        clean_temporaries(self.path.parent, older_than_s=STALE_TEMPORARY_S)
