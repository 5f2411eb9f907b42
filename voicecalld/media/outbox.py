"""Writes to a socket that the media read loop (``loop.ReadLoop``) reads,
without ever blocking the writer: the loop thread itself writes (pongs and
closing handshakes), and a peer may stop reading at any time."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 512 * 1024  # unread bytes (about 30 s of a call's audio) before a peer is cut off


class Outbox:
    """Ordered writes to one socket of a ``ReadLoop`` that never block.

    ``send`` tries a non-blocking send; what the socket does not take waits
    here, behind nothing else, and the loop sends it when the socket is
    writable. The lock is only ever held for non-blocking work, so any
    thread (the loop's included) may send. The socket must be in
    non-blocking mode (no timeout either: Python waits for a socket with a
    timeout to be writable before sending, whatever the flags)."""

    def __init__(self, sock: socket.socket, want_write: Callable[[], None], name: str = "media",
                 limit: int = OUTBOX_LIMIT) -> None:
        self._sock = sock
        self._want_write = want_write  # asks the loop to flush once the socket is writable
        self.name = name
        self._limit = limit
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._watching = False  # the loop was asked to wait for the socket to be writable
        self._failed: str | None = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def send(self, data: bytes) -> int:
        """Write ``data`` after whatever is waiting; returns ``len(data)``.
        Raises OSError once the connection failed, was given up or closed."""
        size = len(data)
        watch = cut = False
        with self._lock:
            if self._failed is not None:
                raise BrokenPipeError(self._failed)
            rest: bytes | memoryview = data
            if not self._pending:
                try:
                    sent = self._try_send(data)
                except OSError as exc:
                    self._failed = f"send failed: {exc}"
                    raise
                if sent == size:
                    return size  # the usual case: the socket took it all
                rest = memoryview(data)[sent:]
            self._pending += rest
            if len(self._pending) > self._limit:
                self._failed = "the peer stopped reading"
                self._pending.clear()
                cut = True
            elif not self._watching:
                self._watching = watch = True
        if cut:
            log.warning("%s: a media connection left %d bytes unread; cutting it off", self.name, self._limit)
            try:
                # The loop then reads the end of the stream: the connection
                # ends as if the peer had gone.
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise BrokenPipeError("the peer stopped reading")
        if watch:
            self._want_write()
        return size

    def flush(self) -> bool:
        """On the loop thread, the socket being writable: send what waits.
        True once nothing does (the loop stops watching for writability)."""
        with self._lock:
            if self._pending and self._failed is None:
                try:
                    del self._pending[:self._try_send(self._pending)]
                except OSError as exc:
                    self._failed = f"send failed: {exc}"  # the reader sees the failure too
                    self._pending.clear()
            if self._pending:
                return False
            self._watching = False
            return True

    def close(self) -> None:
        """Refuse further writes and drop what waits (the connection is over)."""
        with self._lock:
            if self._failed is None:
                self._failed = "closed"
            self._pending.clear()

    def _try_send(self, data: bytes | bytearray) -> int:
        try:
            return self._sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0


class LoopSocket:
    """The socket simple-websocket sees for a connection on the loop: its
    writes (messages, pongs, closes) go through the connection's outbox,
    everything else to the socket itself."""

    def __init__(self, sock: socket.socket, outbox: Outbox) -> None:
        self.raw = sock
        self.outbox = outbox
        # Read on every frame: the socket's own methods, not a lookup each time.
        self.recv = sock.recv
        self.fileno = sock.fileno

    def send(self, data: bytes) -> int:
        return self.outbox.send(data)

    def sendall(self, data: bytes) -> None:
        self.outbox.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
