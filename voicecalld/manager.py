"""CallManager: the single owner of call state, and its commands.

The manager takes the control commands (initiate, speak, continue, end),
the carrier's news (``handle_event``, ``accept_inbound``: the ``CallSink`` a
provider is bound to) and the restart and shutdown of the daemon. Its parts:

* ``lifecycle.Call``: what a call does with each input, I/O-free;
* ``livecalls.LiveCalls``: the live calls, each with its own lock, and what
  is remembered of ended ones;
* ``interpreter.Interpreter``: applies the actions of a step (the log,
  subscribers, timers, the carrier);
* ``waiters.Waiter``: a continue waiting for the callee's reply;
* ``dialer.Dialer``: the dial queue, which paces outbound calls;
* ``placing.Placer``: the carrier's dial, for a call dialled at once or queued.

A new call whose first record cannot be written is refused
(``StoreFailed``) before the carrier is asked, so nothing is acknowledged
that is not on disk; since every call start tries the log again, the first
write that succeeds lets calls in again.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from typing import Any

from . import inbound, metrics
from .callcontrol import CallControl
from .calls import (
    TERMINAL,
    Action,
    AfterSpeech,
    ArmTimer,
    CallEvent,
    CallRecord,
    Direction,
    Mode,
    Policy,
    State,
    TimerKind,
)
from .config import Config
from .dialer import Dialer, Limits
from .errors import CallNotFound, InvalidParams, StoreFailed, TurnInProgress
from .events import EventBus
from .interpreter import Interpreter, Step
from .lifecycle import Call
from .livecalls import LiveCall, LiveCalls, check_call_id, now_ms
from .media import dtmf as dtmf_digits
from .phone import is_e164, mask
from .placing import Placer
from .providers.base import Provider
from .store import Store
from .timers import TimerService
from .waiters import Waiter

log = logging.getLogger(__name__)

UnclaimedTranscript = Callable[[str, str], None]


class CallManager:
    def __init__(self, config: Config, provider: Provider, store: Store, timers: TimerService,
                 bus: EventBus | None = None) -> None:
        self.config = config
        self.provider = provider
        self.store = store
        self.timers = timers
        self.bus = bus if bus is not None else EventBus()
        self.calls = LiveCalls(store)
        self.dialer = Dialer(timers, self.calls, self._limits, lambda live: self._placer.place_queued(live))
        self.calls.on_release = self.dialer.released
        self._interpreter = Interpreter(provider, store, timers, self.bus, self.calls, self._unclaimed)
        self._placer = Placer(provider, self.dialer, self._run, self._set_provider_id)
        #: Called (off any lock) with (callId, text) for a final callee
        #: transcript that no continue is waiting for: the auto-responder.
        self.on_unclaimed: UnclaimedTranscript | None = None
        #: True for a call whose caller is answered by something else than
        #: on_unclaimed (a realtime speech-to-speech model).
        self.answered_elsewhere: Callable[[str], bool] | None = None
        #: DTMF, transfer and recordings (callcontrol.py).
        self.control = CallControl(self)
        provider.bind(self)

    # -- configuration --

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: new limits apply to new calls and new deadlines."""
        self.config = config
        self.store.compact_bytes = config.storeCompactBytes
        self.store.keep_calls = config.storeKeepCalls

    @property
    def policy(self) -> Policy:
        c = self.config
        return Policy(max_duration=float(c.maxDurationSeconds), ring_timeout=c.ringTimeoutMs / 1000,
                      notify_hangup_delay=float(c.outbound.notifyHangupDelaySec),
                      leave_voicemail=c.outbound.voicemail == "leave-message",
                      recording_announcement=c.recording.announce.strip())

    def _limits(self) -> Limits:
        c = self.config
        return Limits(rate=c.outbound.dialsPerSecond or self.provider.capabilities.dials_per_second,
                      max_queued=c.outbound.maxQueued, max_concurrent=c.maxConcurrentCalls)

    # -- queries --

    @property
    def active_count(self) -> int:
        """Live calls that hold a slot (not those waiting in the dial queue)."""
        return self.calls.active

    @property
    def queued_count(self) -> int:
        return self.calls.queued

    def status(self, call_id: object) -> dict[str, Any]:
        call_id = check_call_id(call_id)
        live = self.calls.get(call_id)
        if live is not None:
            position = self.dialer.position(call_id)
            with live.lock:
                return self._snapshot(live, position)
        record = self.calls.ended(call_id)
        if record is None:
            raise CallNotFound(call_id)
        return record

    def active_calls(self) -> list[dict[str, Any]]:
        """Every live call, queued ones with their ``queuePosition``."""
        positions = self.dialer.positions()
        out = []
        for live in self.calls.all():
            with live.lock:
                out.append(self._snapshot(live, positions.get(live.call.id)))
        return out

    @staticmethod
    def _snapshot(live: LiveCall, position: int | None) -> dict[str, Any]:
        """(Under the call's lock.) The record, with its place in the dial queue while queued."""
        queued = live.call.state == State.QUEUED and position is not None
        return {**live.call.record.to_dict(), **({"queuePosition": position} if queued else {})}

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.history(limit)

    def find_by_provider_id(self, provider_call_id: str) -> str | None:
        return self.calls.by_provider_id(provider_call_id)

    def live_record(self, call_id: str) -> CallRecord | None:
        """A copy of a live call's record (for carriers and restart recovery)."""
        live = self.calls.get(call_id)
        if live is None:
            return None
        with live.lock:
            return CallRecord.from_dict(live.call.record.to_dict())

    # -- commands --

    def _check_message(self, message: object) -> str:
        if not isinstance(message, str) or not message.strip():
            raise InvalidParams("message must be a non-empty string")
        limit = self.provider.capabilities.max_message_chars
        if len(message) > limit:
            raise InvalidParams(f"message is {len(message)} characters; the limit is {limit}")
        return message.strip()

    def initiate(self, message: object, to: object = None, mode: object = None, *, dtmf: object = None,
                 record: object = None) -> dict[str, Any]:
        text = self._check_message(message)
        digits = None if dtmf is None else dtmf_digits.check(dtmf, "dtmf")
        if record is not None and not isinstance(record, bool):
            raise InvalidParams(f"record must be true or false, got {record!r}")
        records = self.config.recording.enabled if record is None else record
        to = to or self.config.toNumber
        if to is None:
            raise InvalidParams("no destination: pass to, or set toNumber in the configuration")
        if not is_e164(to):
            raise InvalidParams(f"to must be an E.164 number like +15550001234, got {to!r}")
        mode = mode or self.config.outbound.defaultMode
        if not isinstance(mode, str) or mode not in (Mode.NOTIFY, Mode.CONVERSATION):
            raise InvalidParams(f"mode must be notify or conversation, got {mode!r}")
        record = CallRecord(callId=str(uuid.uuid4()), provider=self.provider.name,
                            direction=Direction.OUTBOUND, mode=Mode(mode), to=str(to),
                            from_=self.config.fromNumber or "", startedAt=now_ms(), dtmf=digits,
                            record=records)
        live = LiveCall(Call(record, self.policy, opening=text))
        if self.dialer.admit(live) == "queue":
            position: int | None = self._placer.queue(live)
        else:
            self._placer.dial_now(live)
            position = self.dialer.position(record.callId)  # queued again, if the carrier refused for its rate
        with live.lock:
            snapshot = self._snapshot(live, position)
        return {k: snapshot[k] for k in ("callId", "state", "queuePosition") if k in snapshot}

    def _set_provider_id(self, live: LiveCall, provider_id: str) -> None:
        """Raises ``StoreFailed`` if the id cannot be logged (it is kept in memory)."""
        with live.lock:
            if live.call.record.providerCallId == provider_id:
                return
            live.call.record.providerCallId = provider_id
            if self.calls.link_provider_id(live, provider_id):
                self.store.append(live.call.record.to_dict())

    def speak(self, call_id: object, message: object, *, listen: bool = False, joins: bool = False
              ) -> dict[str, Any]:
        """Say ``message``. ``listen``: then listen for the callee (the
        auto-responder's replies), so the carrier keeps the line open for
        them. ``joins``: it is the next sentence of a reply spoken as it is
        generated, and goes on the bot's line in the transcript."""
        text = self._check_message(message)
        live = self.calls.find(call_id)
        then: AfterSpeech = "listen" if listen else None
        self._run(live, lambda c: c.speak(text, now_ms(), then=then, joins=joins), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    def say_goodbye(self, call_id: object, message: object, *, joins: bool = False) -> dict[str, Any]:
        """Speak ``message``, then hang up after it has played; the call ends
        as hangup-bot (the auto-responder's hang_up tool). ``joins`` as for ``speak``."""
        text = self._check_message(message)
        live = self.calls.find(call_id)
        self._run(live, lambda c: c.say_goodbye(text, now_ms(), joins=joins), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    def hang_up_after_speech(self, call_id: object) -> dict[str, Any]:
        """Hang up once what the call is saying has played (as after
        ``say_goodbye``); the call ends as hangup-bot."""
        live = self.calls.find(call_id)
        self._run(live, lambda c: c.hang_up_after_speech(now_ms()), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    def continue_(self, call_id: object, message: object) -> dict[str, Any]:
        text = self._check_message(message)
        live = self.calls.find(call_id)
        waiter = Waiter(live.call.id)

        def begin(call: Call) -> list[Action]:
            if live.waiter is not None:
                raise TurnInProgress(f"a continue is already waiting for the callee on call {call.id}; "
                                     "wait for it to return", {"callId": call.id})
            actions = call.begin_turn(text, now_ms())
            live.waiter = waiter
            return actions

        try:
            self._run(live, begin, raise_errors=True)
            # Whatever fails (the carrier, the call being gone, the log), this
            # turn is over then: a waiter left behind would refuse every later
            # continue and swallow the callee's next words.
            transcript = waiter.wait(self.timers, self.config.transcriptTimeoutMs / 1000)
        finally:
            self.timers.cancel(waiter.timer)
            with live.lock:
                if live.waiter is waiter:
                    live.waiter = None
        return {"callId": live.call.id, "transcript": transcript}

    def end(self, call_id: object) -> dict[str, Any]:
        """The control command: hang up, as hangup-bot."""
        live = self.calls.find(call_id)
        self._run(live, lambda c: c.end(State.HANGUP_BOT), raise_errors=True)
        with live.lock:
            reason = live.call.record.endReason or live.call.chosen_end
        return {"callId": live.call.id, "ok": True, "endReason": None if reason is None else str(reason)}

    # -- call control (callcontrol.py) --

    def send_dtmf(self, call_id: object, digits: object) -> dict[str, Any]:
        return self.control.dtmf(call_id, digits)

    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]:
        return self.control.transfer(call_id, to, message)

    def report_recording(self, call_id: str | None, provider_call_id: str | None,
                         recording: dict[str, Any]) -> bool:
        return self.control.report_recording(call_id, provider_call_id, recording)

    # -- from the carrier --

    def accept_inbound(self, from_: str, to: str | None, provider_call_id: str | None = None
                       ) -> tuple[dict[str, Any], bool]:
        """A call arrives. Returns (record snapshot, accepted). A rejected
        call gets a terminal record, once per carrier call id."""
        if provider_call_id is not None:
            ended = self.calls.ended_by_provider_id(provider_call_id)
            if ended is not None:
                # A retry, or a replay after the carrier's webhook cache forgot
                # it: that call is over, and no new one starts. (The record
                # comes from memory only: a replay never costs a log scan.)
                call_id, recent = ended
                log.info("call %s: inbound request for carrier call %s, which has ended; refused", call_id,
                         provider_call_id)
                snapshot = recent if recent is not None else {"callId": call_id, "providerCallId": provider_call_id}
                return snapshot, False
            known = self.calls.by_provider_id(provider_call_id)
            if known is not None:
                return self.status(known), True
        decision = inbound.decide(self.config.inboundPolicy, self.config.allowFrom, from_)
        record = CallRecord(callId=str(uuid.uuid4()), provider=self.provider.name,
                            direction=Direction.INBOUND, mode=Mode.CONVERSATION,
                            to=to or self.config.fromNumber or "", from_=from_ if isinstance(from_, str) else "",
                            providerCallId=provider_call_id, startedAt=now_ms(),
                            record=self.config.recording.enabled)
        live = LiveCall(Call(record, self.policy, opening=self.config.inboundGreeting))
        reason = decision.reason
        if decision.accept:
            refused = self.calls.admit_inbound(live, self.config.maxConcurrentCalls)
            if refused is not None:
                decision, reason = inbound.Decision(False, ""), refused
        if not decision.accept:
            log.info("call %s: rejected inbound call from %s: %s", record.callId, mask(from_), reason)
            live.call.record.error = f"rejected: {reason}"
            self._run(live, lambda c: c.finish(State.HANGUP_BOT, now_ms()))
            return record.to_dict(), False
        try:
            self._run(live, lambda c: c.start(), raise_errors=True)
        except StoreFailed as exc:
            why = f"rejected: {exc.message}"
            log.error("call %s: %s inbound call from %s", record.callId, why, mask(from_))
            self._run(live, lambda c: c.finish(State.HANGUP_BOT, now_ms(), error=why))
            with live.lock:
                return record.to_dict(), False
        log.info("call %s: accepted inbound call from %s", record.callId, mask(from_))
        with live.lock:
            return record.to_dict(), True

    def handle_event(self, event: CallEvent) -> None:
        """A normalized event from a carrier, media stream or the mock."""
        call_id = event.call_id
        live = self.calls.get(call_id) if call_id else None
        if live is None and event.provider_call_id:
            found = self.find_by_provider_id(event.provider_call_id)
            live = self.calls.get(found) if found else None
        if live is None:
            log.debug("event %s for unknown or ended call %s/%s ignored", event.type, call_id,
                      event.provider_call_id)
            return
        self._run(live, lambda c: c.handle(event, now_ms()))

    def note_turn(self, call_id: str, latency_ms: float) -> bool:
        """A reply's turn latency (the caller's last word to the reply's first
        audio at the carrier) was measured: it joins the record's ``turns``
        and the turn-latency histogram. False if the call is not connected
        (or the figure is not a duration)."""
        live = self.calls.get(call_id)
        if live is None or not isinstance(latency_ms, (int, float)) or not math.isfinite(latency_ms) \
                or latency_ms < 0:
            return False
        noted: list[bool] = []

        def step(call: Call) -> list[Action]:
            actions = call.note_turn(round(latency_ms), now_ms())
            noted.append(bool(actions))
            return actions

        self._run(live, step)
        if noted and noted[0]:
            metrics.observe_turn(latency_ms / 1000)
            return True
        return False

    def attach_provider_id(self, call_id: str, provider_call_id: str) -> None:
        """A carrier told us its id for a call (e.g. before initiate returned)."""
        live = self.calls.get(call_id)
        if live is not None:
            try:
                self._set_provider_id(live, provider_call_id)
            except StoreFailed as exc:
                # The next snapshot of the call carries the id to the log.
                log.warning("call %s: %s", call_id, exc.message)

    # -- steps --

    def _run(self, live: LiveCall, step: Step, raise_errors: bool = False) -> None:
        self._interpreter.run(live, step, raise_errors)

    def _run_if_live(self, call_id: str, step: Step) -> None:
        live = self.calls.get(call_id)
        if live is not None:
            self._run(live, step)

    def _unclaimed(self, call_id: str, text: str) -> None:
        hook = self.on_unclaimed
        elsewhere = self.answered_elsewhere
        if elsewhere is not None and elsewhere(call_id):
            return
        if hook is not None:
            hook(call_id, text)

    # -- restart recovery (recovery.py) --

    def restore(self, records: dict[str, dict[str, Any]]) -> list[str]:
        """Bring back the non-terminal calls of a previous run (no re-dialing).
        They count against the concurrency limit until recovery (see
        recovery.py) has confirmed them with the carrier or closed them."""
        restored = []
        terminal = {str(s) for s in TERMINAL}
        for snapshot in records.values():
            if snapshot.get("state") in terminal:
                provider_id = snapshot.get("providerCallId")
                if isinstance(provider_id, str) and provider_id:
                    self.calls.remember_ended(provider_id, str(snapshot["callId"]))
                continue
            try:
                record = CallRecord.from_dict(snapshot)
            except (KeyError, ValueError, TypeError):
                log.warning("call %s: unreadable record not restored", snapshot.get("callId"))
                continue
            # The record says whether the opening was spoken: a call restored
            # while ringing still says its message once answered.
            self.calls.restored(LiveCall(Call(record, self.policy)))
            restored.append(record.callId)
        return restored

    def requeue_restored(self, call_ids: list[str]) -> None:
        """Calls a previous run left queued join the dial queue, in the order they first joined it."""
        lives = [live for call_id in call_ids if (live := self.calls.get(call_id)) is not None]
        lives.sort(key=lambda live: (live.call.record.queuedAt or live.call.record.startedAt))
        self.dialer.restore(lives)

    def close_call(self, call_id: str, reason: State, error: str | None) -> None:
        """Close the record of a live call as ``reason``, without the carrier."""
        self._run_if_live(call_id, lambda c: c.finish(reason, now_ms(), error=error))

    def answer_restored(self, call_id: str, max_duration_left: float) -> None:
        """The carrier says the call was answered while we were down."""
        self._run_if_live(call_id, lambda c: c.answered(now_ms(), max_duration_left))

    def end_for(self, call_id: str, reason: State) -> None:
        """End a call for a deadline or at shutdown: there is no caller to
        report a failure to, so a refused hang-up closes the call anyway."""
        self._run_if_live(call_id, lambda c: c.end(reason))

    def arm(self, call_id: str, kind: TimerKind, delay: float) -> None:
        self._run_if_live(call_id, lambda c: [ArmTimer(kind, delay)])

    # -- shutdown --

    def stop_accepting(self) -> None:
        self.calls.stop_accepting()
        self.dialer.stop()  # queued calls stay queued: they are in the log, and the next run dials them

    def shutdown(self, grace: float) -> None:
        """Stop taking calls; let active ones finish for ``grace`` seconds,
        then hang up the rest, all at once, waiting at most ``grace`` seconds
        more for the carrier. A call whose hang-up is not done by then is
        closed in the log anyway, so every call ends with a final record,
        except those still queued: they stay queued, for the next run."""
        self.stop_accepting()
        remaining = self.calls.wait_idle(grace)
        if remaining:
            self._end_all(remaining, grace)
        backlog = self._interpreter.backlog
        if backlog and not backlog.write():
            lost = backlog.call_ids()
            log.error("the final records of %d call(s) could not be logged: %s", len(lost), ", ".join(lost))

    def _end_all(self, remaining: list[str], grace: float) -> None:
        log.info("hanging up %d call(s)", len(remaining))
        for call_id in remaining:
            # A thread per call, so every hang-up is on its way at once, even
            # those whose call is closed below before the carrier answered.
            # Daemon threads: a carrier request that hangs cannot hold up the exit.
            threading.Thread(target=self._end_at_shutdown, args=(call_id,), name="shutdown-hangup",
                             daemon=True).start()
        for call_id in self.calls.wait_idle(grace):
            log.warning("call %s: the hang-up was not confirmed within %g s; closing the call", call_id, grace)
            self.close_call(call_id, State.HANGUP_BOT, "voicecalld stopped before the hang-up was confirmed")

    def _end_at_shutdown(self, call_id: str) -> None:
        try:
            self.end_for(call_id, State.HANGUP_BOT)
        except Exception:
            log.exception("call %s: hangup at shutdown failed", call_id)
