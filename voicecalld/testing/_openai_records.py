"""What the fake Realtime service keeps of a connection, and the small
pieces its connections share: ``SessionService`` (what a session asks of
the server), ``RealtimeRecord`` (everything one
connection saw, for test assertions), ``Outbox`` (server events due at a
time) and ``ArrivalStamps`` (when each client message came off the socket).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from werkzeug.datastructures import Headers


class SessionService(Protocol):
    """What every fake Realtime session (transcription, speech-to-speech)
    asks of the fake server (``fake_openai.FakeOpenAI``)."""

    session_lifetime: float | None
    transcription_models: set[str]
    transcription_delay_s: float

    @property
    def stopping(self) -> bool: ...

    def _next_transcript(self) -> str | dict[str, Any]: ...

    def _frame_triggers_drop(self) -> bool: ...


@dataclass
class RealtimeRecord:
    """Everything one realtime connection saw, for test assertions.

    ``audio_bytes`` holds the appended audio exactly as sent (base64-decoded,
    still in the session format: µ-law for ``audio/pcmu``). ``frames``
    counts ``input_audio_buffer.append`` events and ``append_times`` holds
    their arrival times (``time.monotonic`` when the message was read off the
    socket, see ``ArrivalStamps``), for latency measurements.
    """

    headers: Headers
    opened_at: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: bytearray = field(default_factory=bytearray)
    frames: int = 0
    append_times: list[float] = field(default_factory=list)
    transcripts: list[tuple[str, str]] = field(default_factory=list)  # (item_id, text) in turn order
    close_code: int | None = None  # None while open, or when the server dropped the socket
    dropped: bool = False
    rejected: str | None = None  # "beta" when refused for the OpenAI-Beta header
    session: dict[str, Any] | None = None
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float = 5.0) -> bool:
        return self._closed.wait(timeout)

    def note_closed(self, close_reason: int | None) -> None:
        """The connection is gone: its close code, unless the server dropped it."""
        if self.close_code is None and not self.dropped:
            self.close_code = close_reason
        self._closed.set()

    def sent_types(self) -> list[str]:
        return [event["type"] for event in self.sent]

    def received_types(self) -> list[str]:
        return [event.get("type", "") for event in self.events]


class Outbox:
    """Server events due at a time; ties keep insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()

    def put(self, due: float, event: dict[str, Any]) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), event))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[dict[str, Any]]:
        ready = []
        while self._heap and self._heap[0][0] <= now:
            ready.append(heapq.heappop(self._heap)[2])
        return ready


class ArrivalStamps(threading.Event):
    """The connection's ``event_class``: notes when each message was parsed
    off the socket, so latency figures do not include the time the message
    then waited for this fake's own connection thread."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: collections.deque[float] = collections.deque()

    def set(self) -> None:
        self.stamps.append(time.monotonic())
        super().set()
