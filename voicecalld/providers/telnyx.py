"""The Telnyx carrier: Call Control v2 (https://developers.telnyx.com/api/call-control).

Outbound calls are dialed with ``POST /v2/calls``; every later command is
``POST /v2/calls/{call_control_id}/actions/<cmd>``. Each request carries a
fresh ``command_id``, so Telnyx deduplicates retries and every request is
safe to retry (``RestClient(idempotent=True)``). Our call id rides along
as base64 ``client_state``, which Telnyx echoes in every webhook; that is
how events find their call even before the dial's response has arrived.

Webhooks are verified (Ed25519, ``telnyx_signature``), deduplicated by
``data.id``, acknowledged with 200 at once, and processed on a per-call
serial worker (``KeyedWorkQueue``): Telnyx retries slow acknowledgements,
and processing an event often means REST calls (answer, speak, hang up)
that must not hold up the 2xx. One call's events stay in order; the call
state machine ignores anything that would move a call backwards. Events
acknowledged but not yet processed when the daemon stops are processed
first (for up to ``DRAIN_SECONDS``): Telnyx will not send them again.
Rejected webhooks are logged at a bounded rate (``RateLimitedLog``).
A finished call's leg is never made again by a late event or reply
(``telnyx_legs``).

Event mapping (Telnyx -> normalized):

- ``call.initiated``: outgoing -> ringing (Telnyx has no separate ringing
  webhook; the network is alerting the callee). Incoming -> the inbound
  policy decides; accepted calls are answered (with our ``client_state``),
  rejected ones are hung up, exactly once per ``call_control_id``.
- ``call.answered`` -> answered (the state machine then speaks).
- ``call.speak.started`` / ``call.speak.ended`` -> speaking / played.
  Telnyx plays speak commands one after another, so a per-call FIFO of
  utterance ids names the utterance; a speak cut off by a hang-up
  (``status`` other than ``completed``) is not reported as played.
- ``call.transcription`` (inbound track) -> speech, interim or final.
- ``call.dtmf.received`` -> dtmf.
- ``call.machine.detection.ended`` and ``call.machine.premium.detection.ended``
  -> detected (``answeredBy``); ``call.machine.premium.greeting.ended``
  (and the plain variant) -> the greeting ended. See ``telnyx_amd``.
- ``call.hangup`` -> ended, reason from ``telnyx_events.end_reason``.

A dial refused for the account's dials per second (429, code 90103,
https://developers.telnyx.com/docs/voice/programmable-voice/dials-per-second-limit)
raises ``RateLimited`` at once: the dial queue paces and retries it.
DTMF, transfer and recording: ``telnyx_control`` (``send_dtmf``;
``transfer``, whose new leg's webhooks say how it went; ``record_start``
once answered, and ``call.recording.saved``).

Listening: transcription (inbound track only, so the bot never hears
itself) starts at the first listening turn and keeps running until the
call ends. Restarting it per turn would cost two commands a turn and clip
the first words of a callee who answers the moment the prompt ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from werkzeug.wrappers import Response

from .. import jsonsafe, metrics
from ..calls import CallEvent, CallRecord, EventType, SendDtmf, Speak, State, Transfer
from ..errors import ProviderError, RateLimited
from ..httpjson import json_response
from ..lru import Bounded
from ..phone import mask
from ..ratelog import RateLimitedLog
from ..workqueue import KeyedWorkQueue
from . import telnyx_amd, telnyx_signature
from . import telnyx_events as wire
from .base import Capabilities, CarrierStatus, Provider
from .http import RestClient, retry_after
from .telnyx_control import TelnyxControl, is_transfer_message
from .telnyx_events import ring_timeout_secs, time_limit_secs
from .telnyx_legs import Leg, LegTable
from .telnyx_signature import KeyCache as _KeyCache
from .telnyx_signature import check_signature

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ..config import Config

log = logging.getLogger(__name__)

BASIC_VOICES = frozenset({"male", "female"})
_SEEN_WEBHOOKS = 4096     # remembered data.id values; Telnyx retries within minutes
DRAIN_SECONDS = 5.0       # at shutdown, acknowledged webhooks still queued are processed for this long



class TelnyxProvider(Provider):
    name = "telnyx"
    # speak's payload: "There is a 3,000 character limit"
    # (https://developers.telnyx.com/api/call-control/speak-call). Speech is
    # one command per utterance; listening is transcription_start/_stop.
    # Dials per second: Telnyx refuses dials past the account's limit with
    # 429 / 90103, counted over a rolling 5 s window
    # (https://developers.telnyx.com/docs/voice/programmable-voice/dials-per-second-limit);
    # 6 per second stays under it with room for the account's other dials.
    capabilities = Capabilities(max_message_chars=3000, dials_per_second=6.0)

    def __init__(self, config: Config, *, workers: int = 8, max_pending: int = 2048) -> None:
        super().__init__()
        telnyx = config.telnyx
        self._rest = RestClient("Telnyx", telnyx.apiBaseUrl, headers={"Accept": "application/json"},
                                timeout=(5.0, 10.0))
        self._legs = LegTable()
        self._lock = self._legs.lock  # also guards the legs' fields
        self._seen: Bounded[str, None] = Bounded(_SEEN_WEBHOOKS)
        self._keys = _KeyCache()
        self._work = KeyedWorkQueue("telnyx-events", workers=workers, max_pending=max_pending)
        self._rejections = RateLimitedLog(log)
        self._control = TelnyxControl(self)
        self.accepted = 0   # webhooks acknowledged and queued
        self.processed = 0  # ... and processed (for status, and tests waiting for quiet)

    # -- REST -------------------------------------------------------------------------

    @property
    def _config(self) -> Any:
        return self.sink.config

    def _post(self, path: str, body: dict[str, Any], what: str, *,
              ended_ok: bool = False, paced: bool = False) -> dict[str, Any] | None:
        """POST with a fresh command_id; returns ``data``. A 422/90018 (the
        call has already ended) returns None when ``ended_ok``. ``paced``:
        a 429 raises ``RateLimited`` at once (the dial queue retries it)."""
        telnyx = self._config.telnyx
        body = {**body, "command_id": str(uuid.uuid4())}
        response = self._rest.request(
            "POST", telnyx.apiBaseUrl.rstrip("/") + path, idempotent=True, json=body,
            retry_rate_limited=not paced, headers={"Authorization": f"Bearer {telnyx.apiKey or ''}"})
        if 200 <= response.status_code < 300:
            try:
                document = jsonsafe.loads(response.content)
            except ValueError:
                document = None
            data = document.get("data") if isinstance(document, dict) else None
            return data if isinstance(data, dict) else {}
        failure = wire.api_failure(response.status_code, response.content, what)
        if response.status_code == 429:
            raise RateLimited(failure.message, provider_code=failure.code,
                              retry_after=retry_after(response.headers.get("Retry-After")))
        if ended_ok and failure.code == wire.CALL_ENDED:
            log.debug("Telnyx could not %s: the call had already ended", what)
            return None
        raise ProviderError(failure.message, provider_code=failure.code, status=failure.status,
                            retryable=failure.status == 429 or failure.status >= 500)

    def _command(self, ccid: str, name: str, body: dict[str, Any], what: str, *,
                 ended_ok: bool = False) -> bool:
        """Send one command. With ``ended_ok``, a call that has already ended
        returns False instead of raising: for a hang-up that is the goal
        reached; for speech or listening it means the callee is gone, and
        the call.hangup webhook (which says why) ends the call, rather than
        this race turning into an error."""
        path = f"/v2/calls/{quote(ccid, safe=':')}/actions/{name}"  # ids are opaque: never let one add a path
        return self._post(path, body, what, ended_ok=ended_ok) is not None

    def _ccid(self, record: CallRecord) -> str:
        leg = self._legs.of(record)
        ccid = record.providerCallId or (leg.ccid if leg else None)
        if not ccid:
            raise ProviderError(f"call {record.callId} has no Telnyx call_control_id yet; try again shortly",
                                retryable=True)
        return ccid

    # -- call control -------------------------------------------------------------------

    def initiate(self, record: CallRecord) -> str:
        config = self._config
        leg = self._legs.dialing(record.callId)
        body: dict[str, Any] = {
            "connection_id": config.telnyx.connectionId,
            "to": record.to,
            "from": record.from_ or config.fromNumber,
            "webhook_url": self.webhook_url,
            "webhook_url_method": "POST",
            "client_state": wire.encode_client_state(record.callId),
            "timeout_secs": ring_timeout_secs(config.ringTimeoutMs),
            "time_limit_secs": time_limit_secs(config.maxDurationSeconds, config.ringTimeoutMs),
        }
        detection = telnyx_amd.dial_mode(config)
        if detection is not None:
            body["answering_machine_detection"] = detection
        try:
            data = self._post("/v2/calls", body, "place the call", paced=True) or {}
            ccid = data.get("call_control_id")
            if not isinstance(ccid, str) or not ccid:
                raise ProviderError("Telnyx accepted the call but returned no call_control_id")
        except Exception:
            self._legs.dial_failed(leg)
            raise
        cancel = self._legs.dialed(leg, ccid)
        log.debug("call %s: Telnyx call_control_id %s", record.callId, ccid)
        if cancel:
            # The call was ended while the dial was in flight: the record is
            # already closed, so only the carrier's leg is left to hang up.
            log.info("call %s: ended while dialing; cancelling the Telnyx call", record.callId)
            try:
                self._command(ccid, "hangup", {}, "hang up the call", ended_ok=True)
            except ProviderError as exc:
                log.warning("call %s: %s", record.callId, exc.message)
        return ccid

    def hangup(self, record: CallRecord) -> None:
        leg = self._legs.of(record)
        ccid = record.providerCallId or (leg.ccid if leg else None)
        if ccid is None:
            if leg is not None:
                with self._lock:
                    if leg.dialing:
                        leg.hangup_pending = True  # initiate hangs up once it has the id
            return  # no Telnyx call exists (yet): nothing to hang up
        self._command(ccid, "hangup", {}, "hang up the call", ended_ok=True)

    def speak(self, record: CallRecord, action: Speak) -> None:
        telnyx = self._config.telnyx
        ccid = self._ccid(record)
        leg = self._legs.for_record(record)
        body: dict[str, Any] = {"payload": action.text, "payload_type": "text", "voice": telnyx.voice,
                                "language": telnyx.language}
        if telnyx.voice in BASIC_VOICES:
            body["service_level"] = "basic"
        # Queued before the request: call.speak.started may arrive before the response.
        with self._lock:
            leg.utterances.append(action.utterance_id)
        done = False
        try:
            done = self._command(ccid, "speak", body, "speak", ended_ok=True)
        finally:
            if not done:
                with self._lock:
                    if action.utterance_id in leg.utterances:
                        leg.utterances.remove(action.utterance_id)

    def start_listening(self, record: CallRecord, turn: int | None) -> None:
        telnyx = self._config.telnyx
        ccid = self._ccid(record)
        leg = self._legs.for_record(record)
        with self._lock:
            if leg.transcribing:
                return  # already running for this call (see the module docstring)
            leg.transcribing = True
        engine = telnyx.transcriptionEngine
        engine_config: dict[str, Any] = {"transcription_engine": engine, "language": telnyx.language}
        if engine == "Google":
            engine_config["interim_results"] = True
        try:
            self._command(ccid, "transcription_start",
                          {"transcription_engine": engine, "transcription_engine_config": engine_config,
                           "transcription_tracks": "inbound"},
                          "start transcription", ended_ok=True)
        except Exception:
            with self._lock:
                leg.transcribing = False
            raise

    def stop_listening(self, record: CallRecord) -> None:
        leg = self._legs.of(record)
        with self._lock:
            if leg is None or not leg.transcribing:
                return
            leg.transcribing = False
        self._command(self._ccid(record), "transcription_stop", {}, "stop transcription", ended_ok=True)

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        self._control.send_dtmf(record, action)

    def transfer(self, record: CallRecord, action: Transfer) -> None:
        self._control.transfer(record, action)

    def start_recording(self, record: CallRecord) -> None:
        self._control.start_recording(record)

    def call_status(self, record: CallRecord) -> CarrierStatus | None:
        if not record.providerCallId:
            return None
        telnyx = self._config.telnyx
        response = self._rest.request(
            "GET", f"{telnyx.apiBaseUrl.rstrip('/')}/v2/calls/{quote(record.providerCallId, safe=':')}",
            idempotent=True,
            headers={"Authorization": f"Bearer {telnyx.apiKey or ''}"})
        if response.status_code in (404, 410, 422):
            return CarrierStatus(live=False, reason=State.COMPLETED)
        if response.status_code != 200:
            raise ProviderError(wire.api_failure(response.status_code, response.content,
                                                 "report the call's status").message,
                                status=response.status_code)
        try:
            data = jsonsafe.loads(response.content)["data"]
            alive = bool(data["is_alive"])
        except (ValueError, KeyError, TypeError):
            return None
        if not alive:
            return CarrierStatus(live=False, reason=State.COMPLETED)
        return CarrierStatus(live=True, answered=int(data.get("call_duration") or 0) > 0)

    def forget(self, record: CallRecord) -> None:
        # Runs under the call's lock in the manager: dictionary work only.
        self._legs.forget(record)

    def stop(self) -> None:
        # Webhooks already acknowledged with a 2xx will not be sent again:
        # process what is queued (for a bounded time) rather than drop it.
        self._work.stop(timeout=DRAIN_SECONDS, drain=True)
        self._rest.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pendingEvents": self._work.pending, "acceptedEvents": self.accepted,
                "processedEvents": self.processed, "legs": len(self._legs)}

    # -- webhooks -------------------------------------------------------------------------

    def handle_webhook(self, request: Request) -> Response:
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
        if self._legs.answering(call_id, ccid) is None:
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
            self._command(ccid, "answer", {"client_state": wire.encode_client_state(call_id)},
                          "answer the call")
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
        self._event(hook, EventType.SPEECH, self._find(hook), transcript=result.text,
                    is_final=result.is_final, confidence=result.confidence)

    def _on_dtmf(self, hook: wire.Webhook) -> None:
        digit = hook.text("digit")
        if digit:
            self._event(hook, EventType.DTMF, self._find(hook), digits=digit)

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
    "call.initiated": TelnyxProvider._on_initiated,
    "call.answered": TelnyxProvider._on_answered,
    "call.speak.started": TelnyxProvider._on_speak_started,
    "call.speak.ended": TelnyxProvider._on_speak_ended,
    "call.transcription": TelnyxProvider._on_transcription,
    "call.dtmf.received": TelnyxProvider._on_dtmf,
    "call.machine.detection.ended": TelnyxProvider._on_machine_detection,
    "call.machine.premium.detection.ended": TelnyxProvider._on_machine_detection,
    "call.machine.greeting.ended": TelnyxProvider._on_greeting_ended,
    "call.machine.premium.greeting.ended": TelnyxProvider._on_greeting_ended,
    "call.hangup": TelnyxProvider._on_hangup,
}
