"""One Chat Completions request of the auto-responder, read as it streams.

``ChatRequest`` posts the body (with ``stream: true``) and yields the reply
as it arrives: the ``data`` of each server-sent event, or, from a server
that ignores ``stream`` and answers with one JSON body, that body.

Two deadlines bound it, checked by one ``Watchdog`` thread for every
request in flight: until the reply's first sentence is complete (the
responder calls ``first_sentence_done``), the whole request has
``first_deadline``; after that, a stream that goes quiet for ``stall``
seconds has stalled. Either way the request is cancelled: ``cancel`` (also
what a barge-in calls, from any thread) shuts the connection's socket
down, which wakes a read blocked on it at once, and the reader gets
``Cancelled`` with the reason. The connection is then closed, not reused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests

from . import jsonsafe, metrics
from .chat_stream import SseDecoder

CONNECT_TIMEOUT = 5.0
READ_SIZE = 1024
TICK = 0.05  # how often the watchdog looks at the requests in flight


class Unusable(Exception):
    """The LLM endpoint gave no usable reply; the message says why."""


class ToolsRefused(Unusable):
    """The server refused the ``tools`` parameter (some local servers)."""


class Cancelled(Unusable):
    """The request was cancelled (deadline, stall, barge-in); the message says why."""


class Watchdog:
    """Cancels requests whose deadline passed. Its thread starts with the
    first request and idles on an event when there is none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: set[ChatRequest] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, request: ChatRequest) -> None:
        with self._lock:
            self._requests.add(request)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="llm-watchdog", daemon=True)
                self._thread.start()
        self._wake.set()

    def forget(self, request: ChatRequest) -> None:
        with self._lock:
            self._requests.discard(request)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(2)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                # Cleared on every pass, not only when idle: a set event
                # would make the timed wait below return at once, and the
                # watchdog would spin for as long as any request is open.
                self._wake.clear()
                requests_ = list(self._requests)
            if not requests_:
                self._wake.wait()
                continue
            now = time.monotonic()
            for request in requests_:
                why = request.overdue(now)
                if why is not None:
                    request.cancel(why)
            self._wake.wait(TICK)


class ChatRequest:
    def __init__(self, session: requests.Session, url: str, headers: dict[str, str], body: dict[str, Any], *,
                 first_deadline: float, stall: float, watchdog: Watchdog) -> None:
        self.session = session
        self.url = url
        self.headers = headers
        self.body = body
        self.first_deadline = first_deadline
        self.stall = stall
        self.watchdog = watchdog
        self.started = time.monotonic()
        self.first_data_at: float | None = None
        #: Set from JSON answers (a server that does not stream).
        self.completion: Any = None
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._last_data = self.started
        self._first_done = False
        self._cancelled: str | None = None

    # -- any thread --

    def cancel(self, why: str) -> None:
        """Stop the request: its reader gets ``Cancelled(why)``."""
        with self._lock:
            if self._cancelled is not None:
                return
            self._cancelled = why
            response = self._response
        if response is not None:
            _shut_down(response)

    @property
    def cancelled(self) -> str | None:
        return self._cancelled

    def overdue(self, now: float) -> str | None:
        """Why the request should be cancelled now, or None."""
        if not self._first_done:
            return "no reply in time" if now > self.first_deadline else None
        return "the reply stalled" if now - self._last_data > self.stall else None

    def first_token(self) -> None:
        """The reply's first token arrived (the first chunk that carries
        text or a tool call: servers send the role ahead of the model's output)."""
        if self.first_data_at is None:
            self.first_data_at = time.monotonic()
            metrics.LLM_FIRST_TOKEN.observe(self.first_data_at - self.started)

    def first_sentence_done(self) -> None:
        self._last_data = time.monotonic()
        self._first_done = True

    # -- the reader's thread --

    def payloads(self) -> Iterator[str]:
        """The events' data as they arrive (an ordinary JSON answer is kept
        in ``completion`` instead). Raises ``Unusable``."""
        self.watchdog.watch(self)
        try:
            response = self._open()
            if not _is_event_stream(response):
                self.completion = self._json(response)
                return
            decoder = SseDecoder()
            for chunk in self._chunks(response):
                self._last_data = time.monotonic()
                yield from decoder.feed(chunk)
            yield from decoder.close()
        finally:
            self.watchdog.forget(self)
            self.close()

    def close(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()

    def _open(self) -> requests.Response:
        remaining = self.first_deadline - time.monotonic()
        if remaining <= 0:
            raise Unusable("no time left for the request")
        try:
            # The read timeout is a backstop; the watchdog enforces the deadlines.
            response = self.session.post(self.url, json=self.body, headers=self.headers, stream=True,
                                         timeout=(min(CONNECT_TIMEOUT, remaining), remaining + self.stall))
        except requests.RequestException as exc:
            self._raise_cancelled()
            if isinstance(exc, requests.Timeout):
                raise Unusable("no reply in time") from None
            raise Unusable(f"cannot reach the server: {type(exc).__name__}") from None
        with self._lock:
            self._response = response
            cancelled = self._cancelled
        if cancelled is not None:
            raise Cancelled(cancelled)
        if response.status_code != 200:
            message = _error_message(response)
            if response.status_code == 400 and "tools" in self.body and "tool" in message.lower():
                raise ToolsRefused(message)
            raise Unusable(f"HTTP {response.status_code}: {message}")
        return response

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        raw = response.raw
        try:
            if raw.chunked and raw.supports_chunked_reads():
                pieces: Iterator[bytes] = raw.read_chunked(None, decode_content=True)
            else:
                # Not chunked (HTTP/1.0 style, ended by closing): whatever
                # has arrived, not a full buffer's worth.
                pieces = iter(lambda: raw.read1(READ_SIZE, decode_content=True), b"")
            for chunk in pieces:
                if self._cancelled is not None:
                    break
                if chunk:
                    yield chunk
        except Exception as exc:  # noqa: BLE001 - urllib3 and socket errors alike: the stream broke off
            self._raise_cancelled()
            raise Unusable(f"the reply broke off: {type(exc).__name__}") from None
        self._raise_cancelled()

    def _json(self, response: requests.Response) -> Any:
        try:
            content = response.content
        except requests.RequestException:
            self._raise_cancelled()
            raise Unusable("the reply broke off") from None
        self._raise_cancelled()
        self.first_token()  # without streaming, the first token arrives with the whole reply
        try:
            return jsonsafe.loads(content)
        except ValueError:
            raise Unusable("the server answered with something that is not JSON") from None

    def _raise_cancelled(self) -> None:
        if self._cancelled is not None:
            raise Cancelled(self._cancelled)


def _is_event_stream(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/event-stream"


def _shut_down(response: requests.Response) -> None:
    """Wake a read blocked on the response's socket (closing the file
    descriptor from another thread would not)."""
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        # http.client hands the socket over to the response it reads
        # (HTTPResponse.fp is a buffered reader over a SocketIO).
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _error_message(response: requests.Response) -> str:
    """The error's message from an OpenAI-style error body, short and on one line."""
    try:
        data = jsonsafe.loads(response.content)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
    except (ValueError, AttributeError, KeyError, TypeError, requests.RequestException):
        message = None
    text = str(message or response.reason or "error")
    return " ".join(text.split())[:300]
