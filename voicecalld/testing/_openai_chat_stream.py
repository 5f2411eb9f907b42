"""A streamed Chat Completions reply for the fake, paced like a generating
model (https://platform.openai.com/docs/api-reference/chat-streaming):
server-sent events, the first token after a delay, then one token every
so often, or a stall; it notices when the client closes the connection
(as the daemon does on a barge-in) and records how far it got.

Tokens are due on a fixed schedule counted from the request's arrival, as
a model generating at a steady rate produces them, not a pause after each
write: on a busy machine, pauses add up (a few ms per token) and the
fake's own slowness would be counted against the client it serves.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from ._openai_chat import stream_chunks


class RecordedRequest(Protocol):
    """What a stream records of itself (``fake_openai.RecordedRequest``)."""

    token_at: list[float]
    stream_finished: bool
    client_left: bool
    finished: threading.Event

__all__ = ["stream_events"]


def stream_events(completion: dict[str, Any], record: RecordedRequest, sock: Any, first: float, per_token: float,
                  stall: int | None, stopping: threading.Event,
                  slow: tuple[int, float] | None = None, start: float | None = None) -> Iterator[bytes]:
    """The response body: the first token ``first`` seconds after ``start``
    (the request's arrival; default now), each next ``per_token`` after the
    one before it was due; with ``stall``, only that many tokens and then
    silence until the client leaves or the fake stops; with ``slow`` = (n,
    s), the tokens after the n-th come every s seconds (a model still
    thinking). A token that falls due while the one before it is still
    being written goes out at once."""
    try:
        tokens = 0
        due = time.monotonic() if start is None else start
        for chunk, is_token in stream_chunks(completion):
            if is_token:
                if stall is not None and tokens >= stall:
                    while _pause_unless_gone(0.05, sock, stopping):
                        pass
                    return
                due += first if tokens == 0 else slow[1] if slow and tokens >= slow[0] else per_token
                if not _pause_unless_gone(due - time.monotonic(), sock, stopping):
                    return
                tokens += 1
                # Noted before the write: the client may read the token (and
                # a test look at the count) before this generator resumes.
                record.token_at.append(time.monotonic())
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
        record.stream_finished = True
    finally:
        if not record.stream_finished and sock is not None:
            record.client_left = record.client_left or _gone(sock)
        record.finished.set()


def _pause_unless_gone(seconds: float, sock: Any, stopping: threading.Event) -> bool:
    """Wait ``seconds``; False as soon as the client has closed the
    connection, or the fake stops."""
    deadline = time.monotonic() + seconds
    while True:
        if sock is not None and _gone(sock):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        if stopping.wait(min(0.02, remaining)):
            return False


def _gone(sock: Any) -> bool:
    """Has the client closed its end of ``sock``? (Readable, and reading
    would return nothing: the request body was read long ago.)"""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
