"""Applying what the lifecycle asks: the actions of a step, for real.

A step runs the I/O-free lifecycle (``lifecycle.Call``) under the call's
lock, persists and publishes there (so snapshots reach the log and
subscribers in order), and then applies the carrier actions (speak, hang up,
listen) with no lock held: a slow carrier never stalls other calls, and no
network I/O ever happens under a lock.

A step always runs to its end: when the log cannot be written (or a
subscriber fails) the remaining actions still apply (timers, the end of the
call, its slot), and the failure is reported afterwards: to the command
that ran the step, or to the log for carrier events. The final record of a
call that ended while the log failed waits in the backlog (backlog.py)
until the log takes writes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import metrics
from .backlog import Backlog
from .calls import (
    Action,
    ArmTimer,
    CancelTimer,
    Deliver,
    Finished,
    HangUp,
    Listen,
    Persist,
    Publish,
    SendDtmf,
    Speak,
    StartRecording,
    State,
    StopListening,
    TimerKind,
    Transfer,
)
from .errors import NotConnected, ProviderError, StoreFailed, VoiceCallError
from .events import EventBus
from .lifecycle import Call
from .livecalls import LiveCall, LiveCalls, now_ms
from .providers.base import Provider
from .store import Store
from .timers import TimerService

log = logging.getLogger("voicecalld.manager")  # the engine's log lines keep their name

Step = Callable[[Call], list[Action]]


class Interpreter:
    def __init__(self, provider: Provider, store: Store, timers: TimerService, bus: EventBus,
                 calls: LiveCalls, unclaimed: Callable[[str, str], None]) -> None:
        self.provider = provider
        self.store = store
        self.timers = timers
        self.bus = bus
        self.calls = calls
        #: Called (off any lock) with (callId, text) for a final callee
        #: transcript no continue is waiting for.
        self.unclaimed = unclaimed
        self.backlog = Backlog(lambda record: self.store.append(record), timers)

    def run(self, live: LiveCall, step: Step, raise_errors: bool = False) -> None:
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

    def _persist(self, live: LiveCall, snapshot: dict[str, Any]) -> None:
        """Under the call's lock: log ``snapshot``; raises ``StoreFailed``."""
        try:
            self.store.append(snapshot)
        except StoreFailed:
            if live.call.terminal:  # no later snapshot will carry this one's news
                self.backlog.keep(live.call.id, snapshot)
            raise
        if self.backlog:
            self.backlog.write()

    def _apply_local(self, live: LiveCall, action: Action, remote: list[Action]) -> None:
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

    def _finished(self, live: LiveCall, reason: State) -> None:
        """Under the call's lock: the call reached a terminal state."""
        call = live.call
        if live.waiter is not None:
            live.waiter.fail(NotConnected(f"call {call.id} ended ({reason}) before the callee replied",
                                          {"callId": call.id, "endReason": str(reason)}))
            self.timers.cancel(live.waiter.timer)
        self.calls.release(live, call.record.to_dict())
        metrics.call_ended(str(call.record.direction), str(reason))
        log.info("call %s: ended (%s)", call.id, reason)
        try:
            self.provider.forget(call.record)
        except Exception:
            log.exception("call %s: provider cleanup failed", call.id)

    def _apply_remote(self, live: LiveCall, action: Action, raise_errors: bool) -> None:
        record = live.call.record
        try:
            if isinstance(action, Speak):
                self.provider.speak(record, action)
            elif isinstance(action, Listen):
                # A carrier that scripts its speech (TwiML) already listens
                # where Speak.then said so; it is told nothing more.
                if not self.provider.capabilities.scripts_speech:
                    self.provider.start_listening(record, action.turn)
            elif isinstance(action, StopListening):
                if self.provider.capabilities.stops_listening:
                    self.provider.stop_listening(record)
            elif isinstance(action, HangUp):
                self._hang_up_at_carrier(live, action.reason, raise_errors)
            elif isinstance(action, Deliver):
                self.unclaimed(live.call.id, action.text)
            elif isinstance(action, SendDtmf):
                self.provider.send_dtmf(record, action)
            elif isinstance(action, Transfer):
                self.provider.transfer(record, action)
            elif isinstance(action, StartRecording):
                self.provider.start_recording(record)
        except Exception as exc:
            if isinstance(exc, VoiceCallError):
                if not raise_errors:
                    log.warning("call %s: %s failed: %s", live.call.id, type(action).__name__.lower(),
                                exc.message)
            else:
                log.exception("call %s: %s failed", live.call.id, type(action).__name__.lower())
            if isinstance(action, Transfer):
                why = exc.message if isinstance(exc, VoiceCallError) else str(exc)
                self.run(live, lambda c: c.transfer_failed(why))
            if raise_errors:
                if isinstance(action, Speak):
                    self.run(live, lambda c: c.speak_refused(action.utterance_id))
                if isinstance(exc, VoiceCallError):
                    raise
                raise ProviderError(f"the carrier request failed: {exc}") from exc
            if isinstance(action, StartRecording):
                # The call goes on unrecorded rather than not at all.
                log.error("call %s: the carrier did not start recording; the call goes on unrecorded", live.call.id)
            elif not isinstance(action, HangUp | Transfer):
                self.run(live, lambda c: c.end(State.ERROR))

    def _hang_up_at_carrier(self, live: LiveCall, reason: State, explicit: bool) -> None:
        """Ask the carrier to hang up; ``explicit``: a command waits for the
        answer and may try again, so a refusal is raised, not closed."""
        try:
            self.provider.hangup(live.call.record)
        except Exception as exc:
            message = exc.message if isinstance(exc, VoiceCallError) else str(exc)
            if explicit:
                self.run(live, lambda c: c.hang_up_refused())
                raise
            # Deadline-driven hangups (timeout, no-answer, notify) cannot be
            # retried by a caller: close the record rather than leak a slot.
            log.error("call %s: carrier hangup failed (%s); closing the call as %s", live.call.id,
                      message, reason)
            self.run(live, lambda c: c.finish(reason, now_ms(), error=f"hangup failed: {message}"))
            return
        self.run(live, lambda c: c.finish(reason, now_ms()), raise_errors=explicit)

    def _timer_fired(self, live: LiveCall, kind: TimerKind) -> None:
        with live.lock:
            if live.timers.get(kind) is not None:
                live.timers.pop(kind)
        self.run(live, lambda c: c.timer_fired(kind))
