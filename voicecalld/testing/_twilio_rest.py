"""The fake's REST surface: Twilio's 2010-04-01 Calls resource.

Paths, status codes, error codes and JSON field names follow the real API
(https://www.twilio.com/docs/voice/api/call-resource), because the daemon
under test only gets ``apiBaseUrl``
pointed here and must not be able to tell the difference.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from ._twilio_model import (
    TERMINAL,
    FakeCall,
    Fetch,
    Inline,
    RecordingRecord,
    RecordingRequest,
    RestRequest,
    Source,
    rfc2822,
)

API_VERSION = "2010-04-01"
TWIML_LIMIT = 4000
STATUS_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
_E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_CALLS = re.compile(r"/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json")
_CALL = re.compile(r"/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json")
_ACCOUNT = re.compile(r"/2010-04-01/Accounts/(?P<account>[^/]+)\.json")
_RECORDINGS = re.compile(r"/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)/Recordings\.json")
RECORDING_EVENTS = frozenset({"in-progress", "completed", "absent"})

# Canonical messages, close to Twilio's own wording so logs read the same.
MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21201: "No 'To' number is specified",
    21205: "Url is not a valid URL: {value}",
    21208: "Timeout must be between 1 and 600: {value}",
    21210: ("The source phone number provided, {value}, is not yet verified for your account. "
            "You may only make calls from phone numbers that you've verified or purchased from Twilio."),
    21211: "The 'To' number {value} is not a valid phone number.",
    21212: "The 'From' number {value} is not a valid phone number, shortcode, or alphanumeric sender ID.",
    21213: "No 'From' number is specified",
    21220: "Call is not in-progress. Cannot redirect.",
    21609: "The StatusCallback URL {value} is not a valid URL.",
    21626: "Invalid 'StatusCallbackEvent': {value}",
    32018: "Twiml is too long: {value} characters (the limit is 4000)",
}


class _Blanks(dict[str, Any]):
    """format_map helper: a placeholder nobody filled in reads as '(unknown)'."""

    def __missing__(self, key: str) -> str:
        return "(unknown)"


class ApiError(Exception):
    """A Twilio REST error: becomes ``{"code", "message", "more_info", "status"}``."""

    def __init__(self, code: int, status: int = 400, message: str | None = None,
                 headers: dict[str, str] | None = None, **fmt: Any) -> None:
        template = MESSAGES.get(code, "Error {code}")
        text = message if message is not None else template.format_map(_Blanks(fmt, code=code))
        super().__init__(text)
        self.code = code
        self.status = status
        self.message = text
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}", "status": self.status}


@dataclass
class CreateFault:
    """An injected failure for the next create request(s)."""

    status: int
    code: int
    message: str | None
    retry_after: float | None


@dataclass(frozen=True)
class CreateRequest:
    """A validated create-call request, ready for the fake to dial."""

    to: str
    from_: str
    source: Source | None
    application_sid: str | None
    status_callback: str | None
    status_callback_method: str
    status_events: frozenset[str]
    timeout: int
    machine_detection: str | None
    params: list[tuple[str, str]]
    amd_callback: Fetch | None = None  # AsyncAmd=true: where the verdict is posted
    recording: RecordingRequest | None = None


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")
    resp.headers["Twilio-Request-Id"] = "RQ" + uuid.uuid4().hex
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def error_response(err: ApiError) -> Response:
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault("WWW-Authenticate", 'Basic realm="Twilio API"')
    return json_response(err.body(), err.status, headers)


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _formatted(number: str) -> str:
    # Twilio shows North American numbers as "(415) 867-5309".
    if re.fullmatch(r"\+1[0-9]{10}", number):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _pn_sid(number: str) -> str:
    return "PN" + hashlib.md5(number.encode(), usedforsecurity=False).hexdigest()


def call_resource(call: FakeCall) -> dict[str, Any]:
    """The Call resource JSON exactly as Twilio shapes it (snake_case)."""
    base = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}"
    subs = ("notifications", "recordings", "payments", "events", "siprec", "streams",
            "transcriptions", "user_defined_message_subscriptions", "user_defined_messages")
    duration = call.duration
    return {
        "account_sid": call.account_sid,
        "annotation": None,
        "answered_by": call.answered_by,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": rfc2822(call.date_created),
        "date_updated": rfc2822(call.date_updated),
        "direction": call.direction,
        "duration": None if duration is None else str(duration),  # a string, as in Twilio
        "end_time": rfc2822(call.end_time),
        "forwarded_from": None,
        "from": call.from_,
        "from_formatted": _formatted(call.from_),
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": _pn_sid(call.from_ if call.direction != "inbound" else call.to),
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": rfc2822(call.start_time),
        "status": call.status,
        "subresource_uris": {name: f"{base}/{name}.json" for name in subs},
        "to": call.to,
        "to_formatted": _formatted(call.to),
        "trunk_sid": None,
        "uri": f"{base}.json",
    }


def _one(form: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in form if k == name]
    return values[-1] if values else None


def _valid_to(value: str) -> bool:
    # Twilio dials E.164 numbers, SIP URIs and Client identities.
    return bool(_E164.fullmatch(value)) or value.startswith(("sip:", "client:"))


def _method(value: str | None) -> str:
    method = (value or "POST").upper()
    if method not in ("GET", "POST"):
        raise ApiError(21205, message=f"Method must be GET or POST, not {value!r}")
    return method


def parse_create(form: list[tuple[str, str]], owned: frozenset[str] | None) -> CreateRequest:
    """Validate a create-call form the way Twilio does, in Twilio's order."""
    to, from_ = _one(form, "To"), _one(form, "From")
    if not to:
        raise ApiError(21201)
    if not from_:
        raise ApiError(21213)
    if not _valid_to(to):
        raise ApiError(21211, value=to)
    if not _E164.fullmatch(from_):
        raise ApiError(21212, value=from_)
    if owned is not None and from_ not in owned:
        raise ApiError(21210, value=from_)
    source, app_sid = _parse_source(form)
    callback = _one(form, "StatusCallback")
    if callback is not None and not is_http_url(callback):
        raise ApiError(21609, value=callback)
    events = [v for k, v in form if k == "StatusCallbackEvent"]
    # A space-separated single value is also accepted by Twilio's API.
    names = frozenset(word for value in events for word in value.split())
    if not names <= STATUS_EVENTS:
        raise ApiError(21626, value=" ".join(sorted(names - STATUS_EVENTS)))
    machine = _one(form, "MachineDetection")
    if machine is not None and machine not in ("Enable", "DetectMessageEnd"):
        raise ApiError(21205, message=f"MachineDetection must be Enable or DetectMessageEnd, not {machine!r}")
    amd_callback = _parse_async_amd(form, machine)
    record = _one(form, "Record")
    if record is not None and record.lower() not in ("true", "false"):
        raise ApiError(21205, message=f"Record must be true or false, not {record!r}")
    recording = parse_recording(form, "OutboundAPI") if record is not None and record.lower() == "true" else None
    return CreateRequest(
        to=to, from_=from_, source=source, application_sid=app_sid,
        status_callback=callback,
        status_callback_method=_method(_one(form, "StatusCallbackMethod")),
        status_events=names | {"completed"},
        timeout=_parse_timeout(_one(form, "Timeout")),
        machine_detection=machine, params=list(form), amd_callback=amd_callback, recording=recording)


def _parse_async_amd(form: list[tuple[str, str]], machine: str | None) -> Fetch | None:
    """``AsyncAmd``, ``AsyncAmdStatusCallback`` and its method
    (https://www.twilio.com/docs/voice/answering-machine-detection)."""
    flag = _one(form, "AsyncAmd")
    if flag is not None and flag not in ("true", "false"):
        raise ApiError(21205, message=f"AsyncAmd must be true or false, not {flag!r}")
    url, method = _one(form, "AsyncAmdStatusCallback"), _one(form, "AsyncAmdStatusCallbackMethod")
    if method is not None and method.upper() != "POST":
        raise ApiError(21205, message=f"AsyncAmdStatusCallbackMethod must be POST, not {method!r}")
    if flag != "true" or machine is None:
        if url is not None:
            raise ApiError(21205, message="AsyncAmdStatusCallback needs MachineDetection and AsyncAmd=true")
        return None
    if url is None or not is_http_url(url):
        # Twilio only warns (21262) and keeps the verdict for the Call resource;
        # the daemon relies on the callback, so the fake refuses.
        raise ApiError(21205, message=f"AsyncAmdStatusCallback must be an http(s) URL, got {url!r}")
    return Fetch(url, "POST", "amd")




def parse_recording(form: list[tuple[str, str]], source: str) -> RecordingRequest:
    """The recording parameters of a call create or a Recordings create
    (https://www.twilio.com/docs/voice/api/recording#create-a-recording-resource)."""
    channels = _one(form, "RecordingChannels") or "mono"
    if channels not in ("mono", "dual"):
        raise ApiError(21205, message=f"RecordingChannels must be mono or dual, not {channels!r}")
    callback = _one(form, "RecordingStatusCallback")
    if callback is not None and not is_http_url(callback):
        raise ApiError(21205, message=f"RecordingStatusCallback is not a valid URL: {callback}")
    words = frozenset(w for k, v in form if k == "RecordingStatusCallbackEvent" for w in v.split())
    if not words <= RECORDING_EVENTS:
        raise ApiError(21205, message=f"Invalid RecordingStatusCallbackEvent: {' '.join(sorted(words))}")
    return RecordingRequest(channels, callback, _method(_one(form, "RecordingStatusCallbackMethod")),
                            words or frozenset({"completed"}), source)


def _parse_timeout(raw: str | None) -> int:
    if raw is None:
        return 60
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(21208, value=raw) from None
    if not 1 <= value <= 600:
        raise ApiError(21208, value=raw)
    return value


def _parse_source(form: list[tuple[str, str]]) -> tuple[Source | None, str | None]:
    url, twiml, app = _one(form, "Url"), _one(form, "Twiml"), _one(form, "ApplicationSid")
    given = [name for name, value in (("Url", url), ("Twiml", twiml), ("ApplicationSid", app))
             if value is not None]
    if len(given) != 1:
        raise ApiError(21205, message=("Exactly one of Url, Twiml or ApplicationSid is required; "
                                       f"got {', '.join(given) or 'none'}"))
    if twiml is not None:
        if len(twiml) > TWIML_LIMIT:
            raise ApiError(32018, value=len(twiml))
        return Inline(twiml), None
    if url is not None:
        if not is_http_url(url):
            raise ApiError(21205, value=url)
        return Fetch(url, _method(_one(form, "Method")), "voice"), None
    # The fake hosts no TwiML Apps, so any ApplicationSid is unknown to it.
    raise ApiError(21218, message=f"Invalid ApplicationSid: {app} (the fake has no TwiML Apps)")


class Recorder(Protocol):
    """Starting a call's recording, which the REST API and TwiML both do."""

    def _start_recording(self, call: FakeCall, request: RecordingRequest) -> RecordingRecord: ...


class FakeTwilio(Recorder, Protocol):
    """What the REST app uses of ``fake_twilio.FakeTwilio``."""

    account_sid: str
    auth_token: str
    account_status: str
    rate_limit_retry_after: float | None
    _rate_lock: threading.Lock

    @property
    def calls(self) -> dict[str, FakeCall]: ...
    def _record_request(self, record: RestRequest) -> None: ...
    def _get_call(self, call_sid: str) -> FakeCall | None: ...
    def _credentials_ok(self, username: str, password: str) -> bool: ...
    def _take_create_fault(self) -> CreateFault | None: ...
    def _owned(self) -> frozenset[str] | None: ...
    def _dial_allowed(self) -> bool: ...
    def _create_call(self, create: CreateRequest) -> FakeCall: ...


class RestApp:
    """WSGI app for the REST API; all state changes go through the fake."""

    def __init__(self, fake: FakeTwilio) -> None:
        self.fake = fake

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        record = RestRequest(
            method=request.method, path=request.path,
            query=list(request.args.items(multi=True)),
            form=list(request.form.items(multi=True)),
            headers={k: v for k, v in request.headers.items()})
        self.fake._record_request(record)
        try:
            response = self._route(request, record)
        except ApiError as err:
            response = error_response(err)
        record.status = response.status_code
        record.response = json.loads(response.get_data(as_text=True) or "null")
        # HTTP/1.0-style close keeps stop() from waiting on idle keep-alive sockets.
        response.headers["Connection"] = "close"
        return response(environ, start_response)

    def _route(self, request: Request, record: RestRequest) -> Response:
        self._authenticate(request)
        account = _ACCOUNT.fullmatch(request.path)
        if account is not None and request.method == "GET":
            return self._account(account["account"])
        recordings = _RECORDINGS.fullmatch(request.path)
        if recordings and recordings["account"] == self.fake.account_sid and request.method == "POST":
            target = self.fake._get_call(recordings["sid"])
            if target is None:
                raise ApiError(20404, 404, path=request.path)
            return self._record(target, record)
        calls, call = _CALLS.fullmatch(request.path), _CALL.fullmatch(request.path)
        match = calls or call
        if match is None or match["account"] != self.fake.account_sid:
            raise ApiError(20404, 404, path=request.path)
        if calls and request.method == "POST":
            return self._create(record)
        if calls and request.method == "GET":
            return self._list(request)
        if call and request.method in ("GET", "POST"):
            target = self.fake._get_call(call["sid"])
            if target is None:
                raise ApiError(20404, 404, path=request.path)
            if request.method == "GET":
                return json_response(call_resource(target), 200)
            return self._update(target, record)
        raise ApiError(20004, 405, message=f"Method {request.method} not allowed on {request.path}")

    def _account(self, sid: str) -> Response:
        """Fetch the Account resource (https://www.twilio.com/docs/iam/api/account):
        only the account the credentials belong to."""
        if sid != self.fake.account_sid:
            raise ApiError(20404, 404, path=f"/{API_VERSION}/Accounts/{sid}.json")
        uri = f"/{API_VERSION}/Accounts/{sid}.json"
        return json_response({"sid": sid, "owner_account_sid": sid, "friendly_name": "voicecalld fake account",
                              "status": self.fake.account_status, "type": "Full", "auth_token": self.fake.auth_token,
                              "date_created": "Mon, 02 Nov 2026 10:00:00 +0000",
                              "date_updated": "Mon, 02 Nov 2026 10:00:00 +0000", "uri": uri,
                              "subresource_uris": {"calls": uri.replace(".json", "/Calls.json")}}, 200)

    def _authenticate(self, request: Request) -> None:
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic" and auth.username is not None
              and self.fake._credentials_ok(auth.username, auth.password or ""))
        if not ok:
            raise ApiError(20003, 401, message="Authenticate")

    def _create(self, record: RestRequest) -> Response:
        fault = self.fake._take_create_fault()
        if fault is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            raise ApiError(fault.code, fault.status, fault.message, headers)
        create = parse_create(record.form, self.fake._owned())
        with self.fake._rate_lock:  # one at a time, so the window counts exactly
            if not self.fake._dial_allowed():
                after = self.fake.rate_limit_retry_after
                raise ApiError(20429, 429, headers={} if after is None else {"Retry-After": f"{after:g}"})
            call = self.fake._create_call(create)
        return json_response(call_resource(call), 201)

    def _list(self, request: Request) -> Response:
        """First page of calls, newest first, filtered like Twilio (Status/To/From)."""
        try:
            size = max(1, min(1000, int(request.args.get("PageSize", "50"))))
        except ValueError:
            raise ApiError(20001, message="PageSize must be an integer") from None
        wanted = {k: request.args[k] for k in ("Status", "To", "From") if k in request.args}
        calls = sorted(self.fake.calls.values(), key=lambda c: c.date_created, reverse=True)
        rows = [call_resource(c) for c in calls]
        rows = [r for r in rows if all(r[k.lower()] == v for k, v in wanted.items())][:size]
        uri = f"/{API_VERSION}/Accounts/{self.fake.account_sid}/Calls.json?PageSize={size}&Page=0"
        return json_response({"calls": rows, "end": max(0, len(rows) - 1), "first_page_uri": uri,
                              "next_page_uri": None, "page": 0, "page_size": size,
                              "previous_page_uri": None, "start": 0, "uri": uri}, 200)

    def _update(self, call: FakeCall, record: RestRequest) -> Response:
        form = record.form
        call.updates.append(list(form))
        status, twiml, url = _one(form, "Status"), _one(form, "Twiml"), _one(form, "Url")
        if call.status in TERMINAL:
            raise ApiError(21220)
        if status is not None:
            self._update_status(call, status)
        elif twiml is not None and url is not None:
            raise ApiError(21205, message="Only one of Url or Twiml may be given")
        elif twiml is not None:
            if len(twiml) > TWIML_LIMIT:
                raise ApiError(32018, value=len(twiml))
            call.replace_twiml(Inline(twiml))
        elif url is not None:
            if not is_http_url(url):
                raise ApiError(21205, value=url)
            call.replace_twiml(Fetch(url, _method(_one(form, "Method")), "redirect"))
        return json_response(call_resource(call), 200)

    def _record(self, call: FakeCall, record: RestRequest) -> Response:
        """Start recording a live call (its Recordings resource)."""
        if call.status != "in-progress":
            raise ApiError(21220, message="Call is not in-progress. Cannot start a recording.")
        recording = self.fake._start_recording(call, parse_recording(record.form, "StartCallRecordingAPI"))
        return json_response({"account_sid": call.account_sid, "call_sid": call.sid, "sid": recording.sid,
                              "channels": recording.channels, "source": recording.source, "status": "in-progress",
                              "duration": None,
                              "uri": f"/{API_VERSION}/Accounts/{call.account_sid}/Recordings/{recording.sid}.json"},
                             201)

    def _update_status(self, call: FakeCall, status: str) -> None:
        if status == "completed":
            # A hang-up before answer ends the call as canceled, as Twilio reports it.
            call.hang_up("api-hangup")
        elif status == "canceled":
            # Only queued/ringing calls can be canceled; Twilio ignores it on a live call.
            if call.start_time is None:
                call.end("canceled", "api-cancel")
        else:
            raise ApiError(21218, message=f"Status must be completed or canceled, not {status!r}")
