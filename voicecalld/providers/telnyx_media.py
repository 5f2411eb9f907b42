"""Telnyx media streaming on the media layer's seam (``media.framing``).

Requested with the call, on ``POST /v2/calls`` (outbound) or
``actions/answer`` (inbound): ``stream_url``, ``stream_track``
(``inbound_track``: the caller only, so the bot never hears itself),
``stream_bidirectional_mode`` ``rtp`` (without it the stream is one-way and
what we send is dropped) and ``stream_bidirectional_codec`` ``PCMU``
(https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming,
https://developers.telnyx.com/api-reference/call-commands/streaming-start).
Telnyx reports the stream's life with the ``streaming.started``,
``streaming.stopped`` and ``streaming.failed`` webhooks (no ``call.``
prefix; ``failure_reason``, ``stream_id``, ``stream_params``:
https://developers.telnyx.com/api-reference/callbacks/call-streaming-failed).

Telnyx does not sign the WebSocket upgrade, so the stream URL carries our
call id and a per-call unguessable token in its query string; ``start``
must come with the right token (compared in constant time) and the
``call_control_id`` of that very call, or the stream is closed with 1008.

Frames (the AsyncAPI page,
https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket)
are JSON text in snake_case; ``stream_id`` sits at the top level. Telnyx
sends ``connected`` (ignored), ``start`` (``start.call_control_id``,
``start.media_format`` ``{"encoding": "PCMU", "sample_rate": 8000,
"channels": 1}``: the leg's own codec when it cannot transcode, so A-law,
``PCMA``, on many European legs), ``media`` (``media.track``, ``chunk``,
``timestamp``, base64 ``payload``: an RTP payload without its header;
numbers as strings), ``dtmf`` (``dtmf.digit``), ``mark`` (ours, echoed once
the audio before it has played, or at once after a ``clear``), ``error``
and ``stop``. We send ``media`` (``media.payload``), ``mark`` and
``clear``, none naming the stream.

"Media frame order is not guaranteed": frames are put back in ``chunk``
order within a small window (``REORDER_WINDOW`` frames, so a lost frame
holds the audio back by at most that much); a frame that arrives after the
window moved past it is counted ``late`` and dropped, a gap the window
gave up on is counted ``lost`` (a frame far behind the window means the
numbering started again: the window follows it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from ..media.framing import (
    PHONE_AUDIO,
    Audio,
    MediaEvent,
    MediaFormat,
    Other,
    Start,
)
from ..ratelog import RateLimitedLog
from .streamed import CarrierMedia, Handler, StreamedCalls, parse_event

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ..calls import CallRecord, Speak

log = logging.getLogger("voicecalld.providers.telnyx")
#: Telnyx's ``error`` frames, on the read loop: logged at a bounded rate.
_errors = RateLimitedLog(log)

#: The stream URL's query parameters: our call id and its token.
CALL_PARAMETER = "call"
TOKEN_PARAMETER = "token"
#: Frames held back, at most, waiting for one that is missing (20 ms each).
REORDER_WINDOW = 3
#: A frame numbered this far behind the window is no late frame but a
#: numbering that started again: it is taken, and the window moves there.
RESTART_GAP = 50
#: The caller's track; ``outbound`` would be our own audio.
INBOUND = ("inbound", "inbound_track")
#: What the media layer speaks, and asks Telnyx to take back.
BIDIRECTIONAL = {"stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
                 "stream_bidirectional_codec": "PCMU"}


def stream_request(url: str, call_id: str, token: str) -> dict[str, str]:
    """The dial's or the answer's ``stream_*`` parameters for one call."""
    query = urlencode({CALL_PARAMETER: call_id, TOKEN_PARAMETER: token})
    return {"stream_url": f"{url}?{query}", **BIDIRECTIONAL}


def same_secret(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison that does the same work when either is missing."""
    if not expected or not isinstance(given, str):
        hmac.compare_digest(b"x" * 32, b"y" * 32)
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class Reorder:
    """Puts numbered frames back in order within ``window`` frames."""

    def __init__(self, window: int = REORDER_WINDOW) -> None:
        self.window = window
        self.next: int | None = None
        self.held: dict[int, Audio] = {}
        self.late = 0       # arrived after the window had moved past them (or twice)
        self.lost = 0       # never arrived while the window waited
        self.reordered = 0  # arrived early and were held for the ones before them

    def push(self, audio: Audio) -> list[Audio]:
        """The frames that can go on now, in order."""
        number = audio.sequence
        if number is None:
            return [audio]  # unnumbered: nothing to order it by
        if self.next is None or number < self.next - RESTART_GAP:
            self.lost += len(self.held)
            self.next, self.held = number, {}
        if number < self.next or number in self.held:
            self.late += 1
            return []
        if number > self.next:
            self.held[number] = audio
            self.reordered += 1
            if len(self.held) < self.window:
                return []
            # Waited long enough: give up on the gap before the oldest held frame.
            first = min(self.held)
            self.lost += first - self.next
            self.next = first
            return self._release()
        self.next = number + 1
        return [audio, *self._release()]

    def _release(self) -> list[Audio]:
        out: list[Audio] = []
        assert self.next is not None
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        return out


class TelnyxFraming:
    """One stream's frames (``media.framing.Framing``); ``call_id`` and
    ``token`` come from the stream URL."""

    def __init__(self, call_id: str | None = None, token: str | None = None, *,
                 window: int = REORDER_WINDOW) -> None:
        self.call_id = call_id
        self.token = token
        self.stream_id = ""
        self.reorder = Reorder(window)
        self._handlers: dict[str, Handler] = {"media": self._audio, "start": self._start, "error": self._error}

    @property
    def late(self) -> int:
        return self.reorder.late

    @property
    def lost(self) -> int:
        return self.reorder.lost

    def parse(self, raw: str | bytes) -> MediaEvent | None:
        return parse_event(raw, self._handlers)

    def _error(self, message: dict[str, Any]) -> MediaEvent:
        error = _obj(message.get("payload")) or _obj(message.get("error"))
        _errors.warning("error", "Telnyx media stream %s reported an error: %s", self.stream_id or "?",
                        str(error.get("detail") or error.get("title") or error)[:200])
        return Other("error")

    def _start(self, message: dict[str, Any]) -> Start:
        start = _obj(message.get("start"))
        ccid = start.get("call_control_id")
        self.stream_id = str(message.get("stream_id") or start.get("stream_id") or "")[:120]
        return Start(self.stream_id, call_id=self.call_id, carrier_call_id=ccid if isinstance(ccid, str) else None,
                     token=self.token, media_format=_format(start.get("media_format")))

    def _audio(self, message: dict[str, Any]) -> MediaEvent | None:
        media = _obj(message.get("media"))
        if media.get("track", "inbound") not in INBOUND:
            return Other("media")
        try:
            payload = binascii.a2b_base64(media.get("payload") or "", strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            return Other("media")
        chunk = _int(media.get("chunk"))
        ready = self.reorder.push(Audio(payload, chunk, _int(media.get("timestamp"))))
        if not ready:
            return None  # held for a frame before it (or a late one, dropped)
        if len(ready) == 1:
            return ready[0]
        first = ready[0]
        return Audio(b"".join(a.payload for a in ready), first.sequence, first.timestamp_ms)

    def media(self, payload: bytes) -> str:
        return '{"event":"media","media":{"payload":"' + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}}, separators=(",", ":"))

    def clear(self) -> str:
        return '{"event":"clear"}'


class TelnyxCalls(StreamedCalls, Protocol):
    """What the media side uses of the Telnyx provider (``telnyx.TelnyxProvider``)."""

    def stream_admitted(self, call_id: str, ccid: str | None, token: str | None, stream_id: str) -> bool: ...

    def speak_with_telnyx(self, record: CallRecord, action: Speak) -> None: ...


class TelnyxMedia(CarrierMedia[TelnyxCalls]):
    """Telnyx's ``media.framing.MediaCarrier``."""

    def open(self, request: Request) -> TelnyxFraming:
        # Nothing to check before the upgrade (Telnyx signs nothing here):
        # a stream without the right token is closed with 1008 at ``start``.
        call_id, token = request.args.get(CALL_PARAMETER), request.args.get(TOKEN_PARAMETER)
        return TelnyxFraming(call_id[:64] if call_id else None, token[:128] if token else None)

    def admit(self, start: Start) -> str | None:
        if start.call_id is None or not self.provider.stream_admitted(start.call_id, start.carrier_call_id,
                                                                      start.token, start.stream_id):
            return None
        return start.call_id

    def say_instead(self, record: CallRecord, action: Speak) -> None:
        self.provider.speak_with_telnyx(record, action)


#: Telnyx's codec names are the RTP ones the media layer uses.
_ENCODINGS = {"PCMU": "PCMU", "PCMA": "PCMA", "AUDIO/X-MULAW": "PCMU", "AUDIO/X-ALAW": "PCMA"}


def _format(value: Any) -> MediaFormat:
    if not isinstance(value, dict):
        return PHONE_AUDIO  # the default, PCMU 8 kHz mono
    encoding = str(value.get("encoding", "PCMU"))
    rate, channels = _int(value.get("sample_rate", 8000)), _int(value.get("channels", 1))
    return MediaFormat(_ENCODINGS.get(encoding.upper(), encoding[:40]), rate or 0, channels or 0)


def _int(value: Any) -> int | None:
    """Telnyx's numbers come as strings."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
