"""Records the fake keeps, the simulated callee, and the per-call state.

Everything a test may want to assert on lives here as plain attributes.
Lists are only ever appended to, so reading them from a test thread while
the fake runs is safe under the GIL; anything that needs several fields to
change together (status, end time, pending updates, heard speech) changes
under the call's condition variable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._twilio_twiml import Gather

TERMINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
OUTCOMES = frozenset({"answer", "busy", "no-answer", "failed"})


@dataclass(frozen=True)
class Callee:
    """How the far end of an outbound call behaves.

    ``outcome`` is ``answer`` (the default), ``busy``, ``no-answer`` (rings
    until the call's ``Timeout``) or ``failed``. ``answer_after`` is seconds
    of ringing (None: the fake's ``answer_delay``); if it exceeds the call's
    Timeout the call ends ``no-answer`` as on Twilio. ``machine`` makes an
    answering machine pick up: with ``MachineDetection`` requested the call
    reports ``AnsweredBy`` (``answered_by`` overrides the value).
    ``hangup_after`` hangs up that many seconds after answering.
    ``greeting`` is how long a machine's greeting lasts (seconds) before
    its beep: ``DetectMessageEnd`` reports the machine when it ends.
    ``verdict_after`` is how long detection takes to recognise a person
    (or, with ``Enable``, a machine).
    """

    outcome: str = "answer"
    answer_after: float | None = None
    machine: bool = False
    answered_by: str | None = None
    hangup_after: float | None = None
    greeting: float = 0.5
    verdict_after: float = 0.05

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"Callee outcome must be one of {sorted(OUTCOMES)}, not {self.outcome!r}")


@dataclass(frozen=True)
class FakeError:
    """An error Twilio would show in its debugger (11200, 12100, 31922...)."""

    code: int
    message: str
    at: float = field(default_factory=time.time)


@dataclass
class Delivery:
    """One HTTP request the fake sent to a webhook, and what came back."""

    kind: str                      # voice | status | gather | redirect | connect-action
    url: str                       # exactly as requested, query string included
    method: str
    params: list[tuple[str, str]]  # form (POST) or the added query params (GET)
    headers: dict[str, str]
    attempt: int = 1
    status: int | None = None      # None: no HTTP answer (connection error, timeout)
    body: str = ""
    content_type: str = ""
    error: str | None = None
    sent_at: float = field(default_factory=time.time)
    replay: bool = False           # an injected duplicate of the previous delivery

    @property
    def form(self) -> dict[str, str]:
        """Params as a dict (last value wins); handy in assertions."""
        return dict(self.params)

    @property
    def token(self) -> str:
        return self.headers.get("I-Twilio-Idempotency-Token", "")

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class SayRecord:
    text: str
    voice: str
    language: str
    started: float
    ended: float | None = None
    interrupted: bool = False
    in_gather: bool = False


@dataclass
class GatherRecord:
    verb: Gather
    started: float
    ended: float | None = None
    outcome: str = "running"  # speech | dtmf | timeout | interrupted | hangup
    speech: str | None = None
    confidence: float | None = None
    digits: str | None = None


@dataclass
class StreamRequest:
    """A ``<Connect><Stream>`` (or ``<Start><Stream>``) the daemon asked for.

    ``headers`` carries the ``X-Twilio-Signature`` Twilio would send on the
    WebSocket upgrade (HMAC over the ``wss://`` URL with no params), so a
    media-stream simulator can connect exactly like Twilio does.
    """

    call_sid: str
    account_sid: str
    stream_sid: str
    url: str
    name: str | None
    parameters: dict[str, str]
    headers: dict[str, str]
    bidirectional: bool
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    # Set when the stream is over on Twilio's side (call ended, stream
    # ended): a simulator waits on it to send "stop" and close its socket.
    ended: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass
class RestRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: dict[str, str]
    status: int = 0
    response: Any = None
    at: float = field(default_factory=time.time)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]


@dataclass
class DialRecord:
    """A ``<Dial>`` the call ran, and the target's leg (its own call sid)."""

    number: str
    child_sid: str
    started: float
    status: str = "ringing"  # then in-progress, or busy | no-answer | failed; completed once over
    answered_at: float | None = None
    ended: float | None = None
    dial_call_status: str | None = None  # what the action was told


@dataclass(frozen=True)
class RecordingRequest:
    """Recording asked for on create (``Record``) or through the call's
    Recordings resource."""

    channels: str  # mono | dual
    callback: str | None
    callback_method: str
    events: frozenset[str]
    source: str  # OutboundAPI | StartCallRecordingAPI


@dataclass
class RecordingRecord:
    """A recording of the call, as its Recording resource would say."""

    sid: str
    url: str
    channels: int
    source: str
    started: float
    duration: int | None = None
    status: str = "in-progress"


@dataclass(frozen=True)
class Fetch:
    """TwiML to be fetched from a URL (voice Url, Gather action, Redirect...)."""

    url: str
    method: str = "POST"
    kind: str = "voice"
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Inline:
    """TwiML given inline (``Twiml=`` on create or update)."""

    twiml: str


Source = Fetch | Inline


class CallOver(Exception):
    """The call has ended (status already set); unwind the call thread."""


class Interrupted(Exception):
    """A REST update replaced the running TwiML; run ``source`` instead."""

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self.source = source


def rfc2822(ts: float | None) -> str | None:
    if ts is None:
        return None
    # Twilio's own format: "Tue, 31 Aug 2010 20:36:28 +0000".
    return datetime.fromtimestamp(ts, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


class FakeCall:
    """One call as the fake sees it. Public attributes are for test assertions."""

    def __init__(self, *, sid: str, account_sid: str, direction: str, from_: str, to: str,
                 source: Source | None, status_callback: str | None,
                 status_callback_method: str, status_events: frozenset[str],
                 timeout: float, machine_detection: str | None, callee: Callee,
                 params: list[tuple[str, str]] | None = None, status: str = "queued",
                 amd_callback: Fetch | None = None,
                 recording: RecordingRequest | None = None) -> None:
        self.sid = sid
        self.account_sid = account_sid
        self.direction = direction
        self.from_ = from_
        self.to = to
        self.source = source
        self.status_callback = status_callback
        self.status_callback_method = status_callback_method
        self.status_events = status_events
        self.timeout = timeout
        self.machine_detection = machine_detection
        #: ``AsyncAmd=true``: where the verdict goes (AsyncAmdStatusCallback).
        self.amd_callback = amd_callback
        #: When (time.time()) a machine that answered started its greeting, and beeped.
        self.greeting_started: float | None = None
        self.beeped: float | None = None
        self.callee = callee
        self.params = params or []
        self.status = status
        self.answered_by: str | None = None
        self.end_reason: str | None = None
        self.date_created = time.time()
        self.date_updated = self.date_created
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.status_history: list[str] = [status]
        # What tests inspect.
        self.twiml: list[str] = []
        self.says: list[SayRecord] = []
        self.played: list[str] = []
        self.gathers: list[GatherRecord] = []
        self.deliveries: list[Delivery] = []
        self.errors: list[FakeError] = []
        self.streams: list[StreamRequest] = []
        self.updates: list[list[tuple[str, str]]] = []
        self.digits_played: list[str] = []      # <Play digits> values, as played
        self.dials: list[DialRecord] = []
        self.recording: RecordingRequest | None = recording  # asked for, not yet recording until answered
        self.recordings: list[RecordingRecord] = []
        # Synchronisation with REST handlers and test helpers.
        self._cond = threading.Condition()
        self._pending: Source | None = None
        self._inputs: deque[tuple[str, str, float]] = deque()
        self._accepting: frozenset[str] = frozenset()
        self._hangup_at: float | None = None
        self._stream_open = False
        self._dial_over = False  # end_dial(): the transfer target hung up
        self._waiting = False  # the call thread is blocked in wait()
        self._silent = False  # ended by stop(): post nothing more
        self.thread: threading.Thread | None = None

    # -- views --

    @property
    def said(self) -> list[str]:
        """Texts of every ``<Say>`` that started playing, in order."""
        return [s.text for s in self.says]

    @property
    def callbacks(self) -> list[Delivery]:
        """Status callback deliveries (retries and duplicates included)."""
        return [d for d in self.deliveries if d.kind == "status"]

    @property
    def gather_actions(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.kind == "gather"]

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def listening(self) -> bool:
        """True while a ``<Gather>`` would hear the callee."""
        return bool(self._accepting)

    @property
    def stream_open(self) -> bool:
        return self._stream_open

    @property
    def waiting(self) -> bool:
        """True while the call thread is blocked (ringing, a Say, a Pause, a
        Gather, an open stream) until time passes or something happens: a
        test's positive signal that the fake reached a blocking point and
        will do nothing more on its own until then."""
        return self._waiting

    @property
    def duration(self) -> int | None:
        if self.end_time is None:
            return None
        if self.start_time is None:
            return 0
        return max(0, round(self.end_time - self.start_time))

    # -- state changes (any thread) --

    def set_status(self, status: str) -> None:
        with self._cond:
            if self.status in TERMINAL:
                raise CallOver()
            self._set(status)

    def _set(self, status: str) -> None:
        self.status = status
        self.status_history.append(status)
        self.date_updated = time.time()
        if status == "in-progress" and self.start_time is None:
            self.start_time = self.date_updated

    def end(self, status: str, reason: str, *, silent: bool = False) -> bool:
        """Make the call terminal; False if it already was. Wakes the call thread."""
        with self._cond:
            if self.status in TERMINAL:
                return False
            self._set(status)
            self.end_time = self.date_updated
            self.end_reason = reason
            self._silent = silent
            self._accepting = frozenset()
            self._cond.notify_all()
            return True

    def hang_up(self, reason: str, *, silent: bool = False) -> bool:
        """End the call the way a hang-up would.

        Answered: completed. Unanswered outbound: canceled (what Twilio
        reports for a call ended before answer through the API). Unanswered
        inbound (the caller gave up while ringing): no-answer.
        """
        with self._cond:
            if self.start_time is not None:
                status = "completed"
            else:
                status = "no-answer" if self.direction == "inbound" else "canceled"
            return self.end(status, reason, silent=silent)

    def wait_ended(self, seconds: float) -> bool:
        """For threads other than the call's own: wait up to ``seconds``;
        True if the call ended (or the fake stopped it) meanwhile."""
        with self._cond:
            return self._cond.wait_for(lambda: self.status in TERMINAL, seconds)

    def replace_twiml(self, source: Source) -> None:
        """REST update: before answer, change what will run; after, interrupt."""
        with self._cond:
            if self.start_time is None:
                self.source = source
            else:
                self._pending = source
                self._cond.notify_all()

    def schedule_hangup(self, after: float) -> None:
        with self._cond:
            self._hangup_at = time.monotonic() + after
            self._cond.notify_all()

    def offer_input(self, kind: str, value: str, confidence: float, wait: float) -> None:
        """The callee speaks / presses keys; waits until a Gather can hear it."""
        deadline = time.monotonic() + wait
        with self._cond:
            while kind not in self._accepting:
                if self.status in TERMINAL:
                    raise AssertionError(f"call {self.sid} has ended ({self.status}); "
                                         f"nobody hears {value!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no <Gather input=...{kind}...> was listening on call {self.sid} "
                        f"within {wait:.2f}s (status {self.status}); said so far: {self.said}")
                self._cond.wait(left)
            self._inputs.append((kind, value, confidence))
            self._cond.notify_all()

    def close_stream(self) -> None:
        with self._cond:
            self._stream_open = False
            self._cond.notify_all()

    def end_dial(self) -> None:
        """The party a ``<Dial>`` connected hangs up."""
        with self._cond:
            self._dial_over = True
            self._cond.notify_all()

    def dial_over(self) -> bool:
        return self._dial_over  # called under self._cond by wait()

    def start_dial(self) -> None:
        with self._cond:
            self._dial_over = False

    # -- used by the call thread --

    def wait(self, seconds: float | None, until: Callable[[], bool] | None = None) -> bool:
        """Sleep like the call would (a Say, a Pause, ringing...).

        Returns True early if ``until()`` becomes true, False when the time
        runs out. Raises CallOver when the call ends meanwhile and
        Interrupted when a REST update brings new TwiML, which is how an
        update cuts a Say or a Gather short, exactly when it arrives.
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._cond:
            while True:
                self._check_signals()
                if until is not None and until():
                    return True
                now = time.monotonic()
                wake = [t for t in (deadline, self._hangup_at) if t is not None]
                if deadline is not None and now >= deadline:
                    return False
                self._waiting = True
                try:
                    self._cond.wait(min(wake) - now if wake else None)
                finally:
                    self._waiting = False

    def _check_signals(self) -> None:
        if self._hangup_at is not None and time.monotonic() >= self._hangup_at:
            self._hangup_at = None
            self.hang_up("callee-hangup")
        if self.status in TERMINAL:
            raise CallOver()
        if self._pending is not None:
            source, self._pending = self._pending, None
            raise Interrupted(source)

    def check(self) -> None:
        """Raise CallOver/Interrupted now if due (between verbs, after HTTP)."""
        with self._cond:
            self._check_signals()

    def listen(self, inputs: frozenset[str]) -> None:
        with self._cond:
            self._inputs.clear()
            self._accepting = inputs
            self._cond.notify_all()

    def stop_listening(self) -> tuple[str, str, float] | None:
        """Stop hearing the callee; return what was heard first, if anything."""
        with self._cond:
            self._accepting = frozenset()
            heard = self._inputs.popleft() if self._inputs else None
            self._inputs.clear()
            return heard

    def has_input(self) -> bool:
        return bool(self._inputs)  # called under self._cond by wait()

    def open_stream(self) -> None:
        with self._cond:
            self._stream_open = True

    def stream_closed(self) -> bool:
        return not self._stream_open  # called under self._cond by wait()
