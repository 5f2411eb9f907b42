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
waits stalls every stream's audio. Nor may a write: simple-websocket
answers a ping with a pong and a close with a close right where it parses
them (on the loop), and a peer may stop reading at any time. So every
connection on the loop writes through an ``Outbox``: a non-blocking send,
and what the socket cannot take at once waits, in order, until the loop
sees the socket writable. A peer that leaves ``OUTBOX_LIMIT`` bytes unread
is cut off: its connection ends like any other that failed, and nobody
else waits for it.

If the loop itself fails (an exception escaping a turn), the connection
whose reader was running is dropped, the failure is logged, and the loop
starts again with the other connections after a short delay (at once when
a connection is added or removed); ``health`` reports it until then.

simple-websocket starts a reader thread per connection; its documented
``thread_class`` and ``event_class`` hooks let ``LoopReader`` take that
thread's place (``LoopReader.pump`` does what one turn of its loop does)
and let ``Doorbell`` hand parsed messages to a handler on the spot. The
plain text frames carriers send their media in are parsed by
``wsframes.FrameSplitter``; wsproto, simple-websocket's parser, gets every
other frame.
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simple_websocket
from wsproto.utilities import LocalProtocolError

from .outbox import LoopSocket, Outbox
from .wsframes import FrameSplitter

log = logging.getLogger(__name__)

#: Called when the socket is readable; returns False once it is finished
#: with the socket (closed or failed), which unregisters it.
Reader = Callable[[], bool]

REMOVE_TIMEOUT = 5.0
RECEIVE_BYTES = 65536  # one read may carry many queued frames
RESTART_DELAY = 1.0  # after a failure of the loop; doubles while it keeps failing
RESTART_DELAY_MAX = 30.0
HEALTHY_RUN = 60.0  # a loop that ran this long before failing starts again at RESTART_DELAY


@dataclass(eq=False)
class _Entry:
    sock: socket.socket
    fd: int
    reader: Reader
    #: Called when the loop gives the socket up on its own (its reader
    #: raised, or the loop failed while it ran), so its owner stops waiting.
    on_drop: Callable[[], None] | None = None
    outbox: Outbox | None = None


class ReadLoop:
    def __init__(self, name: str = "media-loop", *, restart_delay: float = RESTART_DELAY) -> None:
        self.name = name
        self.restart_delay = restart_delay
        self._lock = threading.Lock()
        self._requests: collections.deque[tuple[str, Any, threading.Event | None]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._count = 0  # sockets registered or about to be
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        #: Registered sockets by descriptor; only the loop thread touches it.
        self._entries: dict[int, _Entry] = {}
        self._running: _Entry | None = None  # whose reader the loop thread is in
        self._down: str | None = None  # why the loop is not serving, until it starts again
        self._restart = threading.Event()
        #: Times the loop failed and was started again (for status and tests).
        self.failures = 0

    def add(self, sock: socket.socket, reader: Reader, *, on_drop: Callable[[], None] | None = None,
            outbox: Outbox | None = None) -> None:
        self._request("add", _Entry(sock, sock.fileno(), reader, on_drop, outbox))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, before it reads any socket again."""
        self._request("call", fn)

    def _request(self, op: str, arg: Any, done: threading.Event | None = None) -> None:
        with self._lock:
            if op == "add":
                self._count += 1
            self._requests.append((op, arg, done))
            if self._thread is None or not self._thread.is_alive():
                self._start_thread()
            else:
                self._wake()
            if self._down is not None:
                self._restart.set()  # a connection is waiting: no point in waiting longer

    def _start_thread(self) -> None:
        """Under the lock."""
        if self._wake_w is not None:
            self._wake_w.close()  # left by a thread that died without cleaning up
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._main, args=(self._wake_r,), name=self.name, daemon=True)
        self._thread.start()

    def add_websocket(self, ws: simple_websocket.Server) -> threading.Event:
        """Read a simple-websocket connection made with ``thread_class=LoopReader``
        and make its writes non-blocking (``Outbox``). The event returned is
        set once the connection is over (the peer closed it, or it failed),
        like the reader thread ending upstream."""
        over = threading.Event()
        sock = ws.sock
        # Non-blocking for real: on a socket with a timeout (werkzeug sets
        # one) Python waits for the socket to be ready before every send or
        # receive, MSG_DONTWAIT or not.
        sock.setblocking(False)
        fd = sock.fileno()
        outbox = Outbox(sock, lambda: self._want_write(fd), self.name)
        ws.sock = LoopSocket(sock, outbox)

        def reader() -> bool:
            keep = LoopReader.pump(ws)
            if not keep:
                over.set()
            return keep

        def dropped() -> None:
            ws.connected = False
            ws.event.set()  # whoever waits for a message learns the connection is over
            over.set()

        self.add(sock, reader, on_drop=dropped, outbox=outbox)
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
        except (simple_websocket.ConnectionClosed, OSError, LocalProtocolError):
            pass  # LocalProtocolError: a close is already under way
        over.wait(close_wait)
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing to cut
        self.remove(ws.sock)
        if isinstance(ws.sock, LoopSocket):
            ws.sock.outbox.close()
        # Bytes the peer sent that nobody read (after its close frame, or
        # past the last read) are still readable after the shutdown;
        # werkzeug would parse them as a next request and log a 400.
        # Dropping them leaves it the end of the stream.
        try:
            while ws.sock.recv(RECEIVE_BYTES, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass  # nothing queued (EAGAIN), or the peer reset: werkzeug sees a dropped connection

    def remove(self, sock: socket.socket | LoopSocket) -> None:
        """Stop reading ``sock``; when this returns its reader is not
        running and will not be called again."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            # A reader removing its own socket must not wait on itself.
            done = None if thread is threading.current_thread() else threading.Event()
            self._requests.append(("remove", sock.fileno(), done))
            self._wake()
            if self._down is not None:
                self._restart.set()
        if done is not None and not done.wait(REMOVE_TIMEOUT):
            log.warning("%s: socket removal not confirmed within %.0f s", self.name, REMOVE_TIMEOUT)

    def _want_write(self, fd: int) -> None:
        """From an outbox: wait for socket ``fd`` to be writable and flush it."""
        with self._lock:
            if self._thread is None:
                return  # nothing is registered: the connection is over
            self._requests.append(("write", fd, None))
            self._wake()

    @property
    def sockets(self) -> int:
        with self._lock:
            return self._count

    @property
    def health(self) -> str | None:
        """None while the loop serves; else what is wrong, for /healthz."""
        with self._lock:
            if self._down is not None:
                return self._down
            if self._thread is not None and not self._thread.is_alive():
                return f"{self.name} thread died"
            return None

    def _wake(self) -> None:
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already woken (buffer full) or shutting down

    # -- the loop thread --

    def _main(self, wake_r: socket.socket) -> None:
        failed_in_a_row = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    self._serve(wake_r)
                    return
                except BaseException as exc:  # noqa: BLE001 - the loop serves every call: keep it going
                    culprit, self._running = self._running, None
                    failed_in_a_row = 1 if time.monotonic() - started >= HEALTHY_RUN else failed_in_a_row + 1
                    delay = min(RESTART_DELAY_MAX, self.restart_delay * 2 ** (failed_in_a_row - 1))
                    with self._lock:
                        self.failures += 1
                        self._down = f"{self.name} failed ({type(exc).__name__}); restarting"
                    log.error("%s failed; dropping the connection it was reading, restarting in %.1f s",
                              self.name, delay, exc_info=True)
                    if culprit is not None:
                        self._drop(culprit)
                    self._restart.wait(delay)
                    self._restart.clear()
                    with self._lock:
                        self._down = None
                    log.info("%s restarted with %d connection(s)", self.name, self.sockets)
        finally:
            wake_r.close()

    def _serve(self, wake_r: socket.socket) -> None:
        """Serve until no socket is left; raises whatever goes wrong."""
        selector = selectors.DefaultSelector()
        try:
            selector.register(wake_r, selectors.EVENT_READ, None)
            for entry in list(self._entries.values()):  # after a restart
                self._register(selector, entry)
            while True:
                self._apply(selector)
                with self._lock:
                    if self._count == 0 and not self._requests:
                        self._thread = None  # the next add() starts a new thread
                        assert self._wake_w is not None
                        self._wake_w.close()
                        self._wake_w = None
                        return
                for key, events in selector.select():
                    entry = key.data
                    if entry is None:
                        try:
                            while wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    if events & selectors.EVENT_WRITE and entry.outbox is not None and entry.outbox.flush():
                        self._watch(selector, entry, write=False)
                    if events & selectors.EVENT_READ:
                        self._read(selector, entry)
        finally:
            selector.close()

    def _read(self, selector: selectors.BaseSelector, entry: _Entry) -> None:
        self._running = entry
        try:
            keep = entry.reader()
        except Exception:  # noqa: BLE001 - one stream's bug must not stop the others
            log.exception("%s: media reader failed", self.name)
            self._running = None
            self._forget(selector, entry.fd)
            self._dropped(entry)
            return
        self._running = None
        if not keep:
            self._forget(selector, entry.fd)

    def _apply(self, selector: selectors.BaseSelector) -> None:
        """On the loop thread: carry out queued requests."""
        while True:
            with self._lock:
                if not self._requests:
                    return
                op, arg, done = self._requests.popleft()
            if op == "add":
                self._entries[arg.fd] = arg
                self._register(selector, arg)
            elif op == "remove":
                self._forget(selector, arg)
                if done is not None:
                    done.set()
            elif op == "write":
                entry = self._entries.get(arg)
                if entry is not None:
                    self._watch(selector, entry, write=True)
            else:
                try:
                    arg()
                except Exception:  # noqa: BLE001 - as a reader's failure: the others go on
                    log.exception("%s: a call on the loop failed", self.name)

    def _register(self, selector: selectors.BaseSelector, entry: _Entry) -> None:
        events = selectors.EVENT_READ
        if entry.outbox is not None and entry.outbox.pending:
            events |= selectors.EVENT_WRITE
        try:
            selector.register(entry.sock, events, entry)
        except (ValueError, KeyError, OSError) as exc:
            log.warning("%s: cannot watch a media socket: %s", self.name, exc)
            self._drop(entry)

    def _watch(self, selector: selectors.BaseSelector, entry: _Entry, *, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            selector.modify(entry.sock, events, entry)
        except (ValueError, KeyError, OSError):
            pass  # gone meanwhile; its reader has seen or will see why

    def _drop(self, entry: _Entry) -> None:
        """Give a socket up without its reader having finished it: forget
        it and tell its owner."""
        if self._entries.get(entry.fd) is entry:
            del self._entries[entry.fd]
            with self._lock:
                self._count -= 1
        self._dropped(entry)

    def _dropped(self, entry: _Entry) -> None:
        if entry.on_drop is not None:
            try:
                entry.on_drop()
            except Exception:  # noqa: BLE001
                log.exception("%s: cleaning up a dropped connection failed", self.name)

    def _forget(self, selector: selectors.BaseSelector, fd: int) -> None:
        entry = self._entries.pop(fd, None)
        if entry is None:
            return  # already gone (its reader finished it)
        try:
            selector.unregister(entry.sock)
        except (KeyError, ValueError, OSError):
            pass  # never registered (registration failed), or closed meanwhile
        with self._lock:
            self._count -= 1


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
            return bool(ws.connected)
        except OSError:
            data = b""
        if data:
            splitter = getattr(ws, "splitter", None)
            if splitter is None:
                splitter = ws.splitter = FrameSplitter()
            try:
                LoopReader._deliver(ws, splitter.feed(data))
            except Exception:  # noqa: BLE001 - a protocol violation ends the connection, like upstream
                ws.connected = False
                ws.event.set()
        else:
            ws.connected = False
            ws.event.set()  # wake a receive() waiting for the start message
        return bool(ws.connected)


    @staticmethod
    def _deliver(ws: simple_websocket.Server, parts: list[str | bytes]) -> None:
        """Messages the splitter parsed go straight to simple-websocket's
        queue, the rest through wsproto (which queues what it parses), in
        order. The event is set once per message, as simple-websocket does,
        except a ``Doorbell``: its handler takes them all at once."""
        queued = 0
        for part in parts:
            if isinstance(part, str):
                ws.input_buffer.append(part)
                queued += 1
                continue
            ws.ws.receive_data(part)
            # What arrives after a close we sent (the peer's last frames)
            # must not open the connection again.
            ws.connected = ws._handle_events() and ws.connected
            if not ws.connected:
                break
        if isinstance(ws.event, Doorbell) and ws.event.handler is not None:
            queued = min(queued, 1)
        for _ in range(queued):
            ws.event.set()


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
