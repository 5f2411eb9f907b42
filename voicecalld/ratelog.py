"""Warnings about requests the daemon refuses, at a bounded rate.

Anyone who can reach the webhook can make the daemon refuse requests
(forged signatures, streams beyond the caps); one log line per request
would let them fill the journal. ``RateLimitedLog`` writes the first
warning of a kind at once, then at most one per ``interval`` seconds,
each saying how many were left out since the previous one. Kinds are
counted apart, so a flood of one does not hide the first of another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .lru import Bounded

INTERVAL = 10.0  # seconds between two warnings of one kind
MAX_KINDS = 64   # kinds remembered; the oldest is forgotten beyond it


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: kind -> (when its last warning was written, how many were left out since)
        self._kinds: Bounded[str, tuple[float, int]] = Bounded(MAX_KINDS)

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a warning of ``kind`` was written
        less than ``interval`` seconds ago; True if it was written."""
        now = self._clock()
        with self._lock:
            last = self._kinds.get(kind)
            if last is not None and now - last[0] < self.interval:
                self._kinds.put(kind, (last[0], last[1] + 1))
                return False
            skipped = last[1] if last is not None else 0
            self._kinds.put(kind, (now, 0))
        more = f" ({skipped} more since the last warning)" if skipped else ""
        self.logger.warning(message + "%s", *args, more)
        return True
