"""JSON from untrusted files (model metadata, a sample_info.json left in --out), bounded before parsing.

json.loads recurses once per nesting level, so "[[[[..." 100,000 deep is a RecursionError, not a
ValueError; and it converts integers of any length, so a 5,000-digit number is a ValueError of its
own. Callers bound the text's length; this bounds its nesting before json.loads sees it.
"""

from __future__ import annotations

import json
import re

import numpy as np

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # brackets inside strings are not nesting


def nesting_depth(text: str) -> int:
    """The deepest nesting of [ ] and { } outside strings (1 for a flat list)."""
    skeleton = np.frombuffer(_STRING.sub('""', text).encode("utf-8", "replace"), dtype=np.uint8)
    opens = (skeleton == ord("[")) | (skeleton == ord("{"))
    closes = (skeleton == ord("]")) | (skeleton == ord("}"))
    steps = opens.astype(np.int64) - closes
    return int(np.cumsum(steps).max()) if steps.size else 0


class TooDeep(ValueError):
    pass


def loads(text: str, max_depth: int):
    """json.loads, but TooDeep (a ValueError) for nesting deeper than max_depth; ValueError for any other
    bad JSON."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise TooDeep(f"nested {depth} levels deep (at most {max_depth})")
    return json.loads(text)  # a ValueError for bad JSON and for integers too long to convert
