"""The one place the sampler imports onnxruntime: a missing runtime or two clashing ones said plainly.

onnxruntime comes in several distributions (onnxruntime for CPUs, onnxruntime-gpu, ...) that all
install the same `onnxruntime` package. ganaug depends on one of them through an extra
(`ganaug[cpu]` or `ganaug[gpu]`); when two are installed at once, the last one installed has
overwritten the other's files, and which providers work is anybody's guess.
"""

from __future__ import annotations

import importlib.metadata
import logging

from ganaug.errors import UserError

log = logging.getLogger(__name__)

# Distributions that each install the `onnxruntime` package.
DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-rocm",
    "onnxruntime-training",
)
INSTALL_HINT = "pip install 'ganaug[cpu]' (or 'ganaug[gpu]' on a host with an NVIDIA GPU)"


class RuntimeMissing(UserError, ImportError):
    """onnxruntime cannot be imported: one line for `ganaug sample`, an ImportError for library users."""


def installed_distributions() -> list[str]:
    """'name version' of each onnxruntime distribution installed in this environment."""
    found = []
    for name in DISTRIBUTIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def warn_if_several_installed() -> bool:
    """One WARNING line with the fix when several onnxruntime distributions are installed at once."""
    found = installed_distributions()
    if len(found) < 2:
        return False
    names = " ".join(entry.split()[0] for entry in found)
    log.warning(
        "%s are installed at once; they overwrite each other's files, so the providers that work "
        "are unpredictable. Fix: pip uninstall -y %s, then %s",
        " and ".join(found),
        names,
        INSTALL_HINT,
    )
    return True


def import_onnxruntime():
    """The onnxruntime module, or RuntimeMissing naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissing(f"onnxruntime cannot be imported ({exc}); {INSTALL_HINT}") from None
    warn_if_several_installed()
    return onnxruntime


ort = import_onnxruntime()
