"""The HTTP surface (voicecalld(8)): carrier webhooks at
``serve.path``, ``GET /healthz``, and the media-stream WebSocket at
``streaming.streamPath``.

This layer owns what is common to every carrier: routing, the 1 MiB body
limit, and the guarantee that nothing raises into werkzeug. What a webhook
means, and how it is authenticated, is the provider's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from . import metrics
from .httpjson import json_response

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .probe import Probes
    from .providers.base import Provider

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB



StreamHandler = Callable[["WSGIEnvironment"], Response]


class WebhookApp:
    def __init__(self, provider: Provider, webhook_path: str, healthy: Callable[[], bool],
                 stream_path: str | None = None, stream_handler: StreamHandler | None = None,
                 probes: Probes | None = None) -> None:
        self.provider = provider
        self.probes = probes  # voicecallctl doctor's reachability tokens (probe.py)
        self.webhook_path = webhook_path
        self.healthy = healthy
        self.stream_path = stream_path
        self.stream_handler = stream_handler

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_BODY
        request.max_form_memory_size = MAX_BODY
        try:
            if self.stream_path is not None and request.path == self.stream_path and self.stream_handler:
                # A WebSocket session ends by raising ConnectionError, which
                # tells werkzeug the socket is gone; it must pass through.
                response = self.stream_handler(environ)
            else:
                response = self.dispatch(request)
        except ConnectionError:
            raise
        except Exception:
            # Only a bug gets here: providers answer bad input themselves.
            if request.path == self.webhook_path:
                metrics.webhook("error")
            log.exception("call %s: webhook handling failed (%s %s)",
                          request.args.get("callId", "?"), request.method, request.path)
            response = json_response(500, {"error": "internal error; see the voicecalld log"})
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/healthz":
            if request.method not in ("GET", "HEAD"):
                return json_response(405, {"error": "use GET"})
            # Only the verdict: call counts, uptime and problems are for the
            # operator (daemon.status on the control socket), not the internet.
            token = request.args.get("probe")
            if token and self.probes is not None:
                self.probes.arrived(token[:64])  # the answer stays the same either way
            if self.healthy():
                return json_response(200, {"status": "ok"})
            return json_response(503, {"status": "unhealthy"})
        if path == self.webhook_path:
            # The carrier counts its own outcomes (accepted, rejected, replay);
            # what is refused before it sees the request is an error.
            if request.method != "POST":
                metrics.webhook("error")
                return json_response(405, {"error": "webhooks are POSTed"})
            if (request.content_length or 0) > MAX_BODY:
                metrics.webhook("error")
                return json_response(413, {"error": f"body over {MAX_BODY} bytes"})
            try:
                # Read within the limit before anyone parses it. (werkzeug
                # turns a body that stops coming, within serve.readTimeoutSec,
                # into ClientDisconnected: a 400 like any broken request.)
                request.get_data(cache=True)
                return self.provider.handle_webhook(request)
            except RequestEntityTooLarge:
                metrics.webhook("error")
                return json_response(413, {"error": f"body over {MAX_BODY} bytes"})
            except HTTPException as exc:
                metrics.webhook("error")
                return json_response(exc.code or 400, {"error": exc.description or "bad request"})
        return json_response(404, {"error": "not found"})
