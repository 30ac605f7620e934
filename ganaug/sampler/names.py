"""Class names from a model file become directory names: safe, unique, and in label order.

A model file is untrusted input. Whatever its class names say ("../../evil", "/etc/x", "", "a/b",
"CON", names that differ only in case), the result is a list of plain, distinct, non-empty single
path components, so the sampler can never write outside its output directory.

torchvision's ImageFolder numbers the class directories in `sorted()` order of their names. So
that its index of every image is the model's label, the directories must sort in label order:
when the safe names do not ("b, a", "0..11" which sorts "0, 1, 10, 11, 2", or names that only
sort wrongly once sanitised or deduplicated), every directory gets a zero-padded label prefix
("00_b", "01_a"). The rule looks at all of the model's classes, so one model always gets the same
directory names, whichever classes a run selects.
"""

from __future__ import annotations

import os
import re
import unicodedata

# Path separators, characters Windows refuses in file names, and control characters (NUL included).
_UNSAFE_CHARS = re.compile(r'[\\/<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
# The file name is "<dir>_<8 digits>.png" and must stay under the usual 255-byte limit.
_MAX_NAME_BYTES = 200
# Top-level names of the sampler's own files: a class directory must not take them.
RESERVED_NAMES = ("manifest.csv", "sample_info.json")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def sanitize_class_name(name: str, index: int) -> str:
    """One safe path component for a class name (not yet deduplicated)."""
    text = unicodedata.normalize("NFC", str(name))
    text = _UNSAFE_CHARS.sub("_", text)
    # Leading dots would hide the directory (and "." / ".." are not names); Windows drops trailing
    # dots and spaces, which would merge "a." with "a".
    text = text.strip().strip(".").strip()
    text = _truncate_utf8(text, _MAX_NAME_BYTES).rstrip(". ")
    if not text:
        return f"class_{index}"
    stem, dot, extension = text.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:  # Windows reserves "CON" and "CON.anything" alike
        text = f"{stem}_{dot}{extension}"
    return text


def _with_prefix(prefix: str, name: str) -> str:
    return prefix + _truncate_utf8(name, _MAX_NAME_BYTES - len(prefix)).rstrip(". ")


def class_dir_names(class_names: list[str] | tuple[str, ...]) -> list[str]:
    """Safe, distinct directory names, one per class, that sort in class order.

    Duplicates (after sanitising, compared case-insensitively because macOS and Windows file
    systems are) get a suffix _1, _2, ... in class order, so the mapping is deterministic. If the
    result does not sort in class order, each name gets its label as a zero-padded prefix.
    """
    taken = {name.casefold() for name in RESERVED_NAMES}
    result = []
    for index, name in enumerate(class_names):
        base = sanitize_class_name(name, index)
        candidate, suffix = base, 0
        while candidate.casefold() in taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        taken.add(candidate.casefold())
        result.append(candidate)
    if sorted(result) != result:
        # Equal-width digits then "_": the prefixes alone decide the order, and make names distinct.
        width = len(str(len(result) - 1))
        result = [_with_prefix(f"{label:0{width}d}_", name) for label, name in enumerate(result)]
    for name in result:
        # The invariant the rest of the sampler relies on; a failure here is a bug in this module.
        assert name and name not in (".", "..") and os.path.basename(name) == name and "\x00" not in name, (
            name
        )
    return result
