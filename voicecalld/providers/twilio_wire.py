"""Twilio's wire vocabulary for the provider: status callbacks as normalized
events, webhook request parsing, and the URL a signature covers. Pure
functions over werkzeug requests; no state, no network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from werkzeug.wrappers import Request, Response

from .. import jsonsafe
from ..calls import EventType, State
from ..publicurl import with_query
from . import twiml

LIVE_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress"})
END_REASONS: dict[str, State] = {
    "busy": State.BUSY, "no-answer": State.NO_ANSWER, "failed": State.FAILED,
    # Ended through the API before it was answered, and not by us (our own
    # hang-ups close the record before Twilio reports them).
    "canceled": State.HANGUP_BOT,
}


@dataclass(frozen=True)
class StatusEvent:
    type: EventType
    reason: State | None = None
    message: str = ""


def classify_status(call_status: str, *, answered_by: str | None = None, machine_detection: bool = False,
                    closing: bool = False) -> StatusEvent | None:
    """A status callback's ``CallStatus`` as a normalized event (None: nothing to report).

    ``closing``: our closing TwiML (Pause, Hangup) was running, so a
    ``completed`` is the bot's own orderly end rather than the callee hanging up.
    """
    if call_status in ("queued", "initiated"):
        return StatusEvent(EventType.INITIATED)
    if call_status == "ringing":
        return StatusEvent(EventType.RINGING)
    if call_status == "in-progress":
        if machine_detection:
            if not answered_by:
                return None  # the detection result comes with the TwiML fetch
            if answered_by.startswith("machine_"):
                return StatusEvent(EventType.ENDED, State.VOICEMAIL, f"answered by a machine ({answered_by})")
            if answered_by == "fax":
                return StatusEvent(EventType.ENDED, State.FAILED, "a fax machine answered")
        return StatusEvent(EventType.ANSWERED)
    if call_status == "completed":
        return StatusEvent(EventType.ENDED, State.COMPLETED if closing else State.HANGUP_USER)
    if call_status in END_REASONS:
        return StatusEvent(EventType.ENDED, END_REASONS[call_status])
    return None


@dataclass(frozen=True)
class Answer:
    """A webhook response, kept for replays."""

    status: int
    body: str
    content_type: str

    def response(self) -> Response:
        return Response(self.body, status=self.status, content_type=self.content_type)


def xml_answer(body: str) -> Answer:
    return Answer(200, body, twiml.CONTENT_TYPE)


def text_answer(status: int, body: str) -> Answer:
    return Answer(status, body + "\n", "text/plain; charset=utf-8")


def first(params: list[tuple[str, str]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def json_body(response: Any) -> Any:
    try:
        return jsonsafe.loads(response.content)
    except ValueError:
        return None


def form_params(request: Request) -> tuple[list[tuple[str, str]] | None, bytes | None]:
    """(form params, raw JSON body or None); (None, None) for a body we do not take."""
    if request.mimetype == "application/x-www-form-urlencoded":
        return list(request.form.items(multi=True)), None
    raw = request.get_data(cache=True)
    if request.mimetype == "application/json":
        try:
            data = jsonsafe.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None, None
        if not isinstance(data, dict):
            return None, None
        return [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in data.items()], raw
    return ([], None) if not raw else (None, None)


def raw_target(request: Request) -> tuple[str, str]:
    """The request's path and query exactly as sent (still percent-encoded)."""
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        parts = urlsplit(raw)
        path = parts.path if parts.scheme or not parts.netloc else f"//{parts.netloc}{parts.path}"
        return path, parts.query
    return quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")), environ.get("QUERY_STRING", "")


def signed_urls(request: Request, webhook_url: str | None, trust_forwarded: bool) -> list[str]:
    """The URLs Twilio may have signed. Twilio signs the URL it requested:
    the public webhook URL (whatever path a proxy in front of us strips or
    adds) with this request's query. Headers a client controls (Host,
    X-Forwarded-*) only count when the operator says a proxy sets them."""
    path, query = raw_target(request)
    urls = []
    if webhook_url:
        urls.append(with_query(webhook_url, query))
    if trust_forwarded:
        host = first_header(request, "X-Forwarded-Host")
        if host:
            proto = first_header(request, "X-Forwarded-Proto") or "https"
            prefix = (first_header(request, "X-Forwarded-Prefix") or "").rstrip("/")
            urls.append(f"{proto}://{host}{prefix}{path}" + ("?" + query if query else ""))
    return urls


def first_header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if not value:
        return None
    return value.split(",")[0].strip() or None


def confidence(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def to_int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


