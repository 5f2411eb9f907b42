"""The call lifecycle: one table of (state, input) -> (next state, actions).

The table itself is ``lifecycle_table.TABLE``; this module is the machine
that runs it.

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

What the state alone does not say, the guards read from five flags:

* ``record.openingSpoken``: the opening (the outbound message, or the
  inbound greeting) was said; it is in the log, so a restarted daemon
  neither repeats it nor forgets it.
* ``Call.chosen_end``: the end reason the bot chose (end, goodbye, a
  deadline, an error); it wins over whatever the carrier reports next, and
  a carrier that refuses the hang-up clears it.
* ``Call.delivered``: an utterance that ends the call (the notification)
  has played to its end, so a callee who hangs up after it leaves the call
  ``completed``, not ``hangup-user``.
* ``Call.greeting_over``: an answering machine's greeting ended (the
  beep), so with ``outbound.voicemail = leave-message`` the message is due.
* ``Call.transferring``: the number a transfer under way hands the call
  to; a second transfer waits for the first to end.

The methods of ``Call`` are the handlers for what a table cannot say: they
turn a raw event or command into a table input with its data (which
utterance played, what was said, which reason), drop what carries nothing
(an empty transcript, a repeated event), and number utterances and turns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import calls
from .calls import (
    ANSWERED_BY,
    TERMINAL,
    Action,
    AfterSpeech,
    CallEvent,
    CallRecord,
    EventType,
    Policy,
    Publish,
    State,
    TimerKind,
)
from .errors import NotConnected, TurnInProgress
from .lifecycle_steps import (
    MOVE,
    SAME,
    Data,
    Input,
    Row,
)
from .lifecycle_table import ROWS
from .lru import Bounded
from .utterances import Utterance, barge_in_cuts, join_line

# --- the machine --------------------------------------------------------------------------------


_RECENT_UTTERANCES = 64  # remembered after playing, for a barge-in's bookkeeping


_SEEN_EVENTS = 512  # remembered event ids per call; carriers retry within seconds

#: Carrier events that report progress, and the input each is.
_PROGRESS = {EventType.RINGING: Input.RINGING, EventType.ACTIVE: Input.ACTIVE,
             EventType.SPEAKING: Input.SPEAKING}
_PLAYED = {None: Input.PLAYED, "listen": Input.PLAYED_THEN_LISTEN, "hangup": Input.PLAYED_THEN_HANG_UP}
_TIMERS: dict[TimerKind, Input] = {"ring": Input.RING_TIMER, "max-duration": Input.MAX_DURATION_TIMER,
                                   "notify-hangup": Input.NOTIFY_HANGUP_TIMER,
                                   "detection": Input.DETECTION_TIMER}


class Call:
    """One call's lifecycle. Not thread-safe: the manager serializes access
    per call. Every method returns the actions to apply."""

    # Declared here for the steps and guards (lifecycle_steps.Machine).
    record: CallRecord
    policy: Policy
    chosen_end: State | None  # the end reason the bot chose; wins over the carrier's
    delivered: bool           # an utterance that ends the call has played
    greeting_over: bool       # an answering machine's greeting ended (the beep)
    transferring: str | None  # the target of a transfer under way

    def __init__(self, record: CallRecord, policy: Policy, opening: str | None = None) -> None:
        self.record = record
        self.policy = policy
        if opening is not None:
            record.opening = opening
        self.chosen_end = None
        self.delivered = False
        self.greeting_over = False
        self.transferring = None
        self.turns = 0
        self._utterance_seq = 0
        self._utterances: dict[str, Utterance] = {}  # said, not yet played
        self._recent: Bounded[str, Utterance] = Bounded(_RECENT_UTTERANCES)  # said lately, played or not
        self._seen: Bounded[str, None] = Bounded(_SEEN_EVENTS)

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
    def pending(self) -> bool:
        """The bot has said something that has not played yet."""
        return bool(self._utterances)

    # -- the table --

    def fire(self, input_: Input, data: Data) -> list[Action] | None:
        """Apply the row for ``input_`` in the current state; None if no row applies."""
        if self.terminal:
            return None
        for rule in ROWS.get((self.state, input_), ()):
            if rule.guard is None or rule.guard.holds(self, data):
                return self._apply(rule, data)
        return None

    def _apply(self, rule: Row, data: Data) -> list[Action]:
        if isinstance(rule.next, State):
            new = rule.next
        else:
            new = rule.next.pick(self, data)
            if new not in TERMINAL and rule.next is not SAME:  # a picked state is an end reason
                raise ValueError(f"not an end reason: {new}")
        out: list[Action] = []
        for step in rule.steps:
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
        """The bot says ``data.text``: a new utterance, waiting to play (on the bot's line: ``joins``)."""
        self._utterance_seq += 1
        data.utterance_id = f"u{self._utterance_seq}"
        out = join_line(self.record.transcript, data.text) if data.joins else None
        out = self._add_line("bot", data.text, data.now_ms) if out is None else out
        entry = self.record.transcript[-1]
        utterance = Utterance(data.then, data.turn, entry, len(entry["text"]) - len(data.text), len(entry["text"]))
        self._utterances[data.utterance_id] = utterance
        self._recent.put(data.utterance_id, utterance)
        return out

    def note_said(self, data: Data) -> list[Action]:
        """A line of the bot's that is not an utterance to wait for (a
        transfer's message, said by the carrier with the transfer)."""
        return self._add_line("bot", data.text, data.now_ms)

    def note_callee_line(self, data: Data) -> list[Action]:
        extra = {} if data.confidence is None else {"confidence": data.confidence}
        return self._add_line("user", data.text, data.now_ms, extra)

    def _add_line(self, speaker: str, text: str, now_ms: int, extra: dict[str, Any] | None = None) -> list[Action]:
        entry = {"timestamp": now_ms, "speaker": speaker, "text": text, "isFinal": True, **(extra or {})}
        self.record.transcript.append(entry)
        return [Publish("call.transcript", {k: v for k, v in entry.items() if k != "timestamp"})]

    def forget_utterances(self) -> None:
        self._utterances.clear()

    def hang_up_after_last(self) -> bool:
        """The last utterance waiting to play now ends the call; False if none waits."""
        last = next(reversed(self._utterances), None)
        if last is None:
            return False
        self._utterances[last] = dataclasses.replace(self._utterances[last], then="hangup")
        return True

    # -- commands --

    def start(self) -> list[Action]:
        """A new call was created (for an outbound one, before the carrier is asked)."""
        return self._on(Input.CREATED, Data(0))

    def speak(self, text: str, now_ms: int, then: AfterSpeech = None, turn: int | None = None,
              joins: bool = False) -> list[Action]:
        """Say ``text``; ``joins``: the next sentence of a reply, on the bot's line."""
        return self._command(Input.SPEAK, Data(now_ms, text=text, then=then, turn=turn, joins=joins))

    def begin_turn(self, text: str, now_ms: int) -> list[Action]:
        """``continue``: speak, then listen for the callee's reply."""
        actions = self._command(Input.CONTINUE, Data(now_ms, text=text, then="listen", turn=self.turns + 1))
        self.turns += 1
        return actions

    def say_goodbye(self, text: str, now_ms: int, reason: State = State.HANGUP_BOT, joins: bool = False
                    ) -> list[Action]:
        """Speak a last message, then hang up once it has played (after the
        notify hangup delay, as in notify mode). The bot chose to end the
        call, so it ends as ``reason`` whoever hangs up first."""
        return self._command(Input.GOODBYE, Data(now_ms, text=text, then="hangup", reason=reason, joins=joins))

    def hang_up_after_speech(self, now_ms: int, reason: State = State.HANGUP_BOT) -> list[Action]:
        """Hang up (as ``reason``) as after a goodbye, once what the bot is saying has played."""
        return self._command(Input.HANG_UP_AFTER, Data(now_ms, reason=reason))

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

    def note_turn(self, latency_ms: int, now_ms: int) -> list[Action]:
        """A reply's turn latency was measured; nothing if the call is not connected."""
        return self._on(Input.TURN, Data(now_ms, latency_ms=latency_ms))

    def timer_fired(self, kind: TimerKind) -> list[Action]:
        return self._on(_TIMERS[kind], Data(0))

    # -- dial pacing --

    def dial(self, now_ms: int) -> list[Action]:
        """A queued call's turn came: it is logged as dialled (state
        initiated), then the carrier is asked. Nothing if it is no longer
        queued (it was ended meanwhile)."""
        return self._on(Input.DIAL, Data(now_ms))

    def dial_throttled(self, now_ms: int) -> list[Action]:
        """The carrier refused the dial for its rate limit: queued again."""
        return self._on(Input.DIAL_THROTTLED, Data(now_ms))
    # -- call control --

    def send_dtmf(self, digits: str) -> list[Action]:
        """Send DTMF ``digits`` (already checked) to the callee."""
        return self._command(Input.SEND_DTMF, Data(0, digits=digits))

    def transfer(self, to: str, message: str, now_ms: int) -> list[Action]:
        """Hand the call to ``to`` (already allowed), after ``message``."""
        if self.transferring is not None and not self.terminal:
            raise TurnInProgress(f"call {self.id} is already being transferred; wait for that to finish",
                                 {"callId": self.id})
        return self._command(Input.TRANSFER, Data(now_ms, to=to, text=message))

    def transfer_failed(self, error: str) -> list[Action]:
        """The transfer did not happen: the call goes on."""
        return self._on(Input.TRANSFER_FAILED, Data(0, error=error))

    def note_recording(self, recording: dict[str, Any]) -> list[Action] | None:
        """The carrier reported a recording of the call; None once the call
        has ended (its final record is amended instead)."""
        if self.terminal:
            return None
        if any(r.get("url") == recording.get("url") for r in self.record.recordings):
            return []  # reported again (a retried webhook)
        self.record.recordings.append(dict(recording))
        return [calls.Persist(), Publish("call.recording", dict(recording))]

    # -- carrier events --

    def handle(self, event: CallEvent, now_ms: int) -> list[Action]:
        if self.terminal or not self._remember(event.id):
            return []
        data = Data(now_ms)
        kind = event.type
        if kind in _PROGRESS:  # (an utterance that played already starts no more: events may cross)
            stale = kind == EventType.SPEAKING and event.utterance_id and event.utterance_id not in self._utterances
            return [] if stale else self._on(_PROGRESS[kind], data)
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
        if kind == EventType.SAID:
            data.text = event.transcript.strip()
            return self._on(Input.SAID, data) if data.text else []
        if kind == EventType.INTERRUPTED:
            return self._interrupted(event, data)
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
        if kind == EventType.DETECTED:
            data.answered_by = event.answered_by if event.answered_by in ANSWERED_BY else "unknown"
            return self._on(Input.ANSWERED_BY, data)
        if kind == EventType.GREETING_ENDED:
            return self._on(Input.GREETING_ENDED, data)
        if kind == EventType.TRANSFERRED:
            return self._on(Input.TRANSFERRED, data)
        if kind == EventType.TRANSFER_FAILED:
            return self.transfer_failed(event.message or "the transfer failed")
        return []  # initiated: a call starts there, it never moves back

    def _interrupted(self, event: CallEvent, data: Data) -> list[Action]:
        """Barge-in: keep what was heard (``barge_in_cuts``), else mark the bot's last line."""
        heard = self._recent.get(event.utterance_id or "")
        dropped = [u for u in (self._recent.get(i) for i in event.dropped) if u is not None]
        if heard is None and not dropped:
            data.entry = self._last_bot_line()
            return [] if data.entry is None else self._on(Input.INTERRUPTED, data)
        cuts = barge_in_cuts(heard, dropped)
        data.entry = heard.entry if heard is not None else dropped[0].entry
        if data.entry.get("interrupted") and not any(at < len(e["text"]) for e, at in cuts):
            return []
        data.cuts = cuts
        return self._on(Input.INTERRUPTED, data)

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
        self._seen.put(event_id, None)
        return True
