"""Progress: a tqdm bar when tqdm is installed (it is optional here), else a log line now and then."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, total: int, enabled: bool = True, unit: str = "img", log_every_s: float = 10.0):
        self.total = total
        self.done = 0
        self._enabled = enabled
        self._bar = None
        self._start = time.monotonic()
        self._last_log = self._start
        self._log_every_s = log_every_s
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True, smoothing=0.05)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._enabled:
            now = time.monotonic()
            if now - self._last_log >= self._log_every_s:
                self._last_log = now
                rate = self.done / max(now - self._start, 1e-9)
                log.info("%d/%d images (%.0f images/s)", self.done, self.total, rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
