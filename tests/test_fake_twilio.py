"""Tests for voicecalld.testing.fake_twilio: the fake must behave like Twilio.

A small werkzeug app stands in for the daemon's webhook endpoint. It checks
every request's X-Twilio-Signature with its own HMAC code (written here, not
imported), so the fake's signer is verified twice: against the published
vectors and against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socketserver
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from voicecalld.testing._twilio_signing import (
    body_sha256_url,
    compute_signature,
    url_with_port,
)
from voicecalld.testing.fake_twilio import Callee, FakeTwilio, StreamRequest

TOKEN = "0123456789abcdef0123456789abcdef"
SID = "AC" + "a1" * 16
FROM = "+15550001111"
TO = "+15550002222"

# -- an independent signature check (deliberately not the fake's code) --


def independent_signature(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    data = url + "".join(name + value for name, value in sorted(pairs))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# -- the stand-in webhook receiver --


@dataclass
class Hit:
    method: str
    path: str
    url: str
    form: list[tuple[str, str]]
    headers: dict[str, str]
    signature_ok: bool
    at: float

    @property
    def params(self) -> dict[str, str]:
        return dict(self.form)


class _Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class Receiver:
    """Serves TwiML per path, records (and signature-checks) every request."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.hits: list[Hit] = []
        self.twiml: dict[str, str | Callable[[Hit], str]] = {}
        self.fail: dict[str, deque[int]] = defaultdict(deque)
        self.content_type = "text/xml"
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=_Handler)
        assert isinstance(self.server, socketserver.ThreadingMixIn)
        self.server.daemon_threads = False  # so server_close() joins request threads
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        req = Request(environ)
        # The exact URL as requested: scheme + Host + raw request target.
        url = f"http://{environ['HTTP_HOST']}{environ['RAW_URI']}"
        form = list(req.form.items(multi=True)) if req.method == "POST" else []
        expected = independent_signature(self.token, url, form)
        hit = Hit(req.method, req.path, url, form or list(req.args.items(multi=True)),
                  dict(req.headers), hmac.compare_digest(expected, req.headers.get("X-Twilio-Signature", "")),
                  time.monotonic())
        self.hits.append(hit)
        return self._respond(hit)(environ, start_response)

    def _respond(self, hit: Hit) -> Response:
        if self.fail[hit.path]:
            return Response("boom", status=self.fail[hit.path].popleft())
        if hit.path.startswith("/status"):
            return Response("", status=204)
        body = self.twiml.get(hit.path)
        if body is None:
            return Response("not here", status=404)
        text = body(hit) if callable(body) else body
        return Response(text, content_type=self.content_type)

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]


# -- fixtures and helpers --


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    # Set up first, torn down last: every server and call thread must be gone.
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    # Short timings: Say 1 ms/char, TwiML seconds scaled to 1/20.
    with FakeTwilio(SID, TOKEN, ms_per_char=1.0, time_scale=0.05, answer_delay=0.02,
                    owned_numbers=[FROM], webhook_timeout=2.0) as f:
        yield f


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(TOKEN)
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(5)
    assert all(h.signature_ok for h in r.hits), [h.url for h in r.hits if not h.signature_ok]


def calls_url(fake: FakeTwilio, sid: str = SID) -> str:
    return f"{fake.base_url}/2010-04-01/Accounts/{sid}/Calls.json"


def call_url(fake: FakeTwilio, call_sid: str) -> str:
    return f"{fake.base_url}/2010-04-01/Accounts/{SID}/Calls/{call_sid}.json"


def create(fake: FakeTwilio, receiver: Receiver | None = None, *, events: tuple[str, ...] = (),
           **params: str) -> requests.Response:
    form: list[tuple[str, str]] = [("To", TO), ("From", FROM)]
    if receiver is not None:
        form += [("Url", receiver.url("/voice?callId=c1")),
                 ("StatusCallback", receiver.url("/status?callId=c1&type=status"))]
    form += [("StatusCallbackEvent", e) for e in events]
    for key, value in params.items():
        form = [(k, v) for k, v in form if k != key] + [(key, value)]
    form = [(k, v) for k, v in form if v != "<omit>"]
    return requests.post(calls_url(fake), data=form, auth=(SID, TOKEN), timeout=5)


def start_call(fake: FakeTwilio, receiver: Receiver, **kw: Any) -> str:
    resp = create(fake, receiver, **kw)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["sid"])


def update(fake: FakeTwilio, call_sid: str, **form: str) -> requests.Response:
    return requests.post(call_url(fake, call_sid), data=form, auth=(SID, TOKEN), timeout=5)


def statuses(receiver: Receiver) -> list[tuple[str, str]]:
    return [(h.params["CallStatus"], h.params["SequenceNumber"]) for h in receiver.at("/status")]


ALL_EVENTS = ("initiated", "ringing", "answered", "completed")

# -- C: signature vectors --

VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                 "From": "+14158675309", "To": "+18005551212"}


@pytest.mark.parametrize(("url", "expected"), [
    (VECTOR_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
    ("http://mycompany.com:80/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
])
def test_signature_vectors(url: str, expected: str) -> None:
    assert compute_signature("12345", url, VECTOR_PARAMS) == expected
    assert independent_signature("12345", url, list(VECTOR_PARAMS.items())) == expected


def test_signature_default_port_spelling() -> None:
    assert compute_signature("12345", url_with_port(VECTOR_URL), VECTOR_PARAMS) == "kvajT1Ptam85bY51eRf/AJRuM3w="


def test_signature_multi_value_and_extra_vector() -> None:
    multi = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]}
    assert compute_signature("12345", VECTOR_URL, multi) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    extra = dict(VECTOR_PARAMS, Caller="+12349013030", From="+12349013030")
    assert compute_signature("12345", VECTOR_URL, extra) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_signature_json_body_and_wss() -> None:
    body = b'{"property": "value", "boolean": true}'
    signed_url = body_sha256_url(VECTOR_URL, body)
    assert signed_url.endswith("&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620")
    assert compute_signature("12345", signed_url) == "a9nBmqA0ju/hNViExpshrM61xv4="
    assert compute_signature("12345", "wss://example.com/media") == "7PR3qMkpDyEJtMrVOY/LDyNq8J8="


# -- A: REST --


def test_auth_failures(fake: FakeTwilio) -> None:
    for auth in [(SID, "wrong"), ("AC" + "b2" * 16, TOKEN), None]:
        resp = requests.post(calls_url(fake), data={"To": TO, "From": FROM}, auth=auth, timeout=5)
        assert resp.status_code == 401
        assert resp.json() == {"code": 20003, "message": "Authenticate",
                               "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert fake.calls == {}


def test_api_key_auth_and_wrong_account_path() -> None:
    with FakeTwilio(SID, TOKEN, api_keys={"SK" + "c3" * 16: "keysecret"}) as f:
        resp = requests.get(f"{f.base_url}/2010-04-01/Accounts/{SID}/Calls/CA{'0' * 32}.json",
                            auth=("SK" + "c3" * 16, "keysecret"), timeout=5)
        assert resp.status_code == 404 and resp.json()["code"] == 20404
        other = requests.post(calls_url(f, "AC" + "d4" * 16), data={"To": TO, "From": FROM},
                              auth=(SID, TOKEN), timeout=5)
        assert other.status_code == 404 and other.json()["code"] == 20404


@pytest.mark.parametrize(("params", "code"), [
    ({"To": "<omit>"}, 21201),
    ({"From": "<omit>"}, 21213),
    ({"To": "5551234567"}, 21211),
    ({"To": "+1555000111a"}, 21211),
    ({"From": "15550001111"}, 21212),
    ({"From": "+15559999999"}, 21210),
    ({"Timeout": "0"}, 21208),
    ({"Timeout": "601"}, 21208),
    ({"Timeout": "ten"}, 21208),
    ({"Url": "<omit>"}, 21205),
    ({"Url": "ftp://example.com/x"}, 21205),
    ({"Twiml": "<Response/>"}, 21205),  # together with Url: exactly one allowed
    ({"StatusCallback": "not a url"}, 21609),
    ({"StatusCallbackEvent": "in-progress"}, 21626),
])
def test_create_validation_errors(fake: FakeTwilio, receiver: Receiver, params: dict[str, Any],
                                  code: int) -> None:
    resp = create(fake, receiver, **params)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["code"] == code and body["status"] == 400
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert fake.calls == {}
    assert receiver.hits == []


def test_inline_twiml_length_limit(fake: FakeTwilio) -> None:
    long_twiml = "<Response><Say>" + "a" * 3990 + "</Say></Response>"
    resp = create(fake, None, Twiml=long_twiml)
    assert resp.status_code == 400 and resp.json()["code"] == 32018


def test_create_success_shape_and_fetch(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say>Hi</Say></Response>"
    resp = create(fake, receiver)
    assert resp.status_code == 201
    call = resp.json()
    assert re.fullmatch(r"CA[0-9a-f]{32}", call["sid"])
    assert call["status"] == "queued" and call["direction"] == "outbound-api"
    assert call["account_sid"] == SID and call["to"] == TO and call["from"] == FROM
    assert call["duration"] is None and call["start_time"] is None and call["end_time"] is None
    assert call["api_version"] == "2010-04-01"
    assert call["uri"] == f"/2010-04-01/Accounts/{SID}/Calls/{call['sid']}.json"
    assert call["subresource_uris"]["recordings"].endswith("/recordings.json")
    parsedate_to_datetime(call["date_created"])  # RFC 2822
    fake.wait_ended(call["sid"])
    fetched = requests.get(call_url(fake, call["sid"]), auth=(SID, TOKEN), timeout=5).json()
    assert fetched["status"] == "completed"
    assert isinstance(fetched["duration"], str) and fetched["end_time"] is not None
    assert fake.requests[0].values("To") == [TO]


def test_list_calls(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    fake.set_callee(TO, outcome="busy")
    first = start_call(fake, receiver)
    fake.wait_ended(first)
    second = start_call(fake, receiver, To="+15550003333")
    fake.wait_ended(second)
    listing = requests.get(calls_url(fake), auth=(SID, TOKEN), timeout=5).json()
    assert [c["sid"] for c in listing["calls"]] == [second, first]  # newest first
    busy = requests.get(calls_url(fake), params={"Status": "busy"}, auth=(SID, TOKEN), timeout=5).json()
    assert [c["sid"] for c in busy["calls"]] == [first] and busy["page_size"] == 50


def test_create_fault_injection(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    fake.fail_next_creates(1, status=429, retry_after=2)
    fake.fail_next_creates(1, status=500)
    fake.fail_next_creates(1, code=21214)
    first = create(fake, receiver)
    assert first.status_code == 429 and first.json()["code"] == 20429
    assert first.headers["Retry-After"] == "2"
    second = create(fake, receiver)
    assert second.status_code == 500 and second.json()["code"] == 20500
    third = create(fake, receiver)
    assert third.status_code == 400 and third.json()["code"] == 21214
    assert create(fake, receiver).status_code == 201


# -- status callbacks --


def test_status_callbacks_in_order_with_sequence_numbers(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say>Hello there</Say></Response>"
    sid = start_call(fake, receiver, events=ALL_EVENTS)
    fake.wait_ended(sid)
    assert statuses(receiver) == [("initiated", "0"), ("ringing", "1"), ("in-progress", "2"),
                                  ("completed", "3")]
    for hit in receiver.at("/status"):
        p = hit.params
        assert p["CallSid"] == sid and p["AccountSid"] == SID
        assert p["From"] == FROM and p["To"] == TO and p["Direction"] == "outbound-api"
        assert p["ApiVersion"] == "2010-04-01" and p["CallbackSource"] == "call-progress-events"
        parsedate_to_datetime(p["Timestamp"])
        assert hit.url.endswith("/status?callId=c1&type=status")
        assert hit.headers["I-Twilio-Idempotency-Token"]
        assert "AnsweredBy" not in p
    completed = receiver.at("/status")[-1].params
    assert completed["CallDuration"].isdigit() and "Duration" in completed
    assert "CallDuration" not in receiver.at("/status")[0].params
    voice = receiver.at("/voice")[0]
    assert voice.method == "POST" and voice.params["CallStatus"] == "in-progress"
    assert voice.url.endswith("/voice?callId=c1")
    # the fake's own record of what the daemon answered
    assert [d.status for d in fake.calls[sid].callbacks] == [204, 204, 204, 204]


def test_only_completed_callback_by_default(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    sid = start_call(fake, receiver)
    fake.wait_ended(sid)
    assert statuses(receiver) == [("completed", "0")]


def test_duplicate_callback_has_same_token(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    fake.duplicate_next_callback("completed")
    sid = start_call(fake, receiver, events=("answered",))
    fake.wait_ended(sid)
    hits = receiver.at("/status")
    assert statuses(receiver) == [("in-progress", "0"), ("completed", "1"), ("completed", "1")]
    assert hits[1].headers["I-Twilio-Idempotency-Token"] == hits[2].headers["I-Twilio-Idempotency-Token"]
    assert hits[1].form == hits[2].form
    assert [d.replay for d in fake.calls[sid].callbacks] == [False, False, True]


def test_out_of_order_callback_keeps_sequence_number(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    fake.delay_next_callback("ringing")
    sid = start_call(fake, receiver, events=ALL_EVENTS)
    fake.wait_ended(sid)
    assert statuses(receiver) == [("initiated", "0"), ("in-progress", "2"), ("ringing", "1"),
                                  ("completed", "3")]


def test_5xx_not_retried_by_default_but_retried_when_enabled(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    receiver.fail["/status"].extend([500])
    sid = start_call(fake, receiver)
    fake.wait_ended(sid)
    assert [d.status for d in fake.calls[sid].callbacks] == [500]

    fake.webhook_retries = 2
    receiver.fail["/status"].extend([500, 503])
    sid = start_call(fake, receiver)
    fake.wait_ended(sid)
    attempts = fake.calls[sid].callbacks
    assert [(d.status, d.attempt) for d in attempts] == [(500, 1), (503, 2), (204, 3)]
    assert len({d.token for d in attempts}) == 1
    tokens = {h.headers["I-Twilio-Idempotency-Token"] for h in receiver.at("/status")[-3:]}
    assert len(tokens) == 1


def test_url_fragment_retry_override(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say>ok</Say></Response>"
    receiver.fail["/voice"].extend([502])
    sid = start_call(fake, receiver, Url=receiver.url("/voice?callId=c1#rc=1&rp=5xx"))
    fake.wait_ended(sid)
    assert fake.calls[sid].said == ["ok"]
    assert [h.url.endswith("/voice?callId=c1") for h in receiver.at("/voice")] == [True, True]


def test_voice_url_5xx_is_an_application_error(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.fail["/voice"].extend([500])
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert call.status == "completed" and call.end_reason == "application-error"
    assert [e.code for e in call.errors] == [11200]


# -- D: TwiML --


def test_say_pause_hangup_timing(receiver: Receiver) -> None:
    receiver.twiml["/voice"] = ("<Response><Say>twenty characters!!!</Say><Pause length=\"2\"/>"
                                "<Say voice=\"Polly.Joanna\">bye</Say><Hangup/><Say>never</Say></Response>")
    with FakeTwilio(SID, TOKEN, ms_per_char=20, time_scale=0.1, answer_delay=0.01) as fake:
        sid = start_call(fake, receiver)
        call = fake.wait_ended(sid)
        assert call.said == ["twenty characters!!!", "bye"]
        first, second = call.says
        assert first.ended is not None
        assert 0.38 <= first.ended - first.started < 0.6      # 20 chars x 20 ms
        assert 0.18 <= second.started - first.ended < 0.35    # Pause 2 s x 0.1
        assert second.voice == "Polly.Joanna" and not first.interrupted
        assert call.status == "completed" and call.end_reason == "twiml-hangup"
        assert call.twiml == [receiver.twiml["/voice"]]


def test_twiml_running_out_completes_the_call(fake: FakeTwilio, receiver: Receiver) -> None:
    sid = start_call(fake, receiver, Url="<omit>", Twiml="<Response><Say>inline</Say></Response>")
    call = fake.wait_ended(sid)
    assert call.said == ["inline"] and call.end_reason == "twiml-ended" and call.status == "completed"
    assert receiver.at("/voice") == []


def test_get_method_signs_url_with_query(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say>got</Say></Response>"
    sid = start_call(fake, receiver, Method="GET")
    fake.wait_ended(sid)
    hit = receiver.at("/voice")[0]
    assert hit.method == "GET" and "callId=c1&" in hit.url and "CallSid=" + sid in hit.url
    assert hit.signature_ok


@pytest.mark.parametrize(("body", "content_type", "code"), [
    ("<Response><Sya>typo</Sya></Response>", "text/xml", 12100),
    ("<Response><Say>unclosed</Response>", "text/xml", 12100),
    ("<Speak>x</Speak>", "text/xml", 12100),
    ("hello", "text/plain", 12300),
])
def test_bad_twiml_is_an_application_error(fake: FakeTwilio, receiver: Receiver, body: str,
                                           content_type: str, code: int) -> None:
    receiver.twiml["/voice"] = body
    receiver.content_type = content_type
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert [e.code for e in call.errors] == [code]
    assert call.status == "completed" and call.end_reason == "application-error"
    assert call.said == []


GATHER = ("<Response><Gather input=\"speech\" action=\"/gather?callId=c1\" timeout=\"{timeout}\" {extra}>"
          "<Say>What would you like?</Say></Gather><Say>No input</Say></Response>")


def test_gather_round_trip(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=100, extra="")
    receiver.twiml["/gather"] = "<Response><Say>Done</Say></Response>"
    sid = start_call(fake, receiver)
    fake.callee_says(sid, "book a table", confidence=0.87)
    call = fake.wait_ended(sid)
    assert call.said == ["What would you like?", "Done"]
    action = receiver.at("/gather")[0]
    assert action.url == receiver.url("/gather?callId=c1")  # resolved against the voice URL
    assert action.params["SpeechResult"] == "book a table" and action.params["Confidence"] == "0.87"
    assert action.params["CallSid"] == sid and action.params["CallStatus"] == "in-progress"
    assert call.gathers[0].outcome == "speech" and call.gather_actions[0].status == 200


def test_non_ascii_round_trip_is_signed_and_decoded(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=100, extra="").replace("What would you like?", "Qué?")
    receiver.twiml["/gather"] = lambda hit: f"<Response><Say>{hit.params['SpeechResult']} ✓</Say></Response>"
    sid = start_call(fake, receiver)
    fake.callee_says(sid, "crème brûlée")
    call = fake.wait_ended(sid)
    assert call.said == ["Qué?", "crème brûlée ✓"]  # receiver teardown re-checks the signatures


def test_gather_timeout_moves_on_or_posts_empty_result(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=1, extra="")
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert call.said == ["What would you like?", "No input"] and call.gathers[0].outcome == "timeout"
    assert receiver.at("/gather") == []

    receiver.twiml["/voice"] = GATHER.format(timeout=1, extra="actionOnEmptyResult=\"true\"")
    receiver.twiml["/gather"] = "<Response><Say>Nothing heard</Say></Response>"
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert call.said == ["What would you like?", "Nothing heard"]
    assert "SpeechResult" not in receiver.at("/gather")[0].params


def test_speech_outside_a_gather_is_not_heard(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"100\"/></Response>"
    sid = start_call(fake, receiver)
    fake.wait_status(sid, "in-progress")
    with pytest.raises(AssertionError, match="no <Gather"):
        fake.callee_says(sid, "hello?", wait=0.1)
    update(fake, sid, Status="completed")


def test_update_twiml_interrupts_gather(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=600, extra="")
    sid = start_call(fake, receiver)
    fake.wait_listening(sid)
    resp = update(fake, sid, Twiml="<Response><Say>Switching</Say><Hangup/></Response>")
    assert resp.status_code == 200 and resp.json()["status"] == "in-progress"
    call = fake.wait_ended(sid)
    assert call.gathers[0].outcome == "interrupted"  # cut short, not timed out (600 s x 0.05)
    assert call.said == ["What would you like?", "Switching"]
    assert receiver.at("/gather") == []


def test_update_twiml_cuts_a_say_short(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say loop=\"0\">forever and ever</Say></Response>"
    sid = start_call(fake, receiver)
    fake.wait_for(lambda: fake.calls[sid].says, message="the Say to start")
    update(fake, sid, Twiml="<Response><Say>Next</Say></Response>")
    call = fake.wait_ended(sid)
    assert call.says[0].interrupted and call.said == ["forever and ever", "Next"]


def test_update_url_redirects(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"600\"/></Response>"
    receiver.twiml["/other"] = "<Response><Say>Redirected</Say></Response>"
    sid = start_call(fake, receiver)
    fake.wait_status(sid, "in-progress")
    fake.wait_for(lambda: fake.calls[sid].twiml, message="the first TwiML")
    assert update(fake, sid, Url=receiver.url("/other")).status_code == 200
    call = fake.wait_ended(sid)
    assert call.said == ["Redirected"] and receiver.at("/other")[0].method == "POST"


def test_status_completed_then_21220_and_unknown_20404(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=600, extra="")
    sid = start_call(fake, receiver)
    fake.wait_listening(sid)
    resp = update(fake, sid, Status="completed")
    assert resp.status_code == 200 and resp.json()["status"] == "completed"
    call = fake.wait_ended(sid)
    assert call.end_reason == "api-hangup" and statuses(receiver) == [("completed", "0")]
    again = update(fake, sid, Status="completed")
    assert again.status_code == 400 and again.json()["code"] == 21220
    assert update(fake, sid, Twiml="<Response/>").json()["code"] == 21220
    missing = update(fake, "CA" + "f" * 32, Status="completed")
    assert missing.status_code == 404 and missing.json()["code"] == 20404


@pytest.mark.parametrize("status", ["canceled", "completed"])
def test_hanging_up_while_ringing_cancels(fake: FakeTwilio, receiver: Receiver, status: str) -> None:
    fake.next_callee(answer_after=30)
    sid = start_call(fake, receiver, events=("ringing",))
    fake.wait_status(sid, "ringing")
    assert update(fake, sid, Status=status).json()["status"] == "canceled"
    fake.wait_ended(sid)
    assert statuses(receiver) == [("ringing", "0"), ("canceled", "1")]
    assert receiver.at("/voice") == []


def test_cancel_is_ignored_on_a_live_call(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"600\"/></Response>"
    sid = start_call(fake, receiver)
    fake.wait_status(sid, "in-progress")
    assert update(fake, sid, Status="canceled").json()["status"] == "in-progress"
    fake.callee_hangs_up(sid)
    call = fake.wait_ended(sid)
    assert call.status == "completed" and call.end_reason == "callee-hangup"


# -- callee behaviours --


@pytest.mark.parametrize(("callee", "status", "history"), [
    (Callee(outcome="busy"), "busy", ["queued", "busy"]),
    (Callee(outcome="failed"), "failed", ["queued", "failed"]),
    (Callee(outcome="no-answer"), "no-answer", ["queued", "ringing", "no-answer"]),
    # Would answer after 1 s: past the call's Timeout, though well within the default 60 s x 0.05.
    (Callee(answer_after=1.0), "no-answer", ["queued", "ringing", "no-answer"]),
])
def test_unanswered_outcomes(fake: FakeTwilio, receiver: Receiver, callee: Callee, status: str,
                             history: list[str]) -> None:
    fake.set_callee(TO, callee)
    sid = start_call(fake, receiver, events=ALL_EVENTS, Timeout="2")  # 2 s x 0.05 = 0.1 s
    call = fake.wait_ended(sid)
    assert call.timeout == 2
    assert call.status == status and call.status_history == history
    assert statuses(receiver)[-1] == (status, str(len(statuses(receiver)) - 1))
    assert receiver.at("/voice") == [] and call.duration == 0
    assert receiver.at("/status")[-1].params["CallDuration"] == "0"


@pytest.mark.parametrize(("callee", "detection", "answered_by"), [
    (Callee(machine=True), "DetectMessageEnd", "machine_end_beep"),
    (Callee(machine=True), "Enable", "machine_start"),
    (Callee(), "DetectMessageEnd", "human"),
    (Callee(machine=True), None, None),
])
def test_machine_detection(fake: FakeTwilio, receiver: Receiver, callee: Callee, detection: str | None,
                           answered_by: str | None) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    fake.next_callee(callee)
    sid = start_call(fake, receiver, events=("answered",), MachineDetection=detection or "<omit>")
    call = fake.wait_ended(sid)
    assert call.answered_by == answered_by
    for hit in receiver.at("/voice") + receiver.at("/status"):
        assert hit.params.get("AnsweredBy") == answered_by


def test_a_call_hung_up_during_its_answered_callback_fetches_no_twiml(fake: FakeTwilio,
                                                                      receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Say>hi</Say></Response>"

    def hang_up(hit: Hit) -> str:
        if hit.params["CallStatus"] == "in-progress":
            assert update(fake, hit.params["CallSid"], Status="completed").status_code == 200
        return "<Response/>"

    receiver.twiml["/cb"] = hang_up
    sid = start_call(fake, receiver, events=("answered",), StatusCallback=receiver.url("/cb"))
    call = fake.wait_ended(sid)
    assert call.status == "completed" and call.end_reason == "api-hangup"
    assert receiver.at("/voice") == [] and call.said == [] and call.twiml == []


def test_callee_hangs_up_after_a_while_and_during_gather(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = GATHER.format(timeout=600, extra="")
    fake.next_callee(hangup_after=0.1)
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert call.end_reason == "callee-hangup" and call.gathers[0].outcome == "hangup"

    sid = start_call(fake, receiver)
    fake.wait_listening(sid)
    fake.callee_hangs_up(sid)
    call = fake.wait_ended(sid)
    assert call.status == "completed" and receiver.at("/gather") == []


# -- inbound --


@pytest.mark.parametrize(("reason", "status"), [("busy", "busy"), (None, "no-answer")])
def test_inbound_reject(fake: FakeTwilio, receiver: Receiver, reason: str | None, status: str) -> None:
    attr = f' reason="{reason}"' if reason else ""
    receiver.twiml["/inbound"] = f"<Response><Reject{attr}/><Say>unreachable</Say></Response>"
    sid = fake.inbound_call("+15557770000", FROM, receiver.url("/inbound"), receiver.url("/status"))
    call = fake.wait_ended(sid)
    voice = receiver.at("/inbound")[0].params
    assert voice["Direction"] == "inbound" and voice["CallStatus"] == "ringing"
    assert voice["From"] == "+15557770000" and voice["To"] == FROM
    assert call.status == status and call.start_time is None and call.said == []
    assert statuses(receiver) == [(status, "0")]


def test_inbound_conversation(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/inbound"] = GATHER.format(timeout=100, extra="").replace("/gather?callId=c1", "/gather")
    receiver.twiml["/gather"] = lambda hit: f"<Response><Say>You said {hit.params['SpeechResult']}</Say></Response>"
    sid = fake.inbound_call("+15557770000", FROM, receiver.url("/inbound"))
    fake.callee_says(sid, "hello")
    call = fake.wait_ended(sid)
    assert call.said == ["What would you like?", "You said hello"]
    assert receiver.at("/gather")[0].params["Direction"] == "inbound"
    assert call.status_history == ["ringing", "in-progress", "completed"]


# -- streams --


def test_connect_stream_hook_and_end(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = (
        "<Response><Connect><Stream url=\"wss://daemon.example/voice/stream\">"
        "<Parameter name=\"token\" value=\"t0k\"/><Parameter name=\"callId\" value=\"c1\"/>"
        "</Stream></Connect><Say>after stream</Say></Response>")
    seen: list[StreamRequest] = []
    fake.on_stream = seen.append
    sid = start_call(fake, receiver)
    stream = fake.wait_stream(sid)
    assert seen == [stream] and stream.parameters == {"token": "t0k", "callId": "c1"}
    assert re.fullmatch(r"MZ[0-9a-f]{32}", stream.stream_sid) and stream.bidirectional
    assert stream.headers["X-Twilio-Signature"] == independent_signature(TOKEN, stream.url, [])
    # The call thread blocks on the open stream: once it waits, the Say after
    # <Connect> has not started (the Connect is the document's first verb).
    call = fake.calls[sid]
    fake.wait_for(lambda: call.waiting, message="the call to wait on its stream")
    assert call.status == "in-progress" and call.said == [] and call.stream_open
    assert not stream.ended.is_set()
    fake.end_stream(sid)
    fake.wait_ended(sid)
    assert call.said == ["after stream"] and stream.ended.is_set()


def test_stream_ends_when_call_is_hung_up(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Connect><Stream url=\"wss://d.example/s\"/></Connect></Response>"
    sid = start_call(fake, receiver)
    stream = fake.wait_stream(sid)
    update(fake, sid, Status="completed")
    assert stream.ended.wait(2) and fake.wait_ended(sid).status == "completed"


@pytest.mark.parametrize(("url", "code"), [("https://d.example/s", 31922), ("wss://d.example/s?token=1", 31920)])
def test_invalid_stream_url_is_refused(fake: FakeTwilio, receiver: Receiver, url: str, code: int) -> None:
    receiver.twiml["/voice"] = (f"<Response><Connect><Stream url=\"{url.replace('&', '&amp;')}\"/></Connect>"
                                "<Say>fallback</Say></Response>")
    sid = start_call(fake, receiver)
    call = fake.wait_ended(sid)
    assert [e.code for e in call.errors] == [code] and call.streams == []
    assert call.said == ["fallback"]


# -- the helpers themselves --


def test_wait_helpers_fail_with_a_useful_message(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"600\"/></Response>"
    sid = start_call(fake, receiver)
    with pytest.raises(AssertionError) as info:
        fake.wait_status(sid, "busy", timeout=0.2)
    assert sid in str(info.value) and "busy" in str(info.value)
    with pytest.raises(KeyError):
        fake.callee_hangs_up("CA" + "0" * 32)


def test_wait_call_finds_calls_in_creation_order(fake: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response/>"
    first = start_call(fake, receiver)
    second = start_call(fake, receiver, To="+15550003333")
    assert fake.wait_call().sid == first
    assert fake.wait_call(to="+15550003333").sid == second
    assert fake.wait_call(count=2).sid == second
    with pytest.raises(AssertionError, match="call #3"):
        fake.wait_call(count=3, timeout=0.05)


def test_stop_hangs_up_silently_and_joins_threads(receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"600\"/></Response>"
    fake = FakeTwilio(SID, TOKEN).start()
    sid = start_call(fake, receiver)
    fake.wait_status(sid, "in-progress")
    fake.stop()
    assert fake.calls[sid].end_reason == "fake-stopped"
    assert receiver.at("/status") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("fake-twilio")]
    with pytest.raises(RuntimeError, match="restarted"):
        fake.start()


# -- dial pacing and asynchronous answering-machine detection (issue 18) --


def test_calls_per_second_is_a_token_bucket_refusing_with_20429() -> None:
    with FakeTwilio(SID, TOKEN, owned_numbers=[FROM], calls_per_second=2, rate_limit_retry_after=1) as fake:
        form = [("To", TO), ("From", FROM), ("Twiml", "<Response/>")]

        def create_now() -> requests.Response:
            return requests.post(calls_url(fake), data=form, auth=(SID, TOKEN), timeout=5)

        assert [create_now().status_code for _ in range(2)] == [201, 201]  # a second's worth at once
        refused = create_now()
        assert (refused.status_code, refused.json()["code"], refused.headers["Retry-After"]) == (429, 20429, "1")
        assert len(fake.calls) == 2  # a refused create places nothing
        fake.wait_for(lambda: create_now().status_code == 201, timeout=5, message="a token refilled")
        for sid in fake.calls:
            fake.callee_hangs_up(sid)


@pytest.mark.parametrize(("callee", "detection", "answered_by"), [
    (Callee(machine=True, greeting=0.3), "DetectMessageEnd", "machine_end_beep"),
    (Callee(machine=True), "Enable", "machine_start"),
    (Callee(verdict_after=0.1), "DetectMessageEnd", "human"),
])
def test_async_machine_detection_posts_the_verdict_to_its_callback(
        fake: FakeTwilio, receiver: Receiver, callee: Callee, detection: str, answered_by: str) -> None:
    receiver.twiml["/voice"] = "<Response><Pause length=\"20\"/></Response>"  # 1 s: still up at the verdict
    receiver.twiml["/amd"] = "<Response/>"
    fake.next_callee(callee)
    sid = start_call(fake, receiver, events=("answered",), MachineDetection=detection, AsyncAmd="true",
                     AsyncAmdStatusCallback=receiver.url("/amd?callId=c1&type=amd"),
                     AsyncAmdStatusCallbackMethod="POST")
    call = fake.wait_ended(sid)
    [voice] = receiver.at("/voice")
    assert "AnsweredBy" not in voice.params  # the TwiML ran at once, before the verdict
    [amd] = receiver.at("/amd")
    assert amd.method == "POST" and amd.url == receiver.url("/amd?callId=c1&type=amd")
    assert set(amd.params) == {"AccountSid", "CallSid", "AnsweredBy", "MachineDetectionDuration"}
    assert (amd.params["CallSid"], amd.params["AnsweredBy"]) == (sid, answered_by)
    assert amd.at >= voice.at  # signature checked by the receiver at teardown
    if answered_by == "machine_end_beep":
        assert call.greeting_started is not None and call.beeped is not None
        assert call.beeped - call.greeting_started >= 0.3  # the verdict came with the beep
        assert int(amd.params["MachineDetectionDuration"]) >= 300


@pytest.mark.parametrize("params", [
    {"MachineDetection": "DetectMessageEnd", "AsyncAmd": "true"},                          # nowhere to post it
    {"MachineDetection": "DetectMessageEnd", "AsyncAmd": "yes", "AsyncAmdStatusCallback": "http://x.example/a"},
    {"AsyncAmd": "true", "AsyncAmdStatusCallback": "http://x.example/a"},                  # no MachineDetection
    {"MachineDetection": "Enable", "AsyncAmd": "true", "AsyncAmdStatusCallback": "http://x.example/a",
     "AsyncAmdStatusCallbackMethod": "GET"},
    {"MachineDetection": "Enable", "AsyncAmdStatusCallback": "not a url"},
])
def test_async_machine_detection_parameters_are_checked(fake: FakeTwilio, receiver: Receiver,
                                                        params: dict[str, str]) -> None:
    response = create(fake, receiver, **params)
    assert response.status_code == 400 and response.json()["code"] == 21205
    assert fake.calls == {}
