"""The parts the lifecycle table is made of: its inputs, and the steps,
guards and targets its rows name.

Each has a label, which is what the generated docs print (lifecycle_doc.py).
Steps and guards act on a ``Machine``: the few things of a call the table
may read and change, listed in one place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .calls import (
    TIMER_KINDS,
    Action,
    AfterSpeech,
    ArmTimer,
    CallRecord,
    CancelTimer,
    Deliver,
    Direction,
    Finished,
    HangUp,
    Listen,
    Mode,
    Persist,
    Policy,
    Publish,
    SendDtmf,
    Speak,
    StartRecording,
    State,
    StopListening,
    Transfer,
)
from .utterances import keep_what_was_heard


class Input(enum.StrEnum):
    """The table's inputs: carrier events, commands and timers."""

    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"
    PLAYED = "played"
    PLAYED_THEN_LISTEN = "played, then listen"
    PLAYED_THEN_HANG_UP = "played, then hang up"
    PARTIAL = "partial speech"
    SPEECH = "speech"
    INTERRUPTED = "interrupted"
    TURN = "turn measured"
    SAID = "said"
    DTMF = "dtmf"
    ENDED = "ended"
    ERROR = "error"
    CREATED = "created"
    OPENING = "opening"
    SPEAK = "speak"
    CONTINUE = "continue"
    GOODBYE = "goodbye"
    HANG_UP_AFTER = "hang up after the words"
    SPEAK_REFUSED = "speak refused"
    END = "end"
    HANG_UP_REFUSED = "hang-up refused"
    CLOSE = "close"
    RING_TIMER = "ring timer"
    MAX_DURATION_TIMER = "max-duration timer"
    NOTIFY_HANGUP_TIMER = "notify-hangup timer"
    # dial pacing
    DIAL = "dial"
    DIAL_THROTTLED = "dial throttled"
    # answering-machine detection
    ANSWERED_BY = "answered by"
    GREETING_ENDED = "greeting ended"
    DETECTION_TIMER = "detection timer"
    # call control
    PRELUDE = "prelude"
    SEND_DTMF = "send dtmf"
    TRANSFER = "transfer"
    TRANSFERRED = "transferred"
    TRANSFER_FAILED = "transfer failed"


#: What each input is, as the docs say it.
MEANING: dict[Input, str] = {
    Input.RINGING: "the carrier says the callee's phone rings",
    Input.ANSWERED: "the callee picked up (after a restart: the carrier says they did meanwhile)",
    Input.ACTIVE: "the carrier says the call is up",
    Input.SPEAKING: "an utterance started playing",
    Input.PLAYED: "an utterance finished playing",
    Input.PLAYED_THEN_LISTEN: "an utterance that awaits a reply finished playing (a continue, "
                              "a conversation's opening)",
    Input.PLAYED_THEN_HANG_UP: "an utterance that ends the call finished playing (the notification, a goodbye)",
    Input.PARTIAL: "an interim transcript of the callee",
    Input.SPEECH: "a final transcript of the callee",
    Input.INTERRUPTED: "the callee spoke over the bot (barge-in)",
    Input.SAID: "the realtime model said a line of its own (speech-to-speech: no utterance to wait for)",
    Input.TURN: "a reply's turn latency was measured (the caller's last word to the reply's first audio)",
    Input.DTMF: "the callee pressed keys",
    Input.ENDED: "the carrier says the call is over, and why",
    Input.ERROR: "a carrier or media error, or one of ours (the call log cannot be written)",
    Input.CREATED: "the call was created (an outbound one before it is dialed)",
    Input.OPENING: "follows answered in the same step: the message or greeting is due",
    Input.SPEAK: "the command voicecall.speak, or a reply of the auto-responder",
    Input.CONTINUE: "the command voicecall.continue: speak, then wait for the callee's reply",
    Input.GOODBYE: "a last line, then hang up (the auto-responder's hang_up tool)",
    Input.HANG_UP_AFTER: "hang up once what is being said has played (the auto-responder's hang_up tool, "
                         "after a reply it was already speaking)",
    Input.SPEAK_REFUSED: "the carrier refused an utterance",
    Input.END: "the command voicecall.end (as hangup-bot), a deadline that passed while voicecalld was "
               "down, or shutdown",
    Input.HANG_UP_REFUSED: "the carrier refused to hang up",
    Input.CLOSE: "end the record without the carrier (a dial that failed, a restored call the carrier "
                 "says is over, a hang-up shutdown could not confirm)",
    Input.RING_TIMER: "the ring deadline (ringTimeoutMs) passed",
    Input.MAX_DURATION_TIMER: "the call's time (maxDurationSeconds) is up",
    Input.NOTIFY_HANGUP_TIMER: "the pause after the last line (notifyHangupDelaySec) is over",
    Input.DIAL: "a queued call's turn came (outbound.dialsPerSecond, maxConcurrentCalls); the carrier is asked "
                "once this step is logged",
    Input.DIAL_THROTTLED: "the carrier refused the dial for its rate limit (it placed nothing): back to the "
                          "head of the queue",
    Input.ANSWERED_BY: "answering-machine detection says who answered: human, machine, fax or unknown",
    Input.GREETING_ENDED: "the answering machine's greeting ended (the beep)",
    Input.DETECTION_TIMER: "no verdict, or no beep, within the detection deadline after the answer",
    Input.PRELUDE: "follows answered in the same step, before opening: what comes before the opening",
    Input.SEND_DTMF: "the command voicecall.dtmf (the tool's send_dtmf)",
    Input.TRANSFER: "the command voicecall.transfer (the tool's and the auto-responder's transfer_call)",
    Input.TRANSFERRED: "the carrier says the transfer target answered: the call is theirs now",
    Input.TRANSFER_FAILED: "the carrier says the transfer failed (busy, no answer, refused); the call goes on",
}


@dataclass
class Data:
    """What one input carries; steps read what they need and the speaking
    steps fill in the utterance they create."""

    now_ms: int
    text: str = ""
    then: AfterSpeech = None
    turn: int | None = None
    reason: State | None = None
    error: str | None = None
    confidence: float | None = None
    digits: str = ""
    duration: float = 0.0                     # max-duration to arm
    utterance_id: str = ""
    entry: dict[str, Any] | None = None       # the transcript entry an input is about
    answered_by: str | None = None            # what answering-machine detection said
    latency_ms: int = 0                       # a measured turn latency
    to: str = ""                              # a transfer's target
    joins: bool = False                       # the line goes on the bot's previous line (a reply's next sentence)
    #: Barge-in: (transcript entry, characters of it that were heard), for
    #: the lines whose end never played.
    cuts: list[tuple[dict[str, Any], int]] | None = None


class Machine(Protocol):
    """What the table's steps and guards may read and change: the record,
    the policy, two flags, and the utterances waiting to play."""

    record: CallRecord
    policy: Policy
    #: The end reason the bot chose (end, goodbye, a deadline, an error);
    #: it wins over what the carrier reports next. None until chosen.
    chosen_end: State | None
    #: An utterance that ends the call (the notification, a goodbye) played to its end.
    delivered: bool
    #: The answering machine's greeting ended (the beep): a message left now is recorded.
    greeting_over: bool
    #: The number a transfer under way hands the call to; None when there is none.
    transferring: str | None

    @property
    def state(self) -> State: ...

    @property
    def pending(self) -> bool: ...

    def fire(self, input_: Input, data: Data) -> list[Action] | None: ...

    def note_bot_line(self, data: Data) -> list[Action]: ...

    def note_callee_line(self, data: Data) -> list[Action]: ...

    def note_said(self, data: Data) -> list[Action]: ...

    def forget_utterances(self) -> None: ...

    def hang_up_after_last(self) -> bool: ...


@dataclass(frozen=True)
class Step:
    label: str
    run: Callable[[Machine, Data], list[Action]]
    means: str = ""  # for the docs, where the label is not enough


@dataclass(frozen=True)
class Guard:
    label: str
    holds: Callable[[Machine, Data], bool]


@dataclass(frozen=True)
class Target:
    """A next state chosen when the row applies."""

    label: str
    pick: Callable[[Machine, Data], State]


Next = State | Target


@dataclass(frozen=True)
class Row:
    states: tuple[State, ...]
    input: Input
    guard: Guard | None
    next: Next
    steps: tuple[Step, ...]


def row(states: State | tuple[State, ...], input_: Input, guard: Guard | None, next_: Next,
         *steps: Step) -> Row:
    return Row(states if isinstance(states, tuple) else (states,), input_, guard, next_, steps)


# --- steps ---------------------------------------------------------------------------------


def _none(fn: Callable[[Machine, Data], object]) -> Callable[[Machine, Data], list[Action]]:
    """A step that only changes the call, emitting nothing."""
    def run(call: Machine, data: Data) -> list[Action]:
        fn(call, data)
        return []
    return run


def hang_up(reason: State | None) -> Step:
    """Ask the carrier to hang up, ending as the reason chosen first
    (``reason``, or the input's when None)."""
    def run(call: Machine, data: Data) -> list[Action]:
        chosen = reason or data.reason
        if call.chosen_end is None and chosen is not None:
            call.chosen_end = chosen
        return [] if call.chosen_end is None else [HangUp(call.chosen_end)]
    return Step(f"hang up ({reason})" if reason else "hang up", run,
                "ask the carrier to hang up; the call will end as the first reason chosen "
                "(the one in brackets, or the command's)")


def _close(call: Machine, data: Data) -> list[Action]:
    record = call.record
    record.endReason = record.state
    record.endedAt = data.now_ms
    if data.error and not record.error:
        record.error = data.error
    call.forget_utterances()
    return [*(CancelTimer(k) for k in TIMER_KINDS), Persist(),
            Publish("call.ended", {"reason": str(record.state)}), Finished(record.state)]


def _opening(call: Machine, data: Data) -> list[Action]:
    then: AfterSpeech = "hangup" if call.record.mode == Mode.NOTIFY else "listen"
    prelude = call.fire(Input.PRELUDE, Data(data.now_ms)) or []
    return prelude + (call.fire(Input.OPENING, Data(data.now_ms, text=call.record.opening or "", then=then)) or [])


def _interrupted(call: Machine, data: Data) -> list[Action]:
    assert data.entry is not None
    return keep_what_was_heard(call.record.transcript, data.entry, data.cuts or [])


def _mark_undelivered(call: Machine, data: Data) -> None:
    assert data.entry is not None
    data.entry["undelivered"] = True


def _note_turn(call: Machine, data: Data) -> None:
    call.record.turns.append({"at": data.now_ms, "latencyMs": data.latency_ms})


def _set_opening_spoken(call: Machine, data: Data) -> None:
    call.record.openingSpoken = True


def _stamp_answered(call: Machine, data: Data) -> None:
    if call.record.answeredAt is None:
        call.record.answeredAt = data.now_ms


def _set_delivered(call: Machine, data: Data) -> None:
    call.delivered = True


def _clear_chosen_end(call: Machine, data: Data) -> None:
    call.chosen_end = None


def _choose_end(call: Machine, data: Data) -> None:
    if call.chosen_end is None:
        call.chosen_end = data.reason


def _note_error(call: Machine, data: Data) -> None:
    if data.error and not call.record.error:
        call.record.error = data.error


# -- dial pacing and answering-machine detection --

def _stamp_started(call: Machine, data: Data) -> None:
    call.record.startedAt = data.now_ms  # a queued call starts when it is dialled


def _stamp_queued(call: Machine, data: Data) -> None:
    if call.record.queuedAt is None:
        call.record.queuedAt = data.now_ms


def _note_answered_by(call: Machine, data: Data) -> list[Action]:
    if data.answered_by:
        call.record.answeredBy = data.answered_by
    return [Publish("call.detection", {"answeredBy": call.record.answeredBy, "greetingEnded": False})]


def _note_greeting_ended(call: Machine, data: Data) -> list[Action]:
    call.greeting_over = True
    call.record.answeredBy = "machine"  # only a machine beeps
    return [Publish("call.detection", {"answeredBy": "machine", "greetingEnded": True})]


def _note_unknown(call: Machine, data: Data) -> None:
    if call.record.answeredBy is None:
        call.record.answeredBy = "unknown"


def _prepare_voicemail(call: Machine, data: Data) -> None:
    data.text, data.then, data.reason = call.record.opening or "", "hangup", State.VOICEMAIL


MOVE = Step("move", lambda call, data: [])  # where the call enters the row's next state
PERSIST = Step("persist", lambda call, data: [Persist()])
ARM_RING = Step("arm ring", lambda call, data: [ArmTimer("ring", call.policy.ring_timeout)])
CANCEL_RING = Step("cancel ring", lambda call, data: [CancelTimer("ring")])
ARM_MAX_DURATION = Step("arm max-duration", lambda call, data: [ArmTimer("max-duration", data.duration)])
ARM_NOTIFY_HANGUP = Step("arm notify-hangup",
                         lambda call, data: [ArmTimer("notify-hangup", call.policy.notify_hangup_delay)])
STAMP_ANSWERED = Step("stamp answeredAt", _none(_stamp_answered))
OPENING = Step("opening", _opening, "then the inputs prelude and opening, in the same step")
MARK_OPENING_SPOKEN = Step("mark the opening spoken", _none(_set_opening_spoken))
BOT_LINE = Step("note the bot's line", lambda call, data: call.note_bot_line(data),
                "add it to the transcript; it waits to be played")
SPEAK = Step("speak",
             lambda call, data: [Speak(data.text, data.utterance_id, data.then, data.turn)])
LISTEN = Step("listen", lambda call, data: [Listen(data.turn)])
STOP_LISTENING = Step("stop listening", lambda call, data: [StopListening()],
                      "stop transcribing, so the callee's last words start no new turn")
MARK_DELIVERED = Step("mark delivered", _none(_set_delivered))
LAST_THEN_HANG_UP = Step(
    "hang up after the last line",
    lambda call, data: [] if call.hang_up_after_last()
    else [ArmTimer("notify-hangup", call.policy.notify_hangup_delay)],
    "the utterance still to play last now ends the call when it has played (played, then hang up); with "
    "nothing left to play, arm notify-hangup")
MARK_UNDELIVERED = Step("mark the line undelivered", _none(_mark_undelivered))
CALLEE_LINE = Step("note the callee's line", lambda call, data: call.note_callee_line(data))
DELIVER = Step("deliver", lambda call, data: [Deliver(data.text, data.confidence)],
               "hand the transcript to the continue waiting for it, or else to the auto-responder")
PUBLISH_PARTIAL = Step("publish the partial", lambda call, data: [
    Publish("call.transcript", {"speaker": "user", "text": data.text, "isFinal": False})])
MARK_INTERRUPTED = Step("mark the line interrupted", _interrupted,
                        "keep only what was heard of the bot's lines (sentences that never played are dropped), "
                        "and mark the line cut off interrupted")
NOTE_TURN = Step("note the turn", _none(_note_turn), "add {at, latencyMs} to the record's turns")
PUBLISH_DTMF = Step("publish the digits", lambda call, data: [
    Publish("call.dtmf", {"digits": data.digits, "direction": "received"})])
CHOOSE_END = Step("choose the end reason", _none(_choose_end))
FORGET_END = Step("forget the chosen end", _none(_clear_chosen_end))
NOTE_ERROR = Step("note the error", _none(_note_error))
HANG_UP = hang_up(None)
STAMP_STARTED = Step("stamp startedAt", _none(_stamp_started))
STAMP_QUEUED = Step("stamp queuedAt", _none(_stamp_queued), "the first time the call is queued")
NOTE_ANSWERED_BY = Step("note answeredBy", _note_answered_by, "record the verdict, publish call.detection")
NOTE_GREETING_ENDED = Step("note the beep", _note_greeting_ended,
                           "answeredBy is machine; publish call.detection with greetingEnded")
NOTE_UNKNOWN = Step("note answeredBy unknown", _none(_note_unknown), "unless there is a verdict")
ARM_DETECTION = Step("arm detection", lambda call, data: [ArmTimer("detection", call.policy.detection_deadline)])
CANCEL_DETECTION = Step("cancel detection", lambda call, data: [CancelTimer("detection")])
PREPARE_VOICEMAIL = Step("take the message", _none(_prepare_voicemail),
                         "the opening, to be said before hanging up, and the end reason voicemail")


# Call control: DTMF, transfer, recording.

def _announce(call: Machine, data: Data) -> list[Action]:
    text = call.policy.recording_announcement
    if not (call.record.record and text):
        return []
    said = Data(data.now_ms, text=text)
    return [*call.note_bot_line(said), Persist(), Speak(text, said.utterance_id)]


def _sent_dtmf(digits: str) -> list[Action]:
    return [Publish("call.dtmf", {"digits": digits, "direction": "sent"}), SendDtmf(digits)]


def _set_transferring(call: Machine, data: Data) -> None:
    call.transferring = data.to


def _transfer_failed(call: Machine, data: Data) -> list[Action]:
    to, call.transferring = call.transferring, None
    return [Publish("call.transfer", {"to": to or data.to, "ok": False, "error": data.error or ""})]


START_RECORDING = Step("start recording", lambda call, data: [StartRecording()] if call.record.record else [],
                       "if the call records (recording.enabled, or record on voicecall.initiate)")
ANNOUNCE = Step("announce the recording", _announce,
                "say recording.announce first, if the call records and it is set (it waits to be played)")
OPENING_DTMF = Step("send the initial digits",
                    lambda call, data: _sent_dtmf(call.record.dtmf) if call.record.dtmf else [],
                    "the dtmf of voicecall.initiate, if any: publish call.dtmf (direction sent), then send them")
SEND_DTMF = Step("send the digits", lambda call, data: _sent_dtmf(data.digits),
                 "publish call.dtmf (direction sent), then have the carrier send them")
MARK_TRANSFERRING = Step("mark the transfer under way", _none(_set_transferring))
SAID_LINE = Step("note the bot's line", lambda call, data: call.note_said(data),
                 "add the line the model said to the transcript")
TRANSFER_LINE = Step("note the transfer message", lambda call, data: call.note_said(data) if data.text else [],
                     "add the message, if any, to the transcript")
TRANSFER = Step("transfer", lambda call, data: [Transfer(data.to, data.text)],
                "have the carrier say the message, then hand the call to the target")
FORGET_TRANSFER = Step("forget the transfer", _transfer_failed,
                       "the transfer is over; publish call.transfer (ok false, with the error)")

CLOSE = Step("close", _close, "stamp endReason and endedAt, cancel every timer, persist, publish call.ended, "
                              "free the call's slot")

#: Leave the call's message on an answering machine, then hang up; the call ends as voicemail.
LEAVE_VOICEMAIL: tuple[Step, ...] = (CANCEL_DETECTION, PREPARE_VOICEMAIL, CHOOSE_END, MARK_OPENING_SPOKEN, BOT_LINE,
                                     MOVE, PERSIST, SPEAK, STOP_LISTENING)

# --- guards and targets ---------------------------------------------------------------------

OUTBOUND = Guard("outbound", lambda call, data: call.record.direction == Direction.OUTBOUND)
OPENING_UNSAID = Guard("the opening is still to say",
                       lambda call, data: bool(call.record.opening) and not call.record.openingSpoken)
NO_OPENING = Guard("there is no opening", lambda call, data: not call.record.opening)
IDLE = Guard("the call is a conversation with nothing left to say",
             lambda call, data: call.record.mode == Mode.CONVERSATION and not call.pending)
QUIET = Guard("nothing is left to say", lambda call, data: not call.pending)
END_CHOSEN = Guard("the bot chose the end", lambda call, data: call.chosen_end is not None)
DELIVERED = Guard("the notification was delivered and the callee hung up",
                  lambda call, data: call.record.mode == Mode.NOTIFY and call.delivered
                  and data.reason in (State.HANGUP_USER, State.COMPLETED))


def _leaves_messages(call: Machine) -> bool:
    """outbound.voicemail = leave-message, on an outbound call with a message to leave."""
    record = call.record
    return call.policy.leave_voicemail and record.direction == Direction.OUTBOUND and bool(record.opening)


VERDICT_DUE = Guard("leave-message, and no verdict yet (or a machine still greeting)",
                    lambda call, data: _leaves_messages(call) and not call.record.openingSpoken
                    and call.record.answeredBy in (None, "machine"))
MESSAGE_DUE = Guard("leave-message, and the machine's greeting is over",
                    lambda call, data: _leaves_messages(call) and call.greeting_over and call.chosen_end is None)
LEAVE_MESSAGE = Guard("leave-message, and no message is being left yet",
                      lambda call, data: _leaves_messages(call) and call.chosen_end is None)
MACHINE_GREETING = Guard("leave-message, and a machine answered",
                         lambda call, data: _leaves_messages(call) and call.record.answeredBy == "machine"
                         and call.chosen_end is None)
FAX = Guard("leave-message, and a fax answered",
            lambda call, data: _leaves_messages(call) and data.answered_by == "fax")
NOTHING_SAID = Guard("nothing was said yet", lambda call, data: not call.record.openingSpoken)
NOT_TRANSFERRING = Guard("no transfer is under way", lambda call, data: call.transferring is None)

SAME = Target("=", lambda call, data: call.state)
CHOSEN = Target("the chosen reason", lambda call, data: call.chosen_end or State.ERROR)  # guarded: never None
CARRIERS = Target("the carrier's reason", lambda call, data: data.reason or State.COMPLETED)
GIVEN = Target("the reason given", CARRIERS.pick)
