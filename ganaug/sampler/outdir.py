"""The output directory: create it, lock it, decide between a fresh run, a resume and a refusal.

sample_info.json is written before the first image. On a later run it tells whether the directory
holds the same set of images (same model, seed, count, classes, format...): then the run resumes
and skips files already present; otherwise it is refused unless --overwrite, which removes only
files the earlier run wrote. A non-empty directory without sample_info.json is never written
into: that would mix synthetic images into someone's data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

from ganaug.errors import UserError
from ganaug.files import is_temporary
from ganaug.sampler.writers import write_file_atomic

INFO_NAME = "sample_info.json"
MANIFEST_NAME = "manifest.csv"
SHARD_PATTERN = re.compile(r"shard_\d{5,}\.npz")


def png_pattern(class_dir: str) -> re.Pattern:
    return re.compile(re.escape(class_dir) + r"_\d{8,}\.png")


def create_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def exclusive_lock(path: str):
    """Refuse a second `ganaug sample` on the same directory while this one runs (flock on the
    directory itself: no lock file to leave behind; released by the kernel if we are killed)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are the user's business
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `ganaug sample` is writing to {path}") from None
        yield
    finally:
        os.close(fd)


def read_info(path: str) -> dict | None:
    """The earlier run's sample_info.json, None when there is none."""
    info_path = os.path.join(path, INFO_NAME)
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {info_path} ({exc}); pass --overwrite to replace this output") from None
    if not isinstance(info, dict):
        raise UserError(
            f"{info_path} is not a ganaug sample_info.json; pass --overwrite to replace this output"
        )
    return info


def write_info(path: str, info: dict) -> None:
    data = (json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    write_file_atomic(os.path.join(path, INFO_NAME), data, fsync=True)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        f"{key} {old.get(key)!r} there, {new.get(key)!r} now" for key in keys if old.get(key) != new.get(key)
    ]


def _is_plain_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and os.path.basename(name) == name
        and "\\" not in name
        and "\x00" not in name
    )


def remove_previous_output(path: str, old_info: dict | None) -> None:
    """Delete what an earlier run wrote (its images, shards, manifest, info), nothing else."""
    for class_dir in (old_info or {}).get("class_dirs", []):
        if not _is_plain_name(class_dir):
            continue  # a tampered sample_info.json must not steer deletions elsewhere
        directory = os.path.join(path, class_dir)
        if not os.path.isdir(directory) or os.path.islink(directory):
            continue
        pattern = png_pattern(class_dir)
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) and (
                pattern.fullmatch(entry.name) or is_temporary(entry.name)
            ):
                os.unlink(entry.path)
        if not os.listdir(directory):  # keep a directory that also holds files we did not write
            os.rmdir(directory)
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and (
            SHARD_PATTERN.fullmatch(entry.name) or is_temporary(entry.name) or entry.name == MANIFEST_NAME
        ):
            os.unlink(entry.path)
    # Last: until it is gone, an interrupted --overwrite can be repeated and still knows what to remove.
    info_path = os.path.join(path, INFO_NAME)
    if os.path.isfile(info_path) and not os.path.islink(info_path):
        os.unlink(info_path)


def open_for_run(path: str, identity: dict, overwrite: bool) -> bool:
    """Check the directory against this run; return True when resuming an earlier one.

    Call with the directory locked.
    """
    try:
        old_info = read_info(path)
    except UserError:
        if not overwrite:
            raise
        old_info = None
    if old_info is not None:
        old_identity = old_info.get("identity")
        if old_identity == identity:
            return True
        if not overwrite:
            differences = (
                _differences(old_identity, identity) if isinstance(old_identity, dict) else ["unknown"]
            )
            raise UserError(
                f"{path} holds samples made with other settings ({'; '.join(differences)}); "
                "choose another --out or pass --overwrite to replace them"
            )
        remove_previous_output(path, old_info)
        return False
    if overwrite:
        remove_previous_output(path, None)
    foreign = [name for name in os.listdir(path) if not is_temporary(name)]
    if foreign:
        raise UserError(
            f"{path} is not empty and has no {INFO_NAME} (e.g. {sorted(foreign)[0]!r}); refusing to "
            "mix synthetic images into it: choose a new or empty directory"
        )
    return False
