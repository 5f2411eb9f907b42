"""A reply spoken sentence by sentence, in the lifecycle (no I/O): one
transcript line; a barge-in keeps only what was heard; hang_up after the
words makes the last one end the call."""

from __future__ import annotations

import itertools

from voicecalld.calls import (
    ArmTimer,
    CallEvent,
    CallRecord,
    Direction,
    EventType,
    Mode,
    Policy,
    Publish,
    State,
    StopListening,
)
from voicecalld.lifecycle import Call

_ids = itertools.count()
S1, S2, S3 = "Let me see.", "We open at nine.", "On Sundays at ten."


def listening_call() -> Call:
    record = CallRecord("c1", "mock", Direction.INBOUND, Mode.CONVERSATION, "+15550001111", "+15550009999",
                        state=State.LISTENING)
    record.openingSpoken = True
    call = Call(record, Policy(max_duration=60, ring_timeout=30, notify_hangup_delay=2))
    call.handle(CallEvent(EventType.SPEECH, "e0", transcript="when do you open"), 1)
    return call


def reply(call: Call) -> None:
    for n, text in enumerate((S1, S2, S3)):
        call.speak(text, 2 + n, then="listen", joins=n > 0)


def event(type_: EventType, **kw: object) -> CallEvent:
    return CallEvent(type_, f"x{next(_ids)}", **kw)  # type: ignore[arg-type]


def bot(call: Call) -> list[dict]:
    return [e for e in call.record.transcript if e["speaker"] == "bot"]


def test_a_reply_is_one_line() -> None:
    call = listening_call()
    reply(call)
    assert [e["text"] for e in bot(call)] == [f"{S1} {S2} {S3}"]
    assert call.pending


def test_barge_in_keeps_the_sentence_being_heard_and_drops_the_rest() -> None:
    call = listening_call()
    reply(call)
    actions = call.handle(event(EventType.INTERRUPTED, utterance_id="u1", dropped=("u2", "u3")), 5)
    assert bot(call) == [{**bot(call)[0], "text": S1, "interrupted": True}]
    assert Publish("call.transcript", {"speaker": "bot", "text": S1, "isFinal": True, "interrupted": True}) \
        in actions


def test_barge_in_on_the_second_sentence_keeps_both() -> None:
    call = listening_call()
    reply(call)
    call.handle(event(EventType.PLAYED, utterance_id="u1"), 4)  # played before the barge-in
    call.handle(event(EventType.INTERRUPTED, utterance_id="u2", dropped=("u3",)), 5)
    assert [(e["text"], e.get("interrupted")) for e in bot(call)] == [(f"{S1} {S2}", True)]


def test_nothing_heard_removes_the_line_and_says_so() -> None:
    call = listening_call()
    reply(call)
    actions = call.handle(event(EventType.INTERRUPTED, dropped=("u1", "u2", "u3")), 5)
    assert bot(call) == []
    assert Publish("call.transcript", {"speaker": "bot", "text": "", "isFinal": True, "interrupted": True}) \
        in actions


def test_without_details_the_last_line_is_marked_as_before() -> None:
    call = listening_call()
    reply(call)
    call.handle(event(EventType.INTERRUPTED), 5)
    assert [(e["text"], e.get("interrupted")) for e in bot(call)] == [(f"{S1} {S2} {S3}", True)]


def test_hang_up_after_the_words_waits_for_the_last_one() -> None:
    call = listening_call()
    reply(call)
    actions = call.hang_up_after_speech(6)
    assert any(isinstance(a, StopListening) for a in actions)
    assert not any(isinstance(a, ArmTimer) for a in actions)
    for n in (1, 2):
        assert not any(isinstance(a, ArmTimer) for a in call.handle(event(EventType.PLAYED, utterance_id=f"u{n}"), 7))
    last = call.handle(event(EventType.PLAYED, utterance_id="u3"), 8)
    assert ArmTimer("notify-hangup", 2) in last
    assert call.chosen_end == State.HANGUP_BOT


def test_hang_up_after_the_words_when_all_has_played() -> None:
    call = listening_call()
    call.speak(S1, 2, then="listen")
    call.handle(event(EventType.PLAYED, utterance_id="u1"), 3)
    assert ArmTimer("notify-hangup", 2) in call.hang_up_after_speech(4)


def test_a_late_speaking_event_for_an_utterance_that_played_changes_nothing() -> None:
    """Carriers (and the mock's timers) may deliver "speaking" after "played"
    for a short utterance: the call must not go back to speaking for good."""
    call = listening_call()
    call.speak(S1, 2, then="listen")
    call.handle(event(EventType.PLAYED, utterance_id="u1"), 3)
    assert call.state == State.LISTENING
    assert call.handle(event(EventType.SPEAKING, utterance_id="u1"), 4) == []
    assert call.state == State.LISTENING
