"""The call lifecycle: one table of (state, input) -> (next state, actions).

In the manner of h11's state machine: inputs go in (a carrier event, a
command, a timer), the call's new state and a list of actions come out.
Nothing here reads a clock, takes a lock, touches a socket or a file; the
manager does all of that when it applies the actions, so the lifecycle is
tested by tables of cases. ``docs/lifecycle.rst`` and the CALL STATES
section of voicecalld(8) are rendered from ``TABLE`` (lifecycle_doc.py).

Reading the table: a row is ``states, input [guard] -> next: steps``. For a
call in one of ``states`` that receives ``input``, the first row whose guard
holds applies (a row without a guard always holds); its steps run in order,
and ``MOVE`` is where the call enters ``next``, publishing ``call.state``
(nothing, when it is there already). Three rules say the rest:

* A terminal call takes no input.
* Where no row applies, a carrier event or a timer changes nothing, and a
  command (speak, continue, goodbye) is refused: the call is not connected.
* The same carrier event (by its id) counts once: carriers retry webhooks.

What the state alone does not say, the guards read from three flags:

* ``record.openingSpoken``: the opening (the outbound message, or the
  inbound greeting) was said; it is in the log, so a restarted daemon
  neither repeats it nor forgets it.
* ``Call.chosen_end``: the end reason the bot chose (end, goodbye, a
  deadline, an error); it wins over whatever the carrier reports next, and
  a carrier that refuses the hang-up clears it.
* ``Call.delivered``: an utterance that ends the call (the notification)
  has played to its end, so a callee who hangs up after it leaves the call
  ``completed``, not ``hangup-user``.

The methods of ``Call`` are the handlers for what a table cannot say: they
turn a raw event or command into a table input with its data (which
utterance played, what was said, which reason), drop what carries nothing
(an empty transcript, a repeated event), and number utterances and turns.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .calls import (
    CONNECTED,
    TERMINAL,
    TIMER_KINDS,
    Action,
    AfterSpeech,
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
    Publish,
    Speak,
    State,
    StopListening,
    TimerKind,
    can_transition,
)
from .errors import NotConnected


class Input(enum.StrEnum):
    """The table's inputs: carrier events, commands and timers."""

    # From the carrier (or the media stream, or the mock).
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"                        # playback of an utterance started
    PLAYED = "played"                            # ... and finished
    PLAYED_THEN_LISTEN = "played, then listen"   # a continue's question, or a greeting
    PLAYED_THEN_HANG_UP = "played, then hang up"  # the notification, or a goodbye
    PARTIAL = "partial speech"
    SPEECH = "speech"                            # a final transcript
    INTERRUPTED = "interrupted"                  # the callee spoke over the bot
    DTMF = "dtmf"
    ENDED = "ended"
    ERROR = "error"                              # a carrier or media error, or our own
    # From the manager.
    CREATED = "created"
    OPENING = "opening"                          # follows answered, in the same step
    SPEAK = "speak"
    CONTINUE = "continue"
    GOODBYE = "goodbye"
    SPEAK_REFUSED = "speak refused"
    END = "end"
    HANG_UP_REFUSED = "hang-up refused"
    CLOSE = "close"                              # without the carrier: failed, restored, stuck
    # Deadlines.
    RING_TIMER = "ring timer"
    MAX_DURATION_TIMER = "max-duration timer"
    NOTIFY_HANGUP_TIMER = "notify-hangup timer"


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


@dataclass(frozen=True)
class Step:
    label: str
    run: Callable[[Call, Data], list[Action]]


@dataclass(frozen=True)
class Guard:
    label: str
    holds: Callable[[Call, Data], bool]


@dataclass(frozen=True)
class Target:
    """A next state chosen when the row applies."""

    label: str
    pick: Callable[[Call, Data], State]


Next = State | Target


@dataclass(frozen=True)
class Row:
    states: tuple[State, ...]
    input: Input
    guard: Guard | None
    next: Next
    steps: tuple[Step, ...]


def _row(states: State | tuple[State, ...], input_: Input, guard: Guard | None, next_: Next,
         *steps: Step) -> Row:
    return Row(states if isinstance(states, tuple) else (states,), input_, guard, next_, steps)


# --- steps ---------------------------------------------------------------------------------


def _none(fn: Callable[[Call, Data], object]) -> Callable[[Call, Data], list[Action]]:
    """A step that only changes the call, emitting nothing."""
    def run(call: Call, data: Data) -> list[Action]:
        fn(call, data)
        return []
    return run


def hang_up(reason: State | None) -> Step:
    """Ask the carrier to hang up, ending as the reason chosen first
    (``reason``, or the input's when None)."""
    def run(call: Call, data: Data) -> list[Action]:
        chosen = reason or data.reason
        if call.chosen_end is None and chosen is not None:
            call.chosen_end = chosen
        return [] if call.chosen_end is None else [HangUp(call.chosen_end)]
    return Step(f"hang up ({reason})" if reason else "hang up", run)


def _close(call: Call, data: Data) -> list[Action]:
    record = call.record
    record.endReason = record.state
    record.endedAt = data.now_ms
    if data.error and not record.error:
        record.error = data.error
    call.forget_utterances()
    return [*(CancelTimer(k) for k in TIMER_KINDS), Persist(),
            Publish("call.ended", {"reason": str(record.state)}), Finished(record.state)]


def _opening(call: Call, data: Data) -> list[Action]:
    then: AfterSpeech = "hangup" if call.record.mode == Mode.NOTIFY else "listen"
    return call.fire(Input.OPENING, Data(data.now_ms, text=call.opening or "", then=then)) or []


def _interrupted(call: Call, data: Data) -> list[Action]:
    assert data.entry is not None
    data.entry["interrupted"] = True
    return [Publish("call.transcript", {"speaker": "bot", "text": data.entry["text"], "isFinal": True,
                                        "interrupted": True})]


def _mark_undelivered(call: Call, data: Data) -> None:
    assert data.entry is not None
    data.entry["undelivered"] = True


def _set_opening_spoken(call: Call, data: Data) -> None:
    call.record.openingSpoken = True


def _stamp_answered(call: Call, data: Data) -> None:
    if call.record.answeredAt is None:
        call.record.answeredAt = data.now_ms


def _set_delivered(call: Call, data: Data) -> None:
    call.delivered = True


def _clear_chosen_end(call: Call, data: Data) -> None:
    call.chosen_end = None


def _choose_end(call: Call, data: Data) -> None:
    if call.chosen_end is None:
        call.chosen_end = data.reason


def _note_error(call: Call, data: Data) -> None:
    if data.error and not call.record.error:
        call.record.error = data.error


MOVE = Step("move", lambda call, data: [])  # where the call enters the row's next state
PERSIST = Step("persist", lambda call, data: [Persist()])
ARM_RING = Step("arm ring", lambda call, data: [ArmTimer("ring", call.policy.ring_timeout)])
CANCEL_RING = Step("cancel ring", lambda call, data: [CancelTimer("ring")])
ARM_MAX_DURATION = Step("arm max-duration", lambda call, data: [ArmTimer("max-duration", data.duration)])
ARM_NOTIFY_HANGUP = Step("arm notify-hangup",
                         lambda call, data: [ArmTimer("notify-hangup", call.policy.notify_hangup_delay)])
STAMP_ANSWERED = Step("stamp answeredAt", _none(_stamp_answered))
OPENING = Step("opening", _opening)
MARK_OPENING_SPOKEN = Step("mark the opening spoken", _none(_set_opening_spoken))
BOT_LINE = Step("note the bot's line", lambda call, data: call.note_bot_line(data))
SPEAK = Step("speak",
             lambda call, data: [Speak(data.text, data.utterance_id, data.then, data.turn)])
LISTEN = Step("listen", lambda call, data: [Listen(data.turn)])
STOP_LISTENING = Step("stop listening", lambda call, data: [StopListening()])
MARK_DELIVERED = Step("mark delivered", _none(_set_delivered))
MARK_UNDELIVERED = Step("mark the line undelivered", _none(_mark_undelivered))
CALLEE_LINE = Step("note the callee's line", lambda call, data: call.note_callee_line(data))
DELIVER = Step("deliver", lambda call, data: [Deliver(data.text, data.confidence)])
PUBLISH_PARTIAL = Step("publish the partial", lambda call, data: [
    Publish("call.transcript", {"speaker": "user", "text": data.text, "isFinal": False})])
MARK_INTERRUPTED = Step("mark the line interrupted", _interrupted)
PUBLISH_DTMF = Step("publish the digits", lambda call, data: [Publish("call.dtmf", {"digits": data.digits})])
CHOOSE_END = Step("choose the end reason", _none(_choose_end))
FORGET_END = Step("forget the chosen end", _none(_clear_chosen_end))
NOTE_ERROR = Step("note the error", _none(_note_error))
HANG_UP = hang_up(None)
CLOSE = Step("close", _close)

#: What ``CLOSE`` does, for the docs.
CLOSE_MEANS = ("stamp endReason and endedAt, cancel every timer, persist, publish call.ended, "
               "free the call's slot")

# --- guards and targets ---------------------------------------------------------------------

OUTBOUND = Guard("outbound", lambda call, data: call.record.direction == Direction.OUTBOUND)
OPENING_UNSAID = Guard("an opening not yet said", lambda call, data: bool(call.opening) and not call.opening_spoken)
NO_OPENING = Guard("no opening", lambda call, data: not call.opening)
IDLE = Guard("a conversation with nothing left to say",
             lambda call, data: call.record.mode == Mode.CONVERSATION and not call.pending)
QUIET = Guard("nothing left to say", lambda call, data: not call.pending)
END_CHOSEN = Guard("the bot chose the end", lambda call, data: call.chosen_end is not None)
DELIVERED = Guard("notify, delivered, the callee hung up",
                  lambda call, data: call.record.mode == Mode.NOTIFY and call.delivered
                  and data.reason in (State.HANGUP_USER, State.COMPLETED))

SAME = Target("=", lambda call, data: call.state)
CHOSEN = Target("the chosen reason", lambda call, data: call.chosen_end or State.ERROR)
CARRIERS = Target("the carrier's reason", lambda call, data: data.reason or State.COMPLETED)
GIVEN = Target("the reason given", CARRIERS.pick)

# --- the table --------------------------------------------------------------------------------

S = State
ANY: tuple[State, ...] = tuple(s for s in State if s not in TERMINAL)
UNANSWERED = (S.INITIATED, S.RINGING)
CONNECTED_STATES: tuple[State, ...] = tuple(s for s in State if s in CONNECTED)
NOT_LISTENING = (S.ANSWERED, S.ACTIVE, S.SPEAKING)

TABLE: tuple[Row, ...] = (
    # states               input                 guard           next          steps
    _row(S.INITIATED,      Input.CREATED,        OUTBOUND,       SAME,         PERSIST, ARM_RING),
    _row(S.INITIATED,      Input.CREATED,        None,           SAME,         PERSIST),
    _row(S.INITIATED,      Input.RINGING,        None,           S.RINGING,    MOVE, PERSIST),
    _row(UNANSWERED,       Input.ANSWERED,       None,           S.ANSWERED,   MOVE, STAMP_ANSWERED, CANCEL_RING,
                                                                               ARM_MAX_DURATION, PERSIST, OPENING),
    _row(S.ANSWERED,       Input.OPENING,        OPENING_UNSAID, S.SPEAKING,   MARK_OPENING_SPOKEN, BOT_LINE, MOVE,
                                                                               PERSIST, SPEAK),
    _row(S.ANSWERED,       Input.OPENING,        NO_OPENING,     S.ACTIVE,     MOVE),
    _row((*UNANSWERED, S.ANSWERED), Input.ACTIVE, None,          S.ACTIVE,     MOVE, PERSIST),
    _row((S.ANSWERED, S.ACTIVE, S.LISTENING), Input.SPEAKING, None, S.SPEAKING, MOVE, PERSIST),
    _row(CONNECTED_STATES, Input.SPEAK,          None,           S.SPEAKING,   BOT_LINE, MOVE, PERSIST, SPEAK),
    _row(CONNECTED_STATES, Input.CONTINUE,       None,           S.SPEAKING,   BOT_LINE, MOVE, PERSIST, SPEAK),
    _row(CONNECTED_STATES, Input.GOODBYE,        None,           S.SPEAKING,   CHOOSE_END, BOT_LINE, MOVE, PERSIST,
                                                                               SPEAK, STOP_LISTENING),
    _row(CONNECTED_STATES, Input.PLAYED_THEN_HANG_UP, None,      SAME,         MARK_DELIVERED, ARM_NOTIFY_HANGUP),
    _row(NOT_LISTENING,    Input.PLAYED_THEN_LISTEN, IDLE,       S.LISTENING,  MOVE, PERSIST, LISTEN),
    _row(CONNECTED_STATES, Input.PLAYED_THEN_LISTEN, None,       SAME,         LISTEN),
    _row(NOT_LISTENING,    Input.PLAYED,         IDLE,           S.LISTENING,  MOVE, PERSIST),
    _row(NOT_LISTENING,    Input.SPEAK_REFUSED,  IDLE,           S.LISTENING,  MARK_UNDELIVERED, MOVE, PERSIST),
    _row(CONNECTED_STATES, Input.SPEAK_REFUSED,  None,           SAME,         MARK_UNDELIVERED, PERSIST),
    _row(ANY,              Input.PARTIAL,        None,           SAME,         PUBLISH_PARTIAL),
    _row(S.SPEAKING,       Input.SPEECH,         QUIET,          S.LISTENING,  CALLEE_LINE, MOVE, PERSIST, DELIVER),
    _row(ANY,              Input.SPEECH,         None,           SAME,         CALLEE_LINE, PERSIST, DELIVER),
    _row(ANY,              Input.INTERRUPTED,    None,           SAME,         MARK_INTERRUPTED, PERSIST),
    _row(ANY,              Input.DTMF,           None,           SAME,         PUBLISH_DTMF),
    _row(UNANSWERED,       Input.RING_TIMER,     None,           SAME,         hang_up(S.NO_ANSWER)),
    _row(ANY,              Input.MAX_DURATION_TIMER, None,       SAME,         hang_up(S.TIMEOUT)),
    _row(ANY,              Input.NOTIFY_HANGUP_TIMER, None,      SAME,         hang_up(S.COMPLETED)),
    _row(ANY,              Input.END,            None,           SAME,         HANG_UP),
    _row(ANY,              Input.ERROR,          None,           SAME,         NOTE_ERROR, hang_up(S.ERROR)),
    _row(ANY,              Input.HANG_UP_REFUSED, None,          SAME,         FORGET_END),
    _row(ANY,              Input.ENDED,          END_CHOSEN,     CHOSEN,       MOVE, CLOSE),
    _row(ANY,              Input.ENDED,          DELIVERED,      S.COMPLETED,  MOVE, CLOSE),
    _row(ANY,              Input.ENDED,          None,           CARRIERS,     MOVE, CLOSE),
    _row(ANY,              Input.CLOSE,          None,           GIVEN,        MOVE, CLOSE),
)


def _index(table: tuple[Row, ...]) -> dict[tuple[State, Input], tuple[Row, ...]]:
    """Rows by (state, input), in table order; checks that every row keeps
    to ``TRANSITIONS`` and marks where it moves."""
    index: dict[tuple[State, Input], tuple[Row, ...]] = {}
    for row in table:
        if (MOVE in row.steps) == (row.next is SAME):
            raise AssertionError(f"{row}: a row moves (MOVE) exactly when its next state is not '='")
        for state in row.states:
            if isinstance(row.next, State) and row.next != state and not can_transition(state, row.next):
                raise AssertionError(f"{row}: {state} may not move to {row.next}")
            index[(state, row.input)] = (*index.get((state, row.input), ()), row)
    return index


_ROWS = _index(TABLE)


# --- the machine --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The numbers from the configuration the lifecycle needs."""

    max_duration: float = 300.0
    ring_timeout: float = 30.0
    notify_hangup_delay: float = 3.0


@dataclass(frozen=True)
class _Utterance:
    then: AfterSpeech
    turn: int | None
    entry: dict[str, Any]  # its transcript entry, marked if it never plays


_SEEN_EVENTS = 512  # remembered event ids per call; carriers retry within seconds

#: Carrier events that report progress, and the input each is.
_PROGRESS = {EventType.RINGING: Input.RINGING, EventType.ACTIVE: Input.ACTIVE,
             EventType.SPEAKING: Input.SPEAKING}
_PLAYED = {None: Input.PLAYED, "listen": Input.PLAYED_THEN_LISTEN, "hangup": Input.PLAYED_THEN_HANG_UP}
_TIMERS: dict[TimerKind, Input] = {"ring": Input.RING_TIMER, "max-duration": Input.MAX_DURATION_TIMER,
                                   "notify-hangup": Input.NOTIFY_HANGUP_TIMER}


class Call:
    """One call's lifecycle. Not thread-safe: the manager serializes access
    per call. Every method returns the actions to apply."""

    record: CallRecord
    policy: Policy
    chosen_end: State | None
    delivered: bool

    def __init__(self, record: CallRecord, policy: Policy, opening: str | None = None) -> None:
        self.record = record
        self.policy = policy
        if opening is not None:
            record.opening = opening
        #: The end reason the bot chose; wins over what the carrier reports next.
        self.chosen_end: State | None = None
        #: An utterance that ends the call has played to its end.
        self.delivered = False
        self.turns = 0
        self._utterance_seq = 0
        self._utterances: dict[str, _Utterance] = {}  # said, not yet played
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

    @property
    def pending(self) -> bool:
        """The bot has said something that has not played yet."""
        return bool(self._utterances)

    # -- the table --

    def fire(self, input_: Input, data: Data) -> list[Action] | None:
        """Apply the row for ``input_`` in the current state; None if no row applies."""
        if self.terminal:
            return None
        for row in _ROWS.get((self.state, input_), ()):
            if row.guard is None or row.guard.holds(self, data):
                return self._apply(row, data)
        return None

    def _apply(self, row: Row, data: Data) -> list[Action]:
        new = row.next if isinstance(row.next, State) else row.next.pick(self, data)
        out: list[Action] = []
        for step in row.steps:
            if step is MOVE:
                old = self.record.state
                if new != old:
                    self.record.state = new
                    out.append(Publish("call.state", {"from": str(old), "to": str(new)}))
            else:
                out += step.run(self, data)
        return out

    def _on(self, input_: Input, data: Data) -> list[Action]:
        return self.fire(input_, data) or []

    def _command(self, input_: Input, data: Data) -> list[Action]:
        actions = self.fire(input_, data)
        if actions is None:
            what = "has ended" if self.terminal else "is not connected yet"
            raise NotConnected(f"call {self.id} {what} (state {self.state}); it cannot speak",
                               {"callId": self.id, "state": str(self.state)})
        return actions

    # -- what steps do to the transcript --

    def note_bot_line(self, data: Data) -> list[Action]:
        """The bot says ``data.text``: a new utterance, waiting to play."""
        self._utterance_seq += 1
        data.utterance_id = f"u{self._utterance_seq}"
        out = self._add_line("bot", data.text, data.now_ms)
        self._utterances[data.utterance_id] = _Utterance(data.then, data.turn, self.record.transcript[-1])
        return out

    def note_callee_line(self, data: Data) -> list[Action]:
        extra = {} if data.confidence is None else {"confidence": data.confidence}
        return self._add_line("user", data.text, data.now_ms, extra)

    def _add_line(self, speaker: str, text: str, now_ms: int, extra: dict[str, Any] | None = None) -> list[Action]:
        entry = {"timestamp": now_ms, "speaker": speaker, "text": text, "isFinal": True, **(extra or {})}
        self.record.transcript.append(entry)
        return [Publish("call.transcript", {k: v for k, v in entry.items() if k != "timestamp"})]

    def forget_utterances(self) -> None:
        self._utterances.clear()

    # -- commands --

    def start(self) -> list[Action]:
        """A new call was created (for an outbound one, before the carrier is asked)."""
        return self._on(Input.CREATED, Data(0))

    def speak(self, text: str, now_ms: int, then: AfterSpeech = None, turn: int | None = None) -> list[Action]:
        return self._command(Input.SPEAK, Data(now_ms, text=text, then=then, turn=turn))

    def begin_turn(self, text: str, now_ms: int) -> list[Action]:
        """``continue``: speak, then listen for the callee's reply."""
        actions = self._command(Input.CONTINUE, Data(now_ms, text=text, then="listen", turn=self.turns + 1))
        self.turns += 1
        return actions

    def say_goodbye(self, text: str, now_ms: int, reason: State = State.HANGUP_BOT) -> list[Action]:
        """Speak a last message, then hang up once it has played (after the
        notify hangup delay, as in notify mode). The bot chose to end the
        call, so it ends as ``reason`` whoever hangs up first."""
        return self._command(Input.GOODBYE, Data(now_ms, text=text, then="hangup", reason=reason))

    def speak_refused(self, utterance_id: str) -> list[Action]:
        """The carrier refused an utterance: the transcript says so, and the
        call does not wait for it to play."""
        utterance = self._utterances.pop(utterance_id, None)
        if utterance is None:
            return []
        return self._on(Input.SPEAK_REFUSED, Data(0, entry=utterance.entry))

    def end(self, reason: State) -> list[Action]:
        """The bot wants the call over: hang up at the carrier, which then
        reports it ended; ``reason`` is what the record will say."""
        return self._on(Input.END, Data(0, reason=reason))

    def fail(self, error: str) -> list[Action]:
        """Something went wrong on our side: the call ends as ``error``."""
        return self._on(Input.ERROR, Data(0, error=error))

    def hang_up_refused(self) -> list[Action]:
        """The carrier refused the hang-up; a later request may choose anew."""
        return self._on(Input.HANG_UP_REFUSED, Data(0))

    def finish(self, reason: State, now_ms: int, error: str | None = None) -> list[Action]:
        """Close the call as ``reason`` (unless it is over already), without the carrier."""
        if reason not in TERMINAL:
            raise ValueError(f"not an end reason: {reason}")
        return self._on(Input.CLOSE, Data(now_ms, reason=reason, error=error))

    def answered(self, now_ms: int, max_duration_left: float) -> list[Action]:
        """The callee picked up: from a carrier event, or, after a restart,
        because the carrier says the call was answered meanwhile (then only
        the remaining time is armed)."""
        return self._on(Input.ANSWERED, Data(now_ms, duration=max_duration_left))

    def timer_fired(self, kind: TimerKind) -> list[Action]:
        return self._on(_TIMERS[kind], Data(0))

    # -- carrier events --

    def handle(self, event: CallEvent, now_ms: int) -> list[Action]:
        if self.terminal or not self._remember(event.id):
            return []
        data = Data(now_ms)
        kind = event.type
        if kind in _PROGRESS:
            return self._on(_PROGRESS[kind], data)
        if kind == EventType.ANSWERED:
            return self.answered(now_ms, self.policy.max_duration)
        if kind == EventType.PLAYED:
            utterance = self._utterances.pop(event.utterance_id or "", None)
            if utterance is None:
                return []
            data.turn = utterance.turn
            return self._on(_PLAYED[utterance.then], data)
        if kind == EventType.SPEECH:
            data.text, data.confidence = event.transcript.strip(), event.confidence
            if not data.text:
                return []
            return self._on(Input.SPEECH if event.is_final else Input.PARTIAL, data)
        if kind == EventType.INTERRUPTED:
            data.entry = self._last_bot_line()
            return [] if data.entry is None else self._on(Input.INTERRUPTED, data)
        if kind == EventType.DTMF:
            data.digits = event.digits
            return self._on(Input.DTMF, data) if event.digits else []
        if kind == EventType.ENDED:
            data.reason = event.reason if event.reason in TERMINAL else State.COMPLETED
            data.error = event.message or None
            return self._on(Input.ENDED, data)
        if kind == EventType.ERROR:
            data.error = event.message or None
            return self._on(Input.ERROR, data)
        return []  # initiated: a call starts there, it never moves back

    def _last_bot_line(self) -> dict[str, Any] | None:
        """The bot's last line, unless a barge-in marked it already."""
        for entry in reversed(self.record.transcript):
            if entry["speaker"] == "bot":
                return None if entry.get("interrupted") else entry
        return None

    def _remember(self, event_id: str) -> bool:
        """False if the event was seen before."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > _SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True
