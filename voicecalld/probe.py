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
from collections import OrderedDict

TTL = 120.0
LIMIT = 32


class Probes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, tuple[float, bool]] = OrderedDict()  # token -> (issued, seen)

    def _expire(self, now: float) -> None:
        while self._tokens:
            token, (issued, _) = next(iter(self._tokens.items()))
            if now - issued <= TTL and len(self._tokens) <= LIMIT:
                break
            self._tokens.popitem(last=False)

    def issue(self) -> str:
        token = secrets.token_urlsafe(18)
        now = time.monotonic()
        with self._lock:
            self._tokens[token] = (now, False)
            self._expire(now)
        return token

    def arrived(self, token: str) -> None:
        """A request carried ``token`` (unknown tokens are ignored)."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is not None:
                self._tokens[token] = (entry[0], True)

    def seen(self, token: str) -> bool | None:
        """Whether ``token`` arrived; None if it is unknown or expired."""
        with self._lock:
            self._expire(time.monotonic())
            entry = self._tokens.get(token)
            return None if entry is None else entry[1]
