"""What the media layer asks of a carrier that streams call audio over a
WebSocket.

The stream endpoint, admission, the read loop, the speech-to-text bridge,
the player, barge-in and marks (``stream``, ``loop``, ``player``) are the
same for every carrier. A carrier differs in three things, and supplies
each through its ``MediaCarrier`` (``Provider.media()``):

* how an upgrade is authenticated (``open``): Twilio signs the upgrade
  request, another carrier may put a token in the URL;
* its frames (``Framing``): the connection's messages parsed into the
  neutral events below, and the connection's outgoing audio, ``mark`` and
  ``clear`` frames built from neutral values;
* which call a ``start`` belongs to (``admit``), checking the per-call
  token the carrier was given when the stream was requested (how it is
  requested, in TwiML or a call-control command, is the carrier's own
  business: the media layer only answers the connection that follows).

Events are small frozen values; ``Audio`` is made 50 times a second per
call, so the classes use ``__slots__`` and parsing one must stay cheap (one
JSON parse and one base64 decode, no more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ..calls import CallRecord, Speak

@dataclass(frozen=True, slots=True)
class MediaFormat:
    #: By its RTP name (RFC 3551): "PCMU" is G.711 µ-law, "PCMA" A-law;
    #: anything else as the carrier named it.
    encoding: str = "PCMU"
    sample_rate: int = 8000
    channels: int = 1


#: What the player sends and the speech-to-text session is set up for.
PHONE_AUDIO = MediaFormat()


@dataclass(frozen=True, slots=True)
class Start:
    """The stream begins. ``call_id`` is ours when the carrier carries it
    back (a custom parameter), ``carrier_call_id`` the carrier's own id,
    ``token`` the per-call secret the stream was requested with."""

    stream_id: str
    call_id: str | None = None
    carrier_call_id: str | None = None
    token: str | None = None
    media_format: MediaFormat = PHONE_AUDIO


@dataclass(frozen=True, slots=True)
class Audio:
    """Caller audio. ``sequence`` and ``timestamp_ms`` when the carrier
    numbers its frames (some deliver them out of order)."""

    payload: bytes
    sequence: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """The carrier echoes a mark we sent: the audio before it has played
    (or a ``clear`` dropped it)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The carrier ends the stream."""


@dataclass(frozen=True, slots=True)
class Other:
    """A well-formed message the media layer has no use for (the carrier's
    ``event`` name, for logs), e.g. an outbound-track echo or an error report."""

    event: str


MediaEvent = Start | Audio | Dtmf | Mark | Stop | Other


class Framing(Protocol):
    """One stream's frames. ``parse`` runs on the read loop, the builders
    on the player's thread; an adapter learns what it needs for its
    outgoing frames (a stream id) from ``start``, which the media layer
    parses before anything is sent."""

    def parse(self, raw: str | bytes) -> MediaEvent | None:
        """The event a message carries; None for one to ignore silently
        (not JSON, or a greeting such as a ``connected`` message)."""

    def media(self, payload: bytes) -> str:
        """A frame that plays ``payload`` (``PHONE_AUDIO``) to the caller."""

    def mark(self, name: str) -> str:
        """A frame asking the carrier to echo ``name`` once what was sent
        before it has played."""

    def clear(self) -> str:
        """A frame that drops audio sent but not yet played (pending marks
        come back at once)."""


class UpgradeRefused(Exception):
    """``MediaCarrier.open`` refuses a connection (HTTP 401); the message
    says why, for the log and the response."""


#: Speaks an utterance over the call's open stream (True), or declines (False).
Speaker = Callable[["CallRecord", "Speak"], bool]
#: Plays DTMF digits' tones in-band on the call's open stream (True), or declines (False).
ToneSender = Callable[["CallRecord", str], bool]


class MediaCarrier(Protocol):
    """A carrier's side of media streaming (``Provider.media()``)."""

    def streaming(self) -> bool:
        """Whether calls stream now (configured, and reachable); the
        endpoint answers 404 otherwise."""

    def open(self, request: Request) -> Framing:
        """Authenticate a WebSocket upgrade; the framing for the connection,
        or ``UpgradeRefused``."""

    def admit(self, start: Start) -> str | None:
        """The call ``start`` belongs to, if its token is that call's
        (compared in constant time); else None."""

    def stream_expected(self, record: CallRecord) -> bool:
        """Will this call's stream come up (it was requested, or is about
        to be, and has not failed)? The media layer then holds what the
        call says until it starts (for a few seconds at most), so the
        opening is spoken in the same voice as everything after it;
        otherwise it is the carrier's to say."""

    def attach(self, speaker: Speaker) -> None:
        """From now on the carrier speaks through ``speaker`` on calls
        whose stream is open, or about to open (``stream_expected``); it
        falls back to its own speech otherwise."""

    def attach_tones(self, sender: ToneSender) -> None:
        """From now on the carrier sends DTMF through ``sender`` on calls
        whose stream is open, so the stream stays up (it falls back to its
        own way of sending digits otherwise)."""

    def say_instead(self, record: CallRecord, action: Speak) -> None:
        """Say an utterance the carrier's own way, because speaking it over
        the stream failed. Raises ``NotConnected`` once the call is over,
        ``VoiceCallError`` if that fails too."""
