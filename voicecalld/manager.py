"""CallManager: the single owner of call state.

Each live call has its own lock; the manager's lock guards only the table
of live calls and the concurrency count. A step runs the I/O-free core
(``calls.Call``) under the call's lock, persists and publishes there (so
snapshots reach the log and subscribers in order), and then applies the
carrier actions (speak, hang up, listen) with no lock held: a slow carrier
never stalls other calls, and no network I/O ever happens under a lock.
Lock order is call lock, then manager lock; never the reverse.

A step always runs to its end: when the log cannot be written (or a
subscriber fails) the remaining actions still apply (timers, the end of the
call, its slot), and the failure is reported afterwards: to the command
that ran the step, or to the log for carrier events. A new call whose first
record cannot be written is refused (``StoreFailed``) before the carrier is
asked, so nothing is acknowledged that is not on disk; since every call
start tries the log again, the first write that succeeds lets calls in again.
The final record of a call that ended while the log failed waits in the
backlog (backlog.py) until the log takes writes again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import calls, inbound
from .backlog import Backlog
from .calls import (
    Action,
    AfterSpeech,
    ArmTimer,
    CallEvent,
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
    Speak,
    State,
    StopListening,
    TimerKind,
)
from .config import Config
from .errors import (
    CallNotFound,
    InvalidParams,
    LimitReached,
    NotConnected,
    ProviderError,
    ShuttingDown,
    StoreFailed,
    TranscriptTimeout,
    TurnInProgress,
    VoiceCallError,
)
from .events import EventBus
from .lifecycle import Call
from .lru import Bounded
from .phone import is_e164, mask
from .providers.base import Provider
from .store import Store
from .timers import Timer, TimerService

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 3000  # Telnyx's speak limit, the strictest of the carriers
_RECENT = 256             # ended calls kept in memory for status
#: Carrier call ids of ended calls, remembered (and rebuilt from the log at
#: start) so a replayed inbound webhook can never start a call again.
ENDED_IDS = 100_000


def now_ms() -> int:
    return int(time.time() * 1000)


class _Waiter:
    """A ``continue`` waiting for the callee's next final transcript."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.transcript: str | None = None
        self.error: VoiceCallError | None = None
        self.timer: Timer | None = None

    def resolve(self, transcript: str) -> bool:
        if self.done.is_set():
            return False
        self.transcript = transcript
        self.done.set()
        return True

    def fail(self, error: VoiceCallError) -> bool:
        if self.done.is_set():
            return False
        self.error = error
        self.done.set()
        return True


@dataclass
class _Live:
    call: Call
    lock: threading.Lock = field(default_factory=threading.Lock)
    timers: dict[TimerKind, Timer] = field(default_factory=dict)
    waiter: _Waiter | None = None


UnclaimedTranscript = Callable[[str, str], None]


class CallManager:
    def __init__(self, config: Config, provider: Provider, store: Store, timers: TimerService,
                 bus: EventBus | None = None) -> None:
        self.config = config
        self.provider = provider
        self.store = store
        self.timers = timers
        self.bus = bus if bus is not None else EventBus()
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._by_provider_id: dict[str, str] = {}
        self._recent: Bounded[str, dict[str, Any]] = Bounded(_RECENT)
        self._ended_ids: Bounded[str, str] = Bounded(ENDED_IDS)  # carrier call id -> callId
        self._idle = threading.Condition(self._lock)  # notified when the last live call ends
        self._backlog = Backlog(lambda record: self.store.append(record), timers)
        self._accepting = True
        #: Called (off any lock) with (callId, text) for a final callee
        #: transcript that no continue is waiting for: the auto-responder.
        self.on_unclaimed: UnclaimedTranscript | None = None
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
                      notify_hangup_delay=float(c.outbound.notifyHangupDelaySec))

    # -- queries --

    @property
    def active_count(self) -> int:
        return len(self._live)

    def _find(self, call_id: object) -> _Live:
        if not isinstance(call_id, str) or not call_id:
            raise InvalidParams("callId must be a non-empty string")
        live = self._live.get(call_id)
        if live is None:
            if self._lookup_ended(call_id) is not None:
                raise NotConnected(f"call {call_id} has ended", {"callId": call_id})
            raise CallNotFound(call_id)
        return live

    def _lookup_ended(self, call_id: str) -> dict[str, Any] | None:
        with self._lock:
            recent = self._recent.get(call_id)
        return recent if recent is not None else self.store.find(call_id)

    def status(self, call_id: object) -> dict[str, Any]:
        if not isinstance(call_id, str) or not call_id:
            raise InvalidParams("callId must be a non-empty string")
        live = self._live.get(call_id)
        if live is not None:
            with live.lock:
                return live.call.record.to_dict()
        record = self._lookup_ended(call_id)
        if record is None:
            raise CallNotFound(call_id)
        return record

    def active_calls(self) -> list[dict[str, Any]]:
        out = []
        for live in list(self._live.values()):
            with live.lock:
                out.append(live.call.record.to_dict())
        return out

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.history(limit)

    def find_by_provider_id(self, provider_call_id: str) -> str | None:
        with self._lock:
            return self._by_provider_id.get(provider_call_id)

    # -- commands --

    @staticmethod
    def _check_message(message: object) -> str:
        if not isinstance(message, str) or not message.strip():
            raise InvalidParams("message must be a non-empty string")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InvalidParams(f"message is {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")
        return message.strip()

    def initiate(self, message: object, to: object = None, mode: object = None) -> dict[str, Any]:
        text = self._check_message(message)
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
                            from_=self.config.fromNumber or "", startedAt=now_ms())
        live = _Live(Call(record, self.policy, opening=text))
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("the daemon is shutting down and takes no new calls")
            limit = self.config.maxConcurrentCalls
            if len(self._live) >= limit:
                raise LimitReached(f"{len(self._live)} of {limit} concurrent calls are active; "
                                   "end one or raise maxConcurrentCalls",
                                   {"active": len(self._live), "limit": limit})
            self._live[record.callId] = live
        try:
            self._run(live, lambda c: c.start(), raise_errors=True)
        except StoreFailed as exc:
            why = exc.message
            log.error("call %s: not dialed: %s", record.callId, why)
            self._run(live, lambda c: c.finish(State.FAILED, now_ms(), error=why))
            raise
        log.info("call %s: dialing %s (%s)", record.callId, mask(record.to), record.mode)
        try:
            provider_id = self.provider.initiate(record)
        except Exception as exc:
            message = exc.message if isinstance(exc, ProviderError) else f"the carrier request failed: {exc}"
            if isinstance(exc, ProviderError):
                log.warning("call %s: carrier refused the call: %s", record.callId, message)
            else:
                log.exception("call %s: initiate failed", record.callId)
            self._run(live, lambda c: c.finish(State.FAILED, now_ms(), error=message))
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(message) from exc
        try:
            self._set_provider_id(live, provider_id)
        except StoreFailed as exc:
            # Without its carrier id on disk a restart could not find the
            # call again: end it rather than acknowledge it.
            why = exc.message
            log.error("call %s: hanging up: %s", record.callId, why)
            self._run(live, lambda c: c.fail(why))
            raise
        with live.lock:
            return {"callId": record.callId, "state": str(live.call.state)}

    def _set_provider_id(self, live: _Live, provider_id: str) -> None:
        """Raises ``StoreFailed`` if the id cannot be logged (it is kept in memory)."""
        with live.lock:
            if live.call.record.providerCallId == provider_id:
                return
            live.call.record.providerCallId = provider_id
            with self._lock:
                if live.call.terminal:  # an ended call must not be findable (or leak) by its carrier id
                    self._ended_ids.put(provider_id, live.call.id)
                    return
                self._by_provider_id[provider_id] = live.call.id
            self.store.append(live.call.record.to_dict())

    def speak(self, call_id: object, message: object, *, listen: bool = False) -> dict[str, Any]:
        """Say ``message``. ``listen``: then listen for the callee (the
        auto-responder's replies), so the carrier keeps the line open for them."""
        text = self._check_message(message)
        live = self._find(call_id)
        then: AfterSpeech = "listen" if listen else None
        self._run(live, lambda c: c.speak(text, now_ms(), then=then), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    def say_goodbye(self, call_id: object, message: object) -> dict[str, Any]:
        """Speak ``message``, then hang up after it has played; the call ends
        as hangup-bot (the auto-responder's hang_up tool)."""
        text = self._check_message(message)
        live = self._find(call_id)
        self._run(live, lambda c: c.say_goodbye(text, now_ms()), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    def continue_(self, call_id: object, message: object) -> dict[str, Any]:
        text = self._check_message(message)
        live = self._find(call_id)
        waiter = _Waiter()

        def begin(call: Call) -> list[Action]:
            if live.waiter is not None:
                raise TurnInProgress(f"a continue is already waiting for the callee on call {call.id}; "
                                     "wait for it to return", {"callId": call.id})
            actions = call.begin_turn(text, now_ms())
            live.waiter = waiter
            return actions

        try:
            self._run(live, begin, raise_errors=True)
        except BaseException:
            # Whatever failed (the carrier, the call being gone, the log), this
            # turn is over: a waiter left behind would refuse every later
            # continue and swallow the callee's next words.
            self._drop_waiter(live, waiter)
            raise
        timeout = self.config.transcriptTimeoutMs / 1000
        waiter.timer = self.timers.call_later(timeout, self._turn_timed_out, live, waiter, timeout)
        # The wheel resolves the waiter; the extra margin only guards against a
        # stalled wheel, so this thread can never block forever.
        if not waiter.done.wait(timeout + 5.0):
            self._turn_timed_out(live, waiter, timeout)
        self._drop_waiter(live, waiter)
        if waiter.error is not None:
            raise waiter.error
        return {"callId": live.call.id, "transcript": waiter.transcript}

    def _drop_waiter(self, live: _Live, waiter: _Waiter) -> None:
        self.timers.cancel(waiter.timer)
        with live.lock:
            if live.waiter is waiter:
                live.waiter = None

    def _turn_timed_out(self, live: _Live, waiter: _Waiter, timeout: float) -> None:
        waiter.fail(TranscriptTimeout(
            f"no reply from the callee within {timeout:g} s; the call is still connected: "
            "continue again, or end it", {"callId": live.call.id}))

    def end(self, call_id: object) -> dict[str, Any]:
        live = self._find(call_id)
        self._run(live, lambda c: c.end(State.HANGUP_BOT), raise_errors=True)
        with live.lock:
            reason = live.call.record.endReason or live.call.chosen_end
        return {"callId": live.call.id, "ok": True, "endReason": None if reason is None else str(reason)}

    # -- inbound --

    def accept_inbound(self, from_: str, to: str | None, provider_call_id: str | None = None
                       ) -> tuple[dict[str, Any], bool]:
        """A call arrives. Returns (record snapshot, accepted). A rejected
        call gets a terminal record, once per carrier call id."""
        if provider_call_id is not None:
            with self._lock:
                ended = self._ended_ids.get(provider_call_id)
                known = self._by_provider_id.get(provider_call_id)
            if ended is not None:
                # A retry, or a replay after the carrier's webhook cache forgot
                # it: that call is over, and no new one starts. (The record
                # comes from memory only: a replay never costs a log scan.)
                log.info("call %s: inbound request for carrier call %s, which has ended; refused", ended,
                         provider_call_id)
                with self._lock:
                    recent = self._recent.get(ended)
                return (recent if recent is not None else {"callId": ended, "providerCallId": provider_call_id},
                        False)
            if known is not None:
                return self.status(known), True
        decision = inbound.decide(self.config.inboundPolicy, self.config.allowFrom, from_)
        record = CallRecord(callId=str(uuid.uuid4()), provider=self.provider.name,
                            direction=Direction.INBOUND, mode=Mode.CONVERSATION,
                            to=to or self.config.fromNumber or "", from_=from_ if isinstance(from_, str) else "",
                            providerCallId=provider_call_id, startedAt=now_ms())
        live = _Live(Call(record, self.policy, opening=self.config.inboundGreeting))
        reason = decision.reason
        with self._lock:
            if decision.accept and not self._accepting:
                decision, reason = inbound.Decision(False, ""), "the daemon is shutting down"
            elif decision.accept and len(self._live) >= self.config.maxConcurrentCalls:
                decision, reason = inbound.Decision(False, ""), "the concurrent-call limit is reached"
            if decision.accept:
                self._live[record.callId] = live
                if provider_call_id:
                    self._by_provider_id[provider_call_id] = record.callId
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

    # -- events --

    def handle_event(self, event: CallEvent) -> None:
        """A normalized event from a carrier, media stream or the mock."""
        call_id = event.call_id
        live = self._live.get(call_id) if call_id else None
        if live is None and event.provider_call_id:
            found = self.find_by_provider_id(event.provider_call_id)
            live = self._live.get(found) if found else None
        if live is None:
            log.debug("event %s for unknown or ended call %s/%s ignored", event.type, call_id,
                      event.provider_call_id)
            return
        self._run(live, lambda c: c.handle(event, now_ms()))

    def attach_provider_id(self, call_id: str, provider_call_id: str) -> None:
        """A carrier told us its id for a call (e.g. before initiate returned)."""
        live = self._live.get(call_id)
        if live is not None:
            try:
                self._set_provider_id(live, provider_call_id)
            except StoreFailed as exc:
                # The next snapshot of the call carries the id to the log.
                log.warning("call %s: %s", call_id, exc.message)

    # -- applying actions --

    def _run(self, live: _Live, step: Callable[[Call], list[Action]], raise_errors: bool = False) -> None:
        """Run ``step`` and apply its actions. With ``raise_errors`` (a command
        is waiting for the answer) a failed carrier request or log write is
        raised, after every action of the step has been applied; otherwise
        it is logged."""
        remote: list[Action] = []
        store_error: StoreFailed | None = None
        with live.lock:
            actions = step(live.call)
            snapshot: dict[str, Any] | None = None
            for action in actions:
                try:
                    if isinstance(action, Persist):
                        snapshot = live.call.record.to_dict()
                        self._persist(live, snapshot)
                    elif isinstance(action, Publish):
                        if self.bus:
                            snapshot = snapshot or live.call.record.to_dict()
                            self.bus.publish(action.name, live.call.id, snapshot, action.data)
                    else:
                        self._apply_local(live, action, remote)
                except StoreFailed as exc:
                    store_error = store_error or exc
                except Exception:
                    log.exception("call %s: %s failed", live.call.id, type(action).__name__.lower())
        error: Exception | None = None
        for action in remote:
            try:
                self._apply_remote(live, action, raise_errors)
            except Exception as exc:  # only with raise_errors; the rest of the step still applies
                error = error or exc
        if store_error is not None:
            if raise_errors and error is None:
                raise store_error
            log.warning("call %s: %s", live.call.id, store_error.message)
        if error is not None:
            raise error

    def _persist(self, live: _Live, snapshot: dict[str, Any]) -> None:
        """Under the call's lock: log ``snapshot``; raises ``StoreFailed``."""
        try:
            self.store.append(snapshot)
        except StoreFailed:
            if live.call.terminal:  # no later snapshot will carry this one's news
                self._backlog.keep(live.call.id, snapshot)
            raise
        if self._backlog:
            self._backlog.write()

    def _apply_local(self, live: _Live, action: Action, remote: list[Action]) -> None:
        """Under the call's lock: an action that does no network I/O."""
        if isinstance(action, ArmTimer):
            self.timers.cancel(live.timers.pop(action.kind, None))
            live.timers[action.kind] = self.timers.call_later(action.delay, self._timer_fired, live, action.kind)
        elif isinstance(action, CancelTimer):
            self.timers.cancel(live.timers.pop(action.kind, None))
        elif isinstance(action, Deliver):
            if live.waiter is not None and live.waiter.resolve(action.text):
                self.timers.cancel(live.waiter.timer)
            else:
                remote.append(action)
        elif isinstance(action, Finished):
            self._finished(live, action.reason)
        else:
            remote.append(action)

    def _finished(self, live: _Live, reason: State) -> None:
        """Under the call's lock: the call reached a terminal state."""
        call = live.call
        if live.waiter is not None:
            live.waiter.fail(NotConnected(f"call {call.id} ended ({reason}) before the callee replied",
                                          {"callId": call.id, "endReason": str(reason)}))
            self.timers.cancel(live.waiter.timer)
        snapshot = call.record.to_dict()
        with self._lock:
            self._live.pop(call.id, None)
            self._recent.put(call.id, snapshot)
            if call.record.providerCallId:
                self._by_provider_id.pop(call.record.providerCallId, None)
                self._ended_ids.put(call.record.providerCallId, call.id)
            if not self._live:
                self._idle.notify_all()
        log.info("call %s: ended (%s)", call.id, reason)
        try:
            self.provider.forget(call.record)
        except Exception:
            log.exception("call %s: provider cleanup failed", call.id)

    def _apply_remote(self, live: _Live, action: Action, raise_errors: bool) -> None:
        record = live.call.record
        try:
            if isinstance(action, Speak):
                self.provider.speak(record, action)
            elif isinstance(action, Listen):
                self.provider.start_listening(record, action.turn)
            elif isinstance(action, StopListening):
                self.provider.stop_listening(record)
            elif isinstance(action, HangUp):
                self._hangup(live, action.reason, raise_errors)
            elif isinstance(action, Deliver):
                self._unclaimed(live.call.id, action.text)
        except VoiceCallError as exc:
            if raise_errors:
                if isinstance(action, Speak):
                    self._run(live, lambda c: c.speak_refused(action.utterance_id))
                raise
            log.warning("call %s: %s failed: %s", live.call.id, type(action).__name__.lower(), exc.message)
            if not isinstance(action, HangUp):
                self._run(live, lambda c: c.end(State.ERROR))
        except Exception as exc:
            log.exception("call %s: %s failed", live.call.id, type(action).__name__.lower())
            if raise_errors:
                if isinstance(action, Speak):
                    self._run(live, lambda c: c.speak_refused(action.utterance_id))
                raise ProviderError(f"the carrier request failed: {exc}") from exc
            if not isinstance(action, HangUp):
                self._run(live, lambda c: c.end(State.ERROR))

    def _hangup(self, live: _Live, reason: State, explicit: bool) -> None:
        try:
            self.provider.hangup(live.call.record)
        except Exception as exc:
            message = exc.message if isinstance(exc, VoiceCallError) else str(exc)
            if explicit:
                with live.lock:
                    live.call.hang_up_refused()
                raise
            # Deadline-driven hangups (timeout, no-answer, notify) cannot be
            # retried by a caller: close the record rather than leak a slot.
            log.error("call %s: carrier hangup failed (%s); closing the call as %s", live.call.id,
                      message, reason)
            self._run(live, lambda c: c.finish(reason, now_ms(), error=f"hangup failed: {message}"))
            return
        self._run(live, lambda c: c.finish(reason, now_ms()), raise_errors=explicit)

    def _timer_fired(self, live: _Live, kind: TimerKind) -> None:
        with live.lock:
            if live.timers.get(kind) is not None:
                live.timers.pop(kind)
        self._run(live, lambda c: c.timer_fired(kind))

    def _unclaimed(self, call_id: str, text: str) -> None:
        hook = self.on_unclaimed
        if hook is not None:
            hook(call_id, text)

    # -- lifecycle --

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def restore(self, records: dict[str, dict[str, Any]]) -> list[str]:
        """Bring back the non-terminal calls of a previous run (no re-dialing).
        They count against the concurrency limit until recovery (see
        recovery.py) has confirmed them with the carrier or closed them."""
        restored = []
        terminal = {str(s) for s in calls.TERMINAL}
        for snapshot in records.values():
            if snapshot.get("state") in terminal:
                provider_id = snapshot.get("providerCallId")
                if isinstance(provider_id, str) and provider_id:
                    with self._lock:
                        self._ended_ids.put(provider_id, str(snapshot["callId"]))
                continue
            try:
                record = CallRecord.from_dict(snapshot)
            except (KeyError, ValueError, TypeError):
                log.warning("call %s: unreadable record not restored", snapshot.get("callId"))
                continue
            # The record says whether the opening was spoken: a call restored
            # while ringing still says its message once answered.
            live = _Live(Call(record, self.policy))
            with self._lock:
                self._live[record.callId] = live
                if record.providerCallId:
                    self._by_provider_id[record.providerCallId] = record.callId
            restored.append(record.callId)
        return restored

    # -- used by restart recovery --

    def live_record(self, call_id: str) -> CallRecord | None:
        live = self._live.get(call_id)
        if live is None:
            return None
        with live.lock:
            return CallRecord.from_dict(live.call.record.to_dict())

    def close_restored(self, call_id: str, reason: State, error: str | None) -> None:
        live = self._live.get(call_id)
        if live is not None:
            self._run(live, lambda c: c.finish(reason, now_ms(), error=error))

    def answer_restored(self, call_id: str, max_duration_left: float) -> None:
        """The carrier says the call was answered while we were down."""
        live = self._live.get(call_id)
        if live is not None:
            self._run(live, lambda c: c.answered(now_ms(), max_duration_left))

    def hang_up(self, call_id: str, reason: State) -> None:
        """End a call for a deadline (no caller to report a failure to)."""
        live = self._live.get(call_id)
        if live is not None:
            self._run(live, lambda c: c.end(reason))

    def arm(self, call_id: str, kind: TimerKind, delay: float) -> None:
        live = self._live.get(call_id)
        if live is not None:
            self._run(live, lambda c: [ArmTimer(kind, delay)])

    def shutdown(self, grace: float) -> None:
        """Stop taking calls; let active ones finish for ``grace`` seconds,
        then hang up the rest, all at once, waiting at most ``grace`` seconds
        more for the carrier. A call whose hang-up is not done by then is
        closed in the log anyway, so every call ends with a final record."""
        self.stop_accepting()
        with self._lock:
            self._idle.wait_for(lambda: not self._live, grace)
            remaining = list(self._live)
        if remaining:
            self._hang_up_all(remaining, grace)
        if self._backlog and not self._backlog.write():
            lost = self._backlog.call_ids()
            log.error("the final records of %d call(s) could not be logged: %s", len(lost), ", ".join(lost))

    def _hang_up_all(self, remaining: list[str], grace: float) -> None:
        log.info("hanging up %d call(s)", len(remaining))
        for call_id in remaining:
            # A thread per call, so every hang-up is on its way at once, even
            # those whose call is closed below before the carrier answered.
            # Daemon threads: a carrier request that hangs cannot hold up the exit.
            threading.Thread(target=self._hang_up_at_shutdown, args=(call_id,), name="shutdown-hangup",
                             daemon=True).start()
        with self._lock:
            self._idle.wait_for(lambda: not self._live, grace)
            stuck = list(self._live)
        for call_id in stuck:
            log.warning("call %s: the hang-up was not confirmed within %g s; closing the call", call_id, grace)
            self.close_restored(call_id, State.HANGUP_BOT, "voicecalld stopped before the hang-up was confirmed")

    def _hang_up_at_shutdown(self, call_id: str) -> None:
        try:
            self.hang_up(call_id, State.HANGUP_BOT)
        except Exception:
            log.exception("call %s: hangup at shutdown failed", call_id)
