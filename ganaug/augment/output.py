"""The output directory of `ganaug augment`: an ImageFolder tree, manifest.csv, and nothing else of ours.

DIR/<class_dir>/<source>_<index>.png holds each image once; the class directories are the
sampler's (`class_dir_names`), so torchvision's ImageFolder index of every image is its label.
Nothing but class directories is made in DIR (ImageFolder would take any other folder for a class):
the work files (state, fold generators, teachers) live in the work directory beside it.

manifest.csv has one row per image: path, label, class_name, source (real | synthetic | pseudo),
origin (the labelled row, generator image index or unlabelled image it came from), confidence (the
teacher's probability of the label; empty for real images), weight (sample with these weights to
train on the measured mix) and model (sha256 of the generator or teacher that made or labelled it).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ganaug.contract import class_dir_names
from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.sampler.layout import encode_png

MANIFEST = "manifest.csv"
COLUMNS = ("path", "label", "class_name", "source", "origin", "confidence", "weight", "model")
SOURCES = ("real", "synthetic", "pseudo")
STATE = "state.json"


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def claim(out: Path, work: Path) -> None:
    """Refuse an --out that holds anything ganaug augment did not write: it never writes into, or
    deletes from, a user's folder. Its record of having written DIR is the work directory's state."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (work / STATE).is_file():
        raise UserError(f"--out {out} is not empty and was not written by ganaug augment "
                        f"(no {work / STATE}); use an empty or new directory")
    for path, flag in ((out, "--out"), (work, "--work-dir")):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{flag} {path}: cannot create it: {exc.strerror or exc}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path} is not writable")


class Tree:
    """Writes images into DIR's class directories; a file already under its final name is whole
    (every write is atomic), so a resumed run skips it."""

    def __init__(self, root: Path, class_names: list[str]):
        self.root = root
        self.class_names = list(class_names)
        self.dirs = class_dir_names(self.class_names)

    def relative(self, source: str, label: int, index: int) -> str:
        assert source in SOURCES, source
        return f"{self.dirs[label]}/{source}_{index:08d}.png"

    def write(self, relative: str, image_hwc: np.ndarray) -> None:
        path = self.root / relative
        if path.is_file():
            return
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, encode_png(np.ascontiguousarray(image_hwc)))

    def row(self, source: str, label: int, index: int, origin: str, confidence: float | None,
            model: str) -> dict:
        return {"path": self.relative(source, label, index), "label": int(label),
                "class_name": self.class_names[label], "source": source, "origin": origin,
                "confidence": "" if confidence is None else f"{confidence:.6f}", "weight": "", "model": model}


def row_order(row: dict) -> tuple[int, int]:
    """Real, synthetic, pseudo-labelled; each by index: one order however the shards finished."""
    return SOURCES.index(row["source"]), int(row["path"].rsplit("_", 1)[1].removesuffix(".png"))


def with_weights(rows: list[dict], synthetic_share: float) -> list[dict]:
    """Each real and pseudo-labelled image weight 1; the synthetic images together `synthetic_share`
    of the total weight, the mix the estimate measured (WeightedRandomSampler on this column)."""
    synthetic = sum(row["source"] == "synthetic" for row in rows)
    others = len(rows) - synthetic
    synthetic_weight = synthetic_share / (1 - synthetic_share) * others / synthetic if synthetic else 0.0
    return [{**row, "weight": f"{synthetic_weight if row['source'] == 'synthetic' else 1.0:.6g}"} for row in rows]


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_rows(path: Path, rows: list[dict]) -> None:
    write_atomic(path, csv_text(rows), fsync=True)


def read_rows(path: Path) -> list[dict]:
    """A part manifest this run wrote earlier (a shard's pseudo-labelled images), checked: it is a
    file ganaug reads back, so a damaged one is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError(f"its columns are {reader.fieldnames}, not {list(COLUMNS)}")
            rows = list(reader)
    except (OSError, ValueError, csv.Error) as exc:
        raise UserError(f"{path} is unreadable ({exc}); delete it to redo that shard") from None
    for row in rows:
        if row["source"] not in SOURCES or not row["label"].isdigit():
            raise UserError(f"{path} has a row that ganaug augment did not write ({row['path']!r}); "
                            "delete it to redo that shard")
    return rows
