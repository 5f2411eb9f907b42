"""The fake Telnyx's media streaming on its own: a dial with ``stream_url``
makes the fake open the WebSocket like Telnyx (connected, start, numbered
media at real-time pace), report it with streaming.* webhooks, echo marks
once the audio before them has played, honour clear, and send frames out
of order on request. The "daemon" here is a bare WebSocket server."""

from __future__ import annotations

import base64
import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import simple_websocket
from test_fake_telnyx import Api, Receiver
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from voicecalld.providers.telnyx_signature import load_public_key
from voicecalld.testing._telnyx_media import silence
from voicecalld.testing.fake_telnyx import FakeTelnyx


class StreamServer:
    """Accepts media streams (or refuses them with ``refuse``); each
    connection's messages go to ``messages``, and ``ws`` is the last one."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ws: simple_websocket.Server | None = None
        self.done = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02})
        self._thread.start()
        self.url = f"wss://127.0.0.1:{self._server.server_port}/voice/stream?call=c1&token=t"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.refuse:
            return Response("no", status=401)(environ, start_response)
        ws = simple_websocket.Server.accept(environ)
        self.ws = ws
        try:
            while not self.done.is_set():
                raw = ws.receive(timeout=0.05)
                if raw is not None:
                    self.messages.put(json.loads(raw))
        except simple_websocket.ConnectionClosed:
            pass
        return Response("")(environ, start_response)

    def next(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = self.messages.get(timeout=timeout)
            if message["event"] == event:
                return message

    def close(self) -> None:
        self.done.set()
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@contextmanager
def world(receiver: Receiver, **options: Any) -> Iterator[tuple[FakeTelnyx, Api]]:
    with FakeTelnyx(seed=3, ms_per_char=1.0, answer_after=0.02, **options) as fake:
        receiver.key = load_public_key(fake.public_key_b64)
        api = Api(fake)
        yield fake, api
        api.session.close()


def test_a_dial_with_stream_url_gets_a_telnyx_stream(receiver: Receiver) -> None:
    server = StreamServer()
    try:
        with world(receiver) as (fake, api):
            response = api.dial(receiver, stream_url=server.url, stream_track="inbound_track",
                                stream_bidirectional_mode="rtp", stream_bidirectional_codec="PCMU")
            ccid = response.json()["data"]["call_control_id"]
            assert server.next("connected") == {"event": "connected", "version": "1.0.0"}
            start = server.next("start")
            assert start["sequence_number"] == "1" and start["stream_id"]
            assert start["start"]["call_control_id"] == ccid
            assert start["start"]["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
            started = fake.wait_event(ccid, "streaming.started", 10, ok=True)
            assert started.json["data"]["payload"]["stream_id"] == start["stream_id"]
            client = fake.wait_stream(ccid)
            assert fake.stream_audio(ccid, silence(0.1))
            first, second = server.next("media"), server.next("media")
            assert (first["media"]["chunk"], second["media"]["chunk"]) == ("1", "2")
            assert int(second["sequence_number"]) == int(first["sequence_number"]) + 1
            assert base64.b64decode(first["media"]["payload"]) == b"\xff" * 160
            # Bidirectional: audio played at 8000 bytes/s, then the mark after it.
            assert server.ws is not None
            server.ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(
                b"\xff" * 800).decode()}}))
            server.ws.send(json.dumps({"event": "mark", "mark": {"name": "m1"}}))
            echoed = server.next("mark")
            assert echoed["mark"] == {"name": "m1"} and echoed["stream_id"] == start["stream_id"]
            mark = client.wait_for_mark("m1")
            assert mark.echoed_at is not None and mark.echoed_at >= mark.play_done and not mark.cleared
            # clear: queued audio dropped, pending marks returned at once.
            server.ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(
                b"\xff" * 80000).decode()}}))
            server.ws.send(json.dumps({"event": "mark", "mark": {"name": "m2"}}))
            server.ws.send(json.dumps({"event": "clear"}))
            assert server.next("mark")["mark"] == {"name": "m2"}
            assert client.wait_for_mark("m2").cleared
            fake.callee_hangs_up(ccid)
            assert server.next("stop")["stop"]["call_control_id"] == ccid
            fake.wait_event(ccid, "streaming.stopped", 10, ok=True)
            fake.wait_event(ccid, "call.hangup", 10, ok=True)
            types = receiver.types(ccid)
            assert types.index("streaming.stopped") < types.index("call.hangup")
    finally:
        server.close()


def test_frames_out_of_order_on_request_and_in_a_law(receiver: Receiver) -> None:
    server = StreamServer()
    try:
        with world(receiver, stream_out_of_order=2, stream_encoding="PCMA") as (fake, api):
            ccid = api.dial(receiver, stream_url=server.url).json()["data"]["call_control_id"]
            assert server.next("start")["start"]["media_format"]["encoding"] == "PCMA"
            fake.wait_stream(ccid)
            assert fake.stream_audio(ccid, silence(0.1, "PCMA"))
            media = [server.next("media")["media"] for _ in range(5)]
            assert [m["chunk"] for m in media] == ["1", "3", "2", "5", "4"]
            assert {base64.b64decode(m["payload"]) for m in media} == {b"\xd5" * 160}  # A-law silence
            fake.callee_hangs_up(ccid)
    finally:
        server.close()


def test_a_refused_stream_is_streaming_failed(receiver: Receiver) -> None:
    server = StreamServer(refuse=True)
    try:
        with world(receiver) as (fake, api):
            ccid = api.dial(receiver, stream_url=server.url).json()["data"]["call_control_id"]
            failed = fake.wait_event(ccid, "streaming.failed", 10, ok=True).json["data"]["payload"]
            assert failed["failure_reason"] == "connection_failed"
            assert failed["stream_params"] == {"stream_url": server.url, "track": "inbound_track"}
            fake.callee_hangs_up(ccid)
    finally:
        server.close()


@pytest.mark.parametrize("body", [{"stream_url": "https://example.com/x"},
                                  {"stream_url": "wss://example.com/x", "stream_bidirectional_codec": "pcmu"},
                                  {"stream_url": "wss://example.com/x", "stream_bidirectional_mode": "wav"},
                                  {"stream_track": "inbound_track"}])
def test_bad_stream_parameters_are_refused(receiver: Receiver, body: dict[str, Any]) -> None:
    with world(receiver) as (fake, api):
        response = api.dial(receiver, **body)
        assert response.status_code == 422 and fake.calls == {}
