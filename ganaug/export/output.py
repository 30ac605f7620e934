"""The --out file: every check before the export starts, the file itself only at the very end.

The model is written to a temporary file in the destination folder and renamed over --out
(os.replace is atomic within a file system), so --out is either absent, the old file, or the
complete new model; never half a model. The temporary file is created up front, so a folder that
cannot be written fails in a second instead of after the export.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from ganaug.errors import UserError

log = logging.getLogger(__name__)


class AtomicOutput:
    """with AtomicOutput(path, force) as out: ...; out.commit(data). Leaves nothing on error."""

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.force = force
        self._tmp: Path | None = None
        self._check()

    def _check(self) -> None:
        path, parent = self.path, self.path.parent
        if path.is_dir():
            raise UserError(f"--out {path} is a directory; give the path of the .onnx file to write")
        if path.exists() and not self.force:
            raise UserError(f"--out {path} already exists; pass --force to replace it")
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {path} cannot be created: {parent} is a file, not a directory")
        if not parent.is_dir():
            raise UserError(f"--out {path} cannot be created: directory {parent} does not exist")

    def __enter__(self) -> AtomicOutput:
        # A plain exclusive create (not mkstemp) so the file gets the usual umask permissions.
        tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "xb"):
                pass
        except OSError as exc:
            raise UserError(f"--out {self.path} cannot be written: {exc.strerror or exc}") from None
        self._tmp = tmp
        return self

    def commit(self, data: bytes) -> None:
        """Write data to the temporary file, flush it to disk, and rename it to --out."""
        assert self._tmp is not None, "commit() outside the with block"
        try:
            with open(self._tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise UserError(f"--out {self.path} cannot be written: {exc.strerror or exc}") from None
        self._tmp = None

    def __exit__(self, *exc_info) -> None:
        if self._tmp is not None:  # not committed: an error happened, leave nothing behind
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
