"""The carrier interface. Each provider module adapts one carrier to it and
keeps that carrier's quirks to itself.

Providers report what happens on their calls as normalized ``CallEvent``s
through the ``CallSink`` the engine binds, whether the news arrives by
webhook, media stream or (for the mock) the timer wheel. They never touch
call records directly, and they see nothing of the engine beyond
``CallSink``. What differs between carriers and matters to the engine (how
long a message may be, what ``Speak.then`` and ``StopListening`` mean) each
one declares in its ``capabilities``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .. import publicurl
from ..calls import CallEvent, CallRecord, SendDtmf, Speak, State, Transfer
from ..errors import ProviderError

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request, Response

    from ..config import Config
    from ..control.spec import Method
    from ..media.framing import MediaCarrier


class CallSink(Protocol):
    """What a carrier may ask of the engine."""

    @property
    def config(self) -> Config: ...
    def handle_event(self, event: CallEvent) -> None: ...
    def accept_inbound(self, from_: str, to: str | None,
                       provider_call_id: str | None = None) -> tuple[dict[str, Any], bool]: ...
    def find_by_provider_id(self, provider_call_id: str) -> str | None: ...
    def attach_provider_id(self, call_id: str, provider_call_id: str) -> None: ...
    def live_record(self, call_id: str) -> CallRecord | None: ...
    def note_turn(self, call_id: str, latency_ms: float) -> bool:
        """A reply's turn latency: the caller's last word to its first audio at the carrier."""
    def report_recording(self, call_id: str | None, provider_call_id: str | None,
                         recording: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class Capabilities:
    """What a carrier can do, as far as the engine needs to know."""

    #: The longest message (characters) the carrier's text-to-speech takes
    #: in one utterance; longer ones are refused before anything is dialed.
    max_message_chars: int
    #: The carrier scripts the call ahead of time (TwiML): it reads
    #: ``Speak.then`` as it speaks and itself listens (or hangs up) when the
    #: words end, so the ``Listen`` that follows ``played`` asks nothing of
    #: it. False: ``Speak.then`` is for the engine alone, and the carrier
    #: starts listening only when ``start_listening`` says so.
    scripts_speech: bool = False
    #: ``stop_listening`` stops the carrier's recognition (the callee's last
    #: words start no new turn). False: the carrier has nothing to stop;
    #: what follows a goodbye was already settled by ``Speak.then``.
    stops_listening: bool = True
    #: The carrier's dial rate limit (new calls per second), the default of
    #: ``outbound.dialsPerSecond``; None: no limit.
    dials_per_second: float | None = None


@dataclass(frozen=True)
class CarrierStatus:
    """What the carrier says about a call (restart recovery)."""

    live: bool
    reason: State | None = None   # end reason when not live
    answered: bool = False


class Provider(ABC):
    name: str = "?"
    capabilities: ClassVar[Capabilities]

    def __init__(self) -> None:
        self._sink: CallSink | None = None
        #: Where the carrier reaches us (``publicUrl``, or the tunnel's
        #: origin); None until known. Webhook and stream URLs are built from
        #: it by ``publicurl``, for every carrier alike.
        self.public_url: str | None = None

    def bind(self, sink: CallSink) -> None:
        """Called once by the engine: events go to ``sink.handle_event``,
        inbound calls to ``sink.accept_inbound``."""
        self._sink = sink

    @property
    def sink(self) -> CallSink:
        if self._sink is None:
            raise RuntimeError(f"{self.name} provider is not bound to the engine")
        return self._sink

    @property
    def webhook_url(self) -> str:
        """The public webhook URL: ``public_url`` when it has a path, else
        ``public_url`` + ``serve.path`` (see ``publicurl``)."""
        if not self.public_url:
            raise RuntimeError("no public URL: set publicUrl or configure a tunnel")
        return publicurl.webhook_url(self.public_url, self.sink.config.serve.path)

    @property
    def stream_url(self) -> str | None:
        """The public ``wss://`` URL of the media-stream endpoint, exactly as
        carriers are given it (Twilio signs the upgrade over it); None
        without a public URL."""
        if not self.public_url:
            return None
        cfg = self.sink.config
        return publicurl.stream_url(self.public_url, cfg.serve.path, cfg.streaming.streamPath)

    def emit(self, event: CallEvent) -> None:
        self.sink.handle_event(event)

    # -- call control (may block on the network; never called under a lock) --

    @abstractmethod
    def initiate(self, record: CallRecord) -> str:
        """Place an outbound call; return the carrier's call id."""

    @abstractmethod
    def hangup(self, record: CallRecord) -> None:
        """End the call at the carrier. A call that already ended is success."""

    @abstractmethod
    def speak(self, record: CallRecord, action: Speak) -> None:
        """Say ``action.text``; report ``played`` when it finished, if the
        carrier can tell."""

    def start_listening(self, record: CallRecord, turn: int | None) -> None:
        """Begin a listening turn. Carriers that listen continuously need not."""

    def stop_listening(self, record: CallRecord) -> None:
        """Stop listening (the bot is saying goodbye). A later
        ``start_listening`` starts again."""

    def call_status(self, record: CallRecord) -> CarrierStatus | None:
        """Ask the carrier about a call; None if it cannot tell."""
        return None

    # -- call control: DTMF, transfer, recording --

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        """Send DTMF to the callee, after what the call says before it."""
        raise ProviderError(f"the {self.name} carrier cannot send DTMF")

    def transfer(self, record: CallRecord, action: Transfer) -> None:
        """Say ``action.message`` (if any), then hand the call to
        ``action.to``. Returns once the carrier took the request; the
        outcome comes later as a ``transferred`` or ``transfer-failed``
        event. Raises if the carrier refuses at once."""
        raise ProviderError(f"the {self.name} carrier cannot transfer calls")

    def start_recording(self, record: CallRecord) -> None:
        """Record the call from now on; the carrier reports the recording
        (``CallSink.report_recording``) once it is processed."""
        raise ProviderError(f"the {self.name} carrier cannot record calls")

    def forget(self, record: CallRecord) -> None:
        """The call is over: drop per-call state."""

    def start(self) -> None:
        """The daemon is up (webhook server listening)."""

    def stop(self) -> None:
        """The daemon is stopping."""

    # -- media streams --

    def media(self) -> MediaCarrier | None:
        """The carrier's side of streaming call audio over a WebSocket
        (authentication, framing; see ``media.framing``), or None if the
        carrier streams no audio."""
        return None

    # -- webhooks --

    def handle_webhook(self, request: Request) -> Response:
        from werkzeug.wrappers import Response

        return Response("this provider takes no webhooks\n", status=404, mimetype="text/plain")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    # -- control --

    def control_methods(self) -> Mapping[str, Method[object]]:
        """Control methods this carrier adds to the daemon's (the mock's
        simulated callee); merged by ``control.methods.table``."""
        return {}
