"""Answering machines: ``outbound.voicemail = leave-message`` leaves the
call's message after the greeting (greeting, beep, message, hang-up) and
ends the call as voicemail, on the mock, against the fake Twilio (async
AMD, DetectMessageEnd, a signed AMD callback) and against the fake Telnyx
(premium detection); ``answeredBy`` is in the record whenever detection
is on. First the lifecycle's own rows, as tables."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from callctl import Events
from daemon import Daemon, merge

from voicecalld.calls import (
    ArmTimer,
    CallEvent,
    CallRecord,
    CancelTimer,
    Direction,
    EventType,
    HangUp,
    Mode,
    Policy,
    Speak,
    State,
)
from voicecalld.lifecycle import Call
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.fake_twilio import Callee, FakeTwilio
from voicecalld.testing.ports import free_port

FROM = "+15550001111"
HUMAN = "+15550002222"
MACHINE = "+15550003333"
MESSAGE = "Your parcel arrives tomorrow between 9 and 11."

# --- the lifecycle ----------------------------------------------------------------------------

_ids = iter(range(10**9))


def ev(type_: EventType, **kw: Any) -> CallEvent:
    return CallEvent(type_, f"e{next(_ids)}", call_id="c", **kw)


def answered(mode: Mode = Mode.NOTIFY, leave: bool = True) -> tuple[Call, list[Any]]:
    record = CallRecord(callId="c", provider="mock", direction=Direction.OUTBOUND, mode=mode, to=MACHINE,
                        from_=FROM, state=State.RINGING, providerCallId="p")
    call = Call(record, Policy(leave_voicemail=leave), opening=MESSAGE)
    return call, call.handle(ev(EventType.ANSWERED), 1000)


def spoken(actions: list[Any]) -> list[tuple[str, str | None]]:
    return [(a.text, a.then) for a in actions if isinstance(a, Speak)]


def test_with_leave_message_the_opening_waits_for_the_verdict() -> None:
    call, actions = answered()
    assert spoken(actions) == [] and ArmTimer("detection", 45.0) in actions and call.state == State.ANSWERED
    assert call.handle(ev(EventType.SPEECH, transcript="Hi, this is Ann, leave a message"), 1100) == []
    actions = call.handle(ev(EventType.DETECTED, answered_by="human"), 1200)
    assert spoken(actions) == [(MESSAGE, "hangup")] and CancelTimer("detection") in actions
    assert call.record.answeredBy == "human" and call.state == State.SPEAKING


def test_a_machine_gets_the_message_after_the_beep_and_the_call_ends_as_voicemail() -> None:
    call, _ = answered(Mode.CONVERSATION)
    actions = call.handle(ev(EventType.DETECTED, answered_by="machine"), 1200)
    assert spoken(actions) == [] and call.record.answeredBy == "machine"
    actions = call.handle(ev(EventType.GREETING_ENDED), 3000)
    assert spoken(actions) == [(MESSAGE, "hangup")]  # then hang up, even in conversation mode
    assert [(t["speaker"], t["text"]) for t in call.record.transcript] == [("bot", MESSAGE)]
    speak = next(a for a in actions if isinstance(a, Speak))
    actions = call.handle(ev(EventType.PLAYED, utterance_id=speak.utterance_id), 5000)
    assert ArmTimer("notify-hangup", 3.0) in actions
    assert call.timer_fired("notify-hangup") == [HangUp(State.VOICEMAIL)]
    call.handle(ev(EventType.ENDED, reason=State.COMPLETED), 6000)
    assert call.record.endReason == State.VOICEMAIL


def test_a_beep_before_the_answer_is_remembered() -> None:
    record = CallRecord(callId="c", provider="mock", direction=Direction.OUTBOUND, mode=Mode.NOTIFY, to=MACHINE,
                        from_=FROM, state=State.RINGING, providerCallId="p")
    call = Call(record, Policy(leave_voicemail=True), opening=MESSAGE)
    assert spoken(call.handle(ev(EventType.GREETING_ENDED), 900)) == []  # webhooks out of order
    assert spoken(call.handle(ev(EventType.ANSWERED), 1000)) == [(MESSAGE, "hangup")]


@pytest.mark.parametrize("verdict,says", [(None, [(MESSAGE, "hangup")]), ("machine", [(MESSAGE, "hangup")])])
def test_the_detection_deadline_says_the_message_anyway(verdict: str | None, says: list[Any]) -> None:
    call, _ = answered()
    if verdict:
        call.handle(ev(EventType.DETECTED, answered_by=verdict), 1200)
    assert spoken(call.timer_fired("detection")) == says
    assert call.record.answeredBy == (verdict or "unknown")
    assert call.chosen_end == (State.VOICEMAIL if verdict == "machine" else None)


def test_a_fax_is_hung_up_on_as_failed() -> None:
    call, _ = answered()
    actions = call.handle(ev(EventType.DETECTED, answered_by="fax"), 1200)
    assert HangUp(State.FAILED) in actions and spoken(actions) == [] and call.record.answeredBy == "fax"


def test_with_hangup_the_opening_is_said_at_once_and_the_verdict_only_noted() -> None:
    call, actions = answered(leave=False)
    assert spoken(actions) == [(MESSAGE, "hangup")]
    call.handle(ev(EventType.DETECTED, answered_by="machine"), 1200)
    assert call.handle(ev(EventType.GREETING_ENDED), 2000) != [] and call.record.answeredBy == "machine"
    assert len(call.record.transcript) == 1  # the greeting's end changes nothing


# --- end to end on the mock ------------------------------------------------------------------------


def test_mock_leaves_the_message_after_the_greeting(start_daemon) -> None:
    d = start_daemon({"outbound": {"voicemail": "leave-message", "notifyHangupDelaySec": 0.05},
                      "mock": {"answerDelayMs": 50, "msPerChar": 1, "voicemailNumbers": [MACHINE],
                               "greetingMs": 400}})
    events = Events(d)
    try:
        call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"]
        record = d.wait_state(call_id, "voicemail", "completed", "error")
        human_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"]
        human = d.wait_state(human_id, "completed", "voicemail", "error")
        d.wait(lambda: ("call.ended", {"reason": "completed"}) in events.of(human_id), what="the events")
    finally:
        events.close()
    assert (record["endReason"], record["answeredBy"]) == ("voicemail", "machine")
    [line] = record["transcript"]
    assert (line["speaker"], line["text"]) == ("bot", MESSAGE)
    # Said after the greeting (ringing 50 ms, then 400 ms of it from the dial), not over it.
    assert line["timestamp"] - record["startedAt"] >= 450
    names = [(name, data) for name, data in events.of(call_id) if name != "call.state"]
    assert names == [
        ("call.detection", {"answeredBy": "machine", "greetingEnded": False}),     # a machine, greeting
        ("call.detection", {"answeredBy": "machine", "greetingEnded": True}),      # the beep
        ("call.transcript", {"speaker": "bot", "text": MESSAGE, "isFinal": True}),  # the message
        ("call.ended", {"reason": "voicemail"}),                                    # the hang-up
    ]
    assert (human["endReason"], human["answeredBy"]) == ("completed", "human")
    assert [t["text"] for t in human["transcript"]] == [MESSAGE]


def test_mock_with_detection_and_hangup_ends_a_machine_as_voicemail(start_daemon) -> None:
    d = start_daemon({"mock": {"answerDelayMs": 50, "msPerChar": 1, "voicemailNumbers": [MACHINE],
                               "machineDetection": True}})
    machine = d.wait_state(d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"],
                           "voicemail", "completed")
    human = d.wait_state(d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"],
                         "completed", "voicemail")
    assert (machine["endReason"], machine["answeredBy"]) == ("voicemail", "machine")
    assert (human["endReason"], human["answeredBy"]) == ("completed", "human")


def test_without_detection_there_is_no_answered_by(start_daemon) -> None:
    d = start_daemon({"mock": {"answerDelayMs": 50, "msPerChar": 1, "voicemailNumbers": [MACHINE]}})
    record = d.wait_state(d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"], "completed")
    assert record["answeredBy"] is None and [t["text"] for t in record["transcript"]] == [MESSAGE]


# --- end to end against the fake Twilio ----------------------------------------------------------


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(time_scale=0.05, ms_per_char=2, owned_numbers=[FROM]) as fake:
        yield fake


def twilio_daemon(start_daemon: Any, fake: FakeTwilio, **extra: Any) -> Daemon:
    port = free_port()
    return start_daemon(merge({
        "provider": "twilio", "fromNumber": FROM, "publicUrl": f"http://127.0.0.1:{port}", "serve": {"port": port},
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
        "outbound": {"notifyHangupDelaySec": 1, "voicemail": "leave-message"},
    }, extra))


def test_twilio_leaves_the_message_after_the_beep(start_daemon, twilio: FakeTwilio) -> None:
    fake = twilio
    d = twilio_daemon(start_daemon, fake)
    fake.next_callee(Callee(machine=True, greeting=0.6))
    call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"]
    record = d.wait_state(call_id, "voicemail", "completed", "error", "failed", timeout=15)
    assert (record["endReason"], record["answeredBy"]) == ("voicemail", "machine")
    assert [(t["speaker"], t["text"]) for t in record["transcript"]] == [("bot", MESSAGE)]

    call = fake.wait_ended(record["providerCallId"])
    create = dict(next(r for r in fake.requests if r.path.endswith("/Calls.json")).form)
    callback = create["AsyncAmdStatusCallback"]
    assert (create["MachineDetection"], create["AsyncAmd"], create["AsyncAmdStatusCallbackMethod"]) == (
        "DetectMessageEnd", "true", "POST")
    assert {k: v[-1] for k, v in parse_qs(urlsplit(callback).query).items()} == {"callId": call_id, "type": "amd"}
    [amd] = [x for x in call.deliveries if x.kind == "amd"]
    assert amd.status == 200 and amd.url == callback and amd.form["AnsweredBy"] == "machine_end_beep"
    assert amd.headers["X-Twilio-Signature"] == fake.sign(callback, amd.params)  # signed like every webhook
    # Greeting, beep, message, hang-up: nothing was said over the greeting.
    assert call.greeting_started is not None and call.beeped is not None
    assert [s.text for s in call.says] == [MESSAGE]
    [say] = call.says
    assert say.started >= call.beeped and not say.interrupted and say.ended is not None
    assert call.end_time is not None and call.end_time >= say.ended and call.end_reason == "twiml-hangup"


def test_twilio_human_hears_the_message_once_the_verdict_is_in(start_daemon, twilio: FakeTwilio) -> None:
    d = twilio_daemon(start_daemon, twilio)
    twilio.next_callee(Callee(verdict_after=0.3))
    call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"]
    record = d.wait_state(call_id, "completed", "voicemail", "error", timeout=15)
    assert (record["endReason"], record["answeredBy"]) == ("completed", "human")
    call = twilio.wait_ended(record["providerCallId"])
    [amd] = [x for x in call.deliveries if x.kind == "amd"]
    assert call.said == [MESSAGE] and call.says[0].started >= amd.sent_at


@pytest.mark.parametrize("callee,answered_by,end", [
    (Callee(), "human", "completed"),
    (Callee(machine=True), "machine", "voicemail"),           # Enable: machine_start, hung up
    (Callee(answered_by="fax"), "fax", "failed"),
])
def test_twilio_detection_with_hangup_records_answered_by(start_daemon, twilio: FakeTwilio, callee: Callee,
                                                         answered_by: str, end: str) -> None:
    d = twilio_daemon(start_daemon, twilio, outbound={"voicemail": "hangup"}, twilio={"machineDetection": True})
    twilio.next_callee(callee)
    call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"]
    record = d.wait_state(call_id, "completed", "voicemail", "failed", "error", timeout=15)
    assert (record["endReason"], record["answeredBy"]) == (end, answered_by)
    create = dict(next(r for r in twilio.requests if r.path.endswith("/Calls.json")).form)
    assert create["MachineDetection"] == "Enable" and "AsyncAmd" not in create


# --- end to end against the fake Telnyx ----------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def telnyx_daemon(start_daemon: Any, fake: FakeTelnyx, **extra: Any) -> Daemon:
    port = free_port()
    return start_daemon(merge({
        "provider": "telnyx", "fromNumber": FROM, "publicUrl": f"http://127.0.0.1:{port}", "serve": {"port": port},
        "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id, "publicKey": fake.public_key_b64,
                   "apiBaseUrl": fake.base_url},
        "outbound": {"notifyHangupDelaySec": 0.05, "voicemail": "leave-message"},
    }, extra))


def test_telnyx_leaves_the_message_after_the_greeting(start_daemon) -> None:
    with FakeTelnyx(seed=5, ms_per_char=2, answer_after=0.03, amd_delay=0.05, greeting_secs=0.5) as fake:
        fake.set_callee(MACHINE, "machine")
        d = telnyx_daemon(start_daemon, fake)
        call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"]
        record = d.wait_state(call_id, "voicemail", "completed", "error", timeout=10)
        call = next(c for c in fake.calls.values() if c.client_state == b64(call_id))
        fake.wait_event(call.call_control_id, "call.hangup")
    assert (record["endReason"], record["answeredBy"]) == ("voicemail", "machine")
    assert [(t["speaker"], t["text"]) for t in record["transcript"]] == [("bot", MESSAGE)]
    dial = next(r for r in fake.requests if r.path == "/v2/calls")
    assert dial.json["answering_machine_detection"] == "premium"
    assert call.event_types == ["call.initiated", "call.answered", "call.machine.premium.detection.ended",
                                "call.machine.premium.greeting.ended", "call.speak.started", "call.speak.ended",
                                "call.hangup"]
    assert call.command_names == ["speak", "hangup"] and call.said == [MESSAGE]
    [job] = call.speak_jobs
    assert call.beeped_at is not None and job.started_at is not None and job.started_at >= call.beeped_at
    assert call.hangup_cause == "normal_clearing" and call.hangup_source == "caller"  # we hung up


def test_telnyx_human_is_recorded_and_hears_the_message(start_daemon) -> None:
    with FakeTelnyx(seed=6, ms_per_char=2, answer_after=0.03, amd_delay=0.05) as fake:
        d = telnyx_daemon(start_daemon, fake)
        call_id = d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"]
        record = d.wait_state(call_id, "completed", "voicemail", "error", timeout=10)
    assert (record["endReason"], record["answeredBy"]) == ("completed", "human")
    assert [t["text"] for t in record["transcript"]] == [MESSAGE]


def test_telnyx_detection_with_hangup_records_answered_by(start_daemon) -> None:
    with FakeTelnyx(seed=7, ms_per_char=2, answer_after=0.03, amd_delay=0.05) as fake:
        fake.set_callee(MACHINE, "machine")
        d = telnyx_daemon(start_daemon, fake, outbound={"voicemail": "hangup"}, telnyx={"machineDetection": True})
        machine = d.wait_state(d.rpc("voicecall.initiate", {"message": MESSAGE, "to": MACHINE})["callId"],
                               "voicemail", "completed", "error", timeout=10)
        human = d.wait_state(d.rpc("voicecall.initiate", {"message": MESSAGE, "to": HUMAN})["callId"],
                             "completed", "voicemail", "error", timeout=10)
        assert [r.json["answering_machine_detection"] for r in fake.requests if r.path == "/v2/calls"] == [
            "detect", "detect"]
    assert (machine["endReason"], machine["answeredBy"]) == ("voicemail", "machine")
    assert (human["endReason"], human["answeredBy"]) == ("completed", "human")
