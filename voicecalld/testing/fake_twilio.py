"""A fake Twilio Programmable Voice service for in-process tests.

Point the daemon's ``twilio.apiBaseUrl`` at ``FakeTwilio.base_url``; every
other thing the daemon sees (REST paths and JSON, status callbacks, signed
webhooks, TwiML interpretation, error codes) behaves like real Twilio
(https://www.twilio.com/docs/voice). Tests drive the far end of each call (answer, speak,
hang up) and inspect everything that happened::

    with FakeTwilio(time_scale=0.01) as fake:
        ...configure the daemon with twilio.apiBaseUrl = fake.base_url,
           accountSid = fake.account_sid, authToken = fake.auth_token...
        ...daemon places a call...
        call = fake.wait_call(to="+15550002222")
        fake.callee_says(call.sid, "yes please")    # waits for a speech <Gather>
        fake.wait_ended(call.sid)
        assert call.said == ["Hello!", "Goodbye."]

Call control: ``<Play digits>`` plays (``call.digits_played``); ``<Dial>``
rings its ``<Number>``, which behaves as ``set_callee`` says (busy,
no-answer...), reports to its status callback and lasts until
``end_dial``; a call created with ``Record=true`` (or running
``<Start><Recording>``) is recorded from its answer, and the signed
RecordingStatusCallback follows its end (``call.recordings``).

Timing: ``<Say>`` lasts ``len(text) * ms_per_char`` ms; every duration that
TwiML or the API states in seconds (Pause length, Gather timeout, the call's
ring Timeout) is multiplied by ``time_scale``. Callee behaviours use plain
seconds. See the README-style notes on each method.
"""

from __future__ import annotations

import re
import socketserver
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from ._twilio_driver import CallRunner
from ._twilio_model import (
    TERMINAL,
    Callee,
    Delivery,
    FakeCall,
    FakeError,
    Fetch,
    RecordingRecord,
    RecordingRequest,
    RestRequest,
    StreamRequest,
)
from ._twilio_rest import CreateFault, CreateRequest, RestApp
from ._twilio_signing import Params, compute_signature
from ._twilio_webhooks import WebhookSender
from ._wait import wait_until

__all__ = ["Callee", "Delivery", "FakeCall", "FakeError", "FakeTwilio", "RestRequest",
           "StreamRequest"]

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fa4e0000" * 4
_ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_DEFAULT_ERRORS = {500: (20500, "Internal Server Error"), 429: (20429, "Too Many Requests"),
                   503: (20503, "Service Unavailable")}
T = TypeVar("T")


class _QuietHandler(WSGIRequestHandler):
    # HTTP/1.0 closes each connection after its response, so stop() never
    # waits on a keep-alive socket the daemon's HTTP client left open.
    protocol_version = "HTTP/1.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # tests read fake.requests instead of a log line per request


class _CallbackFault:
    def __init__(self, kind: str, call_status: str, call_sid: str | None) -> None:
        self.kind, self.call_status, self.call_sid = kind, call_status, call_sid

    def matches(self, kind: str, call_sid: str, call_status: str) -> bool:
        return (self.kind == kind and self.call_status == call_status
                and self.call_sid in (None, call_sid))


class FakeTwilio:
    """Fake Twilio on 127.0.0.1. Construct, ``start()``, use, ``stop()``.

    Options:
      ms_per_char: how long ``<Say>`` plays, per character of text.
      time_scale: multiplier for second-valued TwiML/API durations
        (``<Pause length>``, ``<Gather timeout>``, the call ``Timeout``).
      answer_delay: seconds a callee rings before answering (default callee).
      dial_delay: seconds from create to ``initiated`` (and to busy/failed).
      owned_numbers: numbers you may call from; others get 21210. None
        accepts any valid E.164 ``From``.
      api_keys: ``{"SK...": secret}`` pairs accepted besides the auth token.
      webhook_timeout: seconds before a webhook request gives up (Twilio: 15).
      webhook_retries: if > 0, retry webhooks that get 5xx this many times.
      retry_delay: seconds between webhook attempts.
      calls_per_second: the account's CPS, as a token bucket (a second's
        worth of calls, refilled at this rate; Twilio averages CPS over time,
        https://www.twilio.com/docs/glossary/cps): a create with no token
        left is refused with 429 / 20429 (``rate_limit_retry_after`` sets
        its Retry-After). None: no limit.
    """

    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN,
                 *, ms_per_char: float = 10.0, time_scale: float = 1.0, answer_delay: float = 0.05,
                 dial_delay: float = 0.01, owned_numbers: Iterable[str] | None = None,
                 api_keys: dict[str, str] | None = None, webhook_timeout: float = 5.0,
                 webhook_retries: int = 0, retry_delay: float = 0.05, port: int = 0,
                 calls_per_second: float | None = None, rate_limit_retry_after: float | None = None) -> None:
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError(f"account_sid must be 'AC' + 32 lowercase hex digits, not {account_sid!r}")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.ms_per_char = ms_per_char
        self.time_scale = time_scale
        self.answer_delay = answer_delay
        self.dial_delay = dial_delay
        self.owned_numbers: set[str] | None = None if owned_numbers is None else set(owned_numbers)
        self.api_keys = dict(api_keys or {})
        #: What fetching the Account resource says: active, suspended or closed.
        self.account_status = "active"
        self.webhook_timeout = webhook_timeout
        self.webhook_retries = webhook_retries
        self.retry_delay = retry_delay
        self.calls_per_second = calls_per_second
        self.rate_limit_retry_after = rate_limit_retry_after
        self._rate_lock = threading.Lock()
        self._tokens: float | None = None  # the CPS bucket; full at the first create
        self._tokens_at = 0.0
        self.on_stream: Callable[[StreamRequest], None] | None = None
        # Inspection.
        self.requests: list[RestRequest] = []
        self.deliveries: list[Delivery] = []
        self.streams: list[StreamRequest] = []
        self.internal_errors: list[str] = []
        # Internals.
        self._port = port
        self._lock = threading.Lock()
        self._calls: dict[str, FakeCall] = {}
        self._callees: dict[str, Callee] = {}
        self._next_callees: deque[Callee] = deque()
        self._create_faults: deque[CreateFault] = deque()
        self._callback_faults: list[_CallbackFault] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._webhooks = WebhookSender(self)

    # -- lifecycle --

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeTwilio already started")
        if self._stopping.is_set():
            # Calls, faults and records belong to one run; make a new fake instead.
            raise RuntimeError("a stopped FakeTwilio cannot be restarted")
        server = make_server("127.0.0.1", self._port, RestApp(self), threaded=True,
                             request_handler=_QuietHandler)
        # Track request threads so server_close() joins them: no leaks.
        assert isinstance(server, socketserver.ThreadingMixIn)
        server.daemon_threads = False
        self._server = server
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                               name="fake-twilio-http", daemon=True)
        self._server_thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Hang up every call silently, stop the server, join every thread.

        Raises RuntimeError if a thread does not finish (a leak) or if the
        fake itself hit an internal error during the test.
        """
        self._stopping.set()
        for call in self.calls.values():
            call.hang_up("fake-stopped", silent=True)
        limit = timeout if timeout is not None else self.webhook_timeout + 5
        if self._server is not None and self._server_thread is not None:
            self._server.shutdown()
            self._server_thread.join(limit)
            self._server.server_close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(limit)
        alive = [t.name for t in threads + [self._server_thread] if t is not None and t.is_alive()]
        self._server = None
        if alive:
            raise RuntimeError(f"FakeTwilio threads did not stop: {alive}")
        if self.internal_errors:
            raise RuntimeError("FakeTwilio internal error(s):\n" + "\n".join(self.internal_errors))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        except RuntimeError:
            if exc is None:  # do not hide the test's own failure behind ours
                raise

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeTwilio is not running")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        """What to put in ``twilio.apiBaseUrl``: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> dict[str, FakeCall]:
        """Snapshot of every call by sid (outbound and inbound)."""
        with self._lock:
            return dict(self._calls)

    def sign(self, url: str, params: Params | None = None) -> str:
        """The X-Twilio-Signature this account would send for ``url`` + ``params``."""
        return compute_signature(self.auth_token, url, params)

    # -- callee behaviour --

    def set_callee(self, number: str, callee: Callee | None = None, **kw: Any) -> None:
        """How calls to ``number`` go from now on, e.g. ``set_callee(n, outcome="busy")``."""
        self._callees[number] = callee or Callee(**kw)

    def next_callee(self, callee: Callee | None = None, **kw: Any) -> None:
        """Queue a behaviour for the next outbound call (any number); FIFO."""
        self._next_callees.append(callee or Callee(**kw))

    def callee_says(self, call_sid: str, text: str, confidence: float = 0.9, *,
                    wait: float = 5.0) -> None:
        """The callee speaks. Blocks until a speech ``<Gather>`` listens (up to
        ``wait`` s; AssertionError if none does), as speech outside a Gather
        is never heard on Twilio either."""
        self._call(call_sid).offer_input("speech", text, confidence, wait)

    def callee_presses(self, call_sid: str, digits: str, *, wait: float = 5.0) -> None:
        """The callee presses keys (a dtmf ``<Gather>`` must be listening)."""
        self._call(call_sid).offer_input("dtmf", digits, 1.0, wait)

    def callee_hangs_up(self, call_sid: str) -> None:
        """The far end hangs up now: ``completed`` if answered (else ``canceled``
        for an outbound call, ``no-answer`` for an inbound one)."""
        self._call(call_sid).hang_up("callee-hangup")

    def end_dial(self, call_sid: str) -> None:
        """The party the call's ``<Dial>`` connected (a transfer's target)
        hangs up; the ``<Dial>``'s action then runs."""
        self._call(call_sid).end_dial()

    def end_stream(self, call_sid: str) -> None:
        """End the call's ``<Connect><Stream>``, as the daemon closing its WebSocket
        would; the TwiML after ``<Connect>`` (or its ``action``) then runs."""
        self._call(call_sid).close_stream()

    # -- inbound --

    def inbound_call(self, from_: str, to: str, voice_url: str, status_callback: str | None = None,
                     *, method: str = "POST", status_callback_method: str = "POST") -> str:
        """Someone calls one of your numbers: Twilio posts ``voice_url`` (with
        ``Direction=inbound``, ``CallStatus=ringing``) and runs the answer.
        Returns the new call's sid at once; the call runs on its own thread."""
        if self._server is None:
            raise RuntimeError("start() the fake first")
        if not is_e164(to):
            raise ValueError(f"inbound 'to' must be one of your E.164 numbers, not {to!r}")
        if self.owned_numbers is not None and to not in self.owned_numbers:
            raise ValueError(f"{to} is not one of this account's numbers: {sorted(self.owned_numbers)}")
        call = FakeCall(
            sid=_sid("CA"), account_sid=self.account_sid, direction="inbound", from_=from_, to=to,
            source=Fetch(voice_url, method.upper(), "voice"), status_callback=status_callback,
            status_callback_method=status_callback_method.upper(), status_events=frozenset({"completed"}),
            timeout=60, machine_detection=None, callee=Callee(), status="ringing")
        self._launch(call)
        return call.sid

    # -- fault injection --

    def fail_next_creates(self, count: int = 1, *, status: int | None = None, code: int | None = None,
                          message: str | None = None, retry_after: float | None = None) -> None:
        """The next ``count`` create-call requests fail: ``status`` 500 (code
        20500) by default, 429 (20429; ``retry_after`` sets Retry-After), or a
        chosen Twilio ``code`` (HTTP 400 unless ``status`` says otherwise)."""
        if status is None:
            status = 400 if code is not None else 500
        default_code, default_message = _DEFAULT_ERRORS.get(status, (code or 20001, None))
        for _ in range(count):
            self._create_faults.append(CreateFault(status, code or default_code,
                                                   message or default_message, retry_after))

    def duplicate_next_callback(self, call_status: str, *, call_sid: str | None = None) -> None:
        """Deliver the next status callback with this ``CallStatus`` twice
        (identical body, signature and idempotency token)."""
        self._callback_faults.append(_CallbackFault("duplicate", call_status, call_sid))

    def delay_next_callback(self, call_status: str, *, call_sid: str | None = None) -> None:
        """Hold the next status callback with this ``CallStatus`` and send it
        right after the following one (keeping its SequenceNumber), e.g.
        ``ringing`` arriving after ``in-progress``."""
        self._callback_faults.append(_CallbackFault("delay", call_status, call_sid))

    # -- waiting (for tests) --

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0, *, message: str = "",
                 interval: float = 0.01) -> T:
        """Poll ``predicate`` until it returns something truthy; return that."""
        return wait_until(predicate, timeout, message, interval=interval, context=self.describe)

    def wait_call(self, *, to: str | None = None, direction: str | None = None, count: int = 1,
                  timeout: float = 5.0) -> FakeCall:
        """Wait until ``count`` calls match (``to``, ``direction``); return the
        ``count``-th in creation order. ``fake.wait_call().sid`` is the first
        call the daemon placed."""
        def match() -> FakeCall | None:
            found = [c for c in self.calls.values()
                     if to in (None, c.to) and direction in (None, c.direction)]
            return found[count - 1] if len(found) >= count else None
        return self.wait_for(match, timeout, message=f"call #{count} (to={to}, direction={direction})")

    def wait_status(self, call_sid: str, status: str | Iterable[str], timeout: float = 5.0) -> FakeCall:
        wanted = {status} if isinstance(status, str) else set(status)
        call = self._call(call_sid)
        self.wait_for(lambda: call.status in wanted, timeout,
                      message=f"call {call_sid} to reach {sorted(wanted)} "
                              f"(history {call.status_history})")
        return call

    def wait_ended(self, call_sid: str, timeout: float = 5.0) -> FakeCall:
        """Wait until the call is terminal *and* its thread has sent its last callback."""
        call = self.wait_status(call_sid, TERMINAL, timeout)
        self.wait_for(lambda: call.thread is not None and not call.thread.is_alive(), timeout,
                      message=f"call {call_sid}'s thread to finish")
        return call

    def wait_listening(self, call_sid: str, timeout: float = 5.0) -> FakeCall:
        call = self._call(call_sid)
        self.wait_for(lambda: call.listening, timeout, message=f"a <Gather> on {call_sid}")
        return call

    def wait_stream(self, call_sid: str, timeout: float = 5.0) -> StreamRequest:
        call = self._call(call_sid)
        return self.wait_for(lambda: call.streams[-1] if call.streams else None, timeout,
                             message=f"a <Stream> on {call_sid}")

    def describe(self) -> str:
        """One line per call: what a failing test wants to see."""
        lines = []
        for call in self.calls.values():
            codes = [d.status for d in call.deliveries]
            lines.append(f"  {call.sid} {call.direction} {call.to}: {call.status} "
                         f"(history {call.status_history}, end {call.end_reason}); said={call.said}; "
                         f"webhook statuses={codes}; errors={[(e.code, e.message) for e in call.errors]}")
        return "calls:\n" + ("\n".join(lines) if lines else "  (none)")

    # -- internals used by the REST app and call runners --

    def _call(self, call_sid: str) -> FakeCall:
        call = self._get_call(call_sid)
        if call is None:
            raise KeyError(f"no call {call_sid}; known: {sorted(self.calls)}")
        return call

    def _get_call(self, call_sid: str) -> FakeCall | None:
        with self._lock:
            return self._calls.get(call_sid)

    def _record_request(self, record: RestRequest) -> None:
        self.requests.append(record)

    def _record_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    def _record_stream(self, stream: StreamRequest) -> None:
        self.streams.append(stream)

    def _credentials_ok(self, username: str, password: str) -> bool:
        if username == self.account_sid:
            return password == self.auth_token
        return username in self.api_keys and self.api_keys[username] == password

    def _owned(self) -> frozenset[str] | None:
        return None if self.owned_numbers is None else frozenset(self.owned_numbers)

    def _dial_allowed(self) -> bool:
        """(Under ``_rate_lock``.) Is there a token in the CPS bucket for one
        more call? Takes it if so."""
        cps = self.calls_per_second
        if cps is None:
            return True
        now = time.monotonic()
        capacity = max(1.0, cps)
        tokens = capacity if self._tokens is None else min(capacity, self._tokens + (now - self._tokens_at) * cps)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def _take_create_fault(self) -> CreateFault | None:
        with self._lock:
            return self._create_faults.popleft() if self._create_faults else None

    def _take_callback_fault(self, kind: str, call_sid: str, call_status: str) -> bool:
        with self._lock:
            for fault in self._callback_faults:
                if fault.matches(kind, call_sid, call_status):
                    self._callback_faults.remove(fault)
                    return True
        return False

    def _callee_for(self, number: str) -> Callee:
        with self._lock:
            if self._next_callees:
                return self._next_callees.popleft()
        return self._callees.get(number, Callee())

    def _dial_target(self, number: str) -> Callee:
        """How a ``<Dial>`` to ``number`` goes: ``set_callee`` decides, as for calls."""
        return self._callees.get(number, Callee())

    def _start_recording(self, call: FakeCall, request: RecordingRequest) -> RecordingRecord:
        sid = "RE" + uuid.uuid4().hex
        recording = RecordingRecord(sid, f"{self.base_url}/2010-04-01/Accounts/{call.account_sid}/Recordings/{sid}",
                                    2 if request.channels == "dual" else 1, request.source, time.time())
        call.recording = request
        call.recordings.append(recording)
        return recording

    def _create_call(self, create: CreateRequest) -> FakeCall:
        call = FakeCall(
            sid=_sid("CA"), account_sid=self.account_sid, direction="outbound-api",
            from_=create.from_, to=create.to, source=create.source,
            status_callback=create.status_callback, status_callback_method=create.status_callback_method,
            status_events=create.status_events, timeout=create.timeout,
            machine_detection=create.machine_detection, callee=self._callee_for(create.to),
            params=create.params, amd_callback=create.amd_callback, recording=create.recording)
        self._launch(call)
        return call

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        """A helper thread of a call's (asynchronous detection); stop() joins it."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _launch(self, call: FakeCall) -> None:
        thread = threading.Thread(target=CallRunner(self, call).run, name=f"fake-twilio-{call.sid}",
                                  daemon=True)
        call.thread = thread
        with self._lock:
            if self._stopping.is_set():
                call.hang_up("fake-stopped", silent=True)
            self._calls[call.sid] = call
            self._threads.append(thread)
        thread.start()

    def _run_stream_hook(self, call: FakeCall, request: StreamRequest) -> bool:
        hook = self.on_stream
        if hook is None:
            return True
        try:
            hook(request)
        except Exception as exc:  # noqa: BLE001 - any hook failure is a failed WS connect
            call.errors.append(FakeError(31920, f"on_stream hook failed: {exc!r}"))
            return False
        return True

    def _internal_error(self, call: FakeCall, exc: BaseException, trace: str) -> None:
        call.errors.append(FakeError(0, f"fake internal error: {exc!r}"))
        self.internal_errors.append(f"call {call.sid}: {trace}")


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def is_e164(value: str) -> bool:
    return bool(_E164.fullmatch(value))
