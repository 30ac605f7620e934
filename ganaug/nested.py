"""Where two nested settings dicts differ (torch-free: the sampler and the study both compare a
saved identity or fingerprint with the one of the run at hand)."""

from __future__ import annotations


def changed_leaves(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs, sorted by key; a key that is a
    dict on both sides is compared by its own keys, a key missing on one side reads as None there."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += changed_leaves(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes
