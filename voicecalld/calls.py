"""Call records and the call state machine: an I/O-free core.

Like h11's ``_state.py``: normalized events and commands go in, the call's
new state plus a list of *actions* comes out. Nothing here reads a clock,
takes a lock, touches a socket or a file; the manager does all of that when
it applies the actions, so this module is tested by tables of cases.

States move forward only (DESIGN.md section 4)::

    initiated -> ringing -> answered -> active -> speaking <-> listening

and any live state may end in one of the terminal states, which double as
end reasons. A terminal state is final.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import NotConnected


class State(enum.StrEnum):
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


TERMINAL: frozenset[State] = frozenset({
    State.COMPLETED, State.HANGUP_USER, State.HANGUP_BOT, State.TIMEOUT, State.ERROR,
    State.FAILED, State.NO_ANSWER, State.BUSY, State.VOICEMAIL,
})
LIVE: frozenset[State] = frozenset(State) - TERMINAL
#: States in which the callee is on the line and can hear us.
CONNECTED: frozenset[State] = frozenset({State.ANSWERED, State.ACTIVE, State.SPEAKING, State.LISTENING})

#: The transition table: every state a call may move to from each state.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.INITIATED: frozenset({State.RINGING, State.ANSWERED, State.ACTIVE}) | TERMINAL,
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
    DTMF = "dtmf"
    ENDED = "ended"         # the carrier says the call is over (reason)
    ERROR = "error"


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


# --- records --------------------------------------------------------------------------


@dataclass
class CallRecord:
    """What the log stores and the socket returns (DESIGN.md section 4).

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "callId": self.callId, "provider": self.provider, "providerCallId": self.providerCallId,
            "direction": str(self.direction), "mode": str(self.mode), "state": str(self.state),
            "from": self.from_, "to": self.to, "startedAt": self.startedAt,
            "answeredAt": self.answeredAt, "endedAt": self.endedAt,
            "endReason": None if self.endReason is None else str(self.endReason),
            "transcript": [dict(t) for t in self.transcript], "error": self.error,
            "opening": self.opening, "openingSpoken": self.openingSpoken,
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
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


# --- actions: what the manager must do after a step ----------------------------------------

TimerKind = Literal["ring", "max-duration", "notify-hangup"]
TIMER_KINDS: tuple[TimerKind, ...] = ("ring", "max-duration", "notify-hangup")
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
class Hangup:
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


Action = Persist | Publish | Speak | Listen | StopListening | Hangup | ArmTimer | CancelTimer | Deliver | Finished


# --- the core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The numbers from the configuration the state machine needs."""

    max_duration: float = 300.0
    ring_timeout: float = 30.0
    notify_hangup_delay: float = 3.0


@dataclass(frozen=True)
class _Utterance:
    then: AfterSpeech
    turn: int | None
    entry: dict[str, Any]  # its transcript entry, marked if it never plays


_SEEN_EVENTS = 512  # remembered event ids per call; carriers retry within seconds


class Call:
    """One call's state machine. Not thread-safe: the manager serializes
    access per call. Every method returns the actions to apply."""

    def __init__(self, record: CallRecord, policy: Policy, opening: str | None = None) -> None:
        self.record = record
        self.policy = policy
        if opening is not None:
            record.opening = opening
        #: The reason the bot asked to end the call; wins over what the carrier reports next.
        self.end_requested: State | None = None
        #: Notify mode: the message finished playing.
        self.delivered = False
        self.turns = 0
        self._utterance_seq = 0
        self._utterances: dict[str, _Utterance] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    @property
    def id(self) -> str:
        return self.record.callId

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def terminal(self) -> bool:
        return self.record.state in TERMINAL

    @property
    def opening(self) -> str | None:
        """What to say once the callee answers (the message, or the inbound greeting)."""
        return self.record.opening

    @property
    def opening_spoken(self) -> bool:
        return self.record.openingSpoken

    @opening_spoken.setter
    def opening_spoken(self, value: bool) -> None:
        self.record.openingSpoken = value

    # -- helpers --

    def _advance(self, new: State, out: list[Action]) -> bool:
        old = self.record.state
        if old == new or not can_transition(old, new):
            return False
        self.record.state = new
        out.append(Publish("call.state", {"from": str(old), "to": str(new)}))
        return True

    def _remember(self, event_id: str) -> bool:
        """False if the event was seen before."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > _SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True

    def _add_transcript(self, speaker: str, text: str, now_ms: int, out: list[Action],
                        extra: dict[str, Any] | None = None) -> None:
        entry = {"timestamp": now_ms, "speaker": speaker, "text": text, "isFinal": True, **(extra or {})}
        self.record.transcript.append(entry)
        out.append(Publish("call.transcript", {k: v for k, v in entry.items() if k != "timestamp"}))

    # -- lifecycle --

    def start(self) -> list[Action]:
        """A new outbound call was created (before the carrier is asked)."""
        out: list[Action] = [Persist()]
        if self.record.direction == Direction.OUTBOUND:
            out.append(ArmTimer("ring", self.policy.ring_timeout))
        return out

    def finish(self, reason: State, now_ms: int, error: str | None = None) -> list[Action]:
        """Make the call terminal with ``reason`` (unless it already is)."""
        if self.terminal:
            return []
        if reason not in TERMINAL:
            raise ValueError(f"not an end reason: {reason}")
        out: list[Action] = []
        self._advance(reason, out)
        self.record.endReason = reason
        self.record.endedAt = now_ms
        if error and not self.record.error:
            self.record.error = error
        self._utterances.clear()
        out += [CancelTimer(k) for k in TIMER_KINDS]
        out += [Persist(), Publish("call.ended", {"reason": str(reason)}), Finished(reason)]
        return out

    def request_end(self, reason: State) -> list[Action]:
        """The bot wants the call over: hang up at the carrier, which then
        reports it ended; ``reason`` is what the record will say."""
        if self.terminal:
            return []
        if self.end_requested is None:
            self.end_requested = reason
        return [Hangup(self.end_requested)]

    def fail(self, error: str) -> list[Action]:
        """Something went wrong on our side: the call ends as ``error``."""
        if self.terminal:
            return []
        if not self.record.error:
            self.record.error = error
        return self.request_end(State.ERROR)

    def hangup_failed(self) -> None:
        """The carrier refused the hangup; a later request may choose anew."""
        self.end_requested = None

    # -- commands --

    def speak(self, text: str, now_ms: int, then: AfterSpeech = None, turn: int | None = None) -> list[Action]:
        if self.state not in CONNECTED:
            what = "has ended" if self.terminal else "is not connected yet"
            raise NotConnected(f"call {self.id} {what} (state {self.state}); it cannot speak",
                               {"callId": self.id, "state": str(self.state)})
        out: list[Action] = []
        self._utterance_seq += 1
        utterance_id = f"u{self._utterance_seq}"
        self._add_transcript("bot", text, now_ms, out)
        self._utterances[utterance_id] = _Utterance(then, turn, self.record.transcript[-1])
        self._advance(State.SPEAKING, out)
        out += [Persist(), Speak(text, utterance_id, then, turn)]
        return out

    def speak_failed(self, utterance_id: str) -> list[Action]:
        """The carrier refused an utterance: the transcript says so, and the
        call does not wait for it to play."""
        utterance = self._utterances.pop(utterance_id, None)
        if utterance is None or self.terminal:
            return []
        utterance.entry["undelivered"] = True
        out: list[Action] = [Persist()]
        self._idle_after_speech(out)
        return out

    def _idle_after_speech(self, out: list[Action]) -> None:
        """In a conversation, once the bot has nothing left to say it is
        listening to the callee again."""
        if not self._utterances and self.record.mode == Mode.CONVERSATION and self._advance(State.LISTENING, out):
            out.append(Persist())

    def say_goodbye(self, text: str, now_ms: int, reason: State = State.HANGUP_BOT) -> list[Action]:
        """Speak a last message, then hang up once it has played (after the
        notify hangup delay, as in notify mode). The bot chose to end the
        call, so it ends as ``reason`` whoever hangs up first."""
        actions = self.speak(text, now_ms, then="hangup")
        if self.end_requested is None:
            self.end_requested = reason
        return [*actions, StopListening()]

    def begin_turn(self, text: str, now_ms: int) -> list[Action]:
        """``continue``: speak, then listen for the callee's reply."""
        actions = self.speak(text, now_ms, then="listen", turn=self.turns + 1)
        self.turns += 1
        return actions

    def timer_fired(self, kind: TimerKind) -> list[Action]:
        if kind == "ring" and self.state in (State.INITIATED, State.RINGING):
            return self.request_end(State.NO_ANSWER)
        if kind == "max-duration":
            return self.request_end(State.TIMEOUT)
        if kind == "notify-hangup":
            return self.request_end(State.COMPLETED)
        return []

    def _on_interrupted(self, event: CallEvent, now_ms: int) -> list[Action]:
        """Barge-in: the callee spoke over the bot. The media layer dropped the
        queued audio and reports each dropped utterance as played."""
        for entry in reversed(self.record.transcript):
            if entry["speaker"] == "bot":
                if entry.get("interrupted"):
                    return []
                entry["interrupted"] = True
                return [Persist(), Publish("call.transcript", {"speaker": "bot", "text": entry["text"],
                                                               "isFinal": True, "interrupted": True})]
        return []

    # -- events --

    def handle(self, event: CallEvent, now_ms: int) -> list[Action]:
        if self.terminal or not self._remember(event.id):
            return []
        handler = _HANDLERS[event.type]
        return handler(self, event, now_ms)

    def _on_progress(self, event: CallEvent, now_ms: int) -> list[Action]:
        target = {EventType.INITIATED: State.INITIATED, EventType.RINGING: State.RINGING,
                  EventType.ACTIVE: State.ACTIVE, EventType.SPEAKING: State.SPEAKING}[event.type]
        out: list[Action] = []
        if self._advance(target, out):
            out.append(Persist())
        return out

    def _on_answered(self, event: CallEvent, now_ms: int) -> list[Action]:
        return self.answered(now_ms, self.policy.max_duration)

    def answered(self, now_ms: int, max_duration_left: float) -> list[Action]:
        """The callee picked up: from a carrier event, or, after a restart,
        because the carrier says the call was answered meanwhile (then only
        the remaining time is armed). The ring deadline no longer applies;
        the opening is spoken unless it already was."""
        out: list[Action] = []
        if not self._advance(State.ANSWERED, out):
            return out
        if self.record.answeredAt is None:
            self.record.answeredAt = now_ms
        out += [CancelTimer("ring"), ArmTimer("max-duration", max_duration_left), Persist()]
        if self.opening and not self.opening_spoken:
            self.opening_spoken = True
            then: AfterSpeech = "hangup" if self.record.mode == Mode.NOTIFY else "listen"
            out += self.speak(self.opening, now_ms, then=then)
        elif not self.opening:
            self._advance(State.ACTIVE, out)
        return out

    def _on_played(self, event: CallEvent, now_ms: int) -> list[Action]:
        utterance = self._utterances.pop(event.utterance_id or "", None)
        if utterance is None:
            return []
        out: list[Action] = []
        if utterance.then == "hangup":
            self.delivered = True
            out.append(ArmTimer("notify-hangup", self.policy.notify_hangup_delay))
        else:
            # Later utterances may still be queued; the state says "listening"
            # only once the bot has nothing left to say.
            self._idle_after_speech(out)
            if utterance.then == "listen":
                out.append(Listen(utterance.turn))
        return out

    def _on_speech(self, event: CallEvent, now_ms: int) -> list[Action]:
        text = event.transcript.strip()
        out: list[Action] = []
        if not text:
            return out
        if not event.is_final:
            out.append(Publish("call.transcript", {"speaker": "user", "text": text, "isFinal": False}))
            return out
        extra = {} if event.confidence is None else {"confidence": event.confidence}
        self._add_transcript("user", text, now_ms, out, extra)
        if self.state == State.SPEAKING and not self._utterances:
            self._advance(State.LISTENING, out)
        out += [Persist(), Deliver(text, event.confidence)]
        return out

    def _on_dtmf(self, event: CallEvent, now_ms: int) -> list[Action]:
        return [Publish("call.dtmf", {"digits": event.digits})] if event.digits else []

    def _on_ended(self, event: CallEvent, now_ms: int) -> list[Action]:
        reason = event.reason if event.reason in TERMINAL else State.COMPLETED
        if self.end_requested is not None:
            reason = self.end_requested
        elif (self.record.mode == Mode.NOTIFY and self.delivered
              and reason in (State.HANGUP_USER, State.COMPLETED)):
            reason = State.COMPLETED
        return self.finish(reason, now_ms, error=event.message or None)

    def _on_error(self, event: CallEvent, now_ms: int) -> list[Action]:
        if event.message and not self.record.error:
            self.record.error = event.message
        return self.request_end(State.ERROR)


_HANDLERS = {
    EventType.INITIATED: Call._on_progress,
    EventType.RINGING: Call._on_progress,
    EventType.ACTIVE: Call._on_progress,
    EventType.SPEAKING: Call._on_progress,
    EventType.ANSWERED: Call._on_answered,
    EventType.PLAYED: Call._on_played,
    EventType.SPEECH: Call._on_speech,
    EventType.DTMF: Call._on_dtmf,
    EventType.ENDED: Call._on_ended,
    EventType.ERROR: Call._on_error,
    EventType.INTERRUPTED: Call._on_interrupted,
}
