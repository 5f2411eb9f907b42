"""The public HTTP server: werkzeug's WSGI request handling behind a front
end that bounds what strangers on the internet can hold.

werkzeug's threaded server gives every accepted connection a thread that
waits, with a per-read timeout, for the request; so every idle socket costs
a thread, and a client that sends a header byte now and then (slowloris)
keeps its thread as long as it likes. Here one thread (the loop) accepts
connections and reads each request's head, and a small body, without
blocking, as the bytes arrive; a request gets a thread of its own only once
it is complete (or its body is too large or chunked to read ahead, in which
case the thread reads the rest under the same deadline). The bounds, which
voicecalld.toml(5) documents:

* ``serve.readTimeoutSec``: a connection must deliver its whole request
  (line, headers and body) within this long of being accepted, or it is
  closed. The answer always ends the connection (werkzeug sends
  ``Connection: close``), so there are no idle keep-alive connections.
* ``serve.maxConnections``: at most this many connections wait for their
  request, and at most this many requests are answered at once (media
  streams not counted). When the waiting ones are at the limit, the one
  that has waited longest is closed to make room for the newcomer, so a
  flood of idle or slow sockets cannot lock carriers out; a request that
  arrives while the limit of them is being answered gets a 503.
* Media streams: a WebSocket upgrade at ``streaming.streamPath`` leaves
  that count once its head has arrived, into slots of its own (the
  stream hub's caps), and is exempt from the read deadline: it lives as
  long as the call.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import re
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, get_sockaddr, select_address_family

from .config import Config, stream_limits

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("voicecalld.http")

MAX_HEAD = 64 * 1024        # request line and headers; more gets 431
READ_AHEAD_BODY = 64 * 1024  # bodies up to this size are read by the loop (carrier webhooks are a few KiB)
WRITE_TIMEOUT = 30.0        # a client that stops reading its answer is dropped after this long
STREAM_IO_TIMEOUT = 30.0    # a media stream's socket timeout (its reads are non-blocking; this bounds sends)
ACCEPT_BATCH = 256          # connections accepted per turn of the loop, so reading is never starved
ACCEPT_PAUSE = 0.1          # out of file descriptors with nothing to evict: retry accepting after this
LISTEN_BACKLOG = 1024
WARN_INTERVAL = 10.0        # at most one warning of each kind per this many seconds

_HEAD_END = re.compile(rb"\n\r?\n")


def _canned(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nRetry-After: 1\r\n\r\n").encode() + body


BUSY = _canned("503 Service Unavailable", "too many connections; try again")
TOO_SLOW = _canned("408 Request Timeout", "the request did not arrive in time")
TOO_LARGE = _canned("431 Request Header Fields Too Large", "request head over 65536 bytes")


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (a server's
    sockets need more than the usual 1024); returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, hard
    return hard, hard


class _Conn:
    """An accepted connection, and what has arrived of its request."""

    __slots__ = ("sock", "addr", "deadline", "buf", "need", "stream")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.deadline = deadline
        self.buf = bytearray()
        self.need: int | None = None  # total bytes to wait for, once the head is known
        self.stream = False


class _Input(io.RawIOBase):
    """The request body as werkzeug reads it: what the loop already read,
    then the socket, never past the connection's deadline."""

    def __init__(self, sock: socket.socket, ahead: bytes, deadline: float | None) -> None:
        self.sock = sock
        self.ahead = memoryview(ahead)
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.ahead:
            n = min(len(buffer), len(self.ahead))
            buffer[:n] = self.ahead[:n]
            self.ahead = self.ahead[n:]
            return n
        if self.deadline is None:
            return self.sock.recv_into(buffer)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive within serve.readTimeoutSec")
        before = self.sock.gettimeout()
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(before)


class _Output(io.BufferedIOBase):
    """Unbuffered writes that send everything (as socketserver's private
    ``_SocketWriter``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _Handler(WSGIRequestHandler):
    """werkzeug's request handling over a connection the loop has read ahead."""

    protocol_version = "HTTP/1.1"
    server: WebhookServer

    def __init__(self, conn: _Conn, server: WebhookServer) -> None:
        self._conn = conn
        super().__init__(conn.sock, conn.addr, server)

    def setup(self) -> None:
        conn = self._conn
        self.connection = conn.sock
        self.rfile = io.BufferedReader(_Input(conn.sock, bytes(conn.buf), None if conn.stream else conn.deadline))
        self.wfile = _Output(conn.sock)

    def log_error(self, format: str, *args: Any) -> None:
        # Malformed and timed-out requests are the client's doing; at error
        # level a scanner could fill the log.
        log.debug("%s: " + format, self.address_string(), *args)


class _Warnings:
    """At most one warning per kind per WARN_INTERVAL, with a count of the rest."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -WARN_INTERVAL) < WARN_INTERVAL:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        log.warning(message + (f" ({skipped} more since the last warning)" if skipped else ""), *args)


class WebhookServer(BaseWSGIServer):
    """A werkzeug WSGI server with the bounds described above. Run
    ``serve_forever`` on a thread of its own; ``shutdown`` stops it."""

    multithread = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, host: str, port: int, app: WSGIApplication, *, max_connections: int,
                 read_timeout: float, stream_path: str | None = None, stream_slots: int = 0,
                 fd: int | None = None) -> None:
        super().__init__(host, port, app, handler=_Handler, fd=fd)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.stream_path = stream_path.encode("latin-1") if stream_path else None
        self.stream_slots = stream_slots
        self.socket.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._parked: OrderedDict[_Conn, None] = OrderedDict()  # oldest (earliest deadline) first
        self._lock = threading.Lock()
        self._busy = 0      # connections a worker thread is answering (not streams)
        self._streams = 0   # upgraded media streams
        self._stop = False
        self._running = False
        self._stopped = threading.Event()
        self._warnings = _Warnings()
        self.counters = {"accepted": 0, "refused": 0, "evicted": 0, "expired": 0}

    # -- what the daemon asks --

    def stats(self) -> dict[str, Any]:
        with self._lock:
            busy, streams = self._busy, self._streams
        return {"waiting": len(self._parked), "answering": busy, "streams": streams,
                "maxConnections": self.max_connections, **self.counters}

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with self._lock:
            if self._stop:
                return
            self._running = True
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        paused_until: float | None = None
        try:
            while not self._stop:
                now = time.monotonic()
                if paused_until is not None and now >= paused_until:
                    selector.register(self.socket, selectors.EVENT_READ, None)
                    paused_until = None
                timeout = poll_interval
                if self._parked:
                    timeout = min(timeout, max(0.0, next(iter(self._parked)).deadline - now))
                if paused_until is not None:
                    timeout = min(timeout, max(0.0, paused_until - now))
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        if not self._accept(selector):
                            selector.unregister(self.socket)
                            paused_until = time.monotonic() + ACCEPT_PAUSE
                    elif key.data is self._wake_r:
                        self._drain_wake()
                    else:
                        try:
                            self._read(selector, key.data)
                        except Exception:  # a bug must cost one connection, not the server
                            self.handle_error(key.fileobj, key.data.addr)
                            if key.data in self._parked:
                                self._drop(selector, key.data)
                self._expire(selector)
        finally:
            for conn in list(self._parked):
                self._drop(selector, conn)
            selector.close()
            self.server_close()
            self._wake_r.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and close the listening socket. Requests
        being answered finish on their own threads."""
        with self._lock:
            self._stop = True
            running = self._running
        if running:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._stopped.wait(5.0)
        else:
            self.server_close()
            self._wake_r.close()
        self._wake_w.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback to stderr, past the log's secret filter.
        log.exception("webhook server: unexpected error on a connection from %s", client_address)

    # -- the loop --

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is waiting; False when out of file descriptors with
        no idle connection to close."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._warnings.warn("fds", "webhook server: out of file descriptors (%s) with %d connections "
                                        "open; lower serve.maxConnections or raise LimitNOFILE", exc.strerror,
                                        len(self._parked) + self._busy + self._streams)
                    if not self._parked:
                        return False
                    self._evict(selector)
                continue  # ECONNABORTED and the like: that client is gone
            self.counters["accepted"] += 1
            self._admit(selector, sock, addr)
        return True

    def _admit(self, selector: selectors.BaseSelector, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        if len(self._parked) >= self.max_connections:
            self._evict(selector)
        conn = _Conn(sock, addr, time.monotonic() + self.read_timeout)
        self._parked[conn] = None
        selector.register(sock, selectors.EVENT_READ, conn)

    def _evict(self, selector: selectors.BaseSelector) -> None:
        conn = next(iter(self._parked))
        self.counters["evicted"] += 1
        self._warnings.warn("evict", "webhook server: %d connections open (serve.maxConnections); closed the one "
                            "that had waited longest for its request, from %s", self.max_connections, conn.addr[0])
        self._drop(selector, conn, BUSY if conn.buf else None)

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._parked:
            conn = next(iter(self._parked))
            if conn.deadline > now:
                return
            self.counters["expired"] += 1
            log.debug("webhook server: closed a connection from %s that sent %d bytes and no whole request in "
                      "%g s (serve.readTimeoutSec)", conn.addr[0], len(conn.buf), self.read_timeout)
            self._drop(selector, conn, TOO_SLOW if conn.buf else None)

    def _drop(self, selector: selectors.BaseSelector, conn: _Conn, answer: bytes | None = None) -> None:
        del self._parked[conn]
        selector.unregister(conn.sock)
        _close(conn.sock, answer)

    def _read(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(selector, conn)  # the client gave up
            return
        start = max(0, len(conn.buf) - 3)
        conn.buf += data
        if conn.need is None:
            end = _HEAD_END.search(conn.buf, start)
            if end is None:
                if len(conn.buf) > MAX_HEAD:
                    self._drop(selector, conn, TOO_LARGE)
                return
            conn.need = self._plan(conn, end.end())
        if len(conn.buf) >= conn.need:
            self._dispatch(selector, conn)

    def _plan(self, conn: _Conn, head_end: int) -> int:
        """How many bytes to read before a worker takes over: the head plus
        a small body; just the head when the rest must be read by werkzeug
        (chunked, Expect: 100-continue, a large or unclear length). Marks
        media-stream upgrades."""
        lines = bytes(conn.buf[:head_end]).split(b"\n")
        target = lines[0].split()[1] if len(lines[0].split()) >= 2 else b""
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        if self.stream_path is not None and target.split(b"?")[0] == self.stream_path \
                and any(v.lower() == b"websocket" for v in headers.get(b"upgrade", ())):
            conn.stream = True
            return head_end
        if b"transfer-encoding" in headers or b"expect" in headers:
            return head_end
        lengths = set(headers.get(b"content-length", [b"0"]))
        if len(lengths) != 1:
            return head_end
        (length,) = lengths
        if not length.isdigit() or int(length) > READ_AHEAD_BODY:
            return head_end
        return head_end + int(length)

    def _dispatch(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        del self._parked[conn]
        selector.unregister(conn.sock)
        with self._lock:
            if conn.stream and self._streams >= self.stream_slots:
                conn.stream = False  # answered like any request (the hub will say 503)
            full = not conn.stream and self._busy >= self.max_connections
            if conn.stream:
                self._streams += 1
            elif not full:
                self._busy += 1
        if full:
            self.counters["refused"] += 1
            self._warnings.warn("full", "webhook server: %d requests are being answered (serve.maxConnections); "
                                "refused one from %s with 503", self.max_connections, conn.addr[0])
            _close(conn.sock, BUSY)
            return
        try:
            threading.Thread(target=self._work, args=(conn,), name="webhook-request", daemon=True).start()
        except RuntimeError:  # no thread to be had: say so rather than hang
            self._release(conn)
            _close(conn.sock, BUSY)

    def _release(self, conn: _Conn) -> None:
        with self._lock:
            if conn.stream:
                self._streams -= 1
            else:
                self._busy -= 1

    # -- a request's thread --

    def _work(self, conn: _Conn) -> None:
        try:
            conn.sock.settimeout(STREAM_IO_TIMEOUT if conn.stream else WRITE_TIMEOUT)
            _Handler(conn, self)
        except Exception:
            self.handle_error(conn.sock, conn.addr)
        finally:
            self.shutdown_request(conn.sock)
            self._release(conn)


def create(cfg: Config, app: WSGIApplication) -> WebhookServer:
    """The webhook server for ``cfg``, listening. Raises OSError when the
    address cannot be bound."""
    host, port = cfg.serve.bind, cfg.serve.port
    family = select_address_family(host, port)
    # Bound here rather than by werkzeug, which prints bind errors to stderr
    # and exits; the daemon reports them in its own words.
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(LISTEN_BACKLOG)
        streaming = cfg.streaming
        return WebhookServer(host, port, app, max_connections=cfg.serve.maxConnections,
                             read_timeout=float(cfg.serve.readTimeoutSec),
                             stream_path=streaming.streamPath if streaming.enabled else None,
                             stream_slots=sum(stream_limits(cfg)), fd=sock.fileno())


def _close(sock: socket.socket, answer: bytes | None = None) -> None:
    """Close a non-blocking socket, after a short answer if there is one."""
    try:
        if answer is not None:
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
            # Read what the client already sent, so closing does not reset
            # the connection and lose the answer on its way.
            sock.recv(65536)
    except OSError:
        pass
    sock.close()
