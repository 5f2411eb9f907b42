"""The fake Telnyx's REST surface: ``/v2/calls`` (dial, fetch) and the
call commands under ``/v2/calls/{call_control_id}/actions/``.

Paths, error codes and bodies follow Telnyx's Call Control API
(https://developers.telnyx.com/api/call-control), because the daemon under
test only gets ``apiBaseUrl`` pointed here. Requests are authenticated with
the API key, a ``command_id`` seen within ``command_id_ttl`` is answered
from a cache (as Telnyx does), and each command validates its body before
it changes anything.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from werkzeug.wrappers import Request, Response

from . import _telnyx_params as params
from . import _telnyx_wire as wire
from ._telnyx_calls import Callee, Command, FakeCall, SpeakJob
from ._telnyx_sim import Simulation, Timing

Action = Callable[[], None]
_TAG_RE = re.compile(r"<[^>]+>")


@dataclass
class RestRequest:
    """One request the daemon made to the fake's REST API."""

    method: str
    path: str
    json: Any
    headers: dict[str, str]
    status: int | None = None
    response: dict[str, Any] | None = None
    deduped: bool = False   # answered from the command_id cache
    injected: bool = False  # failed by fail_next()
    at: float = field(default_factory=time.monotonic)


@dataclass
class _RestFault:
    error: wire.ApiError
    remaining: int
    path_contains: str | None


class Settings(Protocol):
    """The fake's settings the REST side reads at each request (a test may change them)."""

    api_key: str
    connection_id: str
    command_id_ttl: float
    timing: Timing
    dials_per_second: float | None
    rate_limit_retry_after: int | None


DPS_WINDOW = 5.0  # seconds: Telnyx sums dials over a rolling window this long


class RestApi:
    def __init__(self, settings: Settings, lock: threading.RLock, sim: Simulation,
                 callee: Callable[[str], Callee]) -> None:
        self.settings = settings
        self.requests: list[RestRequest] = []
        self._lock = lock
        self._sim = sim
        self._callee = callee
        self._faults: list[_RestFault] = []
        self._dials: collections.deque[float] = collections.deque()  # when placed dials were accepted
        self._results: dict[tuple[str, str], tuple[float, tuple[int, dict[str, Any]]]] = {}
        self._commands: dict[str, Callable[[FakeCall, dict[str, Any]], Action]] = {
            "answer": self._cmd_answer, "hangup": self._cmd_hangup, "reject": self._cmd_reject,
            "speak": self._cmd_speak, "transcription_start": self._cmd_transcription_start,
            "transcription_stop": self._cmd_transcription_stop, "playback_start": self._cmd_playback_start,
            "playback_stop": self._cmd_accept, "streaming_start": self._cmd_streaming_start,
            "streaming_stop": self._cmd_accept, "send_dtmf": self._cmd_send_dtmf, "transfer": self._cmd_transfer,
            "record_start": self._cmd_record_start, "record_stop": self._cmd_record_stop,
        }

    def fail(self, error: wire.ApiError, count: int, path_contains: str | None) -> None:
        """The next ``count`` requests (whose path contains ``path_contains``) fail with ``error``."""
        with self._lock:
            self._faults.append(_RestFault(error, count, path_contains))

    def handle(self, request: Request) -> Response:
        raw = request.get_data(cache=False)
        record = RestRequest(request.method, request.path, _json_or_none(raw), dict(request.headers))
        with self._lock:
            self.requests.append(record)
        if self.settings.timing.rest_latency > 0:
            time.sleep(self.settings.timing.rest_latency)
        headers: dict[str, str] = {}
        try:
            self._injected_failure(request.path, record)
            self._authenticate(request)
            status, body = self._route(request.method, request.path, raw, record)
        except wire.ApiError as err:
            status, body, headers = err.status, err.body(), err.headers
        record.status, record.response = status, body
        return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")

    def _injected_failure(self, path: str, record: RestRequest) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                    fault.remaining -= 1
                    record.injected = True
                    raise fault.error

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.settings.api_key:
            raise wire.auth_failed()

    def _route(self, method: str, path: str, raw: bytes, record: RestRequest) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "call_control_applications"] and len(parts) == 3 and method == "GET":
            return self._application(parts[2])
        if parts[:2] == ["v2", "calls"]:
            if len(parts) == 2 and method == "POST":
                return self._dial(raw, record)
            if len(parts) == 3 and method == "GET":
                with self._lock:
                    return 200, {"data": self._call_or_404(parts[2]).status_record()}
            if len(parts) == 5 and parts[3] == "actions" and method == "POST":
                return self._command(parts[2], parts[4], raw, record)
        raise wire.not_found(f"No route for {method} {path} on this fake Telnyx.")

    def _application(self, app_id: str) -> tuple[int, dict[str, Any]]:
        """Retrieve a call control application
        (https://developers.telnyx.com/api-reference/call-control-applications/retrieve-a-call-control-application):
        the fake has one, ``connection_id``."""
        if app_id != self.settings.connection_id:
            raise wire.not_found(f"No call control application with id {app_id!r}.")
        return 200, {"data": {"id": app_id, "record_type": "call_control_application", "active": True,
                              "application_name": "voicecalld fake", "webhook_api_version": "2"}}

    def _call_or_404(self, call_control_id: str) -> FakeCall:
        call = self._sim.calls.get(call_control_id)
        if call is None:
            raise wire.invalid_call_id(call_control_id)
        return call

    def _cached(self, scope: str, command_id: str | None) -> tuple[int, dict[str, Any]] | None:
        if command_id is None:
            return None
        hit = self._results.get((scope, command_id))
        if hit is None or time.monotonic() - hit[0] > self.settings.command_id_ttl:
            return None
        return hit[1]

    def _remember(self, scope: str, command_id: str | None, result: tuple[int, dict[str, Any]]) -> None:
        # Only successes are remembered: a retry after an error must act.
        if command_id is not None:
            self._results[(scope, command_id)] = (time.monotonic(), result)

    def _dial(self, raw: bytes, record: RestRequest) -> tuple[int, dict[str, Any]]:
        body = wire.parse_json_object(raw)
        command_id = wire.optional_str(body, "command_id")
        with self._lock:
            cached = self._cached("dial", command_id)
            if cached is not None:
                record.deduped = True
                return cached
            dial = params.dial(body, self.settings.connection_id)
            self._check_dial_rate()
            stream = params.stream(body)
            call = self._sim.new_call("outgoing", dial.from_, dial.to, dial.webhook_url, dial.client_state,
                                      status="ringing")
            if stream is not None:
                self._sim.request_stream(call, stream)
            self._sim.start_outbound(call, dial, self._callee(dial.to))
            result = 200, {"data": {"call_control_id": call.call_control_id, "call_leg_id": call.call_leg_id,
                                    "call_session_id": call.call_session_id, "is_alive": True,
                                    "record_type": "call"}}
            self._remember("dial", command_id, result)
            return result

    def _check_dial_rate(self) -> None:
        """(Lock held.) Telnyx's dials per second: "a 5-second rolling
        aggregation" of dials against 5 x the limit; a dial past it is
        refused with 429 / 90103
        (https://developers.telnyx.com/docs/voice/programmable-voice/dials-per-second-limit).
        Only dials that were placed count."""
        limit = self.settings.dials_per_second
        now = time.monotonic()
        window = self._dials
        while window and window[0] <= now - DPS_WINDOW:
            window.popleft()
        if limit is not None and len(window) + 1 > limit * DPS_WINDOW:
            after = self.settings.rate_limit_retry_after
            raise wire.ApiError(429, "90103", "Dials per second limit exceeded",
                                f"The account may dial {limit:g} calls per second (over a {DPS_WINDOW:g} s "
                                "rolling window); slow down and retry.",
                                headers=None if after is None else {"Retry-After": str(int(after))})
        window.append(now)

    def _command(self, call_control_id: str, name: str, raw: bytes,
                 record: RestRequest) -> tuple[int, dict[str, Any]]:
        handler = self._commands.get(name)
        if handler is None:
            raise wire.not_found(f"actions/{name} is not implemented by this fake Telnyx.")
        body = wire.parse_json_object(raw)
        command_id = wire.optional_str(body, "command_id")
        with self._lock:
            call = self._call_or_404(call_control_id)
            cached = self._cached(call_control_id, command_id)
            if cached is not None:
                record.deduped = True
                call.commands.append(Command(name, body, cached[0], deduped=True))
                return cached
            try:
                if not call.alive:
                    raise wire.call_ended()
                state = wire.client_state(body)
                action = handler(call, body)  # validates; changes nothing yet
            except wire.ApiError as err:
                call.commands.append(Command(name, body, err.status))
                raise
            if state is not None:
                # Replaces the call's state for this command's webhooks and all later ones.
                call.client_state = state
            call.commands.append(Command(name, body, 200))
            action()
            result = 200, {"data": {"result": "ok"}}
            self._remember(call_control_id, command_id, result)
            return result

    # -- commands: each validates, then returns the action to apply ------------

    def _require_answered(self, call: FakeCall, name: str) -> None:
        if call.status != "answered":
            raise wire.not_allowed_now(f"{name} needs an answered call; this call is {call.status}.")

    def _cmd_answer(self, call: FakeCall, body: dict[str, Any]) -> Action:
        if call.direction != "incoming":
            raise wire.not_allowed_now("answer applies to incoming calls; this call is outgoing.")
        if call.status != "parked":
            raise wire.not_allowed_now("This call has already been answered.")
        webhook_url, tracks = params.answer(body)
        stream = params.stream(body)

        def act() -> None:
            if webhook_url is not None:
                call.webhook_url = webhook_url
            if stream is not None:
                self._sim.request_stream(call, stream)
            call.transcribe_on_answer = tracks
            self._sim.connect(call)
        return act

    def _cmd_hangup(self, call: FakeCall, body: dict[str, Any]) -> Action:
        # Hanging up a still-ringing outbound call cancels it.
        cause = "originator_cancel" if call.status == "ringing" else "normal_clearing"
        return lambda: self._sim.end(call, cause, call.local_source())

    def _cmd_reject(self, call: FakeCall, body: dict[str, Any]) -> Action:
        if call.status != "parked":
            raise wire.not_allowed_now("reject applies to incoming calls that have not been answered.")
        cause = params.reject_cause(body)
        return lambda: self._sim.end(call, cause, call.local_source())

    def _cmd_speak(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "speak")
        speak = params.speak(body)
        text = _TAG_RE.sub("", speak.payload) if speak.payload_type == "ssml" else speak.payload

        def act() -> None:
            call.said.append(speak.payload)
            self._sim.queue_speech(call, SpeakJob(text, speak.voice))
        return act

    def _cmd_transcription_start(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "transcription_start")
        tracks = params.transcription_start(body)
        return lambda: setattr(call, "transcription_tracks", tracks)

    def _cmd_transcription_stop(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "transcription_stop")
        return lambda: setattr(call, "transcription_tracks", None)

    def _cmd_playback_start(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "playback_start")
        playback = params.playback_start(body)
        extra = {"media_url": playback.get("audio_url"), "media_name": playback.get("media_name"),
                 "overlay": bool(playback.get("overlay", False))}

        def act() -> None:
            call.playbacks.append(playback)
            self._sim.play(call, extra)
        return act

    def _cmd_streaming_start(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "streaming_start")
        stream = params.streaming_start(body)

        def act() -> None:
            call.streams.append(stream)
            self._sim.request_stream(call, stream)
            self._sim.open_streams(call)
        return act

    def _cmd_accept(self, call: FakeCall, body: dict[str, Any]) -> Action:
        return lambda: None

    # -- call control: each changes nothing until it is valid --

    def _cmd_send_dtmf(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "send_dtmf")
        digits = params.send_dtmf(body)
        return lambda: call.dtmf_sent.append(digits)  # no webhooks: Telnyx sends none for it

    def _cmd_transfer(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "transfer")
        transfer = params.transfer(body)

        def act() -> None:
            self._sim.transfer(call, transfer, self._callee(transfer.to))
        return act

    def _cmd_record_start(self, call: FakeCall, body: dict[str, Any]) -> Action:
        self._require_answered(call, "record_start")
        if call.recording is not None:
            raise wire.not_allowed_now("This call is already being recorded.")
        options = params.record_start(body)
        return lambda: self._sim.start_recording(call, options)

    def _cmd_record_stop(self, call: FakeCall, body: dict[str, Any]) -> Action:
        if call.recording is None:
            raise wire.not_allowed_now("This call is not being recorded.")
        return lambda: self._sim.stop_recording(call)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None
