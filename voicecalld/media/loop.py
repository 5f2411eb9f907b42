"""One thread that reads every open media stream's socket, and the two
adapters that let simple-websocket connections be read by it.

A thread per stream costs, for every 20 ms frame of every call, a thread
wake-up and an interpreter-lock hand-off; at a hundred calls those
hand-offs, not the work, saturate a core. ``ReadLoop`` instead waits on all
the sockets at once (epoll through ``selectors``) and calls each socket's
reader when it has data, so under load one wake-up serves many frames.

Registration changes are made by the loop thread itself (requests are
queued and the loop is woken through a socket pair), so a reader is never
called after ``remove`` has returned and no other thread touches the
selector. The thread starts with the first socket and exits when the last
one is removed: an idle daemon keeps no thread for it.

Readers run on the loop thread and must not block for long: a reader that
waits stalls every stream's audio.

simple-websocket starts a reader thread per connection; its documented
``thread_class`` and ``event_class`` hooks let ``LoopReader`` take that
thread's place (``LoopReader.pump`` does what one turn of its loop does)
and let ``Doorbell`` hand each parsed message to a handler on the spot.
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import simple_websocket

log = logging.getLogger(__name__)

#: Called when the socket is readable; returns False once it is finished
#: with the socket (closed or failed), which unregisters it.
Reader = Callable[[], bool]

REMOVE_TIMEOUT = 5.0
RECEIVE_BYTES = 65536  # one read may carry many queued frames


class ReadLoop:
    def __init__(self, name: str = "media-loop") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._requests: collections.deque[tuple[str, socket.socket, Reader | None, threading.Event | None]] = \
            collections.deque()
        self._thread: threading.Thread | None = None
        self._count = 0  # sockets registered or about to be
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def add(self, sock: socket.socket, reader: Reader) -> None:
        with self._lock:
            self._count += 1
            self._requests.append(("add", sock, reader, None))
            if self._thread is None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
                self._thread = threading.Thread(target=self._run, args=(self._wake_r,), name=self.name,
                                                daemon=True)
                self._thread.start()
            else:
                self._wake()

    def add_websocket(self, ws: simple_websocket.Server) -> threading.Event:
        """Read a simple-websocket connection made with ``thread_class=LoopReader``.
        The event returned is set once the connection is over (the peer
        closed it, or it failed), like the reader thread ending upstream."""
        over = threading.Event()

        def reader() -> bool:
            keep = LoopReader.pump(ws)
            if not keep:
                over.set()
            return keep

        self.add(ws.sock, reader)
        return over

    def finish_websocket(self, ws: simple_websocket.Server, over: threading.Event, close_wait: float = 1.0) -> None:
        """End a connection from ``add_websocket``: close it if still open,
        give the peer ``close_wait`` seconds to answer the closing handshake,
        cut the socket (werkzeug keeps "Connection: Upgrade" requests alive
        and would otherwise read it for a next HTTP request), stop reading
        it and drop what was left unread, so nothing of the connection is
        left behind."""
        try:
            if ws.connected:
                ws.close()
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        over.wait(close_wait)
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing to cut
        self.remove(ws.sock)
        # Bytes the peer sent that nobody read (after its close frame, or
        # past the last read) are still readable after the shutdown;
        # werkzeug would parse them as a next request and log a 400.
        # Dropping them leaves it the end of the stream.
        try:
            while ws.sock.recv(RECEIVE_BYTES, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass  # nothing queued (EAGAIN), or the peer reset: werkzeug sees a dropped connection

    def remove(self, sock: socket.socket) -> None:
        """Stop reading ``sock``; when this returns its reader is not
        running and will not be called again."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            # A reader removing its own socket must not wait on itself.
            done = None if thread is threading.current_thread() else threading.Event()
            self._requests.append(("remove", sock, None, done))
            self._wake()
        if done is not None and not done.wait(REMOVE_TIMEOUT):
            log.warning("%s: socket removal not confirmed within %.0f s", self.name, REMOVE_TIMEOUT)

    @property
    def sockets(self) -> int:
        with self._lock:
            return self._count

    def _wake(self) -> None:
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already woken (buffer full) or shutting down

    def _apply(self, selector: selectors.BaseSelector) -> None:
        """On the loop thread: carry out queued registrations and removals."""
        while True:
            with self._lock:
                if not self._requests:
                    return
                op, sock, reader, done = self._requests.popleft()
            if op == "add":
                try:
                    selector.register(sock, selectors.EVENT_READ, reader)
                except (ValueError, KeyError, OSError) as exc:
                    log.warning("%s: cannot watch a media socket: %s", self.name, exc)
                    with self._lock:
                        self._count -= 1
            else:
                self._forget(selector, sock)
                if done is not None:
                    done.set()

    def _forget(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        try:
            selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            return  # already gone (its reader finished it)
        with self._lock:
            self._count -= 1

    def _run(self, wake_r: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            while True:
                self._apply(selector)
                with self._lock:
                    if self._count == 0 and not self._requests:
                        self._thread = None  # the next add() starts a new thread
                        assert self._wake_w is not None
                        self._wake_w.close()
                        self._wake_w = None
                        return
                for key, _ in selector.select():
                    reader = key.data
                    if reader is None:
                        try:
                            while wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    try:
                        keep = reader()
                    except Exception:  # noqa: BLE001 - one stream's bug must not stop the others
                        log.exception("%s: media reader failed", self.name)
                        keep = False
                    if not keep:
                        self._forget(selector, key.fileobj)  # type: ignore[arg-type]
        finally:
            selector.close()
            wake_r.close()


class LoopReader:
    """simple-websocket's ``thread_class``: a thread that never runs,
    because a ``ReadLoop`` reads the socket instead (``ReadLoop.add_websocket``).
    The rest of simple-websocket (framing, ping/pong, close) is unchanged."""

    def __init__(self, target: Any = None, **_: Any) -> None:
        self.name = "websocket-on-loop"

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    @staticmethod
    def pump(ws: simple_websocket.Server) -> bool:
        """Read what the socket has and let simple-websocket handle it, as
        its own reader thread would; False once the connection is over."""
        ws.read_at = time.monotonic()  # for forwarding-time figures
        try:
            data = ws.sock.recv(RECEIVE_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return ws.connected
        except OSError:
            data = b""
        if data:
            try:
                ws.ws.receive_data(data)
                ws.connected = ws._handle_events()
            except Exception:  # noqa: BLE001 - a protocol violation ends the connection, like upstream
                ws.connected = False
                ws.event.set()
        else:
            ws.connected = False
            ws.event.set()  # wake a receive() waiting for the start message
        return ws.connected


class Doorbell(threading.Event):
    """simple-websocket's "a message arrived" event (its ``event_class``).

    Until a handler is attached it is a plain ``threading.Event``, so
    ``receive()`` works as usual (a media stream's ``start`` handshake uses
    it). Once a handler is attached, ringing the bell runs it right on the
    thread that parsed the message (the loop) instead of waking another
    thread; the handler takes the messages with ``receive(timeout=0)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.handler: Any = None

    def set(self) -> None:
        handler = self.handler
        if handler is None:
            super().set()
        else:
            handler()
