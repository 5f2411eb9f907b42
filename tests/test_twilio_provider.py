"""The Twilio provider in-process (manager, timer wheel, store and the real
webhook app on 127.0.0.1) against FakeTwilio: the paths an end-to-end test
cannot steer, such as a hang-up racing call creation, or a reload."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from voicecalld import config as cfgmod
from voicecalld.calls import CallRecord, Direction, Mode, State
from voicecalld.errors import ProviderError
from voicecalld.manager import CallManager
from voicecalld.providers import create
from voicecalld.providers.twilio import TwilioProvider
from voicecalld.store import Store
from voicecalld.testing.fake_twilio import FakeTwilio
from voicecalld.timers import TimerService
from voicecalld.webhook import WebhookApp
from voicecalld.workerpool import WorkerPool

FROM, TO = "+15550001111", "+15550002222"


class Rig:
    def __init__(self, fake: FakeTwilio, store_dir: str, **overrides: Any) -> None:
        self.fake = fake
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.port = self.server.server_port
        self.data: dict[str, Any] = {
            "provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{self.port}",
            "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
            "outbound": {"notifyHangupDelaySec": 1}, "transcriptTimeoutMs": 3000,
        }
        for key, value in overrides.items():
            if isinstance(value, dict):
                self.data[key] = {**self.data.get(key, {}), **value}
            else:
                self.data[key] = value
        self.config = cfgmod.from_mapping(self.data, env={})
        self.pool = WorkerPool(8)
        self.timers = TimerService(self.pool, tick=0.005)
        self.timers.start()
        self.store = Store(store_dir)
        provider = create(self.config, self.timers)
        assert isinstance(provider, TwilioProvider)
        self.provider = provider
        self.provider.public_url = self.config.publicUrl
        self.manager = CallManager(self.config, self.provider, self.store, self.timers)
        self.webhooks = WebhookApp(self.provider, self.config.serve.path, lambda: {"status": "ok"})
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01})
        self.thread.start()
        self.provider.start()

    def _app(self, environ: Any, start_response: Any) -> Any:
        return self.webhooks(environ, start_response)

    def wait_state(self, call_id: str, *states: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.fake.wait_for(lambda: (r := self.manager.status(call_id))["state"] in states and r, timeout,
                                  message=f"{call_id} to reach {states}")

    def close(self) -> None:
        self.manager.shutdown(0)
        self.provider.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.timers.stop()
        self.pool.stop()
        self.store.close()


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(time_scale=0.05, ms_per_char=1) as f:
        yield f


@pytest.fixture
def rig(fake: FakeTwilio, tmp_path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(**overrides: Any) -> Rig:
        r = Rig(fake, str(tmp_path / f"store{len(rigs)}"), **overrides)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_hangup_while_twilio_is_still_creating_the_call(rig, fake: FakeTwilio) -> None:
    r = rig(ringTimeoutMs=50)
    client, _ = r.provider._api._rest()
    original = client.request

    def slow_create(method: str, path: str, **kw: Any) -> Any:
        if path.endswith("/Calls.json"):
            time.sleep(0.3)  # the ring deadline passes meanwhile
        return original(method, path, **kw)

    client.request = slow_create  # type: ignore[method-assign]
    out = r.manager.initiate("hello", TO, "notify")
    assert out["state"] == "no-answer"
    call = fake.wait_ended(fake.wait_call().sid)
    assert call.status == "canceled" and call.said == []
    assert [u for u in call.updates if ("Status", "completed") in u]


def test_call_status_asks_twilio(rig, fake: FakeTwilio) -> None:
    r = rig()
    call_id = r.manager.initiate("Hi", TO, "conversation")["callId"]
    r.wait_state(call_id, "listening")
    record = CallRecord.from_dict(r.manager.status(call_id))
    status = r.provider.call_status(record)
    assert status is not None and status.live and status.answered
    r.manager.end(call_id)
    status = r.provider.call_status(record)
    assert status is not None and not status.live and status.reason == State.COMPLETED
    unknown = CallRecord("x", "twilio", Direction.OUTBOUND, Mode.NOTIFY, TO, FROM, providerCallId="CA" + "0" * 32)
    assert r.provider.call_status(unknown) is None
    r.provider.hangup(unknown)  # 20404: a call Twilio no longer has is hung up already
    assert [q.status for q in fake.requests if q.path.endswith(f"/Calls/{unknown.providerCallId}.json")] == [404, 404]


def test_stream_tokens(rig, fake: FakeTwilio) -> None:
    r = rig(streaming={"enabled": True, "openaiApiKey": "sk-test-0123456789"})
    call_id = r.manager.initiate("Hi", TO, "conversation")["callId"]
    stream = fake.wait_stream(fake.wait_call().sid)
    token = stream.parameters["token"]
    assert r.provider.stream_token(call_id) == token
    assert r.provider.check_stream_token(call_id, token)
    assert not r.provider.check_stream_token(call_id, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not r.provider.check_stream_token("no-such-call", token)
    assert r.provider.stream_url == f"wss://127.0.0.1:{r.port}/voice/stream"
    r.manager.end(call_id)
    assert r.provider.stream_token(call_id) is None


def test_streaming_without_an_openai_key_falls_back_to_gather(rig, fake: FakeTwilio, caplog) -> None:
    with caplog.at_level(logging.WARNING, "voicecalld.providers.twilio"):
        r = rig(streaming={"enabled": True})
    assert "falling back" in caplog.text or "listen with <Gather>" in caplog.text
    call_id = r.manager.initiate("Hi", TO, "conversation")["callId"]
    r.wait_state(call_id, "listening")
    sid = fake.wait_call().sid
    fake.wait_listening(sid)
    assert fake.calls[sid].streams == []


def test_no_public_url(rig, fake: FakeTwilio) -> None:
    r = rig()
    r.provider.public_url = None  # e.g. the tunnel is not up yet
    with pytest.raises(ProviderError, match="public URL"):
        r.manager.initiate("Hi", TO, "notify")
    assert r.manager.history(1)[0]["state"] == "failed"
    assert fake.requests == []


def test_reload_applies_new_credentials(rig, fake: FakeTwilio) -> None:
    r = rig()
    bad = cfgmod.from_mapping({**r.data, "twilio": {**r.data["twilio"], "authToken": "rotated-away"}}, env={})
    r.manager.reconfigure(bad)
    with pytest.raises(ProviderError) as info:
        r.manager.initiate("Hi", TO, "notify")
    assert info.value.provider_code == 20003
    r.manager.reconfigure(r.config)
    call_id = r.manager.initiate("Hi", TO, "notify")["callId"]
    r.wait_state(call_id, "completed")


def test_a_stream_speaker_can_take_over_speech(rig, fake: FakeTwilio) -> None:
    r = rig()
    taken: list[str] = []
    r.provider.stream_speaker = lambda record, action: taken.append(action.text) or action.text == "via stream"
    call_id = r.manager.initiate("Hi", TO, "conversation")["callId"]
    r.wait_state(call_id, "listening")
    sid = fake.wait_call().sid
    r.manager.speak(call_id, "via stream")
    r.manager.speak(call_id, "via twiml")
    fake.wait_for(lambda: "via twiml" in fake.calls[sid].said)
    assert taken == ["Hi", "via stream", "via twiml"]
    assert fake.calls[sid].said == ["Hi", "via twiml"]
