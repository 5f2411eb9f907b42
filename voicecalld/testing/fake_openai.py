"""A fake OpenAI server for tests: Realtime transcription, TTS, Chat, and
the model list (``GET /v1/models``, which checks the key like the rest).

It listens on 127.0.0.1 (a free port) and speaks the real wire protocols
(https://platform.openai.com/docs/guides/realtime-transcription,
https://platform.openai.com/docs/api-reference/audio/createSpeech,
https://platform.openai.com/docs/api-reference/chat/create), so a client
tested against it is tested the way the
real service will treat it: the OpenAI-Beta header gets the shut-down
beta's close 4000, a malformed GA ``session.update`` gets an ``error``
event naming the field, a provider-prefixed chat model gets a 404.

Chat replies are consumed one per request: a string (the assistant's
text), or a dict with ``content``, ``tool_call`` (``{"name", "arguments"}``)
or ``tool_calls``, ``finish_reason``, ``delay`` (extra seconds), or
``error`` (``{"status", "message", "type", "code", "param"}``, answered as
an OpenAI error JSON). A request with ``stream: true`` is answered with
server-sent events, paced like a generating model: the first token after
``chat_first_token_s``, each further one ``chat_token_s`` later (or the
reply's ``token_s``); a reply with ``stall_after: N`` sends N tokens and
then nothing more (until the client leaves), one with ``slow_after: N``
sends the tokens after the N-th every ``slow_token_s`` (1 s). ``chat_streaming = False``
makes the fake a server that ignores ``stream`` (one JSON body, sent
once the whole reply is generated at that pace). Each
request's record says how the stream went (``tokens_sent``,
``stream_finished``, ``client_left``; ``finished`` is set when it is over).

Speech starts ``speech_delay_s`` after the request arrived (time to first audio) and then
comes at ``tts_realtime_factor`` times real time (None: all at once). Transcripts are consumed one per committed turn: a
string, or ``{"error": {...}}`` for a ``...transcription.failed`` event.

Scripting and fault injection::

    with FakeOpenAI(api_key="sk-test", script=["hello there"]) as fake:
        fake.transcripts.put("and then")          # next utterances' text
        fake.chat_replies.put("Sure.")            # next chat answers
        fake.chat_replies.put({"tool_call": {"name": "hang_up", "arguments": {}},
                               "content": "Goodbye!"})
        fake.inject_error("chat", status=429, code="rate_limit_exceeded")
        fake.drop_realtime_after(50)              # cut the socket after 50 appends
        fake.completed_out_of_order = True        # swap completions of turn pairs
        ...
        fake.realtime_sessions[0].events          # everything the client sent

Every request thread and WebSocket reader thread is joined by ``stop()``.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from ._http import (
    BackgroundServer,
    is_websocket_upgrade,
    json_response,
    openai_error,
    serve_websocket,
)
from ._openai_chat import ChatRequestError, build_completion, stream_chunks, validate_chat_request
from ._openai_chat_stream import stream_events
from ._openai_realtime import ArrivalStamps, RealtimeConnection, RealtimeRecord
from ._openai_session import DEFAULT_MODELS
from ._openai_speech import SpeechRequestError, prepare, synthesize, validate_speech_request
from ._openai_voice import VoiceConnection, VoiceRecord, VoiceScript

__all__ = ["FakeOpenAI", "InjectedError", "RealtimeRecord", "RecordedRequest", "VoiceRecord", "VoiceScript"]

Endpoint = Literal["chat", "speech", "realtime", "models"]
ChatReply = str | dict[str, Any]

_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/audio/speech": "speech",
    "/v1/realtime": "realtime",
    "/v1/models": "models",
}
_METHODS: dict[Endpoint, str] = {"chat": "POST", "speech": "POST", "realtime": "GET", "models": "GET"}
_STREAM_CHUNK = 4800  # 100 ms of 24 kHz s16le per chunk of a TTS response


@dataclass
class RecordedRequest:
    """One HTTP request to the fake, whatever the outcome."""

    endpoint: str
    method: str
    path: str
    headers: Headers
    body: Any  # parsed JSON, or the raw text when it was not JSON
    status: int = 0
    at: float = field(default_factory=time.monotonic)
    #: Streamed chat replies: when each token went out, whether the stream
    #: reached its end, whether the client closed the connection before
    #: that; ``finished`` is set once the response is over.
    token_at: list[float] = field(default_factory=list)
    stream_finished: bool = False
    client_left: bool = False
    #: Speech: when the first audio went out (how late the fake itself was,
    #: next to its configured ``speech_delay_s``).
    first_audio_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def tokens_sent(self) -> int:
        return len(self.token_at)

    @property
    def first_token_at(self) -> float | None:
        return self.token_at[0] if self.token_at else None

    @property
    def last_token_at(self) -> float | None:
        return self.token_at[-1] if self.token_at else None


@dataclass
class InjectedError:
    status: int
    message: str
    type: str
    code: str | None
    param: str | None = None
    times: int = 1


class FakeOpenAI:
    """Fake OpenAI API on ``127.0.0.1``. See the module docstring."""

    def __init__(
        self,
        api_key: str = "sk-test",
        *,
        script: list[str | dict[str, Any]] | None = None,
        default_transcript: str = "hello",
        chat_script: list[ChatReply] | None = None,
        default_chat_reply: ChatReply = "OK.",
        tts_ms_per_char: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        # -- realtime knobs
        self.transcripts: queue.Queue[str | dict[str, Any]] = queue.Queue()
        for item in script or []:
            self.transcripts.put(item)
        self.default_transcript = default_transcript
        self.transcription_models: set[str] = set(DEFAULT_MODELS)
        self.completed_out_of_order = False
        self.out_of_order_hold_s = 1.0  # release a held completion if no second turn comes
        self.transcription_delay_s = 0.0
        self.session_lifetime: float | None = None
        self.realtime_sessions: list[RealtimeRecord] = []
        #: The speech-to-speech model (sessions opened with ?model=), see _openai_voice.
        self.voice = VoiceScript()
        # -- chat knobs
        self.chat_replies: queue.Queue[ChatReply] = queue.Queue()
        for reply in chat_script or []:
            self.chat_replies.put(reply)
        self.default_chat_reply = default_chat_reply
        self.chat_models: set[str] | None = None  # None: any unprefixed name
        self.chat_delay_s = 0.0
        self.chat_streaming = True  # False: ignore "stream" and answer with one JSON body
        self.chat_first_token_s = 0.0
        self.chat_token_s = 0.0
        # -- speech knobs
        self.tts_ms_per_char = tts_ms_per_char
        self.speech_delay_s = 0.0  # time to first audio
        self.tts_realtime_factor: float | None = None  # audio seconds per second after that; None: at once
        # -- records
        self.requests: list[RecordedRequest] = []

        self._lock = threading.Lock()
        self._errors: dict[str, list[InjectedError]] = {"chat": [], "speech": [], "realtime": [], "models": []}
        self._drop_countdown: int | None = None
        self._stopping = threading.Event()
        self._sessions_changed = threading.Condition(self._lock)
        self._live: set[RealtimeConnection | VoiceConnection] = set()
        self._server = BackgroundServer(self._app, host=host, port=port)
        self._host = host
        self._started = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        prepare()
        self._stopping.clear()
        self._server.start()
        self._started = True
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every realtime session, stop the server and join all its threads."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()  # sessions close themselves (1001) within ~50 ms
        with self._lock:
            live = list(self._live)
        deadline = time.monotonic() + timeout
        for conn in live:
            conn.record.wait_closed(max(0.0, deadline - time.monotonic()))
        self._server.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    @property
    def realtime_url(self) -> str:
        return f"ws://{self._host}:{self.port}/v1/realtime?intent=transcription"

    @property
    def voice_url(self) -> str:
        """The Realtime URL for speech-to-speech (the client adds ``model=``)."""
        return f"ws://{self._host}:{self.port}/v1/realtime"

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- test controls -----------------------------------------------------

    def drop_realtime_after(self, n_frames: int) -> None:
        """Abruptly cut the realtime socket that receives the ``n_frames``-th
        append from now (no close frame, as on a network failure). One-shot."""
        if n_frames < 1:
            raise ValueError("n_frames must be at least 1")
        with self._lock:
            self._drop_countdown = n_frames

    def inject_error(
        self,
        endpoint: Endpoint,
        status: int = 500,
        message: str = "The server had an error while processing your request. Sorry about that!",
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` requests to ``endpoint`` fail with an OpenAI error JSON.

        For ``realtime`` the upgrade itself is refused with that status.
        """
        if endpoint not in self._errors:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected chat, speech or realtime")
        kind = type or ("server_error" if status >= 500 else "invalid_request_error")
        with self._lock:
            self._errors[endpoint].append(InjectedError(status, message, kind, code, param, times))

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == "chat"]

    @property
    def speech_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == "speech"]

    @property
    def realtime_frames_received(self) -> int:
        """Append events received over all realtime sessions."""
        return sum(record.frames for record in self.realtime_sessions)

    def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> RealtimeRecord:
        """The ``index``-th realtime session, waiting for it to be opened."""
        with self._sessions_changed:
            if not self._sessions_changed.wait_for(lambda: len(self.realtime_sessions) > index, timeout):
                raise TimeoutError(f"realtime session #{index} was not opened within {timeout} s")
            return self.realtime_sessions[index]

    # -- hooks used by the realtime connection -----------------------------

    def _next_transcript(self) -> str | dict[str, Any]:
        try:
            return self.transcripts.get_nowait()
        except queue.Empty:
            return self.default_transcript

    def _frame_triggers_drop(self) -> bool:
        with self._lock:
            if self._drop_countdown is None:
                return False
            self._drop_countdown -= 1
            if self._drop_countdown > 0:
                return False
            self._drop_countdown = None
            return True

    def _take_error(self, endpoint: str) -> InjectedError | None:
        with self._lock:
            pending = self._errors[endpoint]
            if not pending:
                return None
            error = pending[0]
            error.times -= 1
            if error.times <= 0:
                pending.pop(0)
            return error

    # -- HTTP --------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        endpoint = _PATHS.get(request.path)
        record = RecordedRequest(
            endpoint=endpoint or "unknown",
            method=request.method,
            path=request.path,
            headers=Headers(request.headers.items()),
            body=None,
        )
        if endpoint != "realtime":
            raw = request.get_data(as_text=True)
            try:
                record.body = json.loads(raw) if raw else None
            except ValueError:
                record.body = raw
        with self._lock:
            self.requests.append(record)
        response = self._dispatch(request, endpoint, record, environ)
        record.status = response.status_code
        return response(environ, start_response)

    def _dispatch(
        self, request: Request, endpoint: Endpoint | None, record: RecordedRequest, environ: dict[str, Any]
    ) -> Response:
        if endpoint is None:
            return openai_error(404, f"Invalid URL ({request.method} {request.path})")
        if request.method != _METHODS[endpoint]:
            return openai_error(405, f"Invalid method for URL ({request.method} {request.path})")
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        injected = self._take_error(endpoint)
        if injected is not None:
            return openai_error(
                injected.status, injected.message, injected.type, injected.param, injected.code
            )
        if endpoint == "realtime":
            return self._realtime(request, environ)
        if endpoint == "models":
            # https://platform.openai.com/docs/api-reference/models/list
            names = sorted({*self.transcription_models, "gpt-4o-mini", "gpt-4o-mini-tts", "gpt-realtime"})
            return Response(json.dumps({"object": "list", "data": [
                {"id": n, "object": "model", "created": 1700000000, "owned_by": "system"} for n in names]}),
                200, content_type="application/json")
        if not isinstance(record.body, dict):
            return openai_error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            )
        if endpoint == "chat":
            return self._chat(record.body, record, environ.get("werkzeug.socket"))
        return self._speech(record.body, record)

    def _check_auth(self, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not secrets.compare_digest(key.strip().encode(), self.api_key.encode()):
            # Masked like the real service, so test logs never carry a key.
            shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "***"
            return openai_error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _pause(self, seconds: float) -> None:
        # Interruptible, so stop() is never held up by a scripted delay.
        if seconds > 0:
            self._stopping.wait(seconds)

    def _chat(self, body: dict[str, Any], record: RecordedRequest, sock: Any) -> Response:
        try:
            validate_chat_request(body, self.chat_models)
        except ChatRequestError as exc:
            return openai_error(exc.status, exc.message, param=exc.param, code=exc.code)
        try:
            reply = self.chat_replies.get_nowait()
        except queue.Empty:
            reply = self.default_chat_reply
        delay = self.chat_delay_s
        if isinstance(reply, dict):
            delay += float(reply.get("delay", 0.0))
            if "error" in reply:
                self._pause(delay)
                err = {"status": 500, "message": "The server had an error.", **reply["error"]}
                kind = err.get("type") or (
                    "server_error" if err["status"] >= 500 else "invalid_request_error"
                )
                return openai_error(err["status"], err["message"], kind, err.get("param"), err.get("code"))
        completion = build_completion(body, reply)
        per_token = float(reply.get("token_s", self.chat_token_s)) if isinstance(reply, dict) else self.chat_token_s
        if not (body.get("stream") and self.chat_streaming):
            # A server that does not stream answers once the whole reply is generated.
            count = sum(1 for _, is_token in stream_chunks(completion) if is_token)
            generating = self.chat_first_token_s + per_token * max(0, count - 1) if count else 0.0
            self._pause(record.at + delay + generating - time.monotonic())
            record.finished.set()
            return json_response(completion, headers=_request_id())
        stall = reply.get("stall_after") if isinstance(reply, dict) else None
        first = delay + self.chat_first_token_s

        slow = (int(reply["slow_after"]), float(reply.get("slow_token_s", 1.0))) \
            if isinstance(reply, dict) and "slow_after" in reply else None
        body_events = stream_events(completion, record, sock, first, per_token, stall, self._stopping, slow,
                                    start=record.at)
        return Response(body_events, content_type="text/event-stream", headers=_request_id())

    def _speech(self, body: dict[str, Any], record: RecordedRequest) -> Response:
        try:
            validate_speech_request(body)
        except SpeechRequestError as exc:
            return openai_error(400, exc.message, param=exc.param, code=exc.code)
        audio, content_type = synthesize(body, self.tts_ms_per_char)
        delay = self.speech_delay_s

        factor = self.tts_realtime_factor
        rate = 2 * 24000 if content_type == "audio/pcm" else 0

        def stream() -> Any:
            # The delay is time-to-first-byte from the request's arrival, as
            # with the real endpoint, which streams audio as it is generated
            # (at ``factor`` times real time, when set), on a schedule (not
            # pauses that add up on a busy machine).
            started = record.at + max(0.0, delay)
            self._pause(started - time.monotonic())
            for offset in range(0, len(audio), _STREAM_CHUNK):
                if factor and rate and offset:
                    self._pause(started + offset / rate / factor - time.monotonic())
                if record.first_audio_at is None:
                    record.first_audio_at = time.monotonic()
                yield audio[offset : offset + _STREAM_CHUNK]

        return Response(stream(), content_type=content_type, headers=_request_id())

    def _realtime(self, request: Request, environ: dict[str, Any]) -> Response:
        if not is_websocket_upgrade(request):
            return openai_error(400, "This endpoint only accepts WebSocket connections.")
        model = request.args.get("model")
        beta = "OpenAI-Beta" in request.headers
        record = (VoiceRecord if model and not beta else RealtimeRecord)(headers=Headers(request.headers.items()))
        conn_box: list[RealtimeConnection | VoiceConnection] = []

        def on_accept(ws: Any) -> None:
            conn: RealtimeConnection | VoiceConnection
            if isinstance(record, VoiceRecord) and model:
                conn = VoiceConnection(ws, record, self, model)
            else:
                conn = RealtimeConnection(ws, record, self)
            conn_box.append(conn)
            with self._sessions_changed:
                self.realtime_sessions.append(record)
                self._live.add(conn)
                self._sessions_changed.notify_all()

        def session(ws: Any) -> None:
            if isinstance(conn_box[0], RealtimeConnection) and beta:
                conn_box[0].reject_beta()
            else:
                conn_box[0].run()

        try:
            serve_websocket(environ, session, on_accept=on_accept, event_class=ArrivalStamps)
        finally:
            if conn_box:
                conn_box[0].finish()
                with self._lock:
                    self._live.discard(conn_box[0])


def _request_id() -> dict[str, str]:
    return {"x-request-id": "req_" + secrets.token_hex(16)}
