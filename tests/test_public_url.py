"""publicUrl in both of its forms: an origin (serve.path is appended) or the
whole webhook URL with a path, used exactly as given (the form the original
plugin documented), including a reverse proxy that mounts the daemon under
a path prefix. Every URL a carrier is given, and every signature the
daemon checks, must come out right for Twilio (webhooks, status callbacks,
TwiML actions, the media stream), Telnyx (the dial's webhook_url) and a
tunnel's origin.

The end-to-end tests run the real daemon against FakeTwilio / FakeTelnyx /
FakeOpenAI on 127.0.0.1; the proxy is a small HTTP reverse proxy that
strips the prefix, as ``location /prefix/ { proxy_pass http://daemon/; }``
would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from voicecalld import config, publicurl
from voicecalld.providers.twilio_wire import signed_urls
from voicecalld.testing._http import BackgroundServer
from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.fake_twilio import FakeTwilio, StreamRequest
from voicecalld.testing.media_client import MediaStreamClient
from voicecalld.testing.ports import free_port

FROM, TO, CALLER = "+15550001111", "+15550002222", "+15557770000"
WEBHOOK, STREAM = "/voice/webhook", "/voice/stream"


# --- the one URL builder ------------------------------------------------------------------------------


@pytest.mark.parametrize("public, serve_path, stream_path, webhook, stream", [
    ("https://voice.example.com", WEBHOOK, STREAM,
     "https://voice.example.com/voice/webhook", "wss://voice.example.com/voice/stream"),
    ("https://voice.example.com/", WEBHOOK, STREAM,
     "https://voice.example.com/voice/webhook", "wss://voice.example.com/voice/stream"),
    ("https://example.ngrok.app/voice/webhook", WEBHOOK, STREAM,
     "https://example.ngrok.app/voice/webhook", "wss://example.ngrok.app/voice/stream"),
    ("https://proxy.example/prefix/voice/webhook", WEBHOOK, STREAM,
     "https://proxy.example/prefix/voice/webhook", "wss://proxy.example/prefix/voice/stream"),
    ("https://proxy.example/a/b/voice/webhook", WEBHOOK, "/media", "https://proxy.example/a/b/voice/webhook",
     "wss://proxy.example/a/b/media"),
    ("http://127.0.0.1:8080/voice/webhook", WEBHOOK, STREAM,
     "http://127.0.0.1:8080/voice/webhook", "wss://127.0.0.1:8080/voice/stream"),
    ("https://h.example:8443", "/hook", "/st", "https://h.example:8443/hook", "wss://h.example:8443/st"),
    # A path that does not end in serve.path: the proxy maps it somehow; the
    # webhook is still used as given, and streams go to the host's root.
    ("https://proxy.example/hooks/twilio", WEBHOOK, STREAM,
     "https://proxy.example/hooks/twilio", "wss://proxy.example/voice/stream"),
])
def test_url_builder(public: str, serve_path: str, stream_path: str, webhook: str, stream: str) -> None:
    assert publicurl.webhook_url(public, serve_path) == webhook
    assert publicurl.stream_url(public, serve_path, stream_path) == stream
    assert publicurl.is_origin(public) == (urlsplit(public).path in ("", "/"))


def test_with_query() -> None:
    assert publicurl.with_query("https://h/p", "") == "https://h/p"
    assert publicurl.with_query("https://h/p", "a=1") == "https://h/p?a=1"
    assert publicurl.with_query("https://h/p?x=2", "a=1") == "https://h/p?x=2&a=1"


@pytest.mark.parametrize("url", ["https://voice.example.com/voice/webhook?token=1", "https://h.example/#x"])
def test_a_public_url_with_a_query_or_fragment_is_a_config_error(url: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping({"publicUrl": url}, env={})
    assert any(p.startswith("publicUrl: ") for p in info.value.problems)


def test_twilio_signs_the_public_url_whatever_path_the_proxy_forwards_to() -> None:
    environ = EnvironBuilder(path=WEBHOOK, query_string="callId=abc&type=status", method="POST").get_environ()
    environ["RAW_URI"] = f"{WEBHOOK}?callId=abc&type=status"  # as werkzeug's server sets it
    request = Request(environ)
    assert signed_urls(request, "https://proxy.example/prefix/voice/webhook", False) == [
        "https://proxy.example/prefix/voice/webhook?callId=abc&type=status"]
    assert signed_urls(request, "https://voice.example.com/voice/webhook", False) == [
        "https://voice.example.com/voice/webhook?callId=abc&type=status"]


# --- end to end -----------------------------------------------------------------------------------------


class PrefixProxy:
    """Serves ``http://127.0.0.1:<daemon port>/...`` at ``/prefix/...``."""

    HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}

    def __init__(self, prefix: str, target_port: int) -> None:
        self.prefix = prefix
        self.target = f"http://127.0.0.1:{target_port}"
        self.forwarded: list[str] = []
        self.server = BackgroundServer(self)
        self.server.start()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if not request.path.startswith(self.prefix + "/"):
            return Response("not proxied", status=404)(environ, start_response)
        path = request.path[len(self.prefix):]
        query = request.query_string.decode("latin-1")
        self.forwarded.append(path)
        r = requests.request(request.method, self.target + path + ("?" + query if query else ""),
                             data=request.get_data(), timeout=20, allow_redirects=False,
                             headers={k: v for k, v in request.headers.items() if k.lower() not in self.HOP})
        headers = [(k, v) for k, v in r.headers.items() if k.lower() not in self.HOP]
        return Response(r.content, status=r.status_code, headers=headers)(environ, start_response)

    @property
    def port(self) -> int:
        return self.server.port

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as fake:
        yield fake


def twilio_config(fake: FakeTwilio, port: int, public: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": public,
            "serve": {"port": port}, "maxConcurrentCalls": 3, "inboundPolicy": "allowlist", "allowFrom": [CALLER],
            "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
            "outbound": {"notifyHangupDelaySec": 0.05}, "responder": "off", "transcriptTimeoutMs": 10000, **extra}


def all_answered(call: Any) -> None:
    bad = [(d.kind, d.url, d.status) for d in call.deliveries if d.status != 200]
    assert not bad, bad


def test_twilio_with_the_whole_webhook_url(start_daemon, twilio: FakeTwilio) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}/voice/webhook"
    d = start_daemon(twilio_config(twilio, port, public))
    assert d.rpc("daemon.status")["webhook"]["url"] == public

    # Outbound, conversation: create, status callbacks, Gather actions, redirects.
    call_id = d.rpc("voicecall.initiate", {"message": "Hello there", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    (create,) = [r for r in twilio.requests if r.method == "POST" and r.path.endswith("/Calls.json")]
    form = dict(create.form)
    assert form["Url"] == f"{public}?callId={call_id}"
    assert form["StatusCallback"] == f"{public}?callId={call_id}&type=status"
    sid = twilio.wait_call(to=TO).sid
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        d.rpc("voicecall.continue", {"callId": call_id, "message": "Ship it?"}, timeout=30)))
    thread.start()
    twilio.wait_for(lambda: "Ship it?" in twilio.calls[sid].said, message="the question")
    twilio.callee_says(sid, "Yes please")
    thread.join(30)
    assert result == {"callId": call_id, "transcript": "Yes please"}
    d.rpc("voicecall.end", {"callId": call_id})
    call = twilio.wait_ended(sid)
    assert {urlsplit(dl.url)._replace(query="").geturl() for dl in call.deliveries} == {public}
    all_answered(call)

    # Inbound: the number's voice URL is publicUrl itself.
    in_sid = twilio.inbound_call(CALLER, FROM, public, public + "?type=status")
    twilio.wait_for(lambda: twilio.calls[in_sid].said, message="the greeting")
    twilio.callee_hangs_up(in_sid)
    all_answered(twilio.wait_ended(in_sid))
    assert "signature" not in d.log()


class StreamWorld:
    """A streamed Twilio call whose media stream the test connects straight
    to the daemon, with the headers Twilio would send to ``req.url``."""

    def __init__(self, twilio: FakeTwilio, daemon_port: int, prefix: str) -> None:
        self.daemon_port = daemon_port
        self.prefix = prefix
        self.clients: list[MediaStreamClient] = []
        self.requests: list[StreamRequest] = []
        twilio.on_stream = self.on_stream

    def on_stream(self, req: StreamRequest) -> None:
        self.requests.append(req)
        path = urlsplit(req.url).path[len(self.prefix):]  # what the proxy would forward
        client = MediaStreamClient(f"ws://127.0.0.1:{self.daemon_port}{path}", headers=req.headers,
                                   custom_parameters=req.parameters, call_sid=req.call_sid,
                                   stream_sid=req.stream_sid)
        self.clients.append(client)

        def run() -> None:
            client.connect()
            req.ended.wait(60)
            client.stop()

        threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize("prefix", ["", "/prefix"])
def test_twilio_media_stream_behind_the_whole_webhook_url(start_daemon, twilio: FakeTwilio, prefix: str) -> None:
    port = free_port()
    proxy = PrefixProxy(prefix, port) if prefix else None
    host = f"127.0.0.1:{proxy.port if proxy else port}"
    public = f"http://{host}{prefix}/voice/webhook"
    openai = FakeOpenAI(api_key="sk-test", tts_ms_per_char=2)
    openai.start()
    world = StreamWorld(twilio, port, prefix)
    try:
        d = start_daemon(twilio_config(
            twilio, port, public, tts={"baseUrl": openai.base_url},
            streaming={"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": openai.realtime_url}))
        call_id = d.rpc("voicecall.initiate", {"message": "Streaming hello", "mode": "conversation"})["callId"]
        d.wait(lambda: world.clients and world.clients[-1].connected, what="the media stream")
        (req,) = world.requests
        assert req.url == f"wss://{host}{prefix}/voice/stream"
        # The daemon took the stream: its upgrade signature over the wss://
        # URL above checked out, and so did the call's token.
        d.wait(lambda: d.rpc("daemon.status")["media"]["openStreams"] == 1, what="the stream to be bridged")
        d.rpc("voicecall.end", {"callId": call_id})
        all_answered(twilio.wait_ended(req.call_sid))
        if proxy is not None:
            assert set(proxy.forwarded) == {WEBHOOK}  # every webhook went through the proxy
    finally:
        for c in world.clients:
            c.close()
        if proxy is not None:
            proxy.close()
        openai.stop()


def test_telnyx_dials_with_the_whole_webhook_url(start_daemon) -> None:
    with FakeTelnyx(seed=3, ms_per_char=2.0, answer_after=0.03) as fake:
        port = free_port()
        public = f"http://127.0.0.1:{port}/voice/webhook"
        d = start_daemon({
            "provider": "telnyx", "fromNumber": FROM, "toNumber": TO, "publicUrl": public, "serve": {"port": port},
            "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                       "publicKey": fake.public_key_b64, "apiBaseUrl": fake.base_url},
            "outbound": {"notifyHangupDelaySec": 0.05}})
        call_id = d.rpc("voicecall.initiate", {"message": "Hello from Telnyx", "mode": "notify"})["callId"]
        assert d.wait_state(call_id, "completed", timeout=20)["endReason"] == "completed"
        (dial,) = [r for r in fake.requests if r.path.endswith("/calls") and r.method == "POST"]
        assert dial.json["webhook_url"] == public
        d.stop()


def test_a_tunnel_gives_an_origin(start_daemon, fake_bin, tmp_path) -> None:
    from test_tunnel import NODE, daemon_env, write_state

    state = write_state(tmp_path / "tailscaled.json")
    d = start_daemon({"tunnel": {"provider": "tailscale-funnel"}},
                     env=daemon_env(fake_bin, FAKE_TAILSCALE_STATE=str(state)))
    status = d.rpc("daemon.status")
    assert status["publicUrl"] == f"https://{NODE}"
    assert status["webhook"]["url"] == f"https://{NODE}/voice/webhook"


def query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
