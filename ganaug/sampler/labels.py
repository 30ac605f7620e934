"""Which class each image gets: a pure function of (index, class selection).

Image i gets the selected class at position i % k (k = number of selected classes, in model
order). So any prefix of the index range is as balanced as it can be (counts differ by at most
one, the first n % k classes getting the extra image), --per-class K is simply n = K * k, and the
label of an image never depends on n, the batch size or what was generated before.
"""

from __future__ import annotations

import numpy as np

from ganaug.contract import ModelMeta
from ganaug.errors import UserError


def class_index_of(meta: ModelMeta, name: str) -> int:
    """The model class index of a class name; an unknown or ambiguous name is a UserError."""
    matches = [index for index, class_name in enumerate(meta.class_names) if class_name == name]
    if not matches:
        valid = ", ".join(repr(n) for n in meta.class_names)
        raise UserError(f"unknown class {name!r}; the model's classes are: {valid}")
    if len(matches) > 1:
        # Picking one would label images with a class the user may not have meant.
        raise UserError(f"the model has {len(matches)} classes named {name!r} (labels "
                        f"{', '.join(map(str, matches))}); a name cannot tell them apart")
    return matches[0]


def select_classes(meta: ModelMeta, names: list[str] | None) -> tuple[int, ...]:
    """Model class indices for the given class names (all classes when None), in model order."""
    if names is None:
        return tuple(range(meta.num_classes))
    if not meta.conditional:
        raise UserError("--classes needs a class-conditional model; this model is unconditional")
    if not names:
        raise UserError("--classes is empty")
    selected = []
    for name in names:
        index = class_index_of(meta, name)
        if index in selected:
            raise UserError(f"class {name!r} is named twice in --classes")
        selected.append(index)
    return tuple(sorted(selected))


def parse_class_list(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b'] (spaces around names are ignored)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def labels_for(indices: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """int64 model class index of each image index."""
    return np.asarray(classes, dtype=np.int64)[np.asarray(indices, dtype=np.int64) % len(classes)]


def counts_per_class(n: int, classes: tuple[int, ...]) -> list[int]:
    """How many of images 0..n-1 each selected class gets (same order as `classes`)."""
    k = len(classes)
    return [n // k + (1 if position < n % k else 0) for position in range(k)]
