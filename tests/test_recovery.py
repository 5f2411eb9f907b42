"""Restart recovery: decision tables, then engines restarted on the same
directory against the mock carrier's persistent state."""

from __future__ import annotations

import time

import pytest
from engine import Engine

from voicecalld.calls import CallEvent, CallRecord, Direction, EventType, Mode, Speak, State
from voicecalld.providers.base import CarrierStatus
from voicecalld.recovery import (
    Answer,
    AskCarrier,
    Close,
    EndOverdue,
    Keep,
    Recovery,
    Requeue,
    Retry,
    detection_left,
    plan_after,
    plan_before,
)

NOW = 1_000_000_000


def record(**kw) -> CallRecord:
    base = dict(callId="c", provider="mock", direction=Direction.OUTBOUND, mode=Mode.CONVERSATION,
                to="+15550001111", from_="+15550009999", providerCallId="p1", startedAt=NOW - 10_000,
                answeredAt=None, state=State.RINGING)
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


BEFORE = [
    (record(providerCallId=None), Close),
    # Logged as queued: never dialled (a call is logged as dialled before the
    # carrier is asked), so it is queued again, however long it waited.
    (record(state=State.QUEUED, providerCallId=None), Requeue),
    (record(state=State.QUEUED, providerCallId=None, startedAt=NOW - 3_600_000), Requeue),
    # Logged as dialled, with no carrier id: the dial may have reached the
    # carrier before the crash; it is never dialled again.
    (record(state=State.INITIATED, providerCallId=None), Close),
    (record(answeredAt=NOW - 400_000, state=State.LISTENING), EndOverdue),  # 400 s > 300 s limit
    (record(startedAt=NOW - 301_000), EndOverdue),                          # never answered, too old
    (record(answeredAt=NOW - 100_000, state=State.LISTENING), AskCarrier),
    (record(), AskCarrier),
]


@pytest.mark.parametrize("rec,kind", BEFORE)
def test_plan_before_asking(rec, kind) -> None:
    plan = plan_before(rec, NOW, max_duration=300)
    assert isinstance(plan, kind)
    if isinstance(plan, Close):
        assert plan.reason == State.ERROR and "no carrier call id" in plan.error
    if isinstance(plan, EndOverdue):
        assert plan.reason == State.TIMEOUT


AFTER = [
    (record(), None, Retry()),
    (record(), CarrierStatus(live=False, reason=State.BUSY), Close(State.BUSY, "x")),
    (record(), CarrierStatus(live=False), Close(State.COMPLETED, "x")),
    (record(answeredAt=NOW - 100_000), CarrierStatus(live=True, answered=True), Keep("max-duration", 200.0)),
    (record(startedAt=NOW - 10_000), CarrierStatus(live=True), Keep("ring", 20.0)),
    (record(startedAt=NOW - 40_000), CarrierStatus(live=True), Keep("ring", 0.0)),
    # Answered while voicecalld was down: answered now, with the whole
    # maximum duration ahead (the carrier gives no time), never the ring deadline.
    (record(startedAt=NOW - 40_000), CarrierStatus(live=True, answered=True), Answer(300.0)),
    (record(state=State.INITIATED), CarrierStatus(live=True, answered=True), Answer(300.0)),
]


@pytest.mark.parametrize("rec,status,expected", AFTER)
def test_plan_after_asking(rec, status, expected) -> None:
    plan = plan_after(rec, status, NOW, max_duration=300, ring_timeout=30)
    assert type(plan) is type(expected)
    if isinstance(plan, Close):
        assert plan.reason == expected.reason
    if isinstance(plan, Keep):
        assert (plan.kind, plan.remaining) == (expected.kind, pytest.approx(expected.remaining))
    if isinstance(plan, Answer):
        assert plan.remaining == pytest.approx(expected.remaining)


#: A restored call's opening that waits for the answering-machine verdict:
#: the deadline is armed again with what is left of it (45 s from the answer).
DETECTION = [
    (record(state=State.ANSWERED, answeredAt=NOW - 10_000, opening="Hi", openingSpoken=False), 35.0),
    (record(state=State.ANSWERED, answeredAt=NOW - 90_000, opening="Hi", openingSpoken=False), 0.0),
    (record(state=State.ANSWERED, answeredAt=NOW - 10_000, opening="Hi", openingSpoken=True), None),
    (record(state=State.LISTENING, answeredAt=NOW - 10_000, opening="Hi", openingSpoken=False), None),
    (record(state=State.RINGING, opening="Hi", openingSpoken=False), None),
]


@pytest.mark.parametrize("rec,left", DETECTION)
def test_a_restored_call_waiting_for_the_verdict_gets_its_deadline_again(rec, left) -> None:
    assert detection_left(rec, NOW, 45.0) == (None if left is None else pytest.approx(left))


def test_recovery_arms_the_detection_deadline_of_a_held_call(tmp_path) -> None:
    d, machine = str(tmp_path), "+15550007777"
    settings = {"outbound": {"voicemail": "leave-message"},
                "mock": {"answerDelayMs": 20, "voicemailNumbers": [machine], "greetingMs": 600_000}}
    e = Engine(d, **settings)
    call_id = e.manager.initiate("Hi", to=machine)["callId"]
    e.wait(lambda: e.manager.status(call_id)["answeredBy"] == "machine", what="the verdict")
    e.crash()  # the machine greets on; its beep is lost with the daemon
    e2, restored = restart(d, **settings)
    try:
        live = e2.manager.calls.get(call_id)
        assert restored == [call_id] and live is not None
        e2.wait(lambda: set(live.timers) == {"max-duration", "detection"}, what="both deadlines armed")
        assert e2.manager.status(call_id)["state"] == "answered"  # still held: nothing said over the greeting
    finally:
        e2.close()


def log_line(**fields) -> dict:
    """A record as a log line; ``None`` values drop the key (lines written
    before the key existed)."""
    line = record(callId="r", mode=Mode.NOTIFY, opening="Build failed").to_dict()
    line.update(fields)
    return {k: v for k, v in line.items() if v is not None}


#: A call restored from its last log line, then answered: what it says.
RESTORED = [
    (log_line(openingSpoken=False), ("Build failed", "hangup")),           # still ringing: says its message
    (log_line(openingSpoken=False, mode="conversation", opening="Hi"), ("Hi", "listen")),
    (log_line(openingSpoken=True), None),                                   # already said
    (log_line(opening=None, openingSpoken=None), None),                     # an old line: as restored before
    (log_line(opening="", openingSpoken=False), None),                      # nothing to say (no greeting)
]


@pytest.mark.parametrize("line,says", RESTORED)
def test_restored_call_says_its_opening_once_answered(tmp_path, line, says) -> None:
    e = Engine(str(tmp_path))
    try:
        assert e.manager.restore({"r": line}) == ["r"]
        live = e.manager.calls.get("r")
        assert live is not None
        call = live.call
        with live.lock:
            actions = call.handle(CallEvent(EventType.ANSWERED, "ev1", call_id="r"), NOW)
        spoken = [(a.text, a.then) for a in actions if isinstance(a, Speak)]
        assert spoken == ([says] if says else [])
        assert call.record.to_dict()["openingSpoken"] is True or not says
    finally:
        e.close()


def test_opening_and_whether_it_was_spoken_are_in_the_log(tmp_path) -> None:
    e = Engine(str(tmp_path), mock={"answerDelayMs": 60_000})
    try:
        call_id = e.manager.initiate("Build failed")["callId"]
        logged = e.store.load().records[call_id]
        assert (logged["opening"], logged["openingSpoken"]) == ("Build failed", False)
    finally:
        e.close()


def restart(directory: str, **overrides) -> tuple[Engine, list[str]]:
    e = Engine(directory, **overrides)
    restored = e.manager.restore(e.store.load().records)
    Recovery(e.manager).start(restored)
    return e, restored


def test_live_call_survives_a_crash_with_only_its_remaining_time(tmp_path) -> None:
    d = str(tmp_path)
    e = Engine(d, maxDurationSeconds=1.0)
    dialed: list[str] = []
    original = e.provider.initiate
    e.provider.initiate = lambda r: (dialed.append(r.callId), original(r))[1]  # type: ignore[method-assign]
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    answered = e.wait_state(call_id, "listening")["answeredAt"]
    e.crash()
    e2, restored = restart(d, maxDurationSeconds=1.0)
    try:
        e2.provider.initiate = lambda r: dialed.append(r.callId)  # type: ignore[method-assign]
        assert restored == [call_id] and e2.manager.active_count == 1
        e2.provider.say(call_id, "still here")  # the callee is still on the line
        e2.wait(lambda: e2.manager.status(call_id)["transcript"][-1]["text"] == "still here")
        final = e2.wait_state(call_id, "timeout", timeout=3)
        assert final["endedAt"] - answered == pytest.approx(1000, abs=150)  # not a fresh 1 s after restart
        assert dialed == [call_id]  # never re-dialed
    finally:
        e2.close()


def test_call_that_ended_meanwhile_is_closed_with_the_carriers_reason(tmp_path) -> None:
    d = str(tmp_path)
    e = Engine(d)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    e.provider.hangup(e.manager.live_record(call_id))  # the carrier ends it; the daemon dies before hearing
    e.crash()
    e2, _ = restart(d)
    try:
        final = e2.wait_state(call_id, "hangup-bot")
        assert "ended while voicecalld was not running" in final["error"]
        assert e2.manager.active_count == 0
        e2.manager.initiate("a new call is not blocked")
    finally:
        e2.close()


def test_ringing_call_is_closed_and_too_old_call_hung_up(tmp_path) -> None:
    d = str(tmp_path)
    e = Engine(d, maxConcurrentCalls=2, mock={"answerDelayMs": 60_000})
    ringing = e.manager.initiate("hello")["callId"]
    e.wait_state(ringing, "ringing")
    e.crash()
    e2, _ = restart(d, maxConcurrentCalls=2)
    try:
        assert e2.wait_state(ringing, "no-answer")["endReason"] == "no-answer"
    finally:
        e2.close()
    # A call answered long ago (per the log) is hung up as timeout without asking anyone.
    e3 = Engine(d)
    rec = record(callId="old", answeredAt=int(time.time() * 1000) - 10_000, state=State.LISTENING)
    e3.store.append(rec.to_dict())
    e3.close()
    e4, _ = restart(d, maxDurationSeconds=5)
    try:
        assert e4.wait_state("old", "timeout")["endReason"] == "timeout"
    finally:
        e4.close()


def test_call_without_a_carrier_id_is_closed_as_error(tmp_path) -> None:
    d = str(tmp_path)
    e = Engine(d)
    e.store.append(record(callId="orphan", providerCallId=None, startedAt=int(time.time() * 1000)).to_dict())
    e.close()
    e2, _ = restart(d)
    try:
        final = e2.wait_state("orphan", "error")
        assert "no carrier call id" in final["error"]
    finally:
        e2.close()


def test_status_failure_keeps_the_call_and_retries(tmp_path, monkeypatch) -> None:
    import voicecalld.recovery as recovery

    monkeypatch.setattr(recovery, "RETRY_FIRST", 0.05)
    d = str(tmp_path)
    e = Engine(d)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    e.crash()
    e2 = Engine(d)
    try:
        attempts: list[float] = []
        real = e2.provider.call_status

        def flaky(rec):
            attempts.append(time.monotonic())
            if len(attempts) < 3:
                raise OSError("carrier unreachable")
            return real(rec)

        e2.provider.call_status = flaky  # type: ignore[method-assign]
        Recovery(e2.manager).start(e2.manager.restore(e2.store.load().records))
        e2.wait(lambda: len(attempts) >= 3, what="three status attempts")
        assert e2.manager.status(call_id)["state"] == "listening"  # kept throughout
        first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
        assert first_gap >= 0.05 and second_gap >= 0.1  # exponential backoff between attempts
    finally:
        e2.close()
