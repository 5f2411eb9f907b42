"""The fake Telnyx, driven over HTTP as the daemon will drive it.

A small werkzeug receiver stands in for the daemon's webhook endpoint and
verifies every delivery with ``voicecalld.providers.telnyx_signature``, so
these tests also prove that the fake signs exactly like Telnyx.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from voicecalld.providers.telnyx_signature import (
    SignatureError,
    load_public_key,
    verify,
)
from voicecalld.testing._scheduler import Scheduler
from voicecalld.testing.fake_telnyx import FakeTelnyx

CALLER = "+15550001111"
CALLEE = "+15552223333"
STATE = "eyJjYWxsSWQiOiAiYWJjIn0="  # base64 of {"callId": "abc"}


# -- the stand-in for the daemon's webhook endpoint ------------------------------

@dataclass
class Received:
    raw: bytes
    doc: dict[str, Any]
    status: int

    @property
    def data(self) -> dict[str, Any]:
        return self.doc["data"]

    @property
    def payload(self) -> dict[str, Any]:
        return self.doc["data"]["payload"]


class _Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.0"  # no keep-alive: teardown can join every thread

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class Receiver:
    def __init__(self) -> None:
        self.key: Any = None
        self.received: list[Received] = []
        self.rejected: list[str] = []
        self._answers: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._app, threaded=True,
                                                   request_handler=_Handler)
        self._server.daemon_threads = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/voice/webhook"

    def answer_next(self, event_type: str, *statuses: int) -> None:
        """Answer the next correctly signed deliveries of ``event_type``
        with these statuses (then 200)."""
        with self._lock:
            self._answers.setdefault(event_type, []).extend(statuses)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        raw = request.get_data()
        try:
            verify(self.key, signature_b64=request.headers.get("telnyx-signature-ed25519"),
                   timestamp=request.headers.get("telnyx-timestamp"), raw_body=raw, now=time.time())
        except SignatureError as exc:
            with self._lock:
                self.rejected.append(exc.reason)
            return Response("signature", status=401)(environ, start_response)
        doc = json.loads(raw)
        with self._lock:
            queued = self._answers.get(doc["data"]["event_type"])
            status = queued.pop(0) if queued else 200
            self.received.append(Received(raw, doc, status))
        return Response("", status=status)(environ, start_response)

    def accepted(self, call_control_id: str, event_type: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received
                    if r.status == 200 and r.payload["call_control_id"] == call_control_id
                    and event_type in (None, r.data["event_type"])]

    def types(self, call_control_id: str) -> list[str]:
        return [r.data["event_type"] for r in self.accepted(call_control_id)]


class Api:
    def __init__(self, fake: FakeTelnyx) -> None:
        self.fake = fake
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {fake.api_key}"

    def dial(self, receiver: Receiver, **overrides: Any) -> requests.Response:
        body = {"connection_id": self.fake.connection_id, "to": CALLEE, "from": CALLER,
                "webhook_url": receiver.url, "client_state": STATE}
        body.update(overrides)
        return self.session.post(f"{self.fake.base_url}/v2/calls",
                                 json={k: v for k, v in body.items() if v is not None}, timeout=5)

    def cmd(self, call_control_id: str, name: str, **body: Any) -> requests.Response:
        return self.session.post(f"{self.fake.base_url}/v2/calls/{call_control_id}/actions/{name}",
                                 json=body, timeout=5)

    def get(self, call_control_id: str) -> requests.Response:
        return self.session.get(f"{self.fake.base_url}/v2/calls/{call_control_id}", timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def fake(receiver: Receiver) -> Iterator[FakeTelnyx]:
    with FakeTelnyx(seed=7, ms_per_char=1.0, answer_after=0.02, timeout_scale=0.01,
                    webhook_retry_delays=(0.02, 0.02, 0.02), amd_delay=0.01, dtmf_gap=0.005) as instance:
        receiver.key = load_public_key(instance.public_key_b64)
        yield instance


@pytest.fixture
def api(fake: FakeTelnyx) -> Iterator[Api]:
    client = Api(fake)
    yield client
    client.session.close()


def _error(response: requests.Response) -> dict[str, Any]:
    errors = response.json()["errors"]
    assert len(errors) == 1
    return errors[0]


def _answered_call(fake: FakeTelnyx, api: Api, receiver: Receiver, **dial: Any) -> str:
    response = api.dial(receiver, **dial)
    assert response.status_code == 200, response.text
    cid = response.json()["data"]["call_control_id"]
    fake.wait_event(cid, "call.answered", ok=True)
    return cid


# -- keys and lifecycle ----------------------------------------------------------

def test_public_key_forms_agree(fake: FakeTelnyx) -> None:
    assert fake.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
    assert bytes(load_public_key(fake.public_key_pem)) == bytes(load_public_key(fake.public_key_b64))
    assert bytes(load_public_key(fake.public_key_b64)) == bytes(fake.signing_key.verify_key)


def test_stop_joins_every_thread() -> None:
    before = set(threading.enumerate())
    receiver = Receiver()
    fake = FakeTelnyx(answer_after=0.01).start()
    receiver.key = load_public_key(fake.public_key_b64)
    api = Api(fake)
    cid = _answered_call(fake, api, receiver)
    api.session.close()
    assert fake.calls[cid].alive
    fake.stop()  # with timers still pending for the live call
    receiver.close()
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == []
    with pytest.raises(RuntimeError, match="not running"):
        fake.base_url  # noqa: B018 (the property access is the test)


def _boom() -> None:
    raise ZeroDivisionError("deliberate failure in a scheduled callback")


def test_scheduler_runs_by_due_time_then_fifo() -> None:
    scheduler = Scheduler("test-scheduler")
    scheduler.start()
    order: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    scheduler.call_at(now + 0.03, lambda: order.append("late"))
    scheduler.call_at(now + 0.01, lambda: order.append("a"))
    scheduler.call_at(now + 0.01, lambda: order.append("b"))
    scheduler.call_at(now + 0.04, done.set)
    assert done.wait(2)
    scheduler.stop()
    assert order == ["a", "b", "late"]


def test_scheduler_stop_drops_pending_and_keeps_errors() -> None:
    scheduler = Scheduler("test-scheduler")
    scheduler.start()
    scheduler.call_later(0, _boom)  # a failing callback must not kill the thread
    ran = threading.Event()
    scheduler.call_later(0.01, ran.set)
    scheduler.call_later(60, lambda: pytest.fail("a pending callback ran after stop()"))
    assert ran.wait(2)
    assert not scheduler.idle  # the 60 s callback is pending
    scheduler.stop()  # raises if its thread does not end
    assert scheduler.idle  # dropped, not waited for
    assert not [t for t in threading.enumerate() if t.name == "test-scheduler"]
    assert [type(e) for e in scheduler.errors] == [ZeroDivisionError]


def test_simulation_errors_surface_on_stop() -> None:
    fake = FakeTelnyx().start()
    fake._scheduler.call_later(0, _boom)  # stands in for a bug in the fake
    fake.wait_for(lambda: fake.errors)
    with pytest.raises(RuntimeError, match="simulation failed"):
        fake.stop()


def test_context_exit_keeps_the_tests_own_failure() -> None:
    with pytest.raises(KeyError, match="own failure"), FakeTelnyx() as fake:
        fake._scheduler.call_later(0, _boom)
        fake.wait_for(lambda: fake.errors)
        raise KeyError("the test's own failure")


def test_seed_makes_ids_reproducible(receiver: Receiver) -> None:
    ids = []
    for _ in range(2):
        with FakeTelnyx(seed=42) as fake:
            ids.append(Api(fake).dial(receiver).json()["data"]["call_control_id"])
    assert ids[0] == ids[1] and ids[0].startswith("v3:")


def test_wait_for_times_out_with_a_description(fake: FakeTelnyx) -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s waiting for nothing(.|\n)*fake Telnyx state"):
        fake.wait_for(lambda: False, timeout=0.05, what="nothing")


# -- REST validation ---------------------------------------------------------------

def test_auth_failure(fake: FakeTelnyx, receiver: Receiver) -> None:
    url = f"{fake.base_url}/v2/calls"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {fake.api_key}"}):
        response = requests.post(url, json={}, headers=headers, timeout=5)
        assert response.status_code == 401
        assert _error(response)["code"] == "10009"
    assert fake.calls == {}


@pytest.mark.parametrize(("overrides", "status", "code", "pointer"), [
    ({"to": None}, 422, "10015", "/to"),
    ({"to": "5552223333"}, 422, "10016", "/to"),
    ({"to": "+0123"}, 422, "10016", "/to"),
    ({"from": "+1 555 000 1111"}, 422, "10016", "/from"),
    ({"connection_id": "someone-else"}, 422, "10015", "/connection_id"),
    ({"webhook_url": None}, 422, "10015", "/webhook_url"),
    ({"webhook_url": "/relative"}, 422, "10015", "/webhook_url"),
    ({"client_state": "not base64!"}, 422, "10015", "/client_state"),
    ({"timeout_secs": 4}, 422, "10015", "/timeout_secs"),
    ({"timeout_secs": 601}, 422, "10015", "/timeout_secs"),
    ({"answering_machine_detection": "yes"}, 422, "10015", "/answering_machine_detection"),
], ids=["no-to", "to-not-plus", "to-leading-zero", "from-spaces", "wrong-connection", "no-webhook",
        "relative-webhook", "client-state-not-b64", "timeout-low", "timeout-high", "amd-unknown"])
def test_dial_validation(fake: FakeTelnyx, api: Api, receiver: Receiver, overrides: dict[str, Any],
                         status: int, code: str, pointer: str) -> None:
    response = api.dial(receiver, **overrides)
    assert response.status_code == status
    error = _error(response)
    assert (error["code"], error["source"]["pointer"]) == (code, pointer)
    assert error["title"] and error["detail"]
    assert fake.calls == {}


def test_client_state_error_is_clear(api: Api, receiver: Receiver) -> None:
    assert "Base-64" in _error(api.dial(receiver, client_state="%%%"))["detail"]


def test_bad_json_body(fake: FakeTelnyx, api: Api) -> None:
    response = api.session.post(f"{fake.base_url}/v2/calls", data=b"{nope",
                                headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400
    assert _error(response)["code"] == "10015"


def test_unknown_ids_and_routes(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    assert (api.cmd("v3:unknown", "hangup").status_code, _error(api.cmd("v3:unknown", "hangup"))["code"]) \
        == (404, "90015")
    assert _error(api.get("v3:unknown"))["code"] == "90015"
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    response = api.cmd(cid, "gather_using_ai")
    assert (response.status_code, _error(response)["code"]) == (404, "10005")
    response = api.session.get(f"{fake.base_url}/v2/numbers", timeout=5)
    assert (response.status_code, _error(response)["code"]) == (404, "10005")


# -- outbound calls ----------------------------------------------------------------

def test_outbound_answered_payloads(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    response = api.dial(receiver)
    data = response.json()["data"]
    assert data["is_alive"] is True and data["record_type"] == "call"
    cid = data["call_control_id"]
    fake.wait_event(cid, "call.answered", ok=True)
    assert receiver.types(cid) == ["call.initiated", "call.answered"]
    initiated, answered = receiver.accepted(cid)
    assert initiated.payload["state"] == "bridging"
    for delivery in (initiated, answered):
        payload = delivery.payload
        assert payload["direction"] == "outgoing"
        assert (payload["from"], payload["to"]) == (CALLER, CALLEE)
        assert payload["client_state"] == STATE
        assert payload["connection_id"] == fake.connection_id
        assert (payload["call_leg_id"], payload["call_session_id"]) == (data["call_leg_id"], data["call_session_id"])
        assert delivery.data["record_type"] == "event" and delivery.data["occurred_at"].endswith("Z")
        assert delivery.doc["meta"] == {"attempt": 1, "delivered_to": receiver.url}
    assert (answered.payload["codec"], answered.payload["sampling_rate"]) == ("PCMU", 8000)
    status = api.get(cid).json()["data"]
    assert status["is_alive"] is True and status["record_type"] == "call"
    assert isinstance(status["call_duration"], int)


def test_webhook_body_is_raw_compact_json(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    raw = receiver.accepted(cid, "call.answered")[0].raw
    # A receiver that verified re-serialized JSON would fail on these bytes.
    assert json.dumps(json.loads(raw)).encode() != raw


def test_speak_events_and_timing(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.timing.ms_per_char = 2.0
    cid = _answered_call(fake, api, receiver)
    text = "x" * 150  # 0.3 s at 2 ms per character
    new_state = "c3BlYWtpbmc="
    asked = time.monotonic()
    assert api.cmd(cid, "speak", payload=text, voice="AWS.Polly.Joanna-Neural", language="en-US",
                   client_state=new_state).json() == {"data": {"result": "ok"}}
    started = fake.wait_event(cid, "call.speak.started")
    ended = fake.wait_event(cid, "call.speak.ended", timeout=2)
    # Measured from the request, not from speak.started, whose delivery may
    # lag on a loaded machine; only a lower bound is safe to assert.
    assert ended.sent_at - asked >= 0.3 - 0.01
    assert started.sent_at < ended.sent_at
    assert ended.json["data"]["payload"]["status"] == "completed"
    # The command's client_state replaces the call's for its own and later webhooks.
    assert started.json["data"]["payload"]["client_state"] == new_state
    assert fake.calls[cid].said == [text]
    assert fake.calls[cid].command_names == ["speak"]


def test_speak_commands_queue(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    for text in ("first sentence", "second sentence"):
        assert api.cmd(cid, "speak", payload=text, voice="female").status_code == 200
    fake.wait_event(cid, "call.speak.ended", ok=True, nth=2)
    assert receiver.types(cid)[2:] == ["call.speak.started", "call.speak.ended"] * 2


@pytest.mark.parametrize(("body", "pointer"), [
    ({"voice": "female"}, "/payload"),
    ({"payload": "x" * 3001, "voice": "female"}, "/payload"),
    ({"payload": "hi"}, "/voice"),
    ({"payload": "hi", "voice": "alice"}, "/voice"),
    ({"payload": "hi", "voice": "female", "payload_type": "markdown"}, "/payload_type"),
    ({"payload": "hi", "voice": "female", "client_state": "???"}, "/client_state"),
])
def test_speak_validation(fake: FakeTelnyx, api: Api, receiver: Receiver, body: dict[str, Any],
                          pointer: str) -> None:
    cid = _answered_call(fake, api, receiver)
    response = api.cmd(cid, "speak", **body)
    assert response.status_code == 422
    assert _error(response)["source"]["pointer"] == pointer
    call = fake.calls[cid]
    assert call.said == [] and call.client_state == STATE
    assert [c.status for c in call.commands] == [422]


def test_speak_before_answer_is_refused(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.set_callee(CALLEE, "no_answer")
    cid = api.dial(receiver, timeout_secs=60).json()["data"]["call_control_id"]
    response = api.cmd(cid, "speak", payload="hello", voice="female")
    assert response.status_code == 422
    assert _error(response)["code"] != "90018"  # the call has not ended


def test_hangup_mid_speech_reports_call_hangup(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    api.cmd(cid, "speak", payload="y" * 2000, voice="female")  # 2 s
    fake.wait_event(cid, "call.speak.started")
    api.cmd(cid, "hangup")
    fake.wait_event(cid, "call.hangup")
    ended = receiver.accepted(cid, "call.speak.ended")
    assert [r.payload["status"] for r in ended] == ["call_hangup"]


def test_transcription_interim_then_final(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    assert fake.callee_says(cid, "nobody is listening") is False
    assert api.cmd(cid, "transcription_start", transcription_engine="Google",
                   transcription_tracks="inbound").status_code == 200
    sentence = "I would like a table for two"
    assert fake.callee_says(cid, sentence, confidence=0.91) is True

    def transcripts() -> list[dict[str, Any]]:
        return [r.payload["transcription_data"] for r in receiver.accepted(cid, "call.transcription")]
    fake.wait_for(lambda: any(d["is_final"] for d in transcripts()))
    data = transcripts()
    interims, final = data[:-1], data[-1]
    assert interims and all(d["is_final"] is False for d in interims)
    assert all(sentence.startswith(d["transcript"]) and d["transcript"] != sentence for d in interims)
    assert final == {"transcript": sentence, "is_final": True, "confidence": 0.91,
                     "transcription_track": "inbound"}
    call = fake.calls[cid]
    assert call.dropped_speech == ["nobody is listening"] and call.heard == [sentence]


def test_transcription_stop_drops_speech(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver, transcription=True)  # transcribing from the answer on
    fake.callee_says(cid, "one")
    fake.wait_for(lambda: fake.calls[cid].heard == ["one"])
    api.cmd(cid, "transcription_stop")
    assert fake.callee_says(cid, "two") is False
    assert fake.calls[cid].dropped_speech == ["two"]


def test_outbound_track_transcribes_our_own_speech(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    api.cmd(cid, "transcription_start", transcription_tracks="both")
    api.cmd(cid, "speak", payload="hello from the bot", voice="female")
    fake.wait_event(cid, "call.transcription")
    data = receiver.accepted(cid, "call.transcription")[0].payload["transcription_data"]
    assert (data["transcription_track"], data["transcript"]) == ("outbound", "hello from the bot")


def test_dtmf(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    assert fake.callee_presses(cid, "12#") is True
    fake.wait_for(lambda: len(receiver.accepted(cid, "call.dtmf.received")) == 3)
    assert [r.payload["digit"] for r in receiver.accepted(cid, "call.dtmf.received")] == ["1", "2", "#"]
    with pytest.raises(ValueError, match="DTMF"):
        fake.callee_presses(cid, "1x")


def test_hangup_then_90018(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    assert api.cmd(cid, "hangup").json() == {"data": {"result": "ok"}}
    hangup = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "caller")
    assert "sip_hangup_cause" in hangup and hangup["state"] == "hangup"
    for name, body in (("hangup", {}), ("speak", {"payload": "hi", "voice": "female"})):
        response = api.cmd(cid, name, **body)
        assert (response.status_code, _error(response)["code"]) == (422, "90018")
    assert api.get(cid).json()["data"]["is_alive"] is False
    assert fake.callee_hangs_up(cid) is False


def test_callee_hangs_up(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    assert fake.callee_hangs_up(cid) is True
    hangup = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "callee")


@pytest.mark.parametrize(("behaviour", "cause", "sip"), [
    ("busy", "user_busy", "486"), ("reject", "call_rejected", "603"), ("not_found", "not_found", "404"),
])
def test_callee_refuses(fake: FakeTelnyx, api: Api, receiver: Receiver, behaviour: str, cause: str,
                        sip: str) -> None:
    fake.set_callee(CALLEE, behaviour)
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    hangup = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"], hangup["sip_hangup_cause"]) == (cause, "callee", sip)
    assert receiver.types(cid) == ["call.initiated", "call.hangup"]


def test_ring_timeout(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.set_callee(CALLEE, "no_answer")
    started = time.monotonic()
    cid = api.dial(receiver, timeout_secs=10).json()["data"]["call_control_id"]  # 0.1 s at timeout_scale 0.01
    hangup = fake.wait_event(cid, "call.hangup")
    assert hangup.sent_at - started >= 0.1 - 0.01
    assert hangup.json["data"]["payload"]["hangup_cause"] == "timeout"
    assert "call.answered" not in receiver.types(cid)


def test_hangup_while_ringing_cancels(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.set_callee(CALLEE, "no_answer")
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    api.cmd(cid, "hangup")
    payload = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    assert (payload["hangup_cause"], payload["hangup_source"]) == ("originator_cancel", "caller")


@pytest.mark.parametrize(("behaviour", "amd", "expected"), [
    ("machine", "detect", [("call.machine.detection.ended", "machine")]),
    ("answer", "detect", [("call.machine.detection.ended", "human")]),
    ("machine", "detect_beep", [("call.machine.detection.ended", "machine"),
                                ("call.machine.greeting.ended", "beep_detected")]),
    ("machine", None, []),
])
def test_answering_machine_detection(fake: FakeTelnyx, api: Api, receiver: Receiver, behaviour: str,
                                     amd: str | None, expected: list[tuple[str, str]]) -> None:
    fake.set_callee(CALLEE, behaviour)
    cid = _answered_call(fake, api, receiver, answering_machine_detection=amd)

    def machine_events() -> list[tuple[str, str]]:
        return [(r.data["event_type"], r.payload["result"]) for r in receiver.accepted(cid)
                if r.data["event_type"].startswith("call.machine.")]
    fake.wait_for(lambda: len(machine_events()) >= len(expected))
    fake.wait_idle()  # every timer fired and every webhook sent: nothing further can arrive
    assert machine_events() == expected


# -- inbound calls -----------------------------------------------------------------

def test_inbound_answer(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = fake.inbound_call(CALLER, CALLEE, receiver.url)
    initiated = fake.wait_event(cid, "call.initiated").json["data"]["payload"]
    assert (initiated["direction"], initiated["state"], initiated["client_state"]) == ("incoming", "parked", None)
    assert api.cmd(cid, "answer", client_state=STATE).status_code == 200
    answered = fake.wait_event(cid, "call.answered").json["data"]["payload"]
    assert answered["client_state"] == STATE
    assert _error(api.cmd(cid, "answer"))["code"] == "10015"  # already answered
    api.cmd(cid, "hangup")
    hangup = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    # On an inbound call the daemon is the callee.
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "callee")


def test_inbound_unanswered_is_cancelled(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = fake.inbound_call(CALLER, CALLEE, receiver.url, ring_timeout=0.05)
    hangup = fake.wait_event(cid, "call.hangup").json["data"]["payload"]
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("originator_cancel", "caller")
    assert _error(api.cmd(cid, "answer"))["code"] == "90018"


def test_inbound_reject(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = fake.inbound_call(CALLER, CALLEE, receiver.url)
    assert api.cmd(cid, "reject", cause="USER_BUSY").status_code == 200
    assert fake.wait_event(cid, "call.hangup").json["data"]["payload"]["hangup_cause"] == "user_busy"


def test_answer_on_outbound_is_refused(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    assert api.cmd(cid, "answer").status_code == 422


# -- idempotency -------------------------------------------------------------------

def test_command_id_dedupe(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    first = api.dial(receiver, command_id="dial-1").json()
    again = api.dial(receiver, command_id="dial-1").json()
    assert first == again and len(fake.calls) == 1
    cid = first["data"]["call_control_id"]
    fake.wait_event(cid, "call.answered")
    for _ in range(2):
        assert api.cmd(cid, "speak", payload="once", voice="female", command_id="s-1").status_code == 200
    assert api.cmd(cid, "speak", payload="twice", voice="female", command_id="s-2").status_code == 200
    call = fake.calls[cid]
    assert call.said == ["once", "twice"]
    assert [c.deduped for c in call.commands] == [False, True, False]
    assert [r.deduped for r in fake.requests if r.path.endswith("/speak")] == [False, True, False]


def test_failed_request_does_not_consume_command_id(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    cid = _answered_call(fake, api, receiver)
    fake.fail_next(status=500, path_contains="/speak")
    failed = api.cmd(cid, "speak", payload="retry me", voice="female", command_id="c-1")
    assert (failed.status_code, _error(failed)["code"]) == (500, "10007")
    assert api.cmd(cid, "speak", payload="retry me", voice="female", command_id="c-1").status_code == 200
    assert fake.calls[cid].said == ["retry me"]


# -- REST fault injection ------------------------------------------------------------

def test_fail_next_statuses(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.fail_next(2, status=500)
    assert [api.dial(receiver).status_code for _ in range(2)] == [500, 500]
    assert fake.calls == {}
    fake.fail_next(status=429, retry_after=0)
    limited = api.dial(receiver)
    assert (limited.status_code, limited.headers["Retry-After"], _error(limited)["code"]) == (429, "0", "10011")
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    fake.fail_next(status=422, code="90018", path_contains="/hangup")
    assert _error(api.cmd(cid, "hangup"))["code"] == "90018"
    assert fake.calls[cid].alive  # the injected failure changed nothing
    assert [r.injected for r in fake.requests] == [True, True, True, False, True]


def test_rest_latency_holds_requests_in_flight(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.timing.rest_latency = 0.2
    result: list[requests.Response] = []
    worker = threading.Thread(target=lambda: result.append(api.dial(receiver)))
    worker.start()
    pending = fake.wait_for(lambda: fake.requests and fake.requests[0])
    assert pending.status is None and fake.calls == {}  # seen, not yet handled
    worker.join(5)
    assert result[0].status_code == 200 and pending.status == 200 and len(fake.calls) == 1


# -- webhook fault injection ----------------------------------------------------------

def test_duplicate_webhook(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.inject_webhook_fault("duplicate", event_type="call.answered")
    cid = _answered_call(fake, api, receiver)
    fake.wait_for(lambda: len(receiver.accepted(cid, "call.answered")) == 2)
    first, second = receiver.accepted(cid, "call.answered")
    assert first.data["id"] == second.data["id"]
    assert fake.calls[cid].event_types == ["call.initiated", "call.answered"]


def test_out_of_order_delivery(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.deliver_after("call.initiated", "call.answered")
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    fake.wait_event(cid, "call.initiated")
    assert receiver.types(cid) == ["call.answered", "call.initiated"]


def test_dropped_webhook(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.inject_webhook_fault("drop", event_type="call.initiated")
    cid = _answered_call(fake, api, receiver)
    assert receiver.types(cid) == ["call.answered"]


def test_retries_when_receiver_fails(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    receiver.answer_next("call.initiated", 500, 503)
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    fake.wait_event(cid, "call.initiated", ok=True)
    attempts = [d for d in fake.calls[cid].webhooks if d.event_type == "call.initiated"]
    assert [(d.attempt, d.status) for d in attempts] == [(1, 500), (2, 503), (3, 200)]
    assert len({d.event_id for d in attempts}) == 1
    assert [r.doc["meta"]["attempt"] for r in receiver.received if r.data["event_type"] == "call.initiated"] \
        == [1, 2, 3]


def test_retries_give_up(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    receiver.answer_next("call.initiated", *[500] * 4)
    cid = api.dial(receiver).json()["data"]["call_control_id"]
    fake.wait_for(lambda: sum(d.event_type == "call.initiated" for d in fake.calls[cid].webhooks) == 4)
    fake.wait_idle()  # no retry left pending: no fifth attempt
    assert [d.attempt for d in fake.calls[cid].webhooks if d.event_type == "call.initiated"] == [1, 2, 3, 4]


def test_retries_reach_a_dead_receiver() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeTelnyx(webhook_retry_delays=(0.01,), webhook_timeout=0.5) as fake:
        cid = fake.inbound_call(CALLER, CALLEE, f"http://127.0.0.1:{port}/unreachable")
        fake.wait_for(lambda: len(fake.calls[cid].webhooks) == 2 and fake.calls[cid].webhooks[-1].finished)
        assert all(d.status is None and d.error for d in fake.calls[cid].webhooks)


SIGNATURE_FAULTS = ["bad_signature", "wrong_key", "stale_timestamp", "future_timestamp", "missing_headers",
                    "missing_signature", "missing_timestamp", "malformed_signature", "truncated_signature"]


@pytest.mark.parametrize("fault", SIGNATURE_FAULTS)
def test_forged_webhook_gets_401(fake: FakeTelnyx, api: Api, receiver: Receiver, fault: str) -> None:
    cid = _answered_call(fake, api, receiver)
    delivery = fake.send_forged_webhook(cid, "call.hangup", fault)
    assert (delivery.status, delivery.forged) == (401, True)
    assert len(receiver.rejected) == 1
    assert fake.calls[cid].alive and "call.hangup" not in fake.calls[cid].event_types


def test_signature_fault_then_clean_retry(fake: FakeTelnyx, api: Api, receiver: Receiver) -> None:
    fake.inject_webhook_fault("stale_timestamp", event_type="call.answered")
    cid = _answered_call(fake, api, receiver)
    answered = [d for d in fake.calls[cid].webhooks if d.event_type == "call.answered"]
    assert [(d.attempt, d.status, d.fault) for d in answered] == [(1, 401, "stale_timestamp"), (2, 200, None)]
    assert receiver.rejected and "old" in receiver.rejected[0]


def test_unknown_fault_name(fake: FakeTelnyx) -> None:
    with pytest.raises(ValueError, match="unknown webhook fault"):
        fake.inject_webhook_fault("explode")


# -- dial pacing and premium detection (issue 18) ---------------------------------------

def test_dials_past_the_accounts_limit_get_90103(receiver: Receiver) -> None:
    with FakeTelnyx(seed=9, answer_after=30, dials_per_second=1, rate_limit_retry_after=2) as fake:
        receiver.key = load_public_key(fake.public_key_b64)
        api = Api(fake)
        try:
            # 1 a second over Telnyx's 5 s rolling window: 5 dials, then refusals.
            assert [api.dial(receiver).status_code for _ in range(5)] == [200] * 5
            refused = api.dial(receiver)
            assert (refused.status_code, _error(refused)["code"], refused.headers["Retry-After"]) == (429, "90103", "2")
            assert len(fake.calls) == 5  # a refused dial places nothing
        finally:
            api.session.close()


def test_premium_detection_reports_the_greeting_end_after_the_greeting(receiver: Receiver) -> None:
    with FakeTelnyx(seed=10, answer_after=0.02, amd_delay=0.01, greeting_secs=0.3) as fake:
        receiver.key = load_public_key(fake.public_key_b64)
        api = Api(fake)
        try:
            fake.set_callee(CALLEE, "machine")
            cid = _answered_call(fake, api, receiver, answering_machine_detection="premium")
            ended = fake.wait_event(cid, "call.machine.premium.greeting.ended", ok=True)
            call = fake.calls[cid]
            assert ended.json["data"]["payload"]["result"] == "beep_detected"
            assert call.answered_at is not None and call.beeped_at is not None
            assert call.beeped_at - call.answered_at >= 0.3
            assert api.cmd(cid, "speak", payload="after the tone", voice="female").status_code == 200
            fake.wait_event(cid, "call.speak.started")
            [job] = call.speak_jobs
            assert job.started_at is not None and job.started_at >= call.beeped_at
        finally:
            api.session.close()
