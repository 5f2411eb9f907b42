"""Twilio Programmable Voice: calls over the 2010-04-01 REST API, driven by
TwiML answered from the webhook (protocols.md A-D).

Outbound calls are created with ``Url`` = the webhook plus ``?callId=`` and
``StatusCallback`` = the same plus ``&type=status``; every later webhook URL
we hand Twilio carries the ``callId`` too, so a request finds its call even
before ``initiate`` has returned. Inbound calls arrive at the bare webhook
URL (configure the number's voice URL as the webhook URL, ``webhook_url``:
``publicUrl``, plus ``serve.path`` when ``publicUrl`` is an origin; and its
status callback as the same plus ``?type=status``, both HTTP POST).

How the core's model maps onto TwiML (see ``twilio_script.py``):

* Speech is ``<Say>``, followed by a ``<Redirect>`` back to the webhook.
  Twilio never reports "finished playing"; reaching that redirect (or the
  ``<Gather>`` action wrapped around the speech) is what it does instead,
  so that is when the provider reports ``played``. A notify call's message
  is therefore known to be delivered exactly when it was, and the answer to
  that redirect is ``<Pause length=notifyHangupDelaySec/><Hangup/>``: the
  hang-up always comes after the message, never on a timer that could cut
  it off. A ``completed`` status after that closing document is reported as
  ``completed``; any other ``completed`` (the callee hung up) as
  ``hangup-user``, which the core still counts as completed for a notify
  call whose message was delivered.
* In conversation mode the ``<Say>`` sits inside a speech ``<Gather>`` so
  the callee can talk over the bot; that Gather waits one more second
  after the speech, so ``played`` (and the ``listening`` state) comes up to
  a second after the words ended, or at once when the callee speaks.
* Listening is a speech ``<Gather>`` (Twilio's recogniser) whose action
  comes back with ``SpeechResult``/``Confidence``: a final ``speech`` event.
  Between turns the call rests in a listening ``<Gather>`` that loops, so
  it stays open (and hears the callee) while an agent decides what to say;
  the next utterance replaces it through a REST update.
* With ``streaming.enabled`` (and an OpenAI key) the call listens through
  ``<Connect><Stream>`` instead; the media-stream side checks the stream's
  per-call token with ``check_stream_token`` and the upgrade's signature
  over ``stream_url`` (the exact ``wss://`` URL written into ``<Stream url>``).
  Speech stays ``<Say>`` unless it installs a ``stream_speaker``. A stream
  that ends by itself (its ``<Connect>`` action) drops the call back to
  ``<Gather>``.

Webhooks are authenticated by ``X-Twilio-Signature`` over the URL Twilio
requested (the webhook URL + the request's query; ``X-Forwarded-*`` only when
``twilio.trustForwardedHeaders`` is on), and a replayed request (same
idempotency token or same signature) is answered from a bounded cache,
never processed twice.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

from werkzeug.wrappers import Request, Response

from ..calls import CallEvent, CallRecord, EventType, Mode, Speak, State
from ..errors import CallNotFound, InvalidParams, NotConnected, ProviderError
from ..phone import mask
from ..ratelog import RateLimitedLog
from . import twilio_errors, twiml
from .base import CarrierStatus, Provider
from .http import RestClient
from .replay import ReplayGuard
from .twilio_media import TwilioMedia
from .twilio_script import CallScript, Style
from .twilio_signature import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, validate
from .twilio_wire import (
    END_REASONS,
    LIVE_STATUSES,
    Answer,
    classify_status,
    confidence,
    first,
    form_params,
    json_body,
    signed_urls,
    text_answer,
    to_int,
    xml_answer,
)

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
MAX_TIMEOUT = 600            # Twilio's limit on a call's ring Timeout, seconds
REPLAY_WINDOW = 600.0        # seconds a delivery is remembered
REPLAY_SIZE = 4096           # deliveries remembered at most
DUPLICATE_WAIT = 10.0        # a duplicate waits this long for the first delivery's answer


class _CallUrls:
    """Webhook URLs for one call (implements twilio_script.Urls)."""

    def __init__(self, base: str, call_id: str, stream_url: str | None) -> None:
        self.base = base
        self.call_id = call_id
        self.stream_url = stream_url

    def turn(self, kind: str, token: str) -> str:
        return f"{self.base}?{urlencode({'callId': self.call_id, 'type': kind, 'turn': token})}"

    def stream(self) -> str:
        if self.stream_url is None:  # pragma: no cover - Style.streaming is off without a public URL
            raise RuntimeError("no public URL for the media stream")
        return self.stream_url


class TwilioProvider(Provider):
    name = "twilio"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._scripts: dict[str, CallScript] = {}
        self._replays: ReplayGuard[Answer] = ReplayGuard(REPLAY_SIZE, REPLAY_WINDOW)
        self._client: RestClient | None = None
        self._client_key: tuple[str, str, str] | None = None
        self._rejections = RateLimitedLog(log)
        #: Set by the media-stream side: given a call and an utterance, speak
        #: it over the call's open stream and return True, or return False to
        #: leave it to TwiML ``<Say>`` (the default, and the fallback).
        self.stream_speaker: Callable[[CallRecord, Speak], bool] | None = None

    # -- configuration, read at use time so SIGHUP reloads apply --

    @property
    def _cfg(self) -> Any:
        return self.manager.config

    def _rest(self) -> tuple[RestClient, str]:
        tw = self._cfg.twilio
        key = (tw.apiBaseUrl, tw.accountSid or "", tw.authToken or "")
        with self._lock:
            if self._client is None or self._client_key != key:
                # The old session is left to the garbage collector: another
                # thread may still be using it.
                self._client = RestClient("Twilio", tw.apiBaseUrl, auth=(key[1], key[2]))
                self._client_key = key
            client = self._client
        return client, f"/{API_VERSION}/Accounts/{quote(key[1], safe='')}"

    def streaming(self) -> bool:
        """Do calls listen through Media Streams (else ``<Gather>``)?"""
        cfg = self._cfg
        return bool(cfg.streaming.enabled and cfg.streaming.openaiApiKey and self.public_url)

    def _style(self) -> Style:
        cfg = self._cfg
        return Style(voice=cfg.twilio.voice, language=cfg.twilio.language,
                     hangup_delay=float(cfg.outbound.notifyHangupDelaySec), streaming=self.streaming())

    def _base(self) -> str:
        """The webhook URL. Without a public URL (only possible when webhooks
        are not verified) answers use the bare path, which Twilio resolves
        against the URL it requested."""
        return self.webhook_url if self.public_url else self._cfg.serve.path

    def _urls(self, call_id: str) -> _CallUrls:
        return _CallUrls(self._base(), call_id, self.stream_url)

    # -- per-call scripts --

    def _script(self, call_id: str) -> CallScript | None:
        with self._lock:
            return self._scripts.get(call_id)

    def _adopt(self, call_id: str, sid: str | None) -> CallScript | None:
        """The script of a live call, made on first sight for calls this run
        did not start (restored after a restart)."""
        script = self._script(call_id)
        if script is not None:
            return script
        try:
            record = self.manager.status(call_id)
        except (CallNotFound, InvalidParams):
            return None
        if record.get("endReason") is not None:
            return None
        with self._lock:
            script = self._scripts.get(call_id)
            if script is None:
                script = CallScript(call_id, Mode(record["mode"]), sid=record.get("providerCallId") or sid,
                                    fetched=record.get("answeredAt") is not None)
                self._scripts[call_id] = script
        return script

    def _emit(self, type_: EventType, event_id: str, script: CallScript, **fields: Any) -> None:
        self.emit(CallEvent(type_, event_id, call_id=script.call_id, provider_call_id=script.sid, **fields))

    # -- call control --

    def initiate(self, record: CallRecord) -> str:
        if not self.public_url:
            raise ProviderError("Twilio needs a public URL to reach the webhook: set publicUrl "
                                "(or configure a tunnel)")
        cfg = self._cfg
        script = CallScript(record.callId, record.mode)
        with self._lock:
            self._scripts[record.callId] = script
        voice_url = f"{self.webhook_url}?{urlencode({'callId': record.callId})}"
        ring = min(MAX_TIMEOUT, max(1, math.ceil(cfg.ringTimeoutMs / 1000)))
        form: list[tuple[str, str]] = [
            ("To", record.to), ("From", record.from_), ("Url", voice_url), ("Method", "POST"),
            ("StatusCallback", voice_url + "&type=status"), ("StatusCallbackMethod", "POST"),
            *[("StatusCallbackEvent", event) for event in STATUS_EVENTS],
            ("Timeout", str(ring)),
        ]
        if cfg.twilio.machineDetection:
            form.append(("MachineDetection", "Enable"))
        client, account = self._rest()
        # Not idempotent: Twilio has no idempotency key for creating calls, so
        # a retry could ring the callee twice (RestClient only retries when
        # Twilio certainly did not act).
        response = client.request("POST", f"{account}/Calls.json", idempotent=False, data=form)
        body = json_body(response)
        if response.status_code != 201 or not isinstance(body, dict) or not isinstance(body.get("sid"), str):
            if 200 <= response.status_code < 300:
                raise ProviderError(f"Twilio answered HTTP {response.status_code} without a call sid "
                                    "while placing the call", status=response.status_code)
            raise twilio_errors.provider_error(response.status_code, body, "placing the call",
                                               to=record.to, from_=record.from_)
        sid = body["sid"]
        with script.lock:
            script.sid = sid
            too_late = script.hangup_requested or script.forgotten
        if too_late:
            # The call was ended (ring deadline, end, shutdown) while Twilio
            # was still creating it: hang it up now that it has a sid.
            try:
                self._hangup_sid(sid)
            except ProviderError as exc:
                log.error("call %s: Twilio call %s outlived its record and could not be hung up: %s",
                          record.callId, sid, exc.message)
        log.info("call %s: Twilio call %s created to %s", record.callId, sid, mask(record.to))
        return sid

    def hangup(self, record: CallRecord) -> None:
        script = self._script(record.callId)
        sid = record.providerCallId or (script.sid if script else None)
        if sid is None:
            if script is not None:
                with script.lock:
                    script.hangup_requested = True
                    sid = script.sid  # initiate may have just learnt it
            if sid is None:
                return  # initiate() hangs it up as soon as Twilio names it
        self._hangup_sid(sid)

    def _hangup_sid(self, sid: str) -> None:
        client, account = self._rest()
        # Status=completed is idempotent: a second one finds the call over.
        response = client.request("POST", f"{account}/Calls/{quote(sid, safe='')}.json", idempotent=True,
                                  data={"Status": "completed"})
        if response.ok:
            return
        body = json_body(response)
        code, _ = twilio_errors.parse(body)
        if code in twilio_errors.ALREADY_ENDED or (code is None and response.status_code == 404):
            log.debug("Twilio call %s had already ended (%s)", sid, code or response.status_code)
            return
        raise twilio_errors.provider_error(response.status_code, body, "hanging up")

    def speak(self, record: CallRecord, action: Speak) -> None:
        speaker = self.stream_speaker
        if speaker is not None and speaker(record, action):
            return
        self.speak_with_say(record, action)

    def speak_with_say(self, record: CallRecord, action: Speak) -> None:
        """Say it with TwiML ``<Say>``: speech on calls without a media
        stream, and the fallback when streamed speech cannot be made."""
        script = self._adopt(record.callId, record.providerCallId)
        if script is None:
            raise NotConnected(f"call {record.callId} has ended", {"callId": record.callId})
        urls, style = self._urls(record.callId), self._style()
        with script.lock:
            if script.forgotten:
                raise NotConnected(f"call {record.callId} has ended", {"callId": record.callId})
            if not script.add(action):
                return  # the webhook being answered, or Twilio's next request, says it
            sid = script.sid or record.providerCallId
            if sid is None:  # pragma: no cover - a fetched call always has a sid
                script.queue.clear()
                raise NotConnected(f"call {record.callId} is not connected yet", {"callId": record.callId})
            doc = script.compose(urls, style)
            inline = len(doc.xml) <= twiml.INLINE_LIMIT
            if not inline:
                script.stored[doc.token] = doc.xml
        # Inline TwiML is capped at 4000 characters; longer documents are
        # fetched from the webhook instead.
        form = {"Twiml": doc.xml} if inline else {"Url": urls.turn("twiml", doc.token), "Method": "POST"}
        try:
            self._update(sid, form, "speaking on the call")
        except ProviderError as exc:
            with script.lock:
                script.update_failed(doc.token)
            if exc.provider_code in twilio_errors.ALREADY_ENDED:
                raise NotConnected(f"call {record.callId} has already ended at Twilio",
                                   {"callId": record.callId}) from None
            raise

    def _update(self, sid: str, form: dict[str, str], doing: str) -> None:
        client, account = self._rest()
        # A TwiML update is not idempotent (a repeat restarts the speech).
        response = client.request("POST", f"{account}/Calls/{quote(sid, safe='')}.json", idempotent=False,
                                  data=form)
        if not response.ok:
            raise twilio_errors.provider_error(response.status_code, json_body(response), doing)

    def start_listening(self, record: CallRecord, turn: int | None) -> None:
        """Nothing to do: every document after the bot's speech listens."""

    def call_status(self, record: CallRecord) -> CarrierStatus | None:
        if not record.providerCallId:
            return None
        client, account = self._rest()
        response = client.request("GET", f"{account}/Calls/{quote(record.providerCallId, safe='')}.json",
                                  idempotent=True)
        body = json_body(response)
        if not response.ok or not isinstance(body, dict):
            return None
        status = body.get("status")
        if status in LIVE_STATUSES:
            return CarrierStatus(live=True, answered=status == "in-progress")
        reason = State.COMPLETED if status == "completed" else END_REASONS.get(str(status), State.COMPLETED)
        return CarrierStatus(live=False, reason=reason, answered=body.get("start_time") is not None)

    def forget(self, record: CallRecord) -> None:
        with self._lock:
            script = self._scripts.pop(record.callId, None)
        if script is not None:
            with script.lock:
                script.forgotten = True
                script.queue.clear()

    def start(self) -> None:
        cfg = self._cfg
        if cfg.streaming.enabled and not cfg.streaming.openaiApiKey:
            log.warning("streaming.enabled is on but streaming.openaiApiKey (OPENAI_API_KEY) is not set: "
                        "Twilio calls listen with <Gather> speech recognition instead")
        elif cfg.streaming.enabled and self.public_url and not self.public_url.startswith("https://"):
            log.warning("streaming.enabled: Twilio only opens media streams to wss:// URLs, so publicUrl "
                        "should be https (got %s)", self.public_url)
        if not self.public_url:
            log.warning("no publicUrl: Twilio cannot reach the webhook until a tunnel provides one")

    def stop(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "streaming": self.streaming()}

    # -- media streams (see twilio_media) --

    def media(self) -> TwilioMedia:
        return TwilioMedia(self)

    def stream_token(self, call_id: str) -> str | None:
        script = self._script(call_id)
        return None if script is None else script.stream_token

    def check_stream_token(self, call_id: str, token: str) -> bool:
        """Is ``token`` the one this call's ``<Stream>`` was given? Constant-time."""
        expected = self.stream_token(call_id)
        if expected is None or not isinstance(token, str):
            hmac.compare_digest(b"x" * 32, b"y" * 32)  # same work either way
            return False
        return hmac.compare_digest(expected.encode(), token.encode())

    # -- webhooks --

    def handle_webhook(self, request: Request) -> Response:
        cfg = self._cfg
        signature = request.headers.get(SIGNATURE_HEADER)
        if not cfg.skipSignatureVerification and not signature:
            return self._refuse(request, "no X-Twilio-Signature header").response()
        params, body = form_params(request)
        if params is None:
            return text_answer(415, "expected a form-encoded (or JSON) Twilio webhook").response()
        if not cfg.skipSignatureVerification:
            problem = self._verify(request, signature or "", params, body)
            if problem:
                return self._refuse(request, problem).response()
        token = request.headers.get(IDEMPOTENCY_HEADER)
        keys = [f"token:{token}" if token else "", f"signature:{signature}" if signature else ""]
        entry, first = self._replays.begin(keys)
        if not first:
            answer = self._replays.wait(entry, DUPLICATE_WAIT)
            log.info("call %s: repeated Twilio webhook answered from cache, not processed again",
                     request.args.get("callId", "?"))
            if answer is None:
                return text_answer(409, "a copy of this request is still being processed").response()
            return answer.response()
        try:
            answer = self._dispatch(request.args.get("type") or "", request.args.get("callId"),
                                    request.args.get("turn"), params)
        except BaseException:
            self._replays.abandon(entry)
            raise
        self._replays.finish(entry, answer)
        return answer.response()

    def _refuse(self, request: Request, problem: str) -> Answer:
        self._rejections.warning(problem, "rejected a webhook from %s: %s", request.remote_addr, problem)
        return text_answer(401, "webhook signature verification failed")

    def _verify(self, request: Request, signature: str, params: list[tuple[str, str]],
                body: bytes | None) -> str | None:
        auth_token = self._cfg.twilio.authToken or ""
        urls = signed_urls(request, self.webhook_url if self.public_url else None,
                           bool(self._cfg.twilio.trustForwardedHeaders))
        if not urls:
            return "no publicUrl to check the signature against"
        for url in urls:
            if validate(auth_token, url, signature, None if body is not None else params, body=body):
                return None
        log.debug("signature checked against %s", urls)
        return "X-Twilio-Signature does not match (check publicUrl and twilio.authToken)"

    def _dispatch(self, kind: str, call_id: str | None, turn: str | None,
                  params: list[tuple[str, str]]) -> Answer:
        sid = first(params, "CallSid")
        if kind == "status" or (not kind and first(params, "CallbackSource") == "call-progress-events"):
            return self._on_status(call_id, sid, params)
        if call_id is None:
            if kind:
                return text_answer(400, "a Twilio webhook with a type needs a callId")
            return self._on_incoming(sid, params)
        script = self._adopt(call_id, sid)
        if script is None:
            # A call we no longer run: whatever Twilio is doing with it, stop.
            log.debug("call %s: webhook (%s) for an unknown or ended call; answering <Hangup/>",
                      call_id, kind or "voice")
            return xml_answer(twiml.hangup_now())
        if sid is not None and script.sid is not None and sid != script.sid:
            return text_answer(400, f"CallSid does not belong to call {call_id}")
        self._learn_sid(script, sid)
        if kind == "":
            return self._on_voice(script, params)
        if kind in ("gather", "played", "connect"):
            return self._on_turn(script, kind, turn, params)
        if kind == "twiml":
            return self._on_stored(script, turn)
        return text_answer(400, f"unknown webhook type {kind!r}")

    def _learn_sid(self, script: CallScript, sid: str | None) -> None:
        if sid is None:
            return
        with script.lock:
            known, script.sid = script.sid, sid
        if known is None:
            # Twilio's first callback can beat initiate()'s own return.
            self.manager.attach_provider_id(script.call_id, sid)

    @contextmanager
    def _answering(self, script: CallScript) -> Iterator[list[str]]:
        """While a webhook for ``script``'s call is being answered, whatever
        the call says goes into this answer. Yields a one-item list that
        receives the TwiML."""
        out: list[str] = []
        with script.lock:
            script.answering += 1
        try:
            yield out
        finally:
            with script.lock:
                script.answering -= 1
                if script.forgotten:
                    out.append(twiml.hangup_now())
                elif not out:
                    out.append(script.compose(self._urls(script.call_id), self._style()).xml)

    def _on_voice(self, script: CallScript, params: list[tuple[str, str]]) -> Answer:
        """Twilio fetches the call's TwiML: the call is answered (inbound: we
        answer it now)."""
        answered_by = first(params, "AnsweredBy")
        with self._answering(script) as out:
            with script.lock:
                script.fetched = True
            event = classify_status("in-progress", answered_by=answered_by or "human",
                                    machine_detection=bool(self._cfg.twilio.machineDetection))
            if event is not None and event.type == EventType.ENDED:
                log.info("call %s: %s; hanging up", script.call_id, event.message)
                out.append(twiml.hangup_now())
                self._emit(EventType.ENDED, f"{script.sid}:answered-by", script, reason=event.reason,
                           message=event.message)
            else:
                self._emit(EventType.ANSWERED, f"{script.sid}:answered", script)
        return xml_answer(out[0])

    def _on_turn(self, script: CallScript, kind: str, turn: str | None,
                 params: list[tuple[str, str]]) -> Answer:
        """Twilio moved past a document: its Gather heard something (gather),
        its speech ended (played), or its media stream closed (connect)."""
        with self._answering(script) as out:
            with script.lock:
                played = script.advance(turn)
                if played is None:
                    out.append(script.stale_answer(self._urls(script.call_id), self._style()))
                elif kind == "connect":
                    script.stream_failed = True
            if played is None:
                log.debug("call %s: %s request for a replaced document; ignored", script.call_id, kind)
                return xml_answer(out[0])
            for utterance in played:
                self._emit(EventType.PLAYED, f"{script.sid}:played:{utterance}", script, utterance_id=utterance)
            if kind == "connect":
                log.warning("call %s: the media stream ended (%s); listening with <Gather> from now on",
                            script.call_id, first(params, "ErrorCode") or "closed")
            speech = (first(params, "SpeechResult") or "").strip()
            if kind == "gather" and speech:
                self._emit(EventType.SPEECH, f"{script.sid}:speech:{turn}", script, transcript=speech,
                           is_final=True, confidence=confidence(first(params, "Confidence")))
            digits = first(params, "Digits") or ""
            if kind == "gather" and digits:
                self._emit(EventType.DTMF, f"{script.sid}:digits:{turn}", script, digits=digits)
        return xml_answer(out[0])

    def _on_stored(self, script: CallScript, turn: str | None) -> Answer:
        """Twilio fetches a document too long to send inline."""
        with script.lock:
            doc = script.stored.get(turn or "") if script.is_current(turn) else None
            if doc is None:
                doc = script.stale_answer(self._urls(script.call_id), self._style())
        return xml_answer(doc)

    def _on_status(self, call_id: str | None, sid: str | None, params: list[tuple[str, str]]) -> Answer:
        call_status = first(params, "CallStatus") or ""
        if call_id is None and sid is not None:
            call_id = self.manager.find_by_provider_id(sid)  # inbound: no callId in the URL
        script = self._adopt(call_id, sid) if call_id else None
        if script is None:
            log.debug("status %s for an unknown or ended call (%s)", call_status, call_id)
            return xml_answer(twiml.empty())
        if sid is not None and script.sid is not None and sid != script.sid:
            return text_answer(400, f"CallSid does not belong to call {call_id}")
        self._learn_sid(script, sid)
        sequence = to_int(first(params, "SequenceNumber"))
        with script.lock:
            stale = sequence is not None and sequence <= script.sequence
            if sequence is not None:
                script.sequence = max(script.sequence, sequence)
            closing = script.closing
        event = classify_status(call_status, answered_by=first(params, "AnsweredBy"),
                                machine_detection=bool(self._cfg.twilio.machineDetection), closing=closing)
        if event is None:
            if call_status not in LIVE_STATUSES:
                log.info("call %s: unknown Twilio CallStatus %r ignored", script.call_id, call_status)
            return xml_answer(twiml.empty())
        if stale and event.type != EventType.ENDED:
            # An older callback overtaken by a newer one: never move backwards.
            log.debug("call %s: out-of-order status %s (sequence %s) ignored", script.call_id, call_status,
                      sequence)
            return xml_answer(twiml.empty())
        message = event.message
        if event.reason == State.FAILED and not message:
            sip = first(params, "SipResponseCode")
            message = "Twilio reports the call failed" + (f" (SIP {sip})" if sip else "")
        if event.type == EventType.ENDED and call_status == "in-progress" and script.sid:
            # Answered, but not by a person (machine detection): the call is
            # still up at Twilio, so end it there too.
            log.info("call %s: %s; hanging up", script.call_id, message)
            try:
                self._hangup_sid(script.sid)
            except ProviderError as exc:
                log.warning("call %s: hanging up failed: %s", script.call_id, exc.message)
        # The same id as the voice fetch's answer, which may come first.
        suffix = "answered" if event.type == EventType.ANSWERED else f"status:{call_status}"
        event_id = f"{script.sid}:{suffix}"
        self._emit(event.type, event_id, script, reason=event.reason, message=message)
        return xml_answer(twiml.empty())

    def _on_incoming(self, sid: str | None, params: list[tuple[str, str]]) -> Answer:
        """A call to one of our numbers (its voice URL is the bare webhook)."""
        call_status = first(params, "CallStatus") or ""
        if sid is None:
            return text_answer(400, "a Twilio voice request needs CallSid")
        if call_status not in LIVE_STATUSES:
            return self._on_status(None, sid, params)  # a status callback configured without ?type=status
        caller = first(params, "From") or ""
        snapshot, accepted = self.manager.accept_inbound(caller, first(params, "To"), sid)
        if not accepted:
            return xml_answer(twiml.reject())
        call_id = snapshot["callId"]
        with self._lock:
            script = self._scripts.get(call_id)
            if script is None:
                script = CallScript(call_id, Mode.CONVERSATION, sid=sid)
                self._scripts[call_id] = script
        return self._on_voice(script, params)


__all__ = ["TwilioProvider"]
