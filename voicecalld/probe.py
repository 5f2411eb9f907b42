"""Reachability probes: does the public URL lead to *this* daemon?

``voicecallctl doctor`` asks the daemon for a fresh token over the control
socket (``daemon.probe``), requests ``GET /healthz?probe=TOKEN`` through the
public URL, then asks the daemon whether that token arrived. ``/healthz``
answers exactly as it always does, so the public side learns nothing: an
unknown token is ignored, and only the control socket can issue a token or
tell whether it was seen. Tokens are random, few (``LIMIT``) and short-lived
(``TTL``).
"""

from __future__ import annotations

import secrets
import threading
import time

from .lru import Bounded

TTL = 120.0
LIMIT = 32


class Probes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # token -> (issued, seen); the oldest tokens go first once over LIMIT
        self._tokens: Bounded[str, tuple[float, bool]] = Bounded(LIMIT)

    def _live(self, token: str, now: float) -> tuple[float, bool] | None:
        entry = self._tokens.get(token)
        if entry is not None and now - entry[0] > TTL:
            self._tokens.pop(token)
            return None
        return entry

    def issue(self) -> str:
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._tokens.put(token, (time.monotonic(), False))
        return token

    def arrived(self, token: str) -> None:
        """A request carried ``token`` (unknown or expired tokens are ignored)."""
        with self._lock:
            entry = self._live(token, time.monotonic())
            if entry is not None:
                self._tokens.put(token, (entry[0], True))

    def seen(self, token: str) -> bool | None:
        """Whether ``token`` arrived; None if it is unknown or expired."""
        with self._lock:
            entry = self._live(token, time.monotonic())
            return None if entry is None else entry[1]
