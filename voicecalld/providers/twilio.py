"""Twilio Programmable Voice: calls over the 2010-04-01 REST API
(``twilio_rest``), driven by TwiML answered from the webhook
(``twilio_webhooks``); https://www.twilio.com/docs/voice.

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
  Speech stays ``<Say>`` unless it installs a ``stream_speaker``, which
  then also takes the opening: the first TwiML of a streamed call opens the
  stream at once and says nothing (``stream_expected``), and the greeting
  or message is spoken over the stream in the text-to-speech voice (``<Say>``
  only if the stream does not start). A stream that ends by itself (its
  ``<Connect>`` action) drops the call back to ``<Gather>``.
* Answering-machine detection, when on (``twilio_amd``): the verdict
  becomes the record's ``answeredBy``; with ``outbound.voicemail =
  leave-message`` it arrives at the ``type=amd`` callback, and the end of a
  machine's greeting is reported so the message is left after the beep.
* Call control (``twilio_control``): DTMF is ``<Play digits>`` queued with
  the speech, or, on a call whose media stream is open, tones played
  in-band on the stream (its ``stream_dtmf``), which keeps the stream up. A
  transfer is the message and a ``<Dial>``; its ``<Number>``'s status
  callback (``type=transfer``) says the target answered, its action
  (``type=dial``) how the dial ended. A call that records asks for it on
  create (inbound calls: ``<Start><Recording>`` first thing once answered),
  and the signed ``RecordingStatusCallback`` (``type=recording``) reports it.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from ..calls import CallRecord, Direction, Mode, SendDtmf, Speak, StartRecording, Transfer
from ..errors import NotConnected, ProviderError
from ..phone import mask
from . import twilio_amd, twilio_control, twilio_errors, twiml
from .base import Capabilities, CarrierStatus, Provider
from .streamed import warn_about_streaming
from .twilio_media import TwilioMedia
from .twilio_rest import CallsApi
from .twilio_script import CallScript, Item, Style
from .twilio_webhooks import Webhooks

log = logging.getLogger(__name__)


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
    # <Say> takes 4096 characters with the basic voices, 3000 with Polly and
    # 5000 with Google (https://www.twilio.com/docs/voice/twiml/say,
    # https://www.twilio.com/docs/api/errors/13521). twilio.voice may name
    # any of them, so the limit is the one every voice accepts. The TwiML
    # after the speech already listens (<Gather>) or hangs up, as Speak.then
    # says, so there is no recognition to stop separately.
    # Every account places 1 call per second unless Twilio raised it
    # (https://www.twilio.com/docs/glossary/cps); faster creates are
    # refused with 429 / 20429.
    capabilities = Capabilities(max_message_chars=3000, scripts_speech=True, stops_listening=False,
                                dials_per_second=1.0)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._scripts: dict[str, CallScript] = {}
        self._api = CallsApi(self._credentials)
        self._webhooks = Webhooks(self, self._api)
        #: Set by the media-stream side: given a call and an utterance, speak
        #: it over the call's open stream and return True, or return False to
        #: leave it to TwiML ``<Say>`` (the default, and the fallback).
        self.stream_speaker: Callable[[CallRecord, Speak], bool] | None = None
        #: Likewise for DTMF: play the digits' tones in-band on the call's
        #: open stream (True), or leave them to ``<Play digits>`` (False).
        self.stream_dtmf: Callable[[CallRecord, str], bool] | None = None

    # -- configuration, read at use time so SIGHUP reloads apply --

    @property
    def _cfg(self) -> Any:
        return self.sink.config

    def _credentials(self) -> tuple[str, str, str]:
        tw = self._cfg.twilio
        return tw.apiBaseUrl, tw.accountSid or "", tw.authToken or ""

    def streaming(self) -> bool:
        """Do calls listen through Media Streams (else ``<Gather>``)?"""
        cfg = self._cfg
        return bool(cfg.streaming.enabled and cfg.streaming.openaiApiKey and self.public_url)

    def style(self) -> Style:
        cfg = self._cfg
        return Style(voice=cfg.twilio.voice, language=cfg.twilio.language,
                     hangup_delay=float(cfg.outbound.notifyHangupDelaySec), streaming=self.streaming(),
                     dial_timeout=min(600, max(5, -(-cfg.ringTimeoutMs // 1000))),
                     recording_channels=cfg.recording.channels)

    def _base(self) -> str:
        """The webhook URL. Without a public URL (only possible when webhooks
        are not verified) answers use the bare path, which Twilio resolves
        against the URL it requested."""
        return self.webhook_url if self.public_url else self._cfg.serve.path

    def urls(self, call_id: str) -> _CallUrls:
        return _CallUrls(self._base(), call_id, self.stream_url)

    # -- per-call scripts --

    def _script(self, call_id: str) -> CallScript | None:
        with self._lock:
            return self._scripts.get(call_id)

    def adopt(self, call_id: str, sid: str | None) -> CallScript | None:
        """The script of a live call, made on first sight for calls this run
        did not start (restored after a restart)."""
        script = self._script(call_id)
        if script is not None:
            return script
        record = self.sink.live_record(call_id)
        if record is None or record.endReason is not None:
            return None
        with self._lock:
            script = self._scripts.get(call_id)
            if script is None:
                script = CallScript(call_id, record.mode, sid=record.providerCallId or sid,
                                    fetched=record.answeredAt is not None)
                self._scripts[call_id] = script
        return script

    def incoming(self, call_id: str, sid: str) -> CallScript:
        with self._lock:
            script = self._scripts.get(call_id)
            if script is None:
                script = CallScript(call_id, Mode.CONVERSATION, sid=sid)
                self._scripts[call_id] = script
        return script

    # -- call control --

    def initiate(self, record: CallRecord) -> str:
        if not self.public_url:
            raise ProviderError("Twilio needs a public URL to reach the webhook: set publicUrl "
                                "(or configure a tunnel)")
        cfg = self._cfg
        script = CallScript(record.callId, record.mode)
        with self._lock:
            self._scripts[record.callId] = script
        url = f"{self.webhook_url}?{urlencode({'callId': record.callId})}"
        recording = (twilio_control.recording_params(url + "&type=recording", cfg.recording.channels)
                     if record.record else None)
        detection = twilio_amd.create_params(twilio_amd.mode(cfg), self.webhook_url, record.callId)
        sid = self._api.create(to=record.to, from_=record.from_, url=url, ring_timeout_ms=cfg.ringTimeoutMs,
                               detection=detection, recording=recording)
        with script.lock:
            script.sid = sid
            too_late = script.hangup_requested or script.forgotten
        if too_late:
            # The call was ended (ring deadline, end, shutdown) while Twilio
            # was still creating it: hang it up now that it has a sid.
            try:
                self._api.hang_up(sid)
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
        self._api.hang_up(sid)

    def speak(self, record: CallRecord, action: Speak) -> None:
        speaker = self.stream_speaker
        if speaker is not None and speaker(record, action):
            return
        self.speak_with_say(record, action)

    def speak_with_say(self, record: CallRecord, action: Speak) -> None:
        """Say it with TwiML ``<Say>``: speech on calls without a media
        stream, and the fallback when streamed speech cannot be made."""
        self._play(record, action, "speaking on the call")

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        sender = self.stream_dtmf
        if sender is not None and sender(record, action.digits):
            return
        self._play(record, action, "sending DTMF")

    def transfer(self, record: CallRecord, action: Transfer) -> None:
        self._play(record, action, "transferring the call")

    def start_recording(self, record: CallRecord) -> None:
        """Calls we create record from the create request on; an inbound
        call starts with ``<Start><Recording>`` (while its first webhook is
        answered, the call is not in progress yet: the Recordings resource
        would refuse it)."""
        if record.direction != Direction.OUTBOUND:
            self._play(record, StartRecording(), "starting the recording")

    def _play(self, record: CallRecord, action: Item, doing: str) -> None:
        """Queue ``action`` in the call's script; update the live call with
        the next document when nothing else is playing."""
        script = self.adopt(record.callId, record.providerCallId)
        if script is None:
            raise NotConnected(f"call {record.callId} has ended", {"callId": record.callId})
        urls, style = self.urls(record.callId), self.style()
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
            self._api.update(sid, form, doing)
        except ProviderError as exc:
            with script.lock:
                script.update_failed(doc.token)
            if exc.provider_code in twilio_errors.ALREADY_ENDED:
                raise NotConnected(f"call {record.callId} has already ended at Twilio",
                                   {"callId": record.callId}) from None
            raise

    def call_status(self, record: CallRecord) -> CarrierStatus | None:
        if not record.providerCallId:
            return None
        return self._api.status(record.providerCallId)

    def forget(self, record: CallRecord) -> None:
        with self._lock:
            script = self._scripts.pop(record.callId, None)
        if script is not None:
            with script.lock:
                script.forgotten = True
                script.queue.clear()

    def start(self) -> None:
        warn_about_streaming(self._cfg, self.public_url, "Twilio", "<Gather> speech recognition")
        if not self.public_url:
            log.warning("no publicUrl: Twilio cannot reach the webhook until a tunnel provides one")

    def stop(self) -> None:
        self._api.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "streaming": self.streaming()}

    # -- media streams (see twilio_media) --

    def media(self) -> TwilioMedia:
        return TwilioMedia(self)

    def stream_token(self, call_id: str) -> str | None:
        script = self._script(call_id)
        return None if script is None else script.stream_token

    def stream_expected(self, call_id: str) -> bool:
        """Will the call's Media Stream come up? Streaming is on, and the
        stream has not ended or failed on this call; the call's next (or
        first) document opens it when nothing is queued to ``<Say>``."""
        script = self._script(call_id)
        if script is None or not self.streaming():
            return False
        with script.lock:
            return not (script.stream_failed or script.forgotten or script.hangup_after)

    def check_stream_token(self, call_id: str, token: str) -> bool:
        """Is ``token`` the one this call's ``<Stream>`` was given? Constant-time."""
        expected = self.stream_token(call_id)
        if expected is None or not isinstance(token, str):
            hmac.compare_digest(b"x" * 32, b"y" * 32)  # same work either way
            return False
        return hmac.compare_digest(expected.encode(), token.encode())

    # -- webhooks (twilio_webhooks) --

    def handle_webhook(self, request: Request) -> Response:
        return self._webhooks.handle(request)


__all__ = ["TwilioProvider"]
