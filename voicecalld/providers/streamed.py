"""What every carrier's media side does alike.

A carrier's ``media.framing.MediaCarrier`` hands speech and DTMF on calls
whose stream is open (or about to open) to the media layer by installing
its ``stream_speaker`` and ``stream_dtmf``, and asks its provider whether
calls stream at all and whether a call's stream is expected. Only how an
upgrade is authenticated, how ``start`` names its call, the framing and the
carrier's own speech differ: those stay in ``twilio_media`` and
``telnyx_media``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .. import jsonsafe
from ..media.framing import Dtmf, Mark, MediaEvent, Other, Stop

if TYPE_CHECKING:
    from ..calls import CallRecord
    from ..config import Config
    from ..media.framing import Speaker, ToneSender

log = logging.getLogger(__name__)


def warn_about_streaming(cfg: Config, public_url: str | None, carrier: str, fallback: str) -> None:
    """At start: say why calls will not stream although ``streaming.enabled``
    (``fallback``: how they listen instead), or that the carrier needs an
    https public URL to open wss:// streams."""
    if cfg.streaming.enabled and not cfg.streaming.openaiApiKey:
        log.warning("streaming.enabled is on but streaming.openaiApiKey (OPENAI_API_KEY) is not set: "
                    "%s calls listen with %s instead", carrier, fallback)
    elif cfg.streaming.enabled and public_url and not public_url.startswith("https://"):
        log.warning("streaming.enabled: %s opens media streams to wss:// URLs only, so publicUrl should be "
                    "https (got %s)", carrier, public_url)


class StreamedCalls(Protocol):
    """What the media side uses of any provider."""

    stream_speaker: Speaker | None
    stream_dtmf: ToneSender | None

    def streaming(self) -> bool: ...

    def stream_expected(self, call_id: str) -> bool: ...


P = TypeVar("P", bound=StreamedCalls)


class CarrierMedia(Generic[P]):
    """The part of a ``MediaCarrier`` that only passes things to its provider."""

    def __init__(self, provider: P) -> None:
        self.provider = provider

    def streaming(self) -> bool:
        return self.provider.streaming()

    def stream_expected(self, record: CallRecord) -> bool:
        return self.provider.stream_expected(record.callId)

    def attach(self, speaker: Speaker) -> None:
        self.provider.stream_speaker = speaker

    def attach_tones(self, sender: ToneSender) -> None:
        self.provider.stream_dtmf = sender


#: A carrier's own handling of one kind of message (by its ``event``).
Handler = Callable[[dict[str, Any]], MediaEvent | None]


def parse_event(raw: str | bytes, handlers: Mapping[str, Handler]) -> MediaEvent | None:
    """One JSON text frame of a media stream, by its ``event``: the
    carrier's ``handlers`` first (its media and start); ``mark``, ``dtmf``,
    ``stop`` and ``connected`` look alike on Twilio and Telnyx. None for what
    carries nothing (not JSON, ``connected``)."""
    try:
        message = jsonsafe.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    event = message.get("event")
    handler = handlers.get(event) if isinstance(event, str) else None
    if handler is not None:
        return handler(message)
    if event == "mark":
        return Mark(str(_obj(message.get("mark")).get("name", "")))
    if event == "dtmf":
        digit = str(_obj(message.get("dtmf")).get("digit", ""))
        return Dtmf(digit) if digit else Other("dtmf")
    if event == "stop":
        return Stop()
    if event == "connected":
        return None
    return Other(str(event)[:40])


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
