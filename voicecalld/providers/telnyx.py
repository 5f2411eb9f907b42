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

Live audio (``telnyx_media``): with ``streaming.enabled`` (and an OpenAI
key) the dial or the answer asks for a bidirectional media stream to the
daemon's stream endpoint, with a per-call token. Once its ``start`` is
admitted the call listens through the media layer's speech-to-text and
speaks over the stream (``stream_speaker``); Telnyx transcription, if it
was already running, is stopped. Until then, and if the stream fails or
stops while the call goes on (``streaming.failed``/``streaming.stopped``),
the call listens with transcription and speaks with ``speak``.

Webhooks are received by ``telnyx_webhooks``.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import jsonsafe
from ..calls import CallRecord, SendDtmf, Speak, State, Transfer
from ..errors import ProviderError, RateLimited
from ..media.framing import Speaker, ToneSender
from ..workqueue import KeyedWorkQueue
from . import telnyx_amd, telnyx_media
from . import telnyx_events as wire
from .base import Capabilities, CarrierStatus, Provider
from .http import RestClient, retry_after
from .streamed import warn_about_streaming
from .telnyx_control import TelnyxControl
from .telnyx_events import ring_timeout_secs, time_limit_secs
from .telnyx_legs import STREAM_ENDED, STREAM_OPEN, STREAM_REQUESTED, Leg, LegTable
from .telnyx_signature import KeyCache as _KeyCache
from .telnyx_signature import check_signature
from .telnyx_webhooks import Webhooks

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request, Response

    from ..config import Config

log = logging.getLogger(__name__)

BASIC_VOICES = frozenset({"male", "female"})
# Re-exported for tests and tools that verify webhooks the way the provider does.
__all__ = ["TelnyxProvider", "_KeyCache", "check_signature", "ring_timeout_secs", "time_limit_secs"]


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
        self._control = TelnyxControl(self)
        self._work = KeyedWorkQueue("telnyx-events", workers=workers, max_pending=max_pending)
        self._webhooks = Webhooks(self, self._work)
        #: Set by the media-stream side (``telnyx_media``): speak over the
        #: call's open stream (True), or leave it to ``speak`` (False).
        self.stream_speaker: Speaker | None = None
        #: Likewise for DTMF: tones in-band on the open stream, or ``send_dtmf``.
        self.stream_dtmf: ToneSender | None = None

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
        body.update(self.stream_params(leg))
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
        speaker = self.stream_speaker
        if speaker is not None and speaker(record, action):
            return
        self.speak_with_telnyx(record, action)

    def speak_with_telnyx(self, record: CallRecord, action: Speak) -> None:
        """Telnyx's ``speak``: speech on calls without an open stream, and
        the fallback when streamed speech cannot be made."""
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
        ccid = self._ccid(record)
        leg = self._legs.for_record(record)
        with self._lock:
            leg.listening = True
        self._transcribe(leg, ccid)

    def _transcribe(self, leg: Leg, ccid: str) -> None:
        """Start transcription unless it runs already or the stream listens."""
        telnyx = self._config.telnyx
        with self._lock:
            if leg.transcribing or leg.stream == STREAM_OPEN:
                return  # already running for this call (see the module docstring), or not needed
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
            if leg is not None:
                leg.listening = False
            if leg is None or not leg.transcribing:
                return
            leg.transcribing = False
        self._command(self._ccid(record), "transcription_stop", {}, "stop transcription", ended_ok=True)

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        sender = self.stream_dtmf
        if sender is not None and sender(record, action.digits):
            return  # in-band on the open stream, after what it is saying
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

    def start(self) -> None:
        warn_about_streaming(self._config, self.public_url, "Telnyx", "Telnyx transcription")

    def stop(self) -> None:
        self._webhooks.stop()
        self._rest.close()

    def describe(self) -> dict[str, Any]:
        hooks = self._webhooks
        return {"name": self.name, "pendingEvents": hooks.pending, "acceptedEvents": hooks.accepted,
                "processedEvents": hooks.processed, "legs": len(self._legs), "streaming": self.streaming(),
                "eventWorkers": len(self._work._threads)}

    def handle_webhook(self, request: Request) -> Response:
        return self._webhooks.handle(request)

    # -- media streams (see telnyx_media) -------------------------------------------------

    def streaming(self) -> bool:
        """Do calls ask for a media stream (else transcription and ``speak``)?"""
        cfg = self._config
        return bool(cfg.streaming.enabled and cfg.streaming.openaiApiKey and self.public_url)

    def media(self) -> telnyx_media.TelnyxMedia:
        return telnyx_media.TelnyxMedia(self)

    def stream_params(self, leg: Leg) -> dict[str, str]:
        """The ``stream_*`` parameters of the leg's dial or answer, with a
        fresh token; none when calls do not stream."""
        url = self.stream_url
        if not self.streaming() or url is None or leg.call_id is None:
            return {}
        token = secrets.token_urlsafe(24)
        with self._lock:
            leg.stream_token, leg.stream = token, STREAM_REQUESTED
        return telnyx_media.stream_request(url, leg.call_id, token)

    def stream_expected(self, call_id: str) -> bool:
        """Will the call's stream come up? It was requested with the dial or
        the answer and has neither failed nor stopped (then the call speaks
        with ``speak``)."""
        leg = self._legs.find(call_id, None)
        if leg is None or not self.streaming():
            return False
        with self._lock:
            return leg.stream in (STREAM_REQUESTED, STREAM_OPEN)

    def stream_admitted(self, call_id: str, ccid: str | None, token: str | None, stream_id: str) -> bool:
        """Is this the stream asked for on ``call_id``: its token (constant
        time) and its ``call_control_id``? If so the stream listens from now on."""
        leg = self._legs.find(call_id, None)
        with self._lock:
            expected, known = (leg.stream_token, leg.ccid) if leg is not None else (None, None)
        if not telnyx_media.same_secret(expected, token) or leg is None:
            return False
        if known is None:
            record = self.sink.live_record(call_id)
            known = record.providerCallId if record is not None else None
        if not ccid or ccid != known:
            return False
        with self._lock:
            leg.stream, leg.stream_id = STREAM_OPEN, stream_id
            stop = leg.transcribing
            leg.transcribing = False
        log.info("call %s: listening through the media stream", call_id)
        if stop:
            # Off the stream's thread: a REST request must not hold up its start.
            self._webhooks.submit(ccid, lambda: self._stop_transcription(call_id, ccid))
        return True

    def _stop_transcription(self, call_id: str, ccid: str) -> None:
        try:
            self._command(ccid, "transcription_stop", {}, "stop transcription", ended_ok=True)
        except ProviderError as exc:
            log.warning("call %s: %s", call_id, exc.message)

    def stream_ended(self, leg: Leg, stream_id: str | None, *, failed: bool, reason: str | None) -> None:
        """``streaming.stopped``/``failed``: the call listens with
        transcription and speaks with ``speak`` from now on (unless the
        news is of an earlier stream than the one open now)."""
        with self._lock:
            if stream_id and leg.stream_id and stream_id != leg.stream_id and leg.stream == STREAM_OPEN:
                return
            was, leg.stream = leg.stream, STREAM_ENDED
            listen, ccid = leg.listening, leg.ccid
        record = self.sink.live_record(leg.call_id) if leg.call_id else None
        if record is None or record.terminal:
            return  # the stream ended with the call
        if failed:
            log.warning("call %s: the Telnyx media stream failed (%s); the call goes on with Telnyx "
                        "transcription and speak", leg.call_id, (reason or "no reason given")[:80])
        elif was == STREAM_OPEN:
            log.info("call %s: the Telnyx media stream stopped; the call goes on with Telnyx transcription "
                     "and speak", leg.call_id)
        if listen and ccid:
            try:
                self._transcribe(leg, ccid)
            except ProviderError as exc:
                log.warning("call %s: %s", leg.call_id, exc.message)

