"""Call control: sending DTMF, cold transfer, and recordings reported by
the carrier (voicecalld-tools(7)).

``CallControl`` holds the manager's commands for these. It works through
the manager's parts (the call table, steps run by its interpreter, the
log and the event bus), so a call's state still changes only in
``lifecycle.Call``.

* ``dtmf``: checked against ``media.dtmf``, then the call's ``send dtmf``
  input; the carrier sends the digits (in-band on a streamed call).
* ``transfer``: the target must be in ``transfer.allowTo`` (else -32602,
  and the carrier is never asked); the call's ``transfer`` input makes the
  carrier say the message and dial the target, and the command waits for
  the outcome: the call ends ``transferred``, or the transfer fails (busy,
  no answer, refused) and the call goes on, which the caller is told.
* ``report_recording``: a carrier's (signed) report of a recording. Carriers
  report recordings once they are processed, usually after the call has
  ended, so the final record of an ended call is amended: the new snapshot
  is logged and replaces the one kept in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .calls import Action, State
from .errors import InvalidParams, NotConnected, ProviderError
from .events import EventBus, EventParams
from .lifecycle import Call
from .livecalls import LiveCall, LiveCalls, now_ms
from .media import dtmf as dtmf_digits
from .phone import is_e164, mask
from .store import Store

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config


class Engine(Protocol):
    """What call control uses of the manager (``manager.CallManager``)."""

    config: Config
    calls: LiveCalls
    store: Store
    bus: EventBus

    def _run(self, live: LiveCall, step: Callable[[Call], list[Action]], raise_errors: bool = False) -> None: ...
    def _check_message(self, message: object) -> str: ...

log = logging.getLogger("voicecalld.manager")

#: Beyond the ring timeout and the message, how long a transfer may take to
#: be reported before its command gives up waiting (the call goes on).
TRANSFER_MARGIN = 30.0
#: Seconds of speech per character of a transfer's message, for that wait.
SECONDS_PER_CHAR = 0.1
MAX_URL = 2048
CHANNELS = ("dual", "mono")


def check_transfer_target(to: object, allow_to: tuple[str, ...]) -> str:
    """``to`` if a transfer may dial it, else ``InvalidParams``."""
    if not is_e164(to):
        raise InvalidParams(f"to must be an E.164 number like +15550001234, got {to!r}")
    assert isinstance(to, str)
    if not allow_to:
        raise InvalidParams("transfers are off: list the numbers calls may be transferred to in "
                            "transfer.allowTo")
    if to not in allow_to:
        raise InvalidParams(f"{to} is not in transfer.allowTo; calls may only be transferred to "
                            f"{', '.join(allow_to)}")
    return to


def clean_recording(recording: dict[str, Any]) -> dict[str, Any] | None:
    """A carrier's recording as the record keeps it (``url``,
    ``durationSec``, ``channels``), or None if it has no usable URL."""
    url = recording.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        return None
    duration = recording.get("durationSec")
    if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
        duration = None
    channels = recording.get("channels")
    return {"url": url, "durationSec": duration, "channels": channels if channels in CHANNELS else None}


class CallControl:
    def __init__(self, manager: Engine) -> None:
        self.manager = manager
        #: Serializes amendments of ended calls' records (two recordings
        #: reported at once must not lose one).
        self._amend_lock = threading.Lock()

    # -- DTMF --

    def dtmf(self, call_id: object, digits: object) -> dict[str, Any]:
        checked = dtmf_digits.check(digits)
        m = self.manager
        live = m.calls.find(call_id)
        m._run(live, lambda c: c.send_dtmf(checked), raise_errors=True)
        return {"callId": live.call.id, "ok": True}

    # -- transfer --

    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]:
        m = self.manager
        target = check_transfer_target(to, m.config.transfer.allowTo)
        text = "" if message is None else m._check_message(message)
        live = m.calls.find(call_id)
        outcome: list[EventParams] = []
        done = threading.Event()

        def watch(params: EventParams) -> None:  # on the publisher's thread, under the call's lock: only note
            if params.get("event") in ("call.ended", "call.transfer"):
                outcome.append(params)
                done.set()

        sub = m.bus.subscribe(watch, live.call.id)
        try:
            log.info("call %s: transferring to %s", live.call.id, mask(target))
            try:
                m._run(live, lambda c: c.transfer(target, text, now_ms()), raise_errors=True)
            except ProviderError as exc:
                log.warning("call %s: the carrier refused the transfer to %s: %s; the call goes on",
                            live.call.id, mask(target), exc.message)
                raise
            timeout = m.config.ringTimeoutMs / 1000 + len(text) * SECONDS_PER_CHAR + TRANSFER_MARGIN
            if not done.wait(timeout):
                raise ProviderError(f"the carrier did not report within {timeout:g} s whether the transfer to "
                                    f"{target} succeeded; the call may still be transferring")
        finally:
            m.bus.unsubscribe(sub)
        event = outcome[0]
        data = event.get("data") or {}
        if event["event"] == "call.transfer":
            error = data.get("error") or "the transfer failed"
            log.warning("call %s: transfer to %s failed: %s; the call goes on", live.call.id, mask(target), error)
            raise ProviderError(f"the transfer to {target} failed: {error}; the call is still connected")
        reason = data.get("reason")
        if reason != str(State.TRANSFERRED):
            raise NotConnected(f"call {live.call.id} ended ({reason}) before the transfer was done",
                               {"callId": live.call.id, "endReason": reason})
        log.info("call %s: transferred to %s", live.call.id, mask(target))
        return {"callId": live.call.id, "ok": True, "endReason": str(State.TRANSFERRED)}

    # -- recordings --

    def report_recording(self, call_id: str | None, provider_call_id: str | None,
                         recording: dict[str, Any]) -> bool:
        """A carrier reports a recording of a call, live or ended. False if
        the call is unknown or the report unusable."""
        m = self.manager
        entry = clean_recording(recording)
        if entry is None:
            log.warning("call %s: a recording report without a usable URL was ignored", call_id)
            return False
        if call_id is None and provider_call_id:
            call_id = m.calls.by_provider_id(provider_call_id)
            if call_id is None:
                ended = m.calls.ended_by_provider_id(provider_call_id)
                call_id = ended[0] if ended else None
        if not call_id:
            log.info("a recording for an unknown call (%s) was ignored", provider_call_id)
            return False
        live = m.calls.get(call_id)
        if live is not None:
            applied: list[bool] = []

            def note(c: Call) -> list[Action]:
                actions = c.note_recording(entry)
                if actions is not None:
                    applied.append(True)
                return actions or []

            m._run(live, note)
            if applied:
                log.info("call %s: the carrier reported a recording (%s s)", call_id, entry["durationSec"])
                return True
        return self._amend_ended(call_id, entry)

    def _amend_ended(self, call_id: str, entry: dict[str, Any]) -> bool:
        m = self.manager
        with self._amend_lock:
            snapshot = m.calls.ended(call_id)
            if snapshot is None:
                log.info("call %s: a recording for an unknown call was ignored", call_id)
                return False
            recordings = [dict(r) for r in snapshot.get("recordings") or [] if isinstance(r, dict)]
            if any(r.get("url") == entry["url"] for r in recordings):
                return True  # reported again (a retried webhook)
            snapshot = {**snapshot, "recordings": [*recordings, entry]}
            try:
                m.store.append(snapshot)
            except Exception as exc:  # noqa: BLE001 - StoreFailed or worse: the report is lost, say so
                log.error("call %s: a reported recording could not be logged: %s", call_id,
                          getattr(exc, "message", exc))
                return False
            m.calls.amend_ended(call_id, snapshot)
        log.info("call %s: the carrier reported a recording (%s s)", call_id, entry["durationSec"])
        if m.bus:
            m.bus.publish("call.recording", call_id, snapshot, dict(entry))
        return True
