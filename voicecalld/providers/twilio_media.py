"""Twilio Media Streams on the media layer's seam (``media.framing``).

Requested with TwiML ``<Connect><Stream url="wss://...">``, a bidirectional
stream (https://www.twilio.com/docs/voice/twiml/stream). The stream URL
cannot carry a query string, so the call's id and its per-call token go in
``<Parameter>``s, which Twilio hands back in ``start.customParameters``.

Authenticated twice: Twilio signs the upgrade request (``X-Twilio-Signature``
over the exact ``wss://`` URL written into the TwiML, with no parameters;
https://www.twilio.com/docs/usage/webhooks/webhooks-security), and
``start`` must carry the call's token (compared in constant time).

Frames (https://www.twilio.com/docs/voice/media-streams/websocket-messages)
are JSON text. Twilio sends ``connected`` (first, ignored), ``start``
(``streamSid``; ``start.callSid``, ``customParameters``, ``mediaFormat``
``{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}``),
``media`` (``media.track``, ``chunk``, ``timestamp``, base64 ``payload``
of headerless µ-law; numbers are sent as strings), ``dtmf``
(``dtmf.digit``), ``mark`` (``mark.name``, our mark echoed once the audio
before it has played, or at once after a ``clear``) and ``stop``. We send
``media``, ``mark`` and ``clear``, each naming the ``streamSid``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, Protocol

from ..media.framing import (
    PHONE_AUDIO,
    Audio,
    MediaEvent,
    MediaFormat,
    Other,
    Start,
    UpgradeRefused,
)
from . import twiml
from .streamed import CarrierMedia, Handler, StreamedCalls, parse_event
from .twilio_signature import SIGNATURE_HEADER, validate

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ..calls import CallRecord, Speak
    from .base import CallSink

#: The ``<Parameter>``s of a call's ``<Stream>``, read back from ``start``.
CALL_ID_PARAMETER = "callId"
TOKEN_PARAMETER = "token"
#: Twilio's name for G.711 µ-law, and the RTP one (RFC 3551) we use.
ENCODINGS = {"audio/x-mulaw": "PCMU"}
#: The tracks that carry the caller's audio (``outbound`` is our own echoed).
INBOUND = ("inbound", "inbound_track")


def stream_request(url: str, call_id: str, token: str, action: str) -> str:
    """The TwiML that opens a call's stream: ``<Connect><Stream>``, which
    fetches ``action`` when the stream ends (or cannot be opened)."""
    return twiml.stream(url, {TOKEN_PARAMETER: token, CALL_ID_PARAMETER: call_id}, action=action)


class TwilioFraming:
    """One stream's frames (``media.framing.Framing``)."""

    def __init__(self, stream_sid: str = "") -> None:
        self._name(stream_sid)
        self._handlers: dict[str, Handler] = {"media": lambda m: _audio(m.get("media")), "start": self._start}

    def _name(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        # Every outgoing frame names the stream: the constant part is made once.
        self._media_head = '{"event":"media","streamSid":' + json.dumps(stream_sid) + ',"media":{"payload":"'

    def parse(self, raw: str | bytes) -> MediaEvent | None:
        return parse_event(raw, self._handlers)

    def _start(self, message: dict[str, Any]) -> Start:
        start = _obj(message.get("start"))
        params = _obj(start.get("customParameters"))
        call_id, token, call_sid = params.get(CALL_ID_PARAMETER), params.get(TOKEN_PARAMETER), start.get("callSid")
        self._name(str(message.get("streamSid") or start.get("streamSid") or ""))
        return Start(self.stream_sid, call_id=call_id if isinstance(call_id, str) else None,
                     carrier_call_id=call_sid if isinstance(call_sid, str) else None,
                     token=token if isinstance(token, str) else None, media_format=_format(start.get("mediaFormat")))

    def media(self, payload: bytes) -> str:
        # Fifty times a second per call: base64 needs no JSON escaping, so
        # the frame is assembled rather than serialized.
        return self._media_head + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return _dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> str:
        return _dumps({"event": "clear", "streamSid": self.stream_sid})


class TwilioCalls(StreamedCalls, Protocol):
    """What the media side uses of the Twilio provider (``twilio.TwilioProvider``)."""

    @property
    def sink(self) -> CallSink: ...

    @property
    def stream_url(self) -> str | None: ...

    def check_stream_token(self, call_id: str, token: str) -> bool: ...

    def speak_with_say(self, record: CallRecord, action: Speak) -> None: ...


class TwilioMedia(CarrierMedia[TwilioCalls]):
    """Twilio's ``media.framing.MediaCarrier``."""

    def open(self, request: Request) -> TwilioFraming:
        cfg = self.provider.sink.config
        if not cfg.skipSignatureVerification:
            url = self.provider.stream_url
            signature = request.headers.get(SIGNATURE_HEADER)
            if url is None or not validate(cfg.twilio.authToken or "", url, signature, {}):
                raise UpgradeRefused(f"invalid {SIGNATURE_HEADER}")
        return TwilioFraming()

    def admit(self, start: Start) -> str | None:
        if start.call_id is None or not self.provider.check_stream_token(start.call_id, start.token or ""):
            return None
        return start.call_id

    def say_instead(self, record: CallRecord, action: Speak) -> None:
        self.provider.speak_with_say(record, action)


def _audio(value: Any) -> MediaEvent:
    media = _obj(value)
    if media.get("track", "inbound") not in INBOUND:
        return Other("media")
    try:
        # strict_mode: as base64.b64decode(validate=True), minus its regex.
        payload = binascii.a2b_base64(media.get("payload") or "", strict_mode=True)
    except (binascii.Error, ValueError, TypeError):
        return Other("media")
    return Audio(payload, _int(media.get("chunk")), _int(media.get("timestamp")))


def _format(value: Any) -> MediaFormat:
    if not isinstance(value, dict):
        return PHONE_AUDIO  # Twilio streams µ-law 8 kHz mono, whether it says so or not
    encoding = value.get("encoding", "audio/x-mulaw")
    rate, channels = _int(value.get("sampleRate", 8000)), _int(value.get("channels", 1))
    return MediaFormat(ENCODINGS.get(str(encoding), str(encoding)[:40]), rate or 0, channels or 0)


def _int(value: Any) -> int | None:
    """Twilio's numbers come as strings."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
