"""Call control in the I/O-free lifecycle: what comes before the opening
(recording, its announcement, initial digits), sending DTMF, the transfer
rows and the transferred end, and recordings noted on the record."""

from __future__ import annotations

import itertools

import pytest

from voicecalld.calls import (
    CallEvent,
    CallRecord,
    Direction,
    EventType,
    Finished,
    HangUp,
    Mode,
    Persist,
    Policy,
    Publish,
    SendDtmf,
    Speak,
    StartRecording,
    State,
    Transfer,
)
from voicecalld.errors import NotConnected, TurnInProgress
from voicecalld.lifecycle import Call

S = State
_ids = itertools.count()


def ev(type_: EventType, **kw: object) -> CallEvent:
    return CallEvent(type_, f"e{next(_ids)}", **kw)  # type: ignore[arg-type]


def make_call(state: State = S.RINGING, *, record: bool = False, dtmf: str | None = None,
              announce: str = "", mode: Mode = Mode.CONVERSATION) -> Call:
    rec = CallRecord("c1", "mock", Direction.OUTBOUND, mode, "+15550001111", "+15550009999", state=state,
                     record=record, dtmf=dtmf)
    call = Call(rec, Policy(max_duration=60, ring_timeout=30, notify_hangup_delay=2,
                            recording_announcement=announce), "Hello")
    if state in (S.SPEAKING, S.LISTENING, S.ACTIVE):
        rec.openingSpoken = True
    return call


def remote(actions: list[object]) -> list[object]:
    """The actions for the carrier, in order."""
    return [a for a in actions if isinstance(a, Speak | SendDtmf | StartRecording | Transfer | HangUp)]


@pytest.mark.parametrize(("record", "dtmf", "announce", "expected"), [
    (False, None, "Recorded.", [Speak("Hello", "u1", "listen")]),
    (False, "12#", "", [SendDtmf("12#"), Speak("Hello", "u1", "listen")]),
    (True, None, "", [StartRecording(), Speak("Hello", "u1", "listen")]),
    (True, "9", "Recorded.", [StartRecording(), Speak("Recorded.", "u1"), SendDtmf("9"),
                              Speak("Hello", "u2", "listen")]),
])
def test_what_comes_before_the_opening(record: bool, dtmf: str | None, announce: str,
                                       expected: list[object]) -> None:
    call = make_call(record=record, dtmf=dtmf, announce=announce)
    actions = call.handle(ev(EventType.ANSWERED), 1000)
    assert remote(actions) == expected
    assert call.state == S.SPEAKING and call.record.openingSpoken
    said = [t["text"] for t in call.record.transcript]
    assert said == (["Recorded.", "Hello"] if record and announce else ["Hello"])
    sent = [a.data for a in actions if isinstance(a, Publish) and a.name == "call.dtmf"]
    assert sent == ([{"digits": dtmf, "direction": "sent"}] if dtmf else [])


def test_the_prelude_is_not_repeated_once_the_opening_was_said() -> None:
    call = make_call(record=True, dtmf="1")
    call.record.openingSpoken = True  # said before a restart
    assert remote(call.answered(1000, 60)) == []


def test_the_announcement_playing_does_not_start_listening() -> None:
    call = make_call(record=True, announce="Recorded.")
    call.handle(ev(EventType.ANSWERED), 1000)
    call.handle(ev(EventType.PLAYED, utterance_id="u1"), 1100)  # the announcement
    assert call.state == S.SPEAKING
    call.handle(ev(EventType.PLAYED, utterance_id="u2"), 1200)  # the opening, which awaits a reply
    assert call.state == S.LISTENING


def test_send_dtmf_on_a_connected_call_only() -> None:
    call = make_call(S.LISTENING)
    actions = call.send_dtmf("5w5")
    assert remote(actions) == [SendDtmf("5w5")] and call.state == S.LISTENING
    with pytest.raises(NotConnected):
        make_call(S.RINGING).send_dtmf("1")


def test_received_digits_say_so() -> None:
    actions = make_call(S.LISTENING).handle(ev(EventType.DTMF, digits="7"), 1000)
    assert actions == [Publish("call.dtmf", {"digits": "7", "direction": "received"})]


def test_transfer_then_transferred_ends_the_call_without_a_hang_up() -> None:
    call = make_call(S.LISTENING)
    actions = call.transfer("+15550003333", "Putting you through", 1000)
    assert remote(actions) == [Transfer("+15550003333", "Putting you through")] and Persist() in actions
    assert call.record.transcript[-1]["text"] == "Putting you through" and not call.pending
    with pytest.raises(TurnInProgress):
        call.transfer("+15550003333", "", 1001)
    actions = call.handle(ev(EventType.TRANSFERRED), 2000)
    assert call.state == call.record.endReason == S.TRANSFERRED and call.record.endedAt == 2000
    assert Finished(S.TRANSFERRED) in actions and not [a for a in actions if isinstance(a, HangUp)]


def test_a_failed_transfer_changes_nothing_but_says_so() -> None:
    call = make_call(S.LISTENING)
    call.transfer("+15550004444", "", 1000)
    actions = call.handle(ev(EventType.TRANSFER_FAILED, message="the target was busy"), 1100)
    assert actions == [Publish("call.transfer", {"to": "+15550004444", "ok": False, "error": "the target was busy"})]
    assert call.state == S.LISTENING and call.transferring is None
    assert remote(call.transfer("+15550003333", "", 1200)) == [Transfer("+15550003333", "")]  # may try again


def test_transfer_needs_a_connected_call() -> None:
    with pytest.raises(NotConnected):
        make_call(S.RINGING).transfer("+15550003333", "", 1000)


def test_recordings_are_noted_once() -> None:
    call = make_call(S.LISTENING)
    rec = {"url": "https://r/1", "durationSec": 3, "channels": "dual"}
    assert call.note_recording(rec) == [Persist(), Publish("call.recording", rec)]
    assert call.note_recording(dict(rec)) == []  # a retried webhook
    assert call.record.recordings == [rec]
    call.finish(S.COMPLETED, 5000)
    assert call.note_recording({"url": "https://r/2"}) is None  # ended: the final record is amended instead
    copy = CallRecord.from_dict(call.record.to_dict())
    assert copy.recordings == [rec] and copy.record is False and copy.dtmf is None
