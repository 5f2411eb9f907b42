"""Plumbing shared by the test servers: a werkzeug server on a thread that
stops cleanly, JSON responses, and WebSocket sessions on werkzeug's
development server via simple-websocket.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import simple_websocket
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from ..media.loop import RECEIVE_BYTES, LoopReader, ReadLoop

__all__ = [
    "BackgroundServer",
    "json_response",
    "openai_error",
    "serve_websocket",
]

log = logging.getLogger("voicecalld.testing.http")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """Request handler that logs through ``logging`` at debug level.

    werkzeug's default prints one access line per request to stderr, which
    buries test output; failures still reach the ``voicecalld.testing.http``
    logger.
    """

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s", self.requestline, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        log.log(logging.ERROR if type == "error" else logging.DEBUG, message, *args)


class BackgroundServer:
    """``werkzeug.serving.make_server(threaded=True)`` run on a thread.

    werkzeug's threaded server makes its request threads daemons and never
    joins them, so a test could finish while a handler still runs. This
    wrapper records every request thread and ``stop()`` joins them (with a
    timeout, so a wedged handler is reported instead of hanging the suite).
    Stop long-lived handlers (WebSocket sessions) before calling ``stop()``.
    """

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._request_threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not running")
        return self._server.port

    @property
    def host(self) -> str:
        return self._host

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        owner = self

        class Handler(_QuietHandler):
            # Registered for the whole connection, including the response
            # body, which werkzeug writes after the app has returned.
            def handle(self) -> None:
                me = threading.current_thread()
                with owner._lock:
                    owner._request_threads.add(me)
                try:
                    super().handle()
                finally:
                    with owner._lock:
                        owner._request_threads.discard(me)

        server = make_server(
            self._host, self._requested_port, self._app, threaded=True, request_handler=Handler
        )
        # Tracebacks of failed requests go through logging as well.
        server.log = lambda type, message, *args: log.error(message, *args)  # type: ignore[method-assign]
        self._server = server
        # shutdown() waits for the accept loop's next poll; keep it short so
        # stopping a server costs a test milliseconds, not half a second.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"test-http-{server.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> list[threading.Thread]:
        """Stop accepting, wait for running requests; returns threads that would not stop."""
        server, self._server = self._server, None
        if server is None:
            return []
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            pending = list(self._request_threads)
        stuck = []
        for thread in pending:
            thread.join(timeout)
            if thread.is_alive():
                stuck.append(thread)
        if stuck:
            log.error("%d request thread(s) still running after stop()", len(stuck))
        return stuck


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def openai_error(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """An error in OpenAI's JSON shape: ``{"error": {message, type, param, code}}``."""
    return json_response(
        {"error": {"message": message, "type": type, "param": param, "code": code}}, status=status
    )


def is_websocket_upgrade(request: Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


_READ_LOOP = ReadLoop("fake-websockets")


def serve_websocket(
    environ: dict[str, Any],
    session: Callable[[simple_websocket.Server], None],
    on_accept: Callable[[simple_websocket.Server], None] | None = None,
    close_wait: float = 1.0,
    event_class: type[threading.Event] | None = None,
) -> NoReturn:
    """Upgrade the request, run ``session(ws)`` on this thread, and tear down.

    Must be called from a WSGI app running on werkzeug's development server
    (simple-websocket takes the raw socket from ``environ["werkzeug.socket"]``).
    Never returns: once the socket has been upgraded there is no HTTP
    response to send, and raising ConnectionError is how werkzeug's server
    is told so (it treats it as a dropped connection and writes nothing).
    """
    sock = environ["werkzeug.socket"]
    # Small, latency-sensitive messages: do not let Nagle batch them.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a Unix socket): nothing to tune
    # One thread reads every connection's socket, as in the daemon: a
    # reader thread per connection would make the fake, not the code under
    # test, the bottleneck of a load test.
    ws = simple_websocket.Server.accept(
        environ, receive_bytes=RECEIVE_BYTES, thread_class=LoopReader, event_class=event_class
    )
    over = _READ_LOOP.add_websocket(ws)
    try:
        if on_accept is not None:
            on_accept(ws)
        session(ws)
    finally:
        _READ_LOOP.finish_websocket(ws, over, close_wait)
    raise ConnectionError("websocket session finished")


def abort_socket(sock: socket.socket) -> None:
    """Cut a connection without a closing handshake (both directions)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing to cut
