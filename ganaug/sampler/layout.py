"""The sample-set directory (docs/sampler.md, "Output layout"): every name in it, the split into shards,
and sample_info.json, ganaug's only proof of which files there it wrote: without a readable one, a
non-empty directory is never written into and --overwrite deletes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from ganaug import safejson
from ganaug.errors import UserError
from ganaug.files import is_temporary
from ganaug.nested import changed_leaves
from ganaug.sampler.formats import write_file

INFO_NAME, MANIFEST_NAME = "sample_info.json", "manifest.csv"
NPZ_PATTERN = re.compile(r"shard_\d{5,}\.npz")
# a shard's lock file and done marker (.shard-I-of-N.lock|done), a score record (.scores-I-of-N-B.npy)
_OWN_FILE = re.compile(r"\.(?:shard|scores)-([0-9]{1,9})-of-([0-9]{1,9})(?:-([0-9]{9,18}))?\.(lock|done|npy)")
_UNSAFE_CHARS = re.compile(r'[\\/<>:"|?*\x00-\x1f\x7f]')  # separators, Windows-reserved, control characters
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_MAX_NAME_BYTES = 200  # "<dir>_<8 digits>.png" stays under the usual 255-byte limit
MAX_SHARDS = 1 << 20
# The class names appear three times: 16 Mi characters of names at most (contract.MAX_VALUE_CHARS).
MAX_INFO_CHARS, MAX_INFO_DEPTH = 128 << 20, 8
_UNPROVEN = "ganaug cannot tell which files there it wrote, so it deletes none: move them aside or choose another --out"


@dataclass(frozen=True, order=True)
class Shard:
    """`--shard INDEX/COUNT`: PNG images i with i % COUNT == INDEX; .npz files k with k % COUNT == INDEX."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        assert 0 <= self.index < self.count, self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def image_indices(self, start: int, stop: int) -> np.ndarray:
        """int64 image indices in [start, stop) of this shard."""
        return np.arange(start + (self.index - start) % self.count, stop, self.count, dtype=np.int64)

    def image_count(self, n: int) -> int:
        return len(range(self.index, n, self.count))


def parse_shard(text: str | None) -> Shard:
    """'3/8' -> Shard(3, 8); None -> the whole set."""
    if text is None:
        return Shard()
    if not (match := re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())):
        raise UserError(f"--shard {text!r} is not INDEX/COUNT (e.g. --shard 3/8, indices 0 .. COUNT-1)")
    index, count = (int(part) if len(part) <= 9 else MAX_SHARDS + 1 for part in match.groups())
    if not 1 <= count <= MAX_SHARDS:
        raise UserError(f"--shard {text}: COUNT must be 1 .. {MAX_SHARDS}, got {match[2]}")
    if index >= count:
        raise UserError(f"--shard {text}: INDEX must be 0 .. {count - 1} (COUNT - 1), got {match[1]}")
    return Shard(index, count)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def class_dir_names(class_names: list[str] | tuple[str, ...]) -> list[str]:
    """Safe, distinct directory names, one per class, that sort in class order (ImageFolder numbers them in
    sorted() order). Duplicates, compared case-insensitively as macOS and Windows do, get _1, _2, ... in
    class order; where the names do not sort in class order, each gets its zero-padded label as a prefix."""
    taken, result = {INFO_NAME, MANIFEST_NAME}, []
    for index, name in enumerate(class_names):
        text = _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", name))
        # Leading dots hide a directory; Windows drops trailing dots and spaces ("a." would merge with "a").
        text = _truncate_utf8(text.strip().strip(".").strip(), _MAX_NAME_BYTES).rstrip(". ") or f"class_{index}"
        stem, dot, extension = text.partition(".")
        base = candidate = f"{stem}_{dot}{extension}" if stem.upper() in _WINDOWS_RESERVED else text  # "CON.txt" too
        suffix = 0
        while candidate.casefold() in taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        taken.add(candidate.casefold())
        result.append(candidate)
    if sorted(result) != result:  # equal-width digits then "_": the prefixes alone decide the order
        width = len(str(len(result) - 1))
        result = [(prefix := f"{label:0{width}d}_") + _truncate_utf8(name, _MAX_NAME_BYTES - len(prefix)).rstrip(". ")
                  for label, name in enumerate(result)]
    assert all(name and name not in (".", "..") and os.path.basename(name) == name for name in result), result
    return result


class Layout:
    """Where image i of a set lives."""

    def __init__(self, out_dir: str, fmt: str, class_dirs: list[str], shard_size: int):
        self.out_dir, self.format, self.class_dirs, self.shard_size = out_dir, fmt, class_dirs, shard_size
        self.manifest_path = os.path.join(out_dir, MANIFEST_NAME)

    def relative_path(self, index: int, label: int) -> str:
        if self.format == "png":
            return f"{self.class_dirs[label]}/{self.class_dirs[label]}_{index:08d}.png"
        return f"shard_{index // self.shard_size:05d}.npz"

    def path(self, index: int, label: int) -> str:
        return os.path.join(self.out_dir, *self.relative_path(index, label).split("/"))

    def file_path(self, k: int) -> str:
        return os.path.join(self.out_dir, f"shard_{k:05d}.npz")

    def png_indices(self, label: int) -> list[int]:
        """The indices of the PNGs in class `label`'s directory, by their names."""
        directory, pattern = self.class_dirs[label], png_pattern(self.class_dirs[label])
        with contextlib.suppress(OSError):
            return [int(name[len(directory) + 1:-4]) for name in os.listdir(os.path.join(self.out_dir, directory))
                    if pattern.fullmatch(name)]
        return []


def png_pattern(class_dir: str) -> re.Pattern:
    return re.compile(re.escape(class_dir) + r"_\d{8,}\.png")


def shard_file_name(shard: Shard, kind: str) -> str:
    """A shard's lock file (kind "lock": held while it writes) or done marker ("done")."""
    return f".shard-{shard.index}-of-{shard.count}.{kind}"


def record_name(shard: Shard, block: int) -> str:
    return f".scores-{shard.index}-of-{shard.count}-{block:09d}.npy"


def scan(out_dir: str, kind: str) -> list[tuple[Shard, int, str]]:
    """(shard, block (0 but for records), path) of the "lock" files, "done" markers or score records ("npy")."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(out_dir):
            match = _OWN_FILE.fullmatch(entry.name)
            if match and match[4] == kind and int(match[1]) < int(match[2]) and entry.is_file(follow_symlinks=False):
                found.append((Shard(int(match[1]), int(match[2])), int(match[3] or 0), entry.path))
    return sorted(found)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_info(out_dir: str) -> dict | None:
    """The set's sample_info.json, None when there is none. A file from disk: its size and nesting are
    bounded before it is parsed, and the fields that steer resuming and deleting checked."""
    path = os.path.join(out_dir, INFO_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_INFO_CHARS + 1)
        if len(text) > MAX_INFO_CHARS:
            raise ValueError(f"longer than {MAX_INFO_CHARS >> 20} Mi characters")
        info = safejson.loads(text, max_depth=MAX_INFO_DEPTH)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"cannot read {path} ({_short(str(exc), 200)}); {_UNPROVEN}") from None
    class_dirs = info.get("class_dirs", []) if isinstance(info, dict) else None
    if not (isinstance(info, dict) and isinstance(info.get("identity"), dict) and isinstance(class_dirs, list)
            and all(isinstance(name, str) for name in class_dirs)):
        raise UserError(f"{path} is not a ganaug sample_info.json (no identity object, or class_dirs not a "
                        f"list of names); {_UNPROVEN}")
    return info


def write_info(out_dir: str, info: dict) -> None:
    data = json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_file(os.path.join(out_dir, INFO_NAME), data.encode("utf-8"), fsync=True)


def open_for_run(out_dir: str, identity: dict, overwrite: bool, running: list[Shard], keep: str) -> bool:
    """Check the directory against this run (under the state lock): True to resume the same set, False for a
    fresh start; a refusal is a UserError. `running`: shards other processes write; `keep`: our lock file."""
    old_info = read_info(out_dir)
    if old_info is not None and old_info["identity"] == identity:
        return True
    if old_info is not None and not overwrite:
        differences = "; ".join(f"{key} {_short(repr(a), 80)} there, {_short(repr(b), 80)} now"
                                for key, a, b in changed_leaves(old_info["identity"], identity))
        raise UserError(f"{out_dir} holds samples made with other settings ({differences}); "
                        "choose another --out or pass --overwrite to replace them")
    if old_info is None:
        foreign = [name for name in os.listdir(out_dir) if not is_temporary(name) and not re.fullmatch(
            r"\.shard-[0-9]{1,9}-of-[0-9]{1,9}\.(lock|done)", name)]
        if foreign:
            raise UserError(f"{out_dir} is not empty and has no {INFO_NAME} (e.g. {sorted(foreign)[0]!r}); refusing "
                            "to mix synthetic images into it: choose a new or empty directory")
        return False
    if running:
        raise UserError(f"cannot --overwrite {out_dir} while `ganaug sample --shard {running[0]}` is writing to it")
    # --overwrite: delete what the recorded run wrote, nothing else (a tampered record steers nothing elsewhere)
    for class_dir in old_info.get("class_dirs", []):
        directory, pattern = os.path.join(out_dir, class_dir), png_pattern(class_dir)
        if (class_dir in ("", ".", "..") or os.path.basename(class_dir) != class_dir or {"\\", "\x00"} & set(class_dir)
                or not os.path.isdir(directory) or os.path.islink(directory)):
            continue
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) and (pattern.fullmatch(entry.name) or is_temporary(entry.name)):
                os.unlink(entry.path)
        if not os.listdir(directory):  # a directory that also holds files of the user's stays
            os.rmdir(directory)
    for entry in os.scandir(out_dir):
        if entry.path != keep and entry.is_file(follow_symlinks=False) and (
                NPZ_PATTERN.fullmatch(entry.name) or is_temporary(entry.name) or entry.name == MANIFEST_NAME
                or _OWN_FILE.fullmatch(entry.name)):
            os.unlink(entry.path)
    # Last: until it is gone, an interrupted --overwrite can be repeated and still knows what to remove.
    if os.path.isfile(info_path := os.path.join(out_dir, INFO_NAME)) and not os.path.islink(info_path):
        os.unlink(info_path)
    return False
