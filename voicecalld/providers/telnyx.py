"""The Telnyx carrier: Call Control v2 (protocols.md F-G).

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
state machine ignores anything that would move a call backwards.

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
- ``call.machine.detection.ended`` (and the premium variant) with result
  ``machine`` -> we hang up and the call ends as voicemail.
- ``call.hangup`` -> ended, reason from ``telnyx_events.end_reason``.

Listening: transcription (inbound track only, so the bot never hears
itself) starts at the first listening turn and keeps running until the
call ends. Restarting it per turn would cost two commands a turn and clip
the first words of a callee who answers the moment the prompt ends.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import nacl.signing
from werkzeug.wrappers import Response

from .. import jsonsafe
from ..calls import CallEvent, CallRecord, EventType, Speak, State
from ..errors import ProviderError
from ..phone import mask
from ..workqueue import KeyedWorkQueue
from . import telnyx_events as wire
from . import telnyx_signature
from .base import CarrierStatus, Provider
from .http import RestClient

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ..config import Config

log = logging.getLogger(__name__)

MIN_RING_SECS, MAX_RING_SECS = 5, 600        # Telnyx's bounds for timeout_secs
MIN_LIMIT_SECS, MAX_LIMIT_SECS = 30, 14400   # ... and for time_limit_secs
LIMIT_MARGIN_SECS = 60    # the carrier's backstop lies beyond our own max-duration timer
BASIC_VOICES = frozenset({"male", "female"})
MACHINE_RESULTS = frozenset({"machine"})
_SEEN_WEBHOOKS = 4096     # remembered data.id values; Telnyx retries within minutes
_ENDED_LEGS = 1024        # call_control_ids we already hung up or rejected


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body) + "\n", status=status, mimetype="application/json")


@dataclass
class _Leg:
    """What the provider tracks about one Telnyx call leg."""

    call_id: str | None
    ccid: str | None = None
    incoming: bool = False
    answered: bool = False
    dialing: bool = False          # the dial request has not returned yet
    hangup_pending: bool = False   # a hang-up was asked for while dialing
    transcribing: bool = False
    end_override: State | None = None
    #: Utterance ids in the order their speak commands were sent.
    utterances: collections.deque[str] = field(default_factory=collections.deque)


class _LRU:
    """A bounded set that forgets its oldest members."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, item: str) -> bool:
        return item in self._items

    def add(self, item: str) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, item: str) -> None:
        self._items.pop(item, None)


class _KeyCache:
    """The parsed public key, re-parsed only when the configured text changes (SIGHUP)."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._key: nacl.signing.VerifyKey | None = None
        self._error: str | None = None

    def get(self, text: str | None) -> nacl.signing.VerifyKey:
        if not text:
            raise telnyx_signature.SignatureError("no telnyx.publicKey is configured to verify webhooks")
        if text != self._text:
            try:
                self._key, self._error = telnyx_signature.load_public_key(text), None
            except ValueError as exc:
                self._key, self._error = None, str(exc)
            self._text = text
        if self._key is None:
            raise telnyx_signature.SignatureError(f"telnyx.publicKey is unusable: {self._error}")
        return self._key


def check_signature(key: nacl.signing.VerifyKey, headers: Any, raw_body: bytes, now: float,
                    tolerance: float | None = telnyx_signature.DEFAULT_TOLERANCE) -> None:
    """Verify one request; raises ``SignatureError``. ``headers`` is any
    case-insensitive mapping (werkzeug's Headers)."""
    telnyx_signature.verify(key, signature_b64=headers.get(telnyx_signature.SIGNATURE_HEADER),
                            timestamp=headers.get(telnyx_signature.TIMESTAMP_HEADER), raw_body=raw_body,
                            now=now, tolerance=tolerance)


class TelnyxProvider(Provider):
    name = "telnyx"

    def __init__(self, config: Config, *, workers: int = 8, max_pending: int = 2048) -> None:
        super().__init__()
        telnyx = config.telnyx
        self._rest = RestClient("Telnyx", telnyx.apiBaseUrl, headers={"Accept": "application/json"},
                                timeout=(5.0, 10.0))
        self._lock = threading.Lock()
        self._by_call: dict[str, _Leg] = {}
        self._by_ccid: dict[str, _Leg] = {}
        self._seen = _LRU(_SEEN_WEBHOOKS)
        self._ended = _LRU(_ENDED_LEGS)   # ccids hung up as rejected/unknown: never twice
        self._keys = _KeyCache()
        self._work = KeyedWorkQueue("telnyx-events", workers=workers, max_pending=max_pending)

    # -- REST -------------------------------------------------------------------------

    @property
    def _config(self) -> Any:
        return self.manager.config

    def _post(self, path: str, body: dict[str, Any], what: str, *,
              ended_ok: bool = False) -> dict[str, Any] | None:
        """POST with a fresh command_id; returns ``data``. A 422/90018 (the
        call has already ended) returns None when ``ended_ok``."""
        telnyx = self._config.telnyx
        body = {**body, "command_id": str(uuid.uuid4())}
        response = self._rest.request(
            "POST", telnyx.apiBaseUrl.rstrip("/") + path, idempotent=True, json=body,
            headers={"Authorization": f"Bearer {telnyx.apiKey or ''}"})
        if 200 <= response.status_code < 300:
            try:
                document = jsonsafe.loads(response.content)
            except ValueError:
                document = None
            data = document.get("data") if isinstance(document, dict) else None
            return data if isinstance(data, dict) else {}
        failure = wire.api_failure(response.status_code, response.content, what)
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

    def _leg_of(self, record: CallRecord) -> _Leg | None:
        with self._lock:
            leg = self._by_call.get(record.callId)
            if leg is None and record.providerCallId:
                leg = self._by_ccid.get(record.providerCallId)
            return leg

    def _ccid(self, record: CallRecord) -> str:
        leg = self._leg_of(record)
        ccid = record.providerCallId or (leg.ccid if leg else None)
        if not ccid:
            raise ProviderError(f"call {record.callId} has no Telnyx call_control_id yet; try again shortly",
                                retryable=True)
        return ccid

    def _leg_for(self, record: CallRecord) -> _Leg:
        """The record's leg, created if the daemon restarted and lost it."""
        with self._lock:
            leg = self._by_call.get(record.callId)
            if leg is None:
                leg = _Leg(record.callId, record.providerCallId, incoming=str(record.direction) == "inbound")
                self._by_call[record.callId] = leg
                if record.providerCallId:
                    self._by_ccid.setdefault(record.providerCallId, leg)
            return leg

    # -- call control -------------------------------------------------------------------

    def initiate(self, record: CallRecord) -> str:
        config = self._config
        leg = _Leg(record.callId, dialing=True)
        with self._lock:
            self._by_call[record.callId] = leg
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
        if config.telnyx.machineDetection:
            body["answering_machine_detection"] = "detect"
        try:
            data = self._post("/v2/calls", body, "place the call") or {}
            ccid = data.get("call_control_id")
            if not isinstance(ccid, str) or not ccid:
                raise ProviderError("Telnyx accepted the call but returned no call_control_id")
        except Exception:
            with self._lock:
                if self._by_call.get(record.callId) is leg:
                    del self._by_call[record.callId]
            raise
        with self._lock:
            leg.ccid, leg.dialing = ccid, False
            cancel = leg.hangup_pending
            if not cancel:  # a cancelled call has been forgotten already
                self._by_ccid[ccid] = leg
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
        leg = self._leg_of(record)
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
        leg = self._leg_for(record)
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
        leg = self._leg_for(record)
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
        with self._lock:
            leg = self._by_call.get(record.callId)
            if leg is None or not leg.transcribing:
                return
            leg.transcribing = False
        self._command(self._ccid(record), "transcription_stop", {}, "stop transcription", ended_ok=True)

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
        with self._lock:
            leg = self._by_call.pop(record.callId, None)
            if leg is None:
                return
            for ccid in {record.providerCallId, leg.ccid}:
                if ccid and self._by_ccid.get(ccid) is leg:
                    del self._by_ccid[ccid]

    def stop(self) -> None:
        self._work.stop(timeout=5.0)
        self._rest.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pendingEvents": self._work.pending}

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
                log.warning("rejected a Telnyx webhook from %s: %s", request.remote_addr, exc.reason)
                return _json(401, {"error": "webhook signature verification failed"})
        try:
            hook = wire.parse(raw)
        except wire.WebhookFormatError as exc:
            log.warning("ignored a malformed Telnyx webhook: %s", exc)
            return _json(400, {"error": f"not a Telnyx webhook: {exc}"})
        with self._lock:
            duplicate = hook.id in self._seen
            if not duplicate:
                self._seen.add(hook.id)
        if duplicate:
            log.debug("Telnyx %s %s (attempt %d) already handled", hook.type, hook.id, hook.attempt)
            return _json(200, {"ok": True, "duplicate": True})
        key = hook.call_control_id or hook.call_id or "-"
        if not self._work.submit(key, lambda: self._process(hook)):
            with self._lock:
                self._seen.discard(hook.id)  # not handled: Telnyx's retry must be
            log.warning("Telnyx %s for %s: event queue is full; asking Telnyx to retry", hook.type, key)
            return Response("busy; retry later\n", status=503, mimetype="text/plain",
                            headers={"Retry-After": "1"})
        return _json(200, {"ok": True})

    # -- events (on the per-call worker) ------------------------------------------------------

    def _process(self, hook: wire.Webhook) -> None:
        handler = _HANDLERS.get(hook.type)
        if handler is None:
            log.debug("Telnyx %s for %s ignored", hook.type, hook.call_control_id)
            return
        handler(self, hook)

    def _find(self, hook: wire.Webhook) -> _Leg | None:
        """The leg an event belongs to: by client_state first, else by call_control_id."""
        call_id, ccid = hook.call_id, hook.call_control_id
        with self._lock:
            leg = self._by_call.get(call_id) if call_id else None
            if leg is None and ccid:
                leg = self._by_ccid.get(ccid)
            if leg is not None and ccid and leg.ccid is None:
                # call.initiated can beat the dial's response here.
                leg.ccid = ccid
                self._by_ccid[ccid] = leg
            return leg

    def _event(self, hook: wire.Webhook, type_: EventType, leg: _Leg | None, suffix: str = "",
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
            self.manager.attach_provider_id(call_id, hook.call_control_id)
        self._event(hook, EventType.RINGING, leg)

    def _inbound(self, hook: wire.Webhook) -> None:
        ccid = hook.call_control_id
        if not ccid:
            log.warning("Telnyx incoming call.initiated without call_control_id ignored")
            return
        with self._lock:
            if ccid in self._by_ccid or ccid in self._ended:
                return  # already answered or already hung up
        from_, to = hook.text("from") or "", hook.text("to")
        snapshot, accepted = self.manager.accept_inbound(from_, to, ccid)
        call_id = snapshot["callId"]
        if not accepted:
            with self._lock:
                if ccid in self._ended:
                    return
                self._ended.add(ccid)
            try:
                self._command(ccid, "hangup", {}, "hang up the rejected call", ended_ok=True)
            except ProviderError as exc:
                log.warning("call %s: %s", call_id, exc.message)
            return
        leg = _Leg(call_id, ccid, incoming=True)
        with self._lock:
            self._by_call[call_id] = leg
            self._by_ccid[ccid] = leg
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
        if utterance is not None:  # a late start of speech already reported as ended is old news
            self._event(hook, EventType.SPEAKING, leg, utterance_id=utterance)

    def _on_speak_ended(self, hook: wire.Webhook) -> None:
        leg = self._find(hook)
        with self._lock:
            utterance = leg.utterances.popleft() if leg is not None and leg.utterances else None
        if utterance is None:
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
        if hook.text("result") not in MACHINE_RESULTS or not self._config.telnyx.machineDetection:
            return
        leg = self._find(hook)
        ccid = hook.call_control_id
        if leg is None or not ccid:
            return
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
    "call.hangup": TelnyxProvider._on_hangup,
}


def ring_timeout_secs(ring_timeout_ms: int) -> int:
    """``timeout_secs`` for the dial: our ring timeout, within Telnyx's bounds.
    (Below 5 s our own ring timer ends the call first.)"""
    return max(MIN_RING_SECS, min(MAX_RING_SECS, -(-int(ring_timeout_ms) // 1000)))


def time_limit_secs(max_duration: float, ring_timeout_ms: int) -> int:
    """``time_limit_secs``: a backstop beyond our own max-duration timer, so a
    call cannot run on forever if the daemon dies."""
    total = int(max_duration + ring_timeout_ms / 1000) + LIMIT_MARGIN_SECS
    return max(MIN_LIMIT_SECS, min(MAX_LIMIT_SECS, total))
