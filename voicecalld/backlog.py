"""Final call records the log refused, kept until it takes them.

A call that ends while the log cannot be written (a full disk) gets no
later snapshot that would carry its end to disk, so its final record waits
here: it is written after the next write that succeeds, and retried every
``RETRY`` seconds meanwhile. Snapshots of live calls never wait here; their
next snapshot supersedes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .errors import StoreFailed
from .lru import Bounded
from .timers import Timer, TimerService

log = logging.getLogger(__name__)

RETRY = 1.0    # seconds between attempts while records wait
SIZE = 10_000  # records kept at most


class Backlog:
    def __init__(self, append: Callable[[dict[str, Any]], None], timers: TimerService) -> None:
        self._append = append  # the log's append; raises StoreFailed
        self.timers = timers
        self._lock = threading.Lock()
        self._records: Bounded[str, dict[str, Any]] = Bounded(SIZE)
        self._retry: Timer | None = None

    def __bool__(self) -> bool:
        return bool(self._records)

    def call_ids(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def keep(self, call_id: str, snapshot: dict[str, Any]) -> None:
        """The log refused the final record ``snapshot`` of ``call_id``."""
        with self._lock:
            self._records.put(call_id, snapshot)
            if self._retry is None:
                self._retry = self.timers.call_later(RETRY, self._retry_now)

    def write(self) -> bool:
        """Write what waits; True once nothing does. Writing one twice (two
        threads at once) is harmless: the lines are identical."""
        with self._lock:
            waiting = [(call_id, self._records.get(call_id)) for call_id in self._records]
        for call_id, snapshot in waiting:
            if snapshot is None:
                continue
            try:
                self._append(snapshot)
            except StoreFailed:
                return False
            with self._lock:
                if self._records.get(call_id) is snapshot:
                    self._records.pop(call_id)
            log.info("call %s: its final record is logged now", call_id)
        return True

    def _retry_now(self) -> None:
        done = self.write()
        with self._lock:
            self._retry = None
            if not done and self._records:
                self._retry = self.timers.call_later(RETRY, self._retry_now)
