"""Recognise webhook deliveries seen before, in bounded memory.

Carriers re-send a webhook when they did not get (or did not like) the
answer, and an attacker who captured a signed request can send it again:
either way the request must be processed once. A request is known by one or
more keys (Twilio's ``I-Twilio-Idempotency-Token``, its signature); the
first delivery is processed and its response kept, later ones get that same
response. A duplicate that arrives while the first is still being processed
waits for it rather than racing it.

Memory is bounded twice: at most ``size`` entries (least recently added go
first) and nothing older than ``window`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..lru import Bounded

R = TypeVar("R")


@dataclass
class Entry(Generic[R]):
    keys: tuple[str, ...]
    created: float
    done: threading.Event = field(default_factory=threading.Event)
    response: R | None = None


class ReplayGuard(Generic[R]):
    def __init__(self, size: int = 4096, window: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        # Bounded keeps at most ``size`` keys; ``_expire`` drops the old ones.
        self._entries: Bounded[str, Entry[R]] = Bounded(size)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _expire(self, now: float) -> None:
        stale = []
        for key in self._entries:  # oldest first
            entry = self._entries.get(key)
            if entry is not None and now - entry.created <= self.window:
                break
            stale.append(key)
        for key in stale:
            self._entries.pop(key)

    def begin(self, keys: Iterable[str]) -> tuple[Entry[R], bool]:
        """Returns (entry, first). ``first`` means: process the request, then
        call ``finish``; otherwise it is a replay of ``entry``."""
        wanted = tuple(k for k in keys if k)
        now = self._clock()
        with self._lock:
            self._expire(now)
            for key in wanted:
                seen = self._entries.get(key)
                if seen is not None:
                    return seen, False
            entry: Entry[R] = Entry(wanted, now)
            for key in wanted:
                self._entries.put(key, entry)
            return entry, True

    def finish(self, entry: Entry[R], response: R) -> None:
        entry.response = response
        entry.done.set()

    def abandon(self, entry: Entry[R]) -> None:
        """Processing failed: forget the request so a retry is processed."""
        with self._lock:
            for key in entry.keys:
                if self._entries.get(key) is entry:
                    self._entries.pop(key)
        entry.done.set()

    def wait(self, entry: Entry[R], timeout: float) -> R | None:
        """The first delivery's response (None if it failed or is still running)."""
        entry.done.wait(timeout)
        return entry.response
