"""The vocabulary of a call: states, carrier events, records and actions.

Nothing here reads a clock, takes a lock, touches a socket or a file. What a
call does with an event is the lifecycle table in ``lifecycle.py``; this
module names the things that table speaks of.

States move forward only (the states of voicecalld-tools(7))::

    queued -> initiated -> ringing -> answered -> active -> speaking <-> listening

and any live state may end in one of the terminal states, which double as
end reasons. A terminal state is final. The one way back: a dial the
carrier refused for its rate limit returns the call from ``initiated`` to
``queued`` (the carrier placed nothing). ``TRANSITIONS`` states these
rules; every row of the lifecycle table obeys them (checked when the table
loads).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal


class State(enum.StrEnum):
    QUEUED = "queued"  # waiting for its turn to be dialled (dial pacing)
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"
    LISTENING = "listening"
    # Terminal states; each is also the call's end reason.
    COMPLETED = "completed"
    HANGUP_USER = "hangup-user"
    HANGUP_BOT = "hangup-bot"
    TIMEOUT = "timeout"
    ERROR = "error"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    TRANSFERRED = "transferred"  # handed to another number (voicecall.transfer)


TERMINAL: frozenset[State] = frozenset({
    State.COMPLETED, State.HANGUP_USER, State.HANGUP_BOT, State.TIMEOUT, State.ERROR,
    State.FAILED, State.NO_ANSWER, State.BUSY, State.VOICEMAIL,
    State.TRANSFERRED,
})
#: States in which the callee is on the line and can hear us.
CONNECTED: frozenset[State] = frozenset({State.ANSWERED, State.ACTIVE, State.SPEAKING, State.LISTENING})

#: Every state a call may move to from each state: forward only.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.INITIATED}) | TERMINAL,
    State.INITIATED: frozenset({State.QUEUED, State.RINGING, State.ANSWERED, State.ACTIVE}) | TERMINAL,
    State.RINGING: frozenset({State.ANSWERED, State.ACTIVE}) | TERMINAL,
    State.ANSWERED: frozenset({State.ACTIVE, State.SPEAKING, State.LISTENING}) | TERMINAL,
    State.ACTIVE: frozenset({State.SPEAKING, State.LISTENING}) | TERMINAL,
    State.SPEAKING: frozenset({State.LISTENING}) | TERMINAL,
    State.LISTENING: frozenset({State.SPEAKING}) | TERMINAL,
    **{s: frozenset() for s in TERMINAL},
}


def can_transition(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class Mode(enum.StrEnum):
    NOTIFY = "notify"
    CONVERSATION = "conversation"


# --- normalized provider events ----------------------------------------------------


class EventType(enum.StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"   # playback of an utterance started
    PLAYED = "played"       # playback of an utterance finished
    SPEECH = "speech"       # the callee said something (transcript, isFinal, confidence)
    INTERRUPTED = "interrupted"  # the callee spoke over the bot (barge-in)
    SAID = "said"           # the bot said a line of its own making (a realtime speech-to-speech model)
    DTMF = "dtmf"
    ENDED = "ended"         # the carrier says the call is over (reason)
    ERROR = "error"
    DETECTED = "detected"   # answering-machine detection says who answered (answered_by)
    GREETING_ENDED = "greeting-ended"  # the answering machine's greeting ended (the beep)
    TRANSFERRED = "transferred"          # the transfer target answered: the call is theirs now
    TRANSFER_FAILED = "transfer-failed"  # the target was busy, did not answer, or the carrier refused (message)


@dataclass(frozen=True)
class CallEvent:
    """One thing a carrier (or the mock, or a media stream) reports.

    ``id`` is unique per event; the same id twice is one event (webhook
    retries). The call is named by ``call_id`` or, failing that, by
    ``provider_call_id``.
    """

    type: EventType
    id: str
    call_id: str | None = None
    provider_call_id: str | None = None
    transcript: str = ""
    is_final: bool = True
    confidence: float | None = None
    digits: str = ""
    reason: State | None = None
    message: str = ""
    utterance_id: str | None = None
    #: ``interrupted``: the utterances dropped before any of them was heard
    #: (``utterance_id`` is then the one cut off while it was heard, if any).
    dropped: tuple[str, ...] = ()
    answered_by: str | None = None  # DETECTED: human, machine, fax or unknown


#: What answering-machine detection reports, as the record's ``answeredBy`` says it.
ANSWERED_BY = ("human", "machine", "fax", "unknown")


# --- records --------------------------------------------------------------------------


@dataclass
class CallRecord:
    """What the log stores and the socket returns (the call record of
    voicecalld-tools(7)).

    Besides the documented fields it keeps what a restarted daemon needs to
    carry on: ``opening`` (what to say once the callee answers: the message,
    or the inbound greeting) and ``openingSpoken``. Lines written before
    these existed load with the opening counted as spoken, as they were
    restored then.
    """

    callId: str
    provider: str
    direction: Direction
    mode: Mode
    to: str
    from_: str
    state: State = State.INITIATED
    providerCallId: str | None = None
    startedAt: int = 0
    answeredAt: int | None = None
    endedAt: int | None = None
    endReason: State | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    opening: str | None = None
    openingSpoken: bool = False
    #: One entry per bot reply whose turn latency was measured:
    #: ``{"at": epoch ms, "latencyMs": caller's end of speech to the reply's
    #: first audio at the carrier}``.
    turns: list[dict[str, Any]] = field(default_factory=list)
    #: When the call entered the dial queue (epoch ms); None if it was dialled at once.
    queuedAt: int | None = None
    #: Who answered, when answering-machine detection ran: human, machine, fax or unknown.
    answeredBy: str | None = None
    #: Call control (voicecalld-tools(7)): DTMF digits to send once answered,
    #: before the opening; whether the carrier records the call; and the
    #: recordings it reported, ``{"url", "durationSec", "channels"}`` each.
    dtmf: str | None = None
    record: bool = False
    recordings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "callId": self.callId, "provider": self.provider, "providerCallId": self.providerCallId,
            "direction": str(self.direction), "mode": str(self.mode), "state": str(self.state),
            "from": self.from_, "to": self.to, "startedAt": self.startedAt,
            "answeredAt": self.answeredAt, "endedAt": self.endedAt,
            "endReason": None if self.endReason is None else str(self.endReason),
            "transcript": [dict(t) for t in self.transcript], "error": self.error,
            "opening": self.opening, "openingSpoken": self.openingSpoken,
            "turns": [dict(t) for t in self.turns],
            "queuedAt": self.queuedAt, "answeredBy": self.answeredBy,
            "dtmf": self.dtmf, "record": self.record, "recordings": [dict(r) for r in self.recordings],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallRecord:
        end = d.get("endReason")
        opening = d.get("opening")
        return cls(
            callId=str(d["callId"]), provider=str(d["provider"]), direction=Direction(d["direction"]),
            mode=Mode(d["mode"]), to=str(d.get("to") or ""), from_=str(d.get("from") or ""),
            state=State(d["state"]), providerCallId=d.get("providerCallId"),
            startedAt=int(d.get("startedAt") or 0), answeredAt=d.get("answeredAt"),
            endedAt=d.get("endedAt"), endReason=State(end) if end else None,
            transcript=list(d.get("transcript") or []), error=d.get("error"),
            opening=opening if isinstance(opening, str) and opening else None,
            openingSpoken=bool(d.get("openingSpoken", True)),
            turns=[dict(t) for t in d.get("turns") or [] if isinstance(t, dict)],
            queuedAt=_int_or_none(d.get("queuedAt")),
            answeredBy=answered_by if (answered_by := d.get("answeredBy")) in ANSWERED_BY else None,
            dtmf=d.get("dtmf") if isinstance(d.get("dtmf"), str) and d.get("dtmf") else None,
            record=d.get("record") is True,
            recordings=[dict(r) for r in d.get("recordings") or [] if isinstance(r, dict)],
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- actions: what the manager must do after a step ----------------------------------------

TimerKind = Literal["ring", "max-duration", "notify-hangup", "detection"]
TIMER_KINDS: tuple[TimerKind, ...] = ("ring", "max-duration", "notify-hangup", "detection")
AfterSpeech = Literal["hangup", "listen"] | None


@dataclass(frozen=True)
class Persist:
    """Append the record's snapshot to the log."""


@dataclass(frozen=True)
class Publish:
    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Speak:
    """Say ``text``; ``then`` tells the carrier what follows it (carriers
    that script the call, like TwiML, need to know up front)."""

    text: str
    utterance_id: str
    then: AfterSpeech = None
    turn: int | None = None


@dataclass(frozen=True)
class Listen:
    """Start a listening turn (after an utterance with ``then="listen"`` played)."""

    turn: int | None = None


@dataclass(frozen=True)
class StopListening:
    """The bot is done listening (it is saying goodbye): stop transcribing,
    so the callee's last words start no new turn."""


@dataclass(frozen=True)
class HangUp:
    """Ask the carrier to hang up; the call ends as ``reason`` once the
    carrier confirms (or reports the call over)."""

    reason: State


@dataclass(frozen=True)
class ArmTimer:
    kind: TimerKind
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    kind: TimerKind


@dataclass(frozen=True)
class Deliver:
    """A final transcript from the callee: completes a waiting continue, or
    goes to the auto-responder."""

    text: str
    confidence: float | None = None


@dataclass(frozen=True)
class Finished:
    reason: State


# Call control: DTMF, transfer, recording.

@dataclass(frozen=True)
class SendDtmf:
    """Send DTMF ``digits`` (checked already: ``media.dtmf``) to the callee."""

    digits: str


@dataclass(frozen=True)
class Transfer:
    """Say ``message`` (if any), then hand the call to ``to``; the carrier
    reports ``transferred`` or ``transfer-failed``."""

    to: str
    message: str = ""


@dataclass(frozen=True)
class StartRecording:
    """Ask the carrier to record the call (carriers that record from the
    dial on have nothing to do)."""


Action = (Persist | Publish | Speak | Listen | StopListening | HangUp | ArmTimer | CancelTimer | Deliver | Finished
          | SendDtmf | Transfer | StartRecording)


@dataclass(frozen=True)
class Policy:
    """The numbers from the configuration the lifecycle needs."""

    max_duration: float = 300.0
    ring_timeout: float = 30.0
    notify_hangup_delay: float = 3.0
    #: outbound.voicemail = leave-message: an outbound call's opening waits
    #: for the detection verdict, and an answering machine gets it after the beep.
    leave_voicemail: bool = False
    #: How long after the answer a held opening waits for the verdict (and
    #: for a machine's beep) before it is said anyway.
    detection_deadline: float = 45.0
    #: Said before anything else on a call that records (recording.announce).
    recording_announcement: str = ""
