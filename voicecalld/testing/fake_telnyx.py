"""A fake Telnyx Call Control v2 service on 127.0.0.1, for tests.

Point the daemon's ``telnyx.apiBaseUrl`` at ``fake.base_url`` and its
``telnyx.publicKey`` at ``fake.public_key_b64``; everything else looks like
real Telnyx: the REST API under ``/v2``, signed webhooks with the real
envelope, retries, duplicates and out-of-order delivery on request.

    with FakeTelnyx(seed=1) as fake:
        ...  # the daemon dials; the callee answers after ``answer_after``
        call = fake.wait_for(lambda: fake.last_call)
        fake.wait_event(call.call_control_id, "call.answered")
        fake.callee_says(call.call_control_id, "yes please")

Call control: ``send_dtmf`` (``call.dtmf_sent``), ``transfer`` (a leg B
that behaves as ``set_callee`` says for its number, reporting with its own
webhooks: answered and bridged, or hung up with the reason) and
``record_start``/``record_stop`` (``call.recording.saved`` once the
recording ends) are checked and simulated.

Media streaming: a dial or answer with ``stream_url`` gets a media stream
once the call is answered, as on real Telnyx: the fake opens the WebSocket
to that URL (``ws://`` for a ``wss://`` URL on 127.0.0.1, as nothing there
speaks TLS), sends ``connected`` and ``start`` (``stream_id``,
``call_control_id``, ``media_format``) and reports ``streaming.started``;
``streaming.stopped`` when the call ends or the daemon closes the socket.
While a stream is open, ``callee_says`` streams speech-like audio of the
words' length at real-time pace (the transcript itself is whatever the
speech-to-text service makes of it: with ``FakeOpenAI``, the next entry of
its ``transcripts`` queue), and ``callee_presses`` sends ``dtmf`` frames
as well as ``call.dtmf.received``. Marks are echoed once the audio before
them has played, and ``clear`` drops queued audio and returns pending
marks. Options: ``stream_encoding`` (``PCMU``, or ``PCMA`` as on many
European legs), ``stream_out_of_order`` (every n-th frame is sent after
the next), ``stream_behaviour`` (``connect``; ``fail`` reports
``streaming.failed`` without connecting; ``silent`` never opens the
stream). ``wait_stream`` returns the open stream, a
``media_client.MediaStreamClient``, to play any audio (``stream_audio``,
``_telnyx_media.speech_like``/``silence`` in either encoding) and to
inspect what the daemon sent (``received``, ``marks``, ``clears``):

    fake = FakeTelnyx(stream_encoding="PCMA", stream_out_of_order=5).start()
    ...  # the daemon dials with stream_url
    client = fake.wait_stream(call.call_control_id)
    openai.transcripts.put("yes please")
    fake.callee_says(call.call_control_id, "yes please")

Timing model: every simulated happening (answer, speech, timeouts) runs on
one scheduler thread in due order, and each produces its webhooks at once
(plus ``webhook_latency``). Webhooks are POSTed from that same thread, one
at a time, so by default they arrive in order and a slow receiver delays
everything after it. Real Telnyx promises neither order nor uniqueness;
``deliver_after`` and ``inject_webhook_fault("duplicate")`` reproduce that
on demand, and retries (which are rescheduled, not waited for) let later
events overtake a failed one, as they would in production.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import nacl.signing
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request

from . import _telnyx_wire as wire
from ._scheduler import Scheduler
from ._telnyx_calls import Callee, FakeCall
from ._telnyx_media import BEHAVIOURS, ENCODINGS, Streams, silence, speech_like
from ._telnyx_rest import RestApi, RestRequest
from ._telnyx_sim import DTMF_DIGITS, Simulation, Timing
from ._telnyx_webhooks import Deliverer, Delivery
from ._wait import wait_until
from .media_client import MediaStreamClient

__all__ = ["Callee", "Delivery", "FakeCall", "FakeTelnyx", "MediaStreamClient", "RestRequest", "Timing"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class _QuietHandler(WSGIRequestHandler):
    # HTTP/1.0 closes each connection after its response, so no handler
    # thread sits in a keep-alive read and stop() can join them all.
    protocol_version = "HTTP/1.0"

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("fake telnyx http: " + message, *args)


class FakeTelnyx:
    """A Telnyx Call Control v2 stand-in (see the module docstring).

    Options (seconds unless named otherwise):
      ms_per_char: TTS plays, and the remote party talks, this many ms per
        character.
      seed: makes call ids and event ids reproducible.
      answer_after: ringing time before the default callee acts.
      timeout_scale: multiplies a dial's ``timeout_secs``/``time_limit_secs``
        (0.01 makes the 5 s minimum ring timeout 50 ms).
      inbound_ring_timeout: an unanswered inbound call is cancelled by its
        caller (``originator_cancel``) after this long.
      webhook_latency: delay between a happening and its webhook.
      (These and the pacing below live in ``fake.timing``, a mutable
      ``Timing``.)
      webhook_retry_delays: waits before retry 1, 2, ... of a delivery the
        receiver did not answer with 2xx; attempts = len + 1.
      webhook_timeout: per-delivery HTTP timeout.
      amd_delay, dtmf_gap, playback_secs: pacing of those events.
      rest_latency: every REST request is held this long before it is
        handled (a slow API; the request is in ``requests`` meanwhile, with
        ``status`` None).
      command_id_ttl: how long a command_id is remembered (Telnyx: 60 s).
      default_callee: how numbers without ``set_callee`` behave.
      dials_per_second: the account's dial limit: a dial that would make more
        than 5 x this in the trailing 5 s is refused with 429 / 90103
        (``rate_limit_retry_after``: its Retry-After, whole seconds). None:
        no limit. ``greeting_secs``: a machine's greeting, answer to beep.
      stream_encoding, stream_out_of_order, stream_behaviour: media
        streaming (see the module docstring; ``fake.streams`` may change
        them while the fake runs).
    """

    def __init__(
        self,
        api_key: str = "KEY0FAKE0TELNYX0API0KEY_voicecalld",
        connection_id: str = "1684641123236054244",
        *,
        ms_per_char: float = 5.0,
        seed: int | None = None,
        answer_after: float = 0.05,
        timeout_scale: float = 1.0,
        inbound_ring_timeout: float = 30.0,
        webhook_latency: float = 0.0,
        webhook_retry_delays: Sequence[float] = (0.05, 0.1, 0.2),
        webhook_timeout: float = 2.0,
        amd_delay: float = 0.05,
        dtmf_gap: float = 0.01,
        playback_secs: float = 0.05,
        rest_latency: float = 0.0,
        command_id_ttl: float = 60.0,
        default_callee: Callee | None = None,
        dials_per_second: float | None = None,
        rate_limit_retry_after: int | None = None,
        greeting_secs: float | None = None,
        stream_encoding: str = "PCMU",
        stream_out_of_order: int = 0,
        stream_behaviour: str = "connect",
    ) -> None:
        if stream_encoding not in ENCODINGS or stream_behaviour not in BEHAVIOURS:
            raise ValueError(f"stream_encoding must be one of {ENCODINGS}, stream_behaviour one of {BEHAVIOURS}")
        self.api_key = api_key
        self.connection_id = connection_id
        self.timing = Timing(ms_per_char, answer_after, timeout_scale, inbound_ring_timeout, webhook_latency,
                             amd_delay, dtmf_gap, playback_secs, rest_latency, greeting_secs)
        self.command_id_ttl = command_id_ttl
        self.dials_per_second = dials_per_second
        self.rate_limit_retry_after = rate_limit_retry_after
        self.default_callee = default_callee or Callee()

        self.signing_key = nacl.signing.SigningKey.generate()
        verify_key = self.signing_key.verify_key
        self.public_key_b64 = base64.b64encode(bytes(verify_key)).decode()
        self.public_key_pem = wire.public_key_pem(verify_key)

        # Inspection state; every mutation happens under _lock.
        self.deliveries: list[Delivery] = []

        self._lock = threading.RLock()
        self._ids = wire.Ids(seed)
        self._callees: dict[str, Callee] = {}
        self._scheduler = Scheduler("fake-telnyx-scheduler")
        self._deliverer = Deliverer(self.signing_key, self._scheduler, retry_delays=webhook_retry_delays,
                                    timeout=webhook_timeout, record=self._record_delivery)
        self._sim = Simulation(self._lock, self._ids, self._scheduler, self._deliverer, self.timing,
                               connection_id)
        self.calls: dict[str, FakeCall] = self._sim.calls  # the simulation's own dict, live
        self.streams = Streams(self._lock, self._sim.emit)
        self.streams.encoding, self.streams.out_of_order = stream_encoding, stream_out_of_order
        self.streams.behaviour = stream_behaviour
        self._sim.media = self.streams
        self._rest = RestApi(self, self._lock, self._sim,
                             lambda number: self._callees.get(number, self.default_callee))
        self.requests = self._rest.requests  # the REST side's own list, live
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeTelnyx is already running")
        server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        # werkzeug makes request threads daemonic; tracked threads are joined
        # by server_close(), which is what makes stop() leak-free.
        server.daemon_threads = False  # type: ignore[attr-defined]
        self._server = server
        self._scheduler.start()
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                               name="fake-telnyx-http", daemon=True)
        self._server_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and simulating; join every thread. Raises if a
        simulation callback failed (a bug in the fake, or in a test hook)."""
        self._shutdown()
        if self._scheduler.errors:
            first = self._scheduler.errors[0]
            raise RuntimeError(f"fake Telnyx simulation failed: {first!r}") from first

    def _shutdown(self) -> None:
        server, thread = self._server, self._server_thread
        if server is None or thread is None:
            return
        try:
            self.streams.close()
            self._scheduler.stop()  # first: no new webhooks while the server winds down
        finally:
            server.shutdown()  # serve_forever's own finally runs server_close(), joining request threads
            thread.join(10)
            self._server = self._server_thread = None
            self._deliverer.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.stop()
        else:
            self._shutdown()  # keep the test's own failure as the one reported

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeTelnyx is not running; call start() first")
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def errors(self) -> list[BaseException]:
        return list(self._scheduler.errors)

    @property
    def last_call(self) -> FakeCall | None:
        """The most recently created call (dialed or inbound)."""
        return self._sim.last_call

    # -- test controls: the far end ------------------------------------------

    def set_callee(self, number: str, behaviour: str = "answer", *, after: float | None = None) -> None:
        """How calls to ``number`` go; see ``Callee``."""
        with self._lock:
            self._callees[number] = Callee(behaviour, after)

    def inbound_call(self, from_: str, to: str, webhook_url: str, *, ring_timeout: float | None = None) -> str:
        """A call arrives for the daemon; returns its call_control_id."""
        self._require_running()
        with self._lock:
            return self._sim.start_inbound(from_, to, webhook_url, ring_timeout).call_control_id

    def callee_says(self, call_control_id: str, text: str, confidence: float = 0.93) -> bool:
        """The remote party speaks. Reported as interim then final
        ``call.transcription`` events if the inbound track is being
        transcribed; otherwise recorded in ``dropped_speech``. Returns
        whether it will be reported."""
        words = text.split()
        if not words:
            raise ValueError("callee_says needs some words")
        encoding = self.streams.encoding
        audio = speech_like(max(0.6, self._sim.speech_secs(text)), encoding) + silence(0.8, encoding)
        if self.streams.stream_audio(call_control_id, audio):
            return True  # heard through the stream, by whoever transcribes it
        with self._lock:
            return self._sim.remote_says(self._call(call_control_id), words, confidence)

    def callee_presses(self, call_control_id: str, digits: str) -> bool:
        """The remote party presses keys: one ``call.dtmf.received`` each.
        Returns False (and sends nothing) unless the call is connected."""
        bad = set(digits) - DTMF_DIGITS
        if bad or not digits:
            raise ValueError(f"DTMF digits must be from 0-9 * # A-D, got {digits!r}")
        client = self.streams.client(call_control_id)
        if client is not None:
            for digit in digits:
                client.send_dtmf(digit)  # and call.dtmf.received as well, as Telnyx sends both
        with self._lock:
            return self._sim.remote_presses(self._call(call_control_id), digits)

    def wait_stream(self, call_control_id: str, timeout: float = 5.0) -> MediaStreamClient:
        """The call's open media stream (waiting for it to open)."""
        return self.streams.wait_open(call_control_id, timeout)

    def stream_audio(self, call_control_id: str, audio: bytes) -> bool:
        """Play ``audio`` (in ``streams.encoding``) into the call's open
        stream at real-time pace, in the background; False without one."""
        return self.streams.stream_audio(call_control_id, audio)

    def callee_hangs_up(self, call_control_id: str) -> bool:
        """The remote party hangs up (or declines / gives up while ringing).
        Returns False if the call had already ended."""
        with self._lock:
            return self._sim.remote_hangs_up(self._call(call_control_id))

    # -- test controls: faults ---------------------------------------------------

    def fail_next(self, count: int = 1, *, status: int = 500, code: str | None = None,
                  detail: str | None = None, retry_after: int | None = None,
                  path_contains: str | None = None) -> None:
        """The next ``count`` REST requests (whose path contains
        ``path_contains``, if given) fail with ``status`` before anything
        else is checked, so they change nothing and consume no command_id.
        429 carries ``Retry-After`` (default 1 s; whole seconds, as HTTP
        requires)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        default_code = "10011" if status == 429 else "10007" if status >= 500 else "10015"
        title = {429: "Too many requests", 500: "Unexpected error"}.get(status, "Request failed")
        headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
        error = wire.ApiError(status, code or default_code, title,
                              detail or f"Injected failure (HTTP {status}) from the fake Telnyx.",
                              headers=headers)
        self._rest.fail(error, count, path_contains)

    def inject_webhook_fault(self, fault: str, *, event_type: str | None = None,
                             call_control_id: str | None = None, count: int = 1) -> None:
        """Damage the next ``count`` matching webhooks.

        ``duplicate``: delivered twice (same ``data.id``). ``drop``: never
        delivered (as if every retry failed). A signature fault
        (``bad_signature``, ``wrong_key``, ``stale_timestamp``,
        ``future_timestamp``, ``missing_headers``, ``missing_signature``,
        ``missing_timestamp``, ``malformed_signature``,
        ``truncated_signature``) damages the first attempt only; if the
        receiver rejects it, the normal retry delivers it correctly signed.
        """
        self._deliverer.add_fault(fault, event_type, call_control_id, count)

    def deliver_after(self, event_type: str, after: str, *, call_control_id: str | None = None,
                      count: int = 1) -> None:
        """Hold the next ``event_type`` webhook until the same call's
        ``after`` webhook has been delivered (or the call's hangup), e.g.
        ``deliver_after("call.initiated", "call.answered")``."""
        self._deliverer.add_hold(event_type, after, call_control_id, count)

    def hold_webhook(self, event_type: str, *, call_control_id: str | None = None, count: int = 1) -> None:
        """Hold the next ``event_type`` webhook until ``release_webhook``
        (or the call's hangup), e.g. to let something happen first."""
        self._deliverer.add_hold(event_type, "(released by the test)", call_control_id, count)

    def release_webhook(self, event_type: str, *, call_control_id: str | None = None) -> int:
        """Deliver the held ``event_type`` webhooks now; returns how many there were."""
        return self._deliverer.release(event_type, call_control_id)

    def send_forged_webhook(self, call_control_id: str, event_type: str = "call.hangup",
                            fault: str = "bad_signature", **payload: Any) -> Delivery:
        """Send one request with damaged signature headers now (no retries)
        and return it with the receiver's status. The fake's call is not
        affected: this is an attacker, not Telnyx."""
        with self._lock:
            call = self._call(call_control_id)
            extra: dict[str, Any] = {}
            if event_type == "call.hangup":
                extra = {"hangup_cause": "normal_clearing", "hangup_source": call.remote_source(),
                         "sip_hangup_cause": "200"}
            event = self._sim.event(call, event_type, **{**extra, **payload})
        return self._deliverer.send_forged(event, fault)

    # -- test helpers: waiting -----------------------------------------------

    def wait_for(self, predicate: Callable[[], T], timeout: float = 2.0, what: str | None = None) -> T:
        """Poll ``predicate`` until it returns something truthy; return that.
        Raises AssertionError describing the fake's state on timeout."""
        return wait_until(predicate, timeout, what or "", context=self.describe)

    def wait_idle(self, timeout: float = 2.0) -> None:
        """Wait until nothing is scheduled or running: every webhook sent (retries
        included), every timer fired. Nothing more happens until the test acts."""
        self.wait_for(lambda: self._scheduler.idle, timeout, what="the simulation to come to rest")

    def wait_event(self, call_control_id: str, event_type: str, timeout: float = 2.0, *,
                   ok: bool = False, nth: int = 1) -> Delivery:
        """Wait until the ``nth`` distinct (by ``data.id``, not forged)
        ``event_type`` webhook for the call has been answered by the
        receiver (with 2xx if ``ok``); return that delivery."""
        def delivered() -> Delivery | None:
            call = self.calls.get(call_control_id)
            seen: dict[str, Delivery] = {}
            for delivery in list(call.webhooks) if call else []:
                if (delivery.event_type == event_type and not delivery.forged and delivery.finished
                        and (delivery.ok or not ok)):
                    seen.setdefault(delivery.event_id, delivery)
            return list(seen.values())[nth - 1] if len(seen) >= nth else None
        found = self.wait_for(delivered, timeout, what=f"{event_type} #{nth} delivered for call {call_control_id}")
        assert isinstance(found, Delivery)
        return found

    @property
    def dropped_webhooks(self) -> list[tuple[str, str | None]]:
        """(event type, call_control_id) of each webhook a ``drop`` fault
        kept from being sent, in order."""
        return [(e.event_type, e.call_control_id) for e in list(self._deliverer.dropped)]

    def describe(self) -> str:
        """A readable summary of calls, webhooks and requests, for failures."""
        lines = []
        with self._lock:
            for call in self.calls.values():
                lines.append(f"  call {call.call_control_id} {call.direction} {call.status} "
                             f"cause={call.hangup_cause} commands={call.command_names} "
                             f"webhooks={[repr(d) for d in call.webhooks]}")
            for request in self.requests[-10:]:
                lines.append(f"  {request.method} {request.path} -> {request.status}")
        lines.extend(f"  simulation error: {exc!r}" for exc in self._scheduler.errors)
        return "fake Telnyx state:\n" + ("\n".join(lines) if lines else "  (nothing happened)")

    # -- serving (the REST API itself is _telnyx_rest) ------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        response = self._rest.handle(Request(environ))
        return response(environ, start_response)

    # -- helpers ------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._server is None:
            raise RuntimeError("FakeTelnyx is not running; call start() first")

    def _call(self, call_control_id: str) -> FakeCall:
        call = self.calls.get(call_control_id)
        if call is None:
            raise KeyError(f"no call {call_control_id!r} at the fake Telnyx (known: {list(self.calls)})")
        return call

    def _record_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)
            call = self.calls.get(delivery.call_control_id or "")
            if call is not None:
                call.webhooks.append(delivery)

