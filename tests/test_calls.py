"""The I/O-free call lifecycle, as tables of cases."""

from __future__ import annotations

import itertools

import pytest

from voicecalld import lifecycle_table
from voicecalld.calls import (
    TERMINAL,
    ArmTimer,
    CallEvent,
    CallRecord,
    CancelTimer,
    Deliver,
    Direction,
    EventType,
    Finished,
    HangUp,
    Listen,
    Mode,
    Persist,
    Policy,
    Publish,
    Speak,
    State,
    can_transition,
)
from voicecalld.errors import NotConnected
from voicecalld.lifecycle import Call

S = State
LIVE_ORDER = [S.QUEUED, S.INITIATED, S.RINGING, S.ANSWERED, S.ACTIVE, S.SPEAKING, S.LISTENING]

# Written out independently of calls.TRANSITIONS: forward moves only,
# speaking <-> listening both ways, any live state to any terminal state;
# and initiated -> queued, a dial the carrier refused for its rate limit.
ALLOWED = {
    S.QUEUED: {S.INITIATED},
    S.INITIATED: {S.QUEUED, S.RINGING, S.ANSWERED, S.ACTIVE},
    S.RINGING: {S.ANSWERED, S.ACTIVE},
    S.ANSWERED: {S.ACTIVE, S.SPEAKING, S.LISTENING},
    S.ACTIVE: {S.SPEAKING, S.LISTENING},
    S.SPEAKING: {S.LISTENING},
    S.LISTENING: {S.SPEAKING},
}


@pytest.mark.parametrize("old,new", list(itertools.product(list(State), list(State))))
def test_every_transition(old: State, new: State) -> None:
    if old in TERMINAL:
        expected = False  # a terminal state is final
    else:
        expected = new in ALLOWED[old] or new in TERMINAL
    assert can_transition(old, new) is expected


def test_never_backwards_between_live_states() -> None:
    for i, old in enumerate(LIVE_ORDER):
        for new in LIVE_ORDER[:i]:
            if {old, new} not in ({S.SPEAKING, S.LISTENING}, {S.INITIATED, S.QUEUED}):
                assert not can_transition(old, new), (old, new)


def test_terminal_states_are_the_end_reasons() -> None:
    assert {str(s) for s in TERMINAL} == {"completed", "hangup-user", "hangup-bot", "timeout", "error",
                                          "failed", "no-answer", "busy", "voicemail", "transferred"}


# --- events ----------------------------------------------------------------------------------

_ids = itertools.count()


def ev(type_: EventType, **kw) -> CallEvent:
    return CallEvent(type_, f"e{next(_ids)}", **kw)


def make_call(state: State = S.INITIATED, mode: Mode = Mode.NOTIFY, opening: str | None = "hi",
              direction: Direction = Direction.OUTBOUND) -> Call:
    record = CallRecord("c1", "mock", direction, mode, "+15550001111", "+15550009999", state=state)
    call = Call(record, Policy(max_duration=60, ring_timeout=30, notify_hangup_delay=2), opening)
    if state in (S.SPEAKING, S.LISTENING, S.ACTIVE):
        call.record.openingSpoken = True
    return call


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


# (start state, event, expected state afterwards)
EVENT_CASES = [
    (S.INITIATED, ev(EventType.RINGING), S.RINGING),
    (S.INITIATED, ev(EventType.ANSWERED), S.SPEAKING),       # answered, then the opening is spoken
    (S.RINGING, ev(EventType.ANSWERED), S.SPEAKING),
    (S.RINGING, ev(EventType.INITIATED), S.RINGING),         # late event: never backwards
    (S.SPEAKING, ev(EventType.RINGING), S.SPEAKING),
    (S.SPEAKING, ev(EventType.ANSWERED), S.SPEAKING),        # duplicate answer does not re-speak
    (S.ANSWERED, ev(EventType.ACTIVE), S.ACTIVE),
    (S.LISTENING, ev(EventType.SPEAKING), S.SPEAKING),
    (S.RINGING, ev(EventType.ENDED, reason=S.BUSY), S.BUSY),
    (S.RINGING, ev(EventType.ENDED, reason=S.NO_ANSWER), S.NO_ANSWER),
    (S.SPEAKING, ev(EventType.ENDED, reason=S.HANGUP_USER), S.HANGUP_USER),
    (S.LISTENING, ev(EventType.ENDED, reason=S.VOICEMAIL), S.VOICEMAIL),
    (S.LISTENING, ev(EventType.ENDED, reason=None), S.COMPLETED),
    (S.COMPLETED, ev(EventType.ANSWERED), S.COMPLETED),      # terminal is final
    (S.BUSY, ev(EventType.ENDED, reason=S.HANGUP_USER), S.BUSY),
    (S.LISTENING, ev(EventType.DTMF, digits="5"), S.LISTENING),
    (S.SPEAKING, ev(EventType.SPEECH, transcript="yes"), S.LISTENING),
    (S.SPEAKING, ev(EventType.SPEECH, transcript="ye", is_final=False), S.SPEAKING),
]


@pytest.mark.parametrize("start,event,expected", EVENT_CASES,
                         ids=[f"{s}-{e.type}-{x}" for s, e, x in EVENT_CASES])
def test_event_moves_state(start: State, event: CallEvent, expected: State) -> None:
    call = make_call(start)
    call.handle(event, 1000)
    assert call.state == expected


def test_duplicate_event_id_is_ignored() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    speech = CallEvent(EventType.SPEECH, "same-id", transcript="hello")
    first = call.handle(speech, 1)
    again = call.handle(speech, 2)
    assert Deliver("hello", None) in first
    assert again == []
    assert [t["text"] for t in call.record.transcript] == ["hello"]


def test_answer_arms_max_duration_cancels_ring_and_speaks_opening() -> None:
    call = make_call(S.RINGING, Mode.NOTIFY, opening="Build failed")
    actions = call.handle(ev(EventType.ANSWERED), 5000)
    assert call.record.answeredAt == 5000
    assert CancelTimer("ring") in actions
    assert ArmTimer("max-duration", 60) in actions
    speak = [a for a in actions if isinstance(a, Speak)]
    assert speak == [Speak("Build failed", "u1", "hangup", None)]
    assert call.record.transcript[0]["speaker"] == "bot"


def test_answered_after_a_restart_arms_only_the_remaining_time() -> None:
    call = make_call(S.RINGING, Mode.NOTIFY, opening="Build failed")
    actions = call.answered(7000, 42.5)
    assert ArmTimer("max-duration", 42.5) in actions and CancelTimer("ring") in actions
    assert not any(isinstance(a, ArmTimer) and a.kind == "ring" for a in actions)
    assert call.record.answeredAt == 7000 and call.state == S.SPEAKING
    assert call.answered(8000, 10) == []  # once


def test_opening_and_whether_it_was_spoken_round_trip_through_the_record() -> None:
    call = make_call(S.RINGING, Mode.NOTIFY, opening="Build failed")
    line = call.record.to_dict()
    assert (line["opening"], line["openingSpoken"]) == ("Build failed", False)
    call.handle(ev(EventType.ANSWERED), 1)
    assert call.record.to_dict()["openingSpoken"] is True
    again = CallRecord.from_dict(line)
    assert (again.opening, again.openingSpoken) == ("Build failed", False)
    # A line written before these keys existed: restored as then, opening counted as spoken.
    old = CallRecord.from_dict({k: v for k, v in line.items() if k not in ("opening", "openingSpoken")})
    assert (old.opening, old.openingSpoken) == (None, True)


def test_fail_ends_the_call_as_error_keeping_the_first_error() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    assert call.fail("the call log cannot be written: disk full") == [HangUp(S.ERROR)]
    assert call.record.error == "the call log cannot be written: disk full"
    call.fail("later")
    assert call.record.error == "the call log cannot be written: disk full"


def test_conversation_opening_listens_after_playing() -> None:
    call = make_call(S.RINGING, Mode.CONVERSATION, opening="Hello")
    actions = call.handle(ev(EventType.ANSWERED), 1)
    (speak,) = [a for a in actions if isinstance(a, Speak)]
    assert speak.then == "listen"
    played = call.handle(ev(EventType.PLAYED, utterance_id=speak.utterance_id), 2)
    assert Listen(None) in played
    assert call.state == S.LISTENING


def test_notify_hangup_is_armed_only_after_the_message_played() -> None:
    call = make_call(S.RINGING, Mode.NOTIFY, opening="Build failed")
    actions = call.handle(ev(EventType.ANSWERED), 1)
    assert not any(isinstance(a, ArmTimer) and a.kind == "notify-hangup" for a in actions)
    started = call.handle(ev(EventType.SPEAKING, utterance_id="u1"), 2)
    assert not any(isinstance(a, ArmTimer) and a.kind == "notify-hangup" for a in started)
    played = call.handle(ev(EventType.PLAYED, utterance_id="u1"), 3)
    assert ArmTimer("notify-hangup", 2) in played
    assert call.timer_fired("notify-hangup") == [HangUp(S.COMPLETED)]


@pytest.mark.parametrize("ended_by", [S.HANGUP_USER, S.COMPLETED])
def test_goodbye_hangs_up_after_it_played_and_ends_as_hangup_bot(ended_by: State) -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION, direction=Direction.INBOUND)
    actions = call.say_goodbye("Bye!", 1)
    assert Speak("Bye!", "u1", "hangup", None) in actions and call.state == S.SPEAKING
    assert not any(isinstance(a, HangUp) for a in actions)  # not before it has played
    assert ArmTimer("notify-hangup", 2) in call.handle(ev(EventType.PLAYED, utterance_id="u1"), 2)
    assert call.timer_fired("notify-hangup") == [HangUp(S.HANGUP_BOT)]
    # Whoever closes the line (the carrier after our hangup, or the caller first), it was the bot's call.
    call.handle(ev(EventType.ENDED, reason=ended_by), 3)
    assert call.record.endReason == S.HANGUP_BOT


def test_goodbye_on_a_call_that_is_not_connected_changes_nothing() -> None:
    call = make_call(S.RINGING, Mode.CONVERSATION)
    with pytest.raises(NotConnected):
        call.say_goodbye("Bye!", 1)
    assert call.chosen_end is None


def test_played_for_unknown_utterance_does_nothing() -> None:
    call = make_call(S.SPEAKING, Mode.NOTIFY)
    assert call.handle(ev(EventType.PLAYED, utterance_id="u99"), 1) == []


def test_notify_callee_hangup_after_delivery_is_completed() -> None:
    call = make_call(S.SPEAKING, Mode.NOTIFY)
    call.delivered = True
    call.handle(ev(EventType.ENDED, reason=S.HANGUP_USER), 1)
    assert call.record.endReason == S.COMPLETED


def test_notify_callee_hangup_before_delivery_is_hangup_user() -> None:
    call = make_call(S.SPEAKING, Mode.NOTIFY)
    call.handle(ev(EventType.ENDED, reason=S.HANGUP_USER), 1)
    assert call.record.endReason == S.HANGUP_USER


def test_requested_end_reason_wins_over_carrier_report() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    assert call.timer_fired("max-duration") == [HangUp(S.TIMEOUT)]
    # A second request keeps the first reason.
    assert call.end(S.HANGUP_BOT) == [HangUp(S.TIMEOUT)]
    call.handle(ev(EventType.ENDED, reason=S.HANGUP_USER), 7)
    assert call.record.endReason == S.TIMEOUT and call.record.endedAt == 7


def test_refused_hang_up_lets_a_new_reason_be_chosen() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    call.end(S.HANGUP_BOT)
    call.hang_up_refused()
    assert call.end(S.TIMEOUT) == [HangUp(S.TIMEOUT)]


def test_ring_timer_only_ends_unanswered_calls() -> None:
    assert make_call(S.RINGING).timer_fired("ring") == [HangUp(S.NO_ANSWER)]
    assert make_call(S.INITIATED).timer_fired("ring") == [HangUp(S.NO_ANSWER)]
    assert make_call(S.SPEAKING).timer_fired("ring") == []


def test_finish_emits_everything_once() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    actions = call.finish(S.HANGUP_BOT, 42)
    assert kinds(actions).count("Persist") == 1
    assert Finished(S.HANGUP_BOT) in actions
    assert Publish("call.ended", {"reason": "hangup-bot"}) in actions
    assert {a.kind for a in actions if isinstance(a, CancelTimer)} == {"ring", "max-duration", "notify-hangup",
                                                                        "detection"}
    assert call.finish(S.ERROR, 43) == []
    assert call.record.state == S.HANGUP_BOT and call.record.endedAt == 42


def test_finish_rejects_a_live_state() -> None:
    with pytest.raises(ValueError):
        make_call(S.LISTENING).finish(S.SPEAKING, 1)


@pytest.mark.parametrize("state", [S.INITIATED, S.RINGING, S.COMPLETED, S.HANGUP_USER])
def test_speak_requires_a_connected_call(state: State) -> None:
    with pytest.raises(NotConnected):
        make_call(state).speak("hello", 1)


def test_begin_turn_numbers_turns() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    a1 = [a for a in call.begin_turn("one?", 1) if isinstance(a, Speak)]
    a2 = [a for a in call.begin_turn("two?", 2) if isinstance(a, Speak)]
    assert (a1[0].turn, a2[0].turn) == (1, 2)
    assert a1[0].utterance_id != a2[0].utterance_id


def test_listening_starts_even_when_more_speech_is_queued() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    turn = [a for a in call.begin_turn("question?", 1) if isinstance(a, Speak)][0]
    call.speak("and another thing", 2)
    actions = call.handle(ev(EventType.PLAYED, utterance_id=turn.utterance_id), 3)
    assert Listen(1) in actions
    assert call.state == S.SPEAKING  # still has something to say


def test_speech_final_appends_transcript_and_delivers() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    actions = call.handle(ev(EventType.SPEECH, transcript="  sure thing ", confidence=0.8), 9)
    assert Deliver("sure thing", 0.8) in actions
    assert Persist() in actions
    assert call.record.transcript[-1] == {"timestamp": 9, "speaker": "user", "text": "sure thing",
                                          "isFinal": True, "confidence": 0.8}


def test_partial_speech_is_published_not_stored() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    actions = call.handle(ev(EventType.SPEECH, transcript="sur", is_final=False), 9)
    assert actions == [Publish("call.transcript", {"speaker": "user", "text": "sur", "isFinal": False})]
    assert call.record.transcript == []


def test_empty_speech_is_ignored() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    assert call.handle(ev(EventType.SPEECH, transcript="   "), 1) == []


def test_error_event_hangs_up_with_reason_error() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    assert call.handle(ev(EventType.ERROR, message="media failed"), 1) == [HangUp(S.ERROR)]
    assert call.record.error == "media failed"


def test_interrupted_marks_the_last_bot_utterance_once() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    call.speak("a long answer", 1)
    first = call.handle(ev(EventType.INTERRUPTED), 2)
    assert call.record.transcript[-1]["interrupted"] is True
    assert Persist() in first
    assert call.handle(ev(EventType.INTERRUPTED), 3) == []


def test_record_round_trips_through_dict() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    call.speak("hello", 1)
    data = call.record.to_dict()
    assert set(data) >= {"callId", "provider", "providerCallId", "direction", "mode", "state", "from", "to",
                         "startedAt", "answeredAt", "endedAt", "endReason", "transcript"}
    assert CallRecord.from_dict(data).to_dict() == data


def test_plain_speech_returns_a_conversation_to_listening_once_played() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    (speak,) = [a for a in call.speak("by the way", 1) if isinstance(a, Speak)]
    assert call.state == S.SPEAKING
    call.handle(ev(EventType.PLAYED, utterance_id=speak.utterance_id), 2)
    assert call.state == S.LISTENING


def test_plain_speech_in_notify_mode_stays_speaking() -> None:
    call = make_call(S.SPEAKING, Mode.NOTIFY)
    (speak,) = [a for a in call.speak("extra", 1) if isinstance(a, Speak)]
    call.handle(ev(EventType.PLAYED, utterance_id=speak.utterance_id), 2)
    assert call.state == S.SPEAKING


def test_refused_speech_is_marked_and_does_not_block_listening() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    (speak,) = [a for a in call.speak("never heard", 1) if isinstance(a, Speak)]
    actions = call.speak_refused(speak.utterance_id)
    assert Persist() in actions and call.state == S.LISTENING
    assert call.record.transcript[-1]["undelivered"] is True
    assert call.speak_refused(speak.utterance_id) == []


def test_goodbye_stops_listening_and_hangs_up_after_playing() -> None:
    from voicecalld.calls import StopListening

    call = make_call(S.LISTENING, Mode.CONVERSATION)
    actions = call.say_goodbye("Goodbye!", 1)
    assert actions[-1] == StopListening()
    (speak,) = [a for a in actions if isinstance(a, Speak)]
    assert speak.then == "hangup"
    assert ArmTimer("notify-hangup", 2) in call.handle(ev(EventType.PLAYED, utterance_id=speak.utterance_id), 2)


# --- the table itself ---------------------------------------------------------------------


def test_every_input_has_a_row() -> None:
    assert {row.input for row in lifecycle_table.TABLE} == set(lifecycle_table.Input)


def test_no_row_for_a_terminal_state() -> None:
    assert not [row for row in lifecycle_table.TABLE if set(row.states) & TERMINAL]


def test_commands_that_speak_have_rows_exactly_in_the_connected_states() -> None:
    from voicecalld.calls import CONNECTED

    for input_ in (lifecycle_table.Input.SPEAK, lifecycle_table.Input.CONTINUE, lifecycle_table.Input.GOODBYE):
        states = {s for row in lifecycle_table.TABLE if row.input == input_ for s in row.states}
        assert states == CONNECTED, input_


def test_the_table_may_not_move_a_call_backwards() -> None:
    backwards = lifecycle_table.row(S.LISTENING, lifecycle_table.Input.RINGING, None, S.RINGING, lifecycle_table.MOVE)
    with pytest.raises(ValueError, match="may not move"):
        lifecycle_table._index((*lifecycle_table.TABLE, backwards))


@pytest.mark.parametrize("next_,steps", [(S.RINGING, ()), (lifecycle_table.SAME, (lifecycle_table.MOVE,))])
def test_a_row_moves_exactly_when_its_next_state_differs(next_, steps) -> None:
    row = lifecycle_table.row(S.INITIATED, lifecycle_table.Input.RINGING, None, next_, *steps)
    with pytest.raises(ValueError, match="MOVE"):
        lifecycle_table._index((row,))


def test_the_first_row_whose_guard_holds_applies() -> None:
    inbound = make_call(S.INITIATED, direction=Direction.INBOUND)
    outbound = make_call(S.INITIATED, direction=Direction.OUTBOUND)
    assert inbound.start() == [Persist()]
    assert outbound.start() == [Persist(), ArmTimer("ring", 30)]


def test_an_end_reason_that_is_no_end_is_refused() -> None:
    call = make_call(S.LISTENING, Mode.CONVERSATION)
    call.end(S.SPEAKING)  # a bug in a caller; the call must not end "speaking"
    with pytest.raises(ValueError, match="not an end reason"):
        call.handle(ev(EventType.ENDED, reason=S.HANGUP_USER), 1)
    assert call.state == S.LISTENING
