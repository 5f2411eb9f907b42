"""JSON answers on the HTTP side: one shape for every endpoint (webhooks,
``/healthz``, the media-stream endpoint, carriers that answer in JSON)."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response


def json_response(status: int, body: dict[str, Any]) -> Response:
    """``body`` as a one-line JSON document with a trailing newline."""
    return Response(json.dumps(body) + "\n", status=status, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
    """``{"error": message}``: a sentence the client's operator can act on."""
    return json_response(status, {"error": message})
