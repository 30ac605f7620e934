"""Logging set-up: INFO on rank 0, WARNING on other ranks, each line prefixed with its rank."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(rank: int | None = None) -> None:
    """Configure the `ganaug` logger once per process; safe to call again after the rank is known."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    logger = logging.getLogger("ganaug")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank{rank}] %(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
