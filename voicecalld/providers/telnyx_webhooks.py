"""Telnyx webhooks: verified, deduplicated, acknowledged, and processed on a
per-call serial worker (see ``telnyx``, which maps each event type).

``streaming.started``, ``streaming.stopped`` and ``streaming.failed``
(https://developers.telnyx.com/api-reference/callbacks/call-streaming-failed)
report a media stream's life; a stream that stops or fails while the call
goes on hands listening back to Telnyx transcription (``telnyx_media``).
While a call's stream is open its speech-to-text and its ``dtmf`` frames
hear the caller, so ``call.transcription`` and ``call.dtmf.received``
(which Telnyx still sends) are not reported twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from werkzeug.wrappers import Response

from .. import metrics
from ..calls import CallEvent, EventType, State
from ..errors import ProviderError
from ..httpjson import json_response
from ..lru import Bounded
from ..phone import mask
from ..ratelog import RateLimitedLog
from ..workqueue import KeyedWorkQueue
from . import telnyx_amd, telnyx_signature
from . import telnyx_events as wire
from .telnyx_control import TelnyxControl, is_transfer_message
from .telnyx_legs import STREAM_OPEN, Leg, LegTable
from .telnyx_signature import KeyCache, check_signature

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from .base import CallSink

log = logging.getLogger("voicecalld.providers.telnyx")

_SEEN_WEBHOOKS = 4096     # remembered data.id values; Telnyx retries within minutes
DRAIN_SECONDS = 5.0       # at shutdown, acknowledged webhooks still queued are processed for this long


class Host(Protocol):
    """What the webhook side uses of the Telnyx provider (``telnyx.TelnyxProvider``)."""

    _legs: LegTable
    _lock: threading.Lock
    _control: TelnyxControl

    @property
    def sink(self) -> CallSink: ...
    def emit(self, event: CallEvent) -> None: ...
    def _command(self, ccid: str, name: str, body: dict[str, Any], what: str, *,
                 ended_ok: bool = False) -> bool: ...
    def stream_params(self, leg: Leg) -> dict[str, str]: ...
    def stream_ended(self, leg: Leg, stream_id: str | None, *, failed: bool, reason: str | None) -> None: ...


class Webhooks:
    """The provider's webhook side."""

    def __init__(self, provider: Host, work: KeyedWorkQueue) -> None:
        self.p = provider
        self._lock = provider._lock
        self._seen: Bounded[str, None] = Bounded(_SEEN_WEBHOOKS)
        self._keys = KeyCache()
        self._work = work
        self._rejections = RateLimitedLog(log)
        self.accepted = 0   # webhooks acknowledged and queued
        self.processed = 0  # ... and processed (for status, and tests waiting for quiet)

    @property
    def pending(self) -> int:
        return self._work.pending

    def submit(self, key: str, job: Callable[[], None]) -> bool:
        """Run ``job`` on the call's serial worker, in order with its webhooks."""
        return self._work.submit(key, job)

    def stop(self) -> None:
        # Webhooks already acknowledged with a 2xx will not be sent again:
        # process what is queued (for a bounded time) rather than drop it.
        self._work.stop(timeout=DRAIN_SECONDS, drain=True)

    # The provider's parts the handlers use.
    @property
    def _config(self) -> Any:
        return self.p.sink.config

    @property
    def _legs(self) -> LegTable:
        return self.p._legs

    @property
    def _control(self) -> TelnyxControl:
        return self.p._control

    @property
    def sink(self) -> CallSink:
        return self.p.sink

    def emit(self, event: CallEvent) -> None:
        self.p.emit(event)

    def _command(self, ccid: str, name: str, body: dict[str, Any], what: str, *, ended_ok: bool = False) -> bool:
        return self.p._command(ccid, name, body, what, ended_ok=ended_ok)

    def handle(self, request: Request) -> Response:
        raw = request.get_data(cache=True)
        config = self._config
        if not config.skipSignatureVerification:
            try:
                check_signature(self._keys.get(config.telnyx.publicKey), request.headers, raw, time.time())
            except telnyx_signature.SignatureError as exc:
                # Fail closed: no key, no headers, a bad signature or a stale
                # timestamp all get 401 and change nothing.
                self._rejections.warning(exc.kind, "rejected a Telnyx webhook from %s: %s", request.remote_addr,
                                         exc.reason)
                metrics.webhook("rejected")
                return json_response(401, {"error": "webhook signature verification failed"})
        try:
            hook = wire.parse(raw)
        except wire.WebhookFormatError as exc:
            log.warning("ignored a malformed Telnyx webhook: %s", exc)
            metrics.webhook("error")
            return json_response(400, {"error": f"not a Telnyx webhook: {exc}"})
        with self._lock:
            duplicate = hook.id in self._seen
            if not duplicate:
                self._seen.put(hook.id, None)
        if duplicate:
            metrics.webhook("replay")
            log.debug("Telnyx %s %s (attempt %d) already handled", hook.type, hook.id, hook.attempt)
            return json_response(200, {"ok": True, "duplicate": True})
        key = hook.call_control_id or hook.call_id or "-"
        with self._lock:
            self.accepted += 1  # before it can run: processed never overtakes accepted
        if not self._work.submit(key, lambda: self._process(hook)):
            with self._lock:
                self.accepted -= 1
                self._seen.pop(hook.id)  # not handled: Telnyx's retry must be
            log.warning("Telnyx %s for %s: event queue is full; asking Telnyx to retry", hook.type, key)
            metrics.webhook("error")
            return Response("busy; retry later\n", status=503, mimetype="text/plain",
                            headers={"Retry-After": "1"})
        metrics.webhook("accepted")
        return json_response(200, {"ok": True})

    # -- events (on the per-call worker) ------------------------------------------------------

    def _process(self, hook: wire.Webhook) -> None:
        try:
            if self._control.handle(hook):
                return
            handler = _HANDLERS.get(hook.type)
            if handler is None:
                log.debug("Telnyx %s for %s ignored", hook.type, hook.call_control_id)
                return
            handler(self, hook)
        finally:
            with self._lock:
                self.processed += 1

    def _find(self, hook: wire.Webhook) -> Leg | None:
        """The leg an event belongs to: by client_state first, else by call_control_id."""
        return self._legs.find(hook.call_id, hook.call_control_id)

    def _event(self, hook: wire.Webhook, type_: EventType, leg: Leg | None, suffix: str = "",
               **fields: Any) -> None:
        call_id = hook.call_id or (leg.call_id if leg else None)
        self.emit(CallEvent(type_, hook.id + suffix, call_id=call_id, provider_call_id=hook.call_control_id,
                            **fields))

    def _on_initiated(self, hook: wire.Webhook) -> None:
        if hook.incoming:
            self._inbound(hook)
            return
        leg = self._find(hook)
        call_id = hook.call_id or (leg.call_id if leg else None)
        if call_id and hook.call_control_id:
            self.sink.attach_provider_id(call_id, hook.call_control_id)
        self._event(hook, EventType.RINGING, leg)

    def _inbound(self, hook: wire.Webhook) -> None:
        ccid = hook.call_control_id
        if not ccid:
            log.warning("Telnyx incoming call.initiated without call_control_id ignored")
            return
        if self._legs.known(ccid):
            return  # already answered or already hung up
        from_, to = hook.text("from") or "", hook.text("to")
        snapshot, accepted = self.sink.accept_inbound(from_, to, ccid)
        call_id = snapshot["callId"]
        if not accepted:
            if not self._legs.end(ccid):
                return
            try:
                self._command(ccid, "hangup", {}, "hang up the rejected call", ended_ok=True)
            except ProviderError as exc:
                log.warning("call %s: %s", call_id, exc.message)
            return
        leg = self._legs.answering(call_id, ccid)
        if leg is None:
            # The call ended (and was forgotten) before it could be answered:
            # do not leave the caller ringing.
            try:
                self._command(ccid, "hangup", {}, "hang up the call", ended_ok=True)
            except ProviderError as exc:
                log.warning("call %s: %s", call_id, exc.message)
            return
        log.info("call %s: answering Telnyx call from %s", call_id, mask(from_))
        try:
            # client_state from here on names our call in every webhook.
            self._command(ccid, "answer", {"client_state": wire.encode_client_state(call_id),
                                           **self.p.stream_params(leg)}, "answer the call")
        except ProviderError as exc:
            if exc.provider_code == wire.CALL_ENDED:
                return  # the caller gave up first; call.hangup will say so
            log.warning("call %s: %s", call_id, exc.message)
            self.emit(CallEvent(EventType.ERROR, hook.id + ":answer", call_id=call_id, provider_call_id=ccid,
                                message=exc.message))

    def _on_answered(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        if leg is not None:
            with self._lock:
                leg.answered = True
        self._event(hook, EventType.ANSWERED, leg)

    def _on_speak_started(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        with self._lock:
            utterance = leg.utterances[0] if leg is not None and leg.utterances else None
        # A late start of speech already reported as ended is old news; a
        # transfer's message is no utterance of the call's.
        if utterance is not None and not is_transfer_message(utterance):
            self._event(hook, EventType.SPEAKING, leg, utterance_id=utterance)

    def _on_speak_ended(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        with self._lock:
            utterance = leg.utterances.popleft() if leg is not None and leg.utterances else None
        if utterance is None or (leg is not None and self._control.speak_ended(leg, utterance, hook)):
            return
        status = hook.text("status") or "completed"
        if status != "completed":
            # Cut off (call_hangup, cancelled_amd): the callee did not hear it all.
            log.debug("Telnyx speech %s ended with status %s", utterance, status)
            return
        self._event(hook, EventType.PLAYED, leg, utterance_id=utterance)

    def _on_transcription(self, hook: wire.Webhook) -> None:
        result = wire.transcript(hook.payload)
        if result is None or not result.text or result.track == "outbound":
            return  # nothing said, or the bot's own voice
        leg = self._find(hook)
        if leg is not None and leg.stream == STREAM_OPEN:
            return  # the stream's own speech-to-text hears the caller (transcription is being stopped)
        self._event(hook, EventType.SPEECH, leg, transcript=result.text,
                    is_final=result.is_final, confidence=result.confidence)

    def _on_streaming(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        if leg is None:
            return
        if hook.type == "streaming.started":
            log.debug("call %s: Telnyx media stream %s started", leg.call_id, hook.text("stream_id"))
            return
        reason = hook.text("failure_reason") if hook.type == "streaming.failed" else None
        self.p.stream_ended(leg, hook.text("stream_id"), failed=hook.type == "streaming.failed", reason=reason)

    def _on_dtmf(self, hook: wire.Webhook) -> None:
        digit = hook.text("digit")
        leg = self._find(hook)
        if leg is not None and leg.stream == STREAM_OPEN:
            return  # the stream's dtmf frames report the digits (Telnyx sends both)
        if digit:
            self._event(hook, EventType.DTMF, leg, digits=digit)

    def _on_machine_detection(self, hook: wire.Webhook) -> None:
        result, leg, ccid = hook.text("result"), self._find(hook), hook.call_control_id
        if (verdict := telnyx_amd.answered_by(result)) is not None:
            self._event(hook, EventType.DETECTED, leg, answered_by=verdict)
        if (result not in telnyx_amd.MACHINE_RESULTS or not self._config.telnyx.machineDetection
                or telnyx_amd.leaves_messages(self._config) or leg is None or not ccid):
            return  # with leave-message, the message waits for the greeting to end
        with self._lock:
            if leg.end_override is not None:
                return
            leg.end_override = State.VOICEMAIL
        log.info("call %s: answering machine detected; hanging up", leg.call_id)
        try:
            self._command(ccid, "hangup", {}, "hang up on the answering machine", ended_ok=True)
        except ProviderError as exc:
            # The call goes on; max-duration (or the callee) still ends it, as voicemail.
            log.warning("call %s: %s", leg.call_id, exc.message)

    def _on_greeting_ended(self, hook: wire.Webhook) -> None:
        """The machine's greeting ended (``beep_detected``; ``no_beep_detected`` too)."""
        if telnyx_amd.leaves_messages(self._config):
            self._event(hook, EventType.GREETING_ENDED, self._find(hook))

    def _on_hangup(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        with self._lock:
            override = leg.end_override if leg is not None else None
            answered = leg.answered if leg is not None else False
        reason = override or wire.end_reason(hook.payload.get("hangup_cause"),
                                             source=hook.payload.get("hangup_source"),
                                             incoming=hook.incoming, answered=answered)
        log.debug("Telnyx call %s hung up: cause %s, source %s -> %s", hook.call_control_id,
                  hook.payload.get("hangup_cause"), hook.payload.get("hangup_source"), reason)
        self._event(hook, EventType.ENDED, leg, reason=reason)


_HANDLERS = {
    "call.initiated": Webhooks._on_initiated,
    "call.answered": Webhooks._on_answered,
    "call.speak.started": Webhooks._on_speak_started,
    "call.speak.ended": Webhooks._on_speak_ended,
    "call.transcription": Webhooks._on_transcription,
    "call.dtmf.received": Webhooks._on_dtmf,
    "call.machine.detection.ended": Webhooks._on_machine_detection,
    "call.machine.premium.detection.ended": Webhooks._on_machine_detection,
    "call.machine.greeting.ended": Webhooks._on_greeting_ended,
    "call.machine.premium.greeting.ended": Webhooks._on_greeting_ended,
    "call.hangup": Webhooks._on_hangup,
    "streaming.started": Webhooks._on_streaming,
    "streaming.stopped": Webhooks._on_streaming,
    "streaming.failed": Webhooks._on_streaming,
}
