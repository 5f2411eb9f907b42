"""The mock carrier: simulated calls with no network.

It behaves like a carrier reporting by webhook: everything it does comes
back to the engine later, as normalized events fired from the timer wheel,
through the same ``CallSink.handle_event`` path real carriers use. The callee
rings, answers after ``mock.answerDelayMs``, "hears" speech for a time
proportional to its length, answers each ``continue`` turn from
``mock.calleeReplies``, and says or hangs up whatever the ``mock.say`` /
``mock.hangup`` control methods ask for; ``mock.inbound`` places a call to
the daemon. It also plays the far end of call control: it "hears" DTMF
(``dtmf.duration`` long, after what is being said; logged), answers a
transfer after the message and ``mock.answerDelayMs`` (or reports a target
in ``mock.transferBusy`` busy), and, for a call that records, reports a
recording (``mock://recordings/<id>.wav``) just after the call ends.
The three ``mock.*`` methods are the mock's own (``control_methods``): a
daemon on a real carrier does not serve them.

Answering-machine detection is simulated as the real carriers do it (on
with ``mock.machineDetection`` or ``outbound.voicemail = leave-message``):
shortly after the answer the carrier says who answered; a number in
``mock.voicemailNumbers`` is an answering machine, whose greeting lasts
``mock.greetingMs`` and ends with a beep (reported with leave-message, as
Twilio's DetectMessageEnd and Telnyx's premium detection report it); with
``outbound.voicemail = hangup`` the carrier hangs up on a machine and the
call ends as ``voicemail``.

Like a real carrier, the simulated one outlives a daemon restart: it keeps
its calls in a small state file (``mock-carrier.json`` beside the call log),
so restart recovery can ask it about calls. An answered call is still
connected after a restart; a call that was still ringing is reported ended
as ``no-answer`` (the simulated phone stopped ringing with the process that
simulated it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..calls import CallEvent, CallRecord, EventType, SendDtmf, Speak, State, Transfer
from ..control.spec import Method, Param
from ..errors import CallNotFound, NotConnected
from ..lru import Bounded
from ..media import dtmf
from ..timers import Timer, TimerService
from .base import Capabilities, CarrierStatus, Provider

log = logging.getLogger(__name__)

RING_AFTER = 0.05     # seconds until a dialed mock phone rings
STATE_FILE = "mock-carrier.json"
_KEEP_ENDED = 64      # recently ended calls the state file remembers (older ones: "long gone")
INBOUND_ANSWER = 0.05  # seconds until the daemon's answer of an inbound call connects
DETECT_AFTER = 0.05    # seconds from the answer to the detection verdict
RECORDING_AFTER = 0.05  # seconds from the end of a call to the report of its recording


@dataclass
class _MockCall:
    call_id: str
    provider_id: str
    answered: bool = False
    ended: bool = False
    speaking_until: float = 0.0
    timers: list[Timer] = field(default_factory=list)
    reason: str | None = None  # end reason once ended
    replies: list[Timer] = field(default_factory=list)  # the callee's scheduled answers
    heard_at: float | None = None  # when the callee last finished speaking, until the bot replies
    heard_dtmf: list[str] = field(default_factory=list)  # digits the far end heard, in order
    recording_since: float | None = None  # monotonic start of the recording, if the call records


class MockProvider(Provider):
    name = "mock"
    # Telnyx's limit, the strictest real carrier's, so that what works on
    # the mock works everywhere.
    capabilities = Capabilities(max_message_chars=3000)

    def __init__(self, timers: TimerService, state_path: str | None = None) -> None:
        super().__init__()
        self._timers = timers
        self._lock = threading.Lock()
        self._calls: dict[str, _MockCall] = {}
        self._ended: Bounded[str, _MockCall] = Bounded(_KEEP_ENDED)
        self._state_path = state_path
        self._load_state()
        call_id = Param("callId", str)
        self._methods: dict[str, Method[object]] = {
            "mock.say": Method((call_id, Param("text", str)), lambda s, _, p: self._rpc_say(p)),
            "mock.hangup": Method((call_id,), lambda s, _, p: self._rpc_hangup(p)),
            "mock.inbound": Method((Param("from", str), Param("to", str, False)),
                                   lambda s, _, p: self.inbound(p["from"], p.get("to"))),
        }

    # -- the simulated carrier's own state file --

    def _load_state(self) -> None:
        if not self._state_path:
            return
        try:
            with open(self._state_path, encoding="utf-8") as fh:
                saved = json.load(fh)
            for item in saved.get("calls", []):
                mc = _MockCall(str(item["callId"]), str(item["providerId"]), answered=bool(item["answered"]),
                               ended=bool(item["ended"]), reason=item.get("reason"))
                if not mc.ended and not mc.answered:
                    mc.ended, mc.reason = True, str(State.NO_ANSWER)
                if mc.ended:
                    self._ended.put(mc.call_id, mc)
                else:
                    self._calls[mc.call_id] = mc
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("mock carrier state %s unreadable (%s); starting empty", self._state_path, exc)

    def _save_state(self) -> None:
        """Write the state file atomically (temp file, rename). Called with the lock held."""
        if not self._state_path:
            return
        ended = [mc for key in self._ended if (mc := self._ended.get(key)) is not None]
        items = [{"callId": m.call_id, "providerId": m.provider_id, "answered": m.answered, "ended": m.ended,
                  "reason": m.reason} for m in (*self._calls.values(), *ended)]
        tmp = self._state_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"calls": items}, fh)
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.warning("cannot save mock carrier state %s: %s", self._state_path, exc)

    def _end(self, mc: _MockCall, reason: State) -> list[Timer]:
        """Mark a call over (lock held); returns its timers to cancel."""
        mc.ended = True
        mc.reason = mc.reason or str(reason)
        self._calls.pop(mc.call_id, None)
        self._ended.put(mc.call_id, mc)
        pending, mc.timers = mc.timers, []
        self._save_state()
        if mc.recording_since is not None:
            self._report_recording_later(mc, time.monotonic() - mc.recording_since)
            mc.recording_since = None
        return pending

    @property
    def _mock(self) -> Any:
        return self.sink.config.mock

    def _later(self, mc: _MockCall, delay: float, type_: EventType, *, then_end: State | None = None,
               **fields: Any) -> Timer | None:
        """Report ``type_`` in ``delay`` seconds; ``then_end``: and right
        after it (in order), that the call ended for that reason."""
        event = CallEvent(type_, uuid.uuid4().hex, call_id=mc.call_id, provider_call_id=mc.provider_id,
                          **fields)

        def fire() -> None:
            if type_ == EventType.ANSWERED:
                with self._lock:
                    mc.answered = True
                    self._save_state()
            elif type_ == EventType.SPEECH:
                with self._lock:
                    mc.heard_at = time.monotonic()
            elif type_ == EventType.ENDED and event.reason is not None:
                with self._lock:
                    pending = self._end(mc, event.reason)
                for t in pending:
                    self._timers.cancel(t)
                self.emit(event)
                return
            if not mc.ended:
                self.emit(event)
                if then_end is not None:
                    with self._lock:
                        pending = self._end(mc, then_end)
                    for t in pending:
                        self._timers.cancel(t)
                    self.emit(CallEvent(EventType.ENDED, uuid.uuid4().hex, call_id=mc.call_id,
                                        provider_call_id=mc.provider_id, reason=then_end))

        with self._lock:
            if mc.ended:
                return None
            mc.timers = [t for t in mc.timers if t.active]
            timer = self._timers.call_later(delay, fire)
            mc.timers.append(timer)
            return timer

    def _get(self, call_id: str) -> _MockCall:
        with self._lock:
            mc = self._calls.get(call_id)
        if mc is None or mc.ended:
            raise CallNotFound(call_id)
        return mc

    # -- the carrier side --

    def initiate(self, record: CallRecord) -> str:
        mc = _MockCall(record.callId, "mock-" + uuid.uuid4().hex[:20])
        with self._lock:
            self._calls[record.callId] = mc
            self._save_state()
        answer_after = self._mock.answerDelayMs / 1000
        self._later(mc, 0, EventType.INITIATED)
        self._later(mc, min(RING_AFTER, answer_after / 2), EventType.RINGING)
        self._later(mc, answer_after, EventType.ANSWERED)
        self._detect(mc, record.to, answer_after)
        return mc.provider_id

    def _detect(self, mc: _MockCall, to: str, answered_after: float) -> None:
        """Answering-machine detection, if it is on: the verdict, then a
        machine's beep (leave-message) or the carrier's hang-up (hangup)."""
        cfg = self.sink.config
        leave = cfg.outbound.voicemail == "leave-message"
        if not (leave or self._mock.machineDetection):
            return
        machine = to in self._mock.voicemailNumbers
        verdict = answered_after + DETECT_AFTER
        # With hangup, the carrier hangs up on a machine as soon as it knows.
        self._later(mc, verdict, EventType.DETECTED, answered_by="machine" if machine else "human",
                    then_end=State.VOICEMAIL if machine and not leave else None)
        if machine and leave:
            greeting_ends = answered_after + max(DETECT_AFTER, self._mock.greetingMs / 1000)
            self._later(mc, greeting_ends, EventType.GREETING_ENDED)

    def hangup(self, record: CallRecord) -> None:
        with self._lock:
            mc = self._calls.get(record.callId)
            if mc is None or mc.ended:
                return  # already over: success, as with real carriers
            pending = self._end(mc, State.HANGUP_BOT if mc.answered else State.NO_ANSWER)
        for t in pending:
            self._timers.cancel(t)

    def speak(self, record: CallRecord, action: Speak) -> None:
        mc = self._get(record.callId)
        duration = max(0.02, len(action.text) * self._mock.msPerChar / 1000)
        now = time.monotonic()
        with self._lock:
            start = max(now, mc.speaking_until)
            mc.speaking_until = start + duration
            heard_at, mc.heard_at = mc.heard_at, None
        self._later(mc, start - now, EventType.SPEAKING, utterance_id=action.utterance_id)
        self._later(mc, start + duration - now, EventType.PLAYED, utterance_id=action.utterance_id)
        if heard_at is not None:
            # The simulated line measures a reply's turn latency as a carrier
            # would: from the callee's last word to the reply starting to play.
            self.sink.note_turn(record.callId, (start - heard_at) * 1000)

    def start_listening(self, record: CallRecord, turn: int | None) -> None:
        replies = self._mock.calleeReplies
        if turn is None or not 0 < turn <= len(replies):
            return  # the callee stays silent until mock.say
        mc = self._get(record.callId)
        timer = self._later(mc, self._mock.replyDelayMs / 1000, EventType.SPEECH, transcript=replies[turn - 1])
        if timer is not None:
            with self._lock:
                mc.replies = [t for t in mc.replies if t.active] + [timer]

    def stop_listening(self, record: CallRecord) -> None:
        """The simulated callee's scheduled replies are no longer heard."""
        with self._lock:
            mc = self._calls.get(record.callId)
            if mc is None:
                return
            replies, mc.replies = mc.replies, []
        for t in replies:
            self._timers.cancel(t)

    def call_status(self, record: CallRecord) -> CarrierStatus | None:
        with self._lock:
            mc = self._calls.get(record.callId) or self._ended.get(record.callId)
        if mc is None or mc.provider_id != record.providerCallId:
            return CarrierStatus(live=False, reason=State.COMPLETED)  # a carrier's 404: long gone
        if mc.ended:
            return CarrierStatus(live=False, reason=State(mc.reason or State.COMPLETED), answered=mc.answered)
        return CarrierStatus(live=True, answered=mc.answered)

    def forget(self, record: CallRecord) -> None:
        with self._lock:
            mc = self._calls.get(record.callId)
            pending = self._end(mc, State(record.endReason or State.COMPLETED)) if mc is not None else []
        for t in pending:
            self._timers.cancel(t)

    # -- call control, simulated --

    def _line_free_at(self, mc: _MockCall, seconds: float) -> float:
        """Seconds from now until something ``seconds`` long, queued after
        what is being said, has played."""
        now = time.monotonic()
        with self._lock:
            start = max(now, mc.speaking_until)
            mc.speaking_until = start + seconds
        return start + seconds - now

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        mc = self._get(record.callId)
        delay = self._line_free_at(mc, dtmf.duration(action.digits))

        def heard() -> None:
            with self._lock:
                if mc.ended:
                    return
                mc.heard_dtmf.append(action.digits)
            log.info("call %s: the simulated callee heard the DTMF digits %s", mc.call_id, action.digits)

        with self._lock:
            mc.timers.append(self._timers.call_later(delay, heard))

    def transfer(self, record: CallRecord, action: Transfer) -> None:
        mc = self._get(record.callId)
        speech = len(action.message) * self._mock.msPerChar / 1000 if action.message else 0.0
        delay = self._line_free_at(mc, speech) + self._mock.answerDelayMs / 1000
        if action.to in self._mock.transferBusy:
            self._later(mc, delay, EventType.TRANSFER_FAILED, message=f"{action.to} is busy")
        else:
            self._later(mc, delay, EventType.TRANSFERRED)

    def start_recording(self, record: CallRecord) -> None:
        mc = self._get(record.callId)
        with self._lock:
            if mc.recording_since is None:
                mc.recording_since = time.monotonic()

    def _report_recording_later(self, mc: _MockCall, seconds: float) -> None:
        """(Lock held.) Like a carrier, report the recording once "processed"."""
        recording = {"url": f"mock://recordings/{mc.provider_id}.wav", "durationSec": int(seconds),
                     "channels": self.sink.config.recording.channels}
        self._timers.call_later(RECORDING_AFTER, lambda: self.sink.report_recording(mc.call_id, mc.provider_id,
                                                                                   recording))

    # -- the simulated callee (control methods mock.*) --

    def control_methods(self) -> Mapping[str, Method[object]]:
        return self._methods

    def _rpc_say(self, p: dict[str, Any]) -> dict[str, Any]:
        self.say(p["callId"], p["text"])
        return {"callId": p["callId"], "ok": True}

    def _rpc_hangup(self, p: dict[str, Any]) -> dict[str, Any]:
        self.callee_hangup(p["callId"])
        return {"callId": p["callId"], "ok": True}

    def say(self, call_id: str, text: str) -> None:
        mc = self._get(call_id)
        if not mc.answered:
            raise NotConnected(f"call {call_id} has not been answered yet", {"callId": call_id})
        self._later(mc, 0, EventType.SPEECH, transcript=text)

    def callee_hangup(self, call_id: str) -> None:
        mc = self._get(call_id)
        self._later(mc, 0, EventType.ENDED, reason=State.HANGUP_USER)

    def inbound(self, from_: str, to: str | None) -> dict[str, Any]:
        provider_id = "mock-in-" + uuid.uuid4().hex[:17]
        snapshot, accepted = self.sink.accept_inbound(from_, to, provider_id)
        if not accepted:
            return {"rejected": True, "callId": snapshot["callId"]}
        mc = _MockCall(snapshot["callId"], provider_id)
        with self._lock:
            self._calls[mc.call_id] = mc
            self._save_state()
        self._later(mc, INBOUND_ANSWER, EventType.ANSWERED)
        return {"callId": mc.call_id}
