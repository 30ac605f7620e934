"""The output directory: create it, decide between a fresh run, a resume and a refusal.

sample_info.json is written before the first image. On a later run (or another shard of the same
set) it tells whether the directory holds the same set of images (same model, seed, count,
classes, format...): then the run resumes and skips files already present and whole; otherwise it
is refused unless --overwrite, which removes only files the earlier run wrote. That record is the
only proof ganaug wrote anything here: without a readable one, --overwrite deletes nothing. A non-empty
directory without sample_info.json is never written into: that would mix synthetic images into
someone's data. Callers hold the state lock (locks.py).
"""

from __future__ import annotations

import json
import os
import re

from ganaug import safejson
from ganaug.errors import UserError
from ganaug.files import is_temporary
from ganaug.nested import changed_leaves
from ganaug.sampler.locks import Claim, is_coordination_file
from ganaug.sampler.scores import remove_records
from ganaug.sampler.shards import Shard
from ganaug.sampler.writers import write_file_atomic

INFO_NAME = "sample_info.json"
MANIFEST_NAME = "manifest.csv"
SHARD_PATTERN = re.compile(r"shard_\d{5,}\.npz")
# sample_info.json holds the class names three times (model, counts, directories): 16 MiB of names
# at most (meta.MAX_VALUE_CHARS), so this is ample; it nests 3 levels deep.
MAX_INFO_CHARS = 128 << 20
MAX_INFO_DEPTH = 8


def png_pattern(class_dir: str) -> re.Pattern:
    return re.compile(re.escape(class_dir) + r"_\d{8,}\.png")


def create_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {path}: {exc.strerror or exc}") from None


def read_info(path: str) -> dict | None:
    """The earlier run's sample_info.json, None when there is none. It may have been tampered with:
    its size and nesting are bounded before it is parsed."""
    info_path = os.path.join(path, INFO_NAME)
    try:
        with open(info_path, encoding="utf-8") as f:
            text = f.read(MAX_INFO_CHARS + 1)
        if len(text) > MAX_INFO_CHARS:
            raise ValueError(f"longer than {MAX_INFO_CHARS >> 20} Mi characters")
        info = safejson.loads(text, max_depth=MAX_INFO_DEPTH)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc) if len(str(exc)) <= 200 else str(exc)[:197] + "..."
        raise UserError(f"cannot read {info_path} ({reason}); {_UNPROVEN}") from None
    # The fields that steer resuming and deleting, checked like any input (it is a file from disk).
    class_dirs = info.get("class_dirs", []) if isinstance(info, dict) else None
    if not (isinstance(info, dict) and isinstance(info.get("identity"), dict) and isinstance(class_dirs, list)
            and all(isinstance(name, str) for name in class_dirs)):
        raise UserError(f"{info_path} is not a ganaug sample_info.json (no identity object, or class_dirs not a "
                        f"list of names); {_UNPROVEN}")
    return info


# Without its record, ganaug cannot prove which files in a directory it wrote, so it deletes none.
_UNPROVEN = ("ganaug cannot tell which files there it wrote, so it deletes none: move them aside or choose "
             "another --out")


def write_info(path: str, info: dict) -> None:
    data = (json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    write_file_atomic(os.path.join(path, INFO_NAME), data, fsync=True)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(old: dict, new: dict) -> list[str]:
    """'seed 1 there, 2 now'; settings that are dicts on both sides (the filter) by their own keys."""
    return [f"{key} {_shown(a)} there, {_shown(b)} now" for key, a, b in changed_leaves(old, new)]


def _is_plain_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and os.path.basename(name) == name
        and "\\" not in name
        and "\x00" not in name
    )


def remove_previous_output(path: str, old_info: dict, keep: Claim) -> None:
    """Delete what an earlier run wrote (its images, shards, manifest, markers, scores, info), nothing else;
    `keep` is this run's own claim. Only with no other run writing to `path`, and only with the earlier
    run's record (`old_info`, checked by read_info)."""
    for class_dir in old_info.get("class_dirs", []):
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
        if entry.path == keep.path:
            continue
        if entry.is_file(follow_symlinks=False) and (
            SHARD_PATTERN.fullmatch(entry.name) or is_temporary(entry.name) or entry.name == MANIFEST_NAME
            or is_coordination_file(entry.name)
        ):
            os.unlink(entry.path)
    remove_records(path)  # a filtered set's scores (DIR/.scores-*.npy)
    # Last: until it is gone, an interrupted --overwrite can be repeated and still knows what to remove.
    info_path = os.path.join(path, INFO_NAME)
    if os.path.isfile(info_path) and not os.path.islink(info_path):
        os.unlink(info_path)


def open_for_run(path: str, identity: dict, overwrite: bool, running: list[Shard], claim: Claim) -> dict | None:
    """Check the directory against this run; return the set's sample_info.json when resuming it
    (None for a fresh start). `running`: the shards other processes write now."""
    old_info = read_info(path)
    if old_info is not None and old_info.get("identity") == identity:
        return old_info
    if old_info is not None and not overwrite:
        old_identity = old_info.get("identity")
        differences = _differences(old_identity, identity) if isinstance(old_identity, dict) else ["unknown"]
        raise UserError(
            f"{path} holds samples made with other settings ({'; '.join(differences)}); "
            "choose another --out or pass --overwrite to replace them"
        )
    if overwrite and old_info is not None:  # the record of what an earlier run wrote: only that goes
        if running:
            raise UserError(f"cannot --overwrite {path} while `ganaug sample --shard {running[0]}` is writing to it")
        remove_previous_output(path, old_info, claim)
        return None  # files of the user's own beside the old set stay, as they did
    foreign = [name for name in os.listdir(path) if not (is_temporary(name) or is_coordination_file(name))]
    if foreign:
        raise UserError(
            f"{path} is not empty and has no {INFO_NAME} (e.g. {sorted(foreign)[0]!r}); refusing to "
            "mix synthetic images into it: choose a new or empty directory"
        )
    return None
