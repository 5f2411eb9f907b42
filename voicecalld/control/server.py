"""The control server: JSON-RPC over a Unix stream socket.

One reader thread per connection; methods that wait on the callee run on a
thread of their own so later requests on the same connection are answered
meanwhile. Responses are written under a per-connection lock. Event
notifications go through a bounded per-connection queue and a writer thread,
because publishers must never block on a slow reader; a subscriber that
falls too far behind is disconnected.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import stat
import threading
import time
from typing import Any

from ..errors import INTERNAL_ERROR, INVALID_REQUEST, TOO_MANY_CONNECTIONS, VoiceCallError
from ..events import EventBus, Subscription
from . import methods, protocol

log = logging.getLogger(__name__)

MAX_SLOW_PER_CONNECTION = 32  # concurrent blocking requests per connection
EVENT_QUEUE = 10_000          # undelivered notifications per subscriber


class SocketError(Exception):
    """The control socket cannot be set up; the message says why and what to do."""


def _check_directory(directory: str) -> None:
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise SocketError(f"{directory} is not a directory")
    if st.st_mode & 0o002:
        raise SocketError(f"{directory} is world-writable; put the control socket in a private directory "
                          "(control.socket, or $RUNTIME_DIRECTORY)")
    if st.st_uid not in (os.getuid(), 0):
        raise SocketError(f"{directory} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"{path} exists and is not a socket; remove it or choose another control.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale control socket %s left by a previous run", path)
            os.unlink(path)
            return
        raise SocketError(f"cannot check the existing socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketError(f"another voicecalld is already listening on {path}; stop it first, "
                      "or give this one another control.socket")


def bind_socket(path: str, mode: int) -> socket.socket:
    """Create the listening socket at ``path`` with file mode ``mode``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o750)
        except OSError as exc:
            raise SocketError(f"cannot create {directory}: {exc.strerror}") from None
    _check_directory(directory)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # The socket file takes its mode from the umask at bind time; setting it
    # here (start-up, before other threads create files) leaves no window
    # in which the socket is more open than asked.
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot bind the control socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


class Connection:
    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self._wlock = threading.Lock()
        self._closed = False
        self._slow = threading.BoundedSemaphore(MAX_SLOW_PER_CONNECTION)
        self._subs: list[Subscription] = []
        self._events: collections.deque[bytes] = collections.deque()
        self._events_ready = threading.Condition()
        self._writer: threading.Thread | None = None

    # -- writing --

    def send(self, data: bytes) -> None:
        with self._wlock:
            if self._closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self._close_locked()

    def _close_locked(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._wlock:
            self._close_locked()
        with self._events_ready:
            self._events_ready.notify()

    # -- events.subscribe --

    def subscribe(self, call_id: str | None) -> None:
        self._subs.append(self.server.bus.subscribe(self._enqueue_event, call_id))
        with self._events_ready:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_events, name="control-events", daemon=True)
                self._writer.start()

    def _enqueue_event(self, params: dict[str, Any]) -> None:
        if self._closed:
            return
        with self._events_ready:
            if len(self._events) >= EVENT_QUEUE:
                log.warning("control client stopped reading events; disconnecting it")
                self._events.clear()
                threading.Thread(target=self.close, daemon=True).start()
                return
            self._events.append(protocol.notification("event", params))
            self._events_ready.notify()

    def _write_events(self) -> None:
        while True:
            with self._events_ready:
                while not self._events and not self._closed:
                    self._events_ready.wait()
                if self._closed:
                    return
                batch = b"".join(self._events)
                self._events.clear()
            self.send(batch)

    # -- reading --

    def run(self) -> None:
        buffer = protocol.LineBuffer()
        # A client that starts a line must finish it within this time
        # (slowloris), and one that stops reading our replies is dropped after
        # it: the socket timeout applies to sends as well.
        line_timeout = self.server.line_timeout
        self.sock.settimeout(line_timeout)
        try:
            while not self._closed:
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    if buffer.pending:
                        self.send(protocol.error(None, INVALID_REQUEST,
                                                 f"Invalid Request: incomplete line for {line_timeout:g} s"))
                        break
                    continue
                except OSError:
                    break
                if not data:
                    break
                for line in buffer.feed(data):
                    if line is None:
                        self.send(protocol.error(None, INVALID_REQUEST,
                                                 f"Invalid Request: line longer than {protocol.MAX_LINE} bytes"))
                    elif line.strip():
                        self.handle(line)
        finally:
            for sub in self._subs:
                self.server.bus.unsubscribe(sub)
            self.close()
            self.sock.close()
            self.server.forget(self)

    def handle(self, line: bytes) -> None:
        req = protocol.parse(line)
        if isinstance(req, protocol.Invalid):
            self.send(protocol.error(req.id, req.code, req.message))
            return
        try:
            spec = methods.lookup(req.method, self.server.services)
            params = methods.validate(req.method, spec, req.params)
        except VoiceCallError as exc:
            if not req.notification:
                self.send(protocol.error(req.id, exc.code, exc.message, exc.data))
            return
        if spec.slow and self._slow.acquire(blocking=False):
            def run_slow() -> None:
                try:
                    self._execute(req, spec, params)
                finally:
                    self._slow.release()

            threading.Thread(target=run_slow, name=f"control-{req.method}", daemon=True).start()
        else:
            self._execute(req, spec, params)

    def _execute(self, req: protocol.Request, spec: methods.Method, params: dict[str, Any]) -> None:
        try:
            value = spec.handler(self.server.services, self, params)
            reply = protocol.result(req.id, value)
        except VoiceCallError as exc:
            reply = protocol.error(req.id, exc.code, exc.message, exc.data)
        except Exception:
            log.exception("control method %s failed", req.method)
            reply = protocol.error(req.id, INTERNAL_ERROR,
                                   f"Internal error in {req.method}; the daemon log has the details")
        if not req.notification:
            self.send(reply)


class ControlServer:
    def __init__(self, services: methods.Services, sock: socket.socket, bus: EventBus,
                 *, path: str | None = None, max_connections: int = 256, line_timeout: float = 30.0) -> None:
        self.services = services
        self.sock = sock
        self.bus = bus
        self.path = path  # unlinked on close when we created it (not socket-activated)
        self.max_connections = max_connections
        self.line_timeout = line_timeout
        self._refusing = False
        self._refused = 0
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self.heartbeat = time.monotonic()
        self._inode = os.stat(path).st_ino if path else None

    def start(self) -> None:
        self.sock.settimeout(0.5)  # wake up to notice stop() and to show liveness
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and time.monotonic() - self.heartbeat < 5

    def _accept_loop(self) -> None:
        while not self._stopping:
            self.heartbeat = time.monotonic()
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping:
                    return
                # EMFILE and friends: back off rather than spin.
                log.error("control socket accept failed: %s", exc)
                time.sleep(0.1)
                continue
            conn = Connection(self, client)
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                self._refuse(client)
                continue
            threading.Thread(target=conn.run, name="control-conn", daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        self._refused += 1
        if not self._refusing:  # once per flood, not once per connection
            self._refusing = True
            log.warning("control socket: %d connections open; refusing more until some close",
                        self.max_connections)
        try:
            client.settimeout(1.0)
            client.sendall(protocol.error(None, TOO_MANY_CONNECTIONS,
                                          f"Too many connections ({self.max_connections}); try again later"))
        except OSError:
            pass
        finally:
            client.close()

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            if self._refusing and len(self._connections) < self.max_connections:
                self._refusing = False
                log.info("control socket: accepting connections again (%d refused meanwhile)", self._refused)
                self._refused = 0

    def close(self) -> None:
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join(2.0)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        self.sock.close()
        if self.path:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
