"""The metrics: the exposition format (read back with Prometheus's own
parser), the listener, and the figures of a real daemon after real calls
and webhooks, checked against what happened."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import nacl.signing
import pytest
import requests
from daemon import Daemon, daemon_command, to_toml
from prometheus_client.parser import text_string_to_metric_families

from voicecalld import config as cfgmod
from voicecalld import metrics
from voicecalld.metrics_http import MetricsServer, RemoteRefused, parse_listen
from voicecalld.providers.twilio_signature import compute_signature
from voicecalld.testing.ports import free_port

SID = "AC" + "e" * 32
TOKEN = "metrics-test-token"
FROM, CALLER = "+15550001111", "+15557770000"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def scrape(address: str) -> str:
    r = requests.get(f"http://{address}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return r.text


@pytest.fixture
def fresh_metrics() -> Iterator[None]:
    metrics.reset()
    metrics.enable(True)
    yield
    metrics.enable(False)
    metrics.reset()


# --- the format -----------------------------------------------------------------------------


def test_every_metric_parses_with_the_reference_parser(fresh_metrics) -> None:
    metrics.call_ended("outbound", "completed")
    metrics.call_ended("outbound", "completed")
    metrics.call_ended("inbound", "hangup-user")
    for seconds in (0.004, 0.3, 0.3, 12.0):
        metrics.observe_turn(seconds)
    metrics.webhook("rejected")
    metrics.STORE_APPEND.observe(0.002)
    metrics.gauge_source(metrics.CALLS_ACTIVE, lambda: 3.0)
    text = metrics.render().decode()
    found = families(text)
    expected = {"voicecalld_calls": "counter", "voicecalld_calls_active": "gauge", "voicecalld_calls_queued": "gauge",
                "voicecalld_turn_latency_seconds": "histogram", "voicecalld_llm_first_token_seconds": "histogram",
                "voicecalld_tts_first_audio_seconds": "histogram", "voicecalld_media_forward_seconds": "histogram",
                "voicecalld_media_streams": "gauge", "voicecalld_webhook_requests": "counter",
                "voicecalld_stt_reconnects": "counter", "voicecalld_store_append_seconds": "histogram",
                "process_resident_memory_bytes": "gauge", "process_cpu_seconds": "counter",
                "process_open_fds": "gauge", "process_threads": "gauge"}
    for name, kind in expected.items():
        assert name in found, name
        assert found[name].type == kind, name
    got = samples(text)
    assert got[("voicecalld_calls_total", (("direction", "outbound"), ("end_reason", "completed")))] == 2
    assert got[("voicecalld_calls_total", (("direction", "inbound"), ("end_reason", "hangup-user")))] == 1
    assert got[("voicecalld_calls_total", (("direction", "inbound"), ("end_reason", "busy")))] == 0
    assert got[("voicecalld_calls_active", ())] == 3
    assert got[("voicecalld_calls_queued", ())] == 0
    assert got[("voicecalld_webhook_requests_total", (("outcome", "rejected"),))] == 1
    assert got[("voicecalld_webhook_requests_total", (("outcome", "replay"),))] == 0
    # Cumulative buckets: 4 ms falls under 5 ms, 300 ms at its bound (le), 12 s only in +Inf.
    assert got[("voicecalld_turn_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("voicecalld_turn_latency_seconds_bucket", (("le", "0.3"),))] == 3
    assert got[("voicecalld_turn_latency_seconds_bucket", (("le", "10"),))] == 3
    assert got[("voicecalld_turn_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("voicecalld_turn_latency_seconds_count", ())] == 4
    assert got[("voicecalld_turn_latency_seconds_sum", ())] == pytest.approx(12.604)
    assert got[("process_resident_memory_bytes", ())] > 1_000_000
    assert got[("process_open_fds", ())] >= 3


def test_hot_path_metrics_record_only_while_enabled(fresh_metrics) -> None:
    metrics.enable(False)
    metrics.MEDIA_FORWARD.observe(0.001)
    metrics.webhook("accepted")
    metrics.call_ended("outbound", "busy")  # per call: always, daemon.status reports it
    metrics.observe_turn(0.5)
    assert metrics.MEDIA_FORWARD.count == 0
    assert metrics.WEBHOOKS.value("accepted") == 0
    assert metrics.CALLS.value("outbound", "busy") == 1
    assert metrics.TURN_LATENCY.count == 1


def test_label_values_are_escaped(fresh_metrics) -> None:
    counter = metrics.Counter("x_total", 'help with \\ and\nnewline', ("l",))
    counter.inc('a"b\\c\nd')
    text = "\n".join(counter.header() + counter.render()) + "\n"
    (family,) = text_string_to_metric_families(text)
    assert family.documentation == "help with \\ and\nnewline"
    assert family.samples[0].labels == {"l": 'a"b\\c\nd'}


# --- the engine's entry point for measured turns ----------------------------------------------


def test_note_turn_joins_the_record_the_log_and_the_histogram(engine, fresh_metrics) -> None:
    call_id = engine.manager.initiate("Hello.", mode="conversation")["callId"]
    assert engine.manager.note_turn(call_id, 250.0) is False  # not connected yet: no reply to measure
    engine.wait_state(call_id, "listening")
    before = metrics.TURN_LATENCY.count
    assert engine.manager.note_turn(call_id, 412.4) is True
    assert engine.manager.note_turn(call_id, 88.0) is True
    for bad in (-1.0, float("nan"), float("inf"), "12"):
        assert engine.manager.note_turn(call_id, bad) is False  # type: ignore[arg-type]
    record = engine.manager.status(call_id)
    assert [t["latencyMs"] for t in record["turns"]] == [412, 88]
    assert all(isinstance(t["at"], int) and t["at"] >= record["answeredAt"] for t in record["turns"])
    assert metrics.TURN_LATENCY.count == before + 2
    assert list(metrics.TURN_LATENCY.recent or ())[-2:] == pytest.approx([0.4124, 0.088])
    # Persisted with the record: the log's last line of the call has them.
    assert [t["latencyMs"] for t in engine.store.find(call_id)["turns"]] == [412, 88]
    engine.manager.end(call_id)
    engine.wait_state(call_id, "hangup-bot")
    assert engine.manager.note_turn(call_id, 100.0) is False
    assert len(engine.store.find(call_id)["turns"]) == 2


# --- the listener -----------------------------------------------------------------------------


def test_listener_serves_metrics_only(fresh_metrics) -> None:
    server = MetricsServer("127.0.0.1:0")
    server.start()
    try:
        assert families(scrape(server.address))["voicecalld_calls"].type == "counter"
        assert requests.get(f"http://{server.address}/", timeout=10).status_code == 404
        assert requests.get(f"http://{server.address}/healthz", timeout=10).status_code == 404
        head = requests.head(f"http://{server.address}/metrics", timeout=10)
        assert head.status_code == 200 and head.content == b""
    finally:
        server.close()


@pytest.mark.parametrize("listen", ["0.0.0.0:9334", "192.0.2.10:9334", "[::]:9334", "example.com:9334"])
def test_listener_refuses_non_loopback_unless_allowed(listen) -> None:
    with pytest.raises(RemoteRefused, match="allowRemote"):
        MetricsServer(listen)  # refused before anything is bound
    with pytest.raises(cfgmod.ConfigError, match="metrics.listen: .*metrics.allowRemote = true"):
        cfgmod.from_mapping({"metrics": {"listen": listen}}, env={})
    allowed = cfgmod.from_mapping({"metrics": {"listen": listen, "allowRemote": True}}, env={})
    assert allowed.metrics.listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:9334", "localhost:0", "[::1]:9334", "127.1.2.3:1"])
def test_loopback_listen_addresses_are_accepted(listen) -> None:
    assert cfgmod.from_mapping({"metrics": {"listen": listen}}, env={}).metrics.listen == listen


@pytest.mark.parametrize("listen", ["9334", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", ":9334"])
def test_malformed_listen_addresses_are_config_errors(listen) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
    with pytest.raises(cfgmod.ConfigError, match="metrics.listen: expected host:port"):
        cfgmod.from_mapping({"metrics": {"listen": listen}}, env={})


def test_daemon_refuses_a_public_metrics_address(tmp_path) -> None:
    path = tmp_path / "voicecalld.toml"
    path.write_text(to_toml({"metrics": {"listen": "0.0.0.0:9334"}}))
    proc = subprocess.run([*daemon_command(), "--config", str(path), "--check-config"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 78
    assert "metrics.listen: 0.0.0.0 is not a loopback address" in proc.stderr


# --- a real daemon ----------------------------------------------------------------------------


def ended_reason(d: Daemon, call_id: str) -> str:
    return str(d.wait_state(call_id, "completed", "hangup-user", "hangup-bot", "no-answer", "failed",
                            "error", "timeout")["endReason"])


def test_metrics_after_mock_calls(start_daemon) -> None:
    d = start_daemon({"metrics": {"listen": "127.0.0.1:0"}, "maxConcurrentCalls": 4, "responder": "off",
                      "mock": {"calleeReplies": ["yes", "fine thanks", "bye now"]}})
    address = d.rpc("daemon.status")["metrics"]["listen"]
    assert address.startswith("127.0.0.1:")

    notify = d.rpc("voicecall.initiate", {"message": "Your parcel is here."})["callId"]
    assert ended_reason(d, notify) == "completed"

    chat = d.rpc("voicecall.initiate", {"message": "Hello there.", "mode": "conversation"})["callId"]
    d.wait_state(chat, "listening", timeout=10)
    for line in ("Can you hear me?", "How are you?", "Anything else?"):
        d.rpc("voicecall.continue", {"callId": chat, "message": line}, timeout=20)
    d.rpc("voicecall.end", {"callId": chat})
    assert ended_reason(d, chat) == "hangup-bot"

    hung = d.rpc("voicecall.initiate", {"message": "Hi.", "mode": "conversation"})["callId"]
    d.wait_state(hung, "listening", timeout=10)
    d.rpc("mock.hangup", {"callId": hung})
    assert ended_reason(d, hung) == "hangup-user"

    rejected = d.rpc("mock.inbound", {"from": CALLER})  # inboundPolicy disabled
    assert rejected["rejected"] is True

    records = [d.rpc("voicecall.status", {"callId": c}) for c in (notify, chat, hung)]
    turns = [t["latencyMs"] for r in records for t in r["turns"]]
    # The callee's three replies: the 2nd and 3rd continues answered the 1st and 2nd.
    assert len(turns) == 2 and len(records[1]["turns"]) == 2

    got = samples(scrape(address))

    def calls(direction: str, reason: str) -> float:
        return got[("voicecalld_calls_total", (("direction", direction), ("end_reason", reason)))]

    assert calls("outbound", "completed") == 1
    assert calls("outbound", "hangup-bot") == 1
    assert calls("outbound", "hangup-user") == 1
    assert calls("inbound", "hangup-bot") == 1
    total = sum(v for (name, _), v in got.items() if name == "voicecalld_calls_total")
    assert total == 4
    assert got[("voicecalld_calls_active", ())] == 0
    assert got[("voicecalld_calls_queued", ())] == 0
    # One histogram sample per measured reply, the sum what the records say (ms, rounded).
    assert got[("voicecalld_turn_latency_seconds_count", ())] == len(turns)
    assert got[("voicecalld_turn_latency_seconds_sum", ())] == pytest.approx(sum(turns) / 1000, abs=0.001 * len(turns))
    # Every record appended was timed: at least a few per call.
    assert got[("voicecalld_store_append_seconds_count", ())] >= 8
    assert got[("process_threads", ())] >= 4

    status = d.rpc("daemon.status")["stats"]
    assert status["byEndReason"] == {"hangup-bot": 2, "completed": 1, "hangup-user": 1}
    assert status["byDirection"] == {"inbound": 1, "outbound": 3}
    assert status["turnLatencyMs"]["turns"] == 2
    assert status["turnLatencyMs"]["max"] == pytest.approx(max(turns), abs=1)


def test_calls_active_counts_live_calls(start_daemon) -> None:
    d = start_daemon({"metrics": {"listen": "127.0.0.1:0"}, "maxConcurrentCalls": 3})
    address = d.rpc("daemon.status")["metrics"]["listen"]
    ids = [d.rpc("voicecall.initiate", {"message": "Hi.", "mode": "conversation"})["callId"] for _ in range(2)]
    for call_id in ids:
        d.wait_state(call_id, "listening")
    assert samples(scrape(address))[("voicecalld_calls_active", ())] == 2
    for call_id in ids:
        d.rpc("voicecall.end", {"callId": call_id})
        d.wait_state(call_id, "hangup-bot")
    assert samples(scrape(address))[("voicecalld_calls_active", ())] == 0


def test_no_listener_without_metrics_listen(start_daemon) -> None:
    d = start_daemon()
    assert d.rpc("daemon.status")["metrics"] == {"listen": None}


# --- webhook outcomes -------------------------------------------------------------------------


def webhook_counts(address: str) -> dict[str, float]:
    got = samples(scrape(address))
    return {dict(labels)["outcome"]: v for (name, labels), v in got.items()
            if name == "voicecalld_webhook_requests_total"}


def test_twilio_webhook_outcomes(start_daemon) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    d = start_daemon({"provider": "twilio", "fromNumber": FROM, "publicUrl": public, "serve": {"port": port},
                      "responder": "off", "metrics": {"listen": "127.0.0.1:0"},
                      "twilio": {"accountSid": SID, "authToken": TOKEN,
                                 "apiBaseUrl": f"http://127.0.0.1:{free_port()}"}})
    address = d.rpc("daemon.status")["metrics"]["listen"]
    url = f"{public}/voice/webhook"
    params = [("AccountSid", SID), ("CallSid", "CA" + uuid.uuid4().hex), ("CallStatus", "ringing"),
              ("Direction", "inbound"), ("From", CALLER), ("To", FROM)]
    headers = {"Content-Type": "application/x-www-form-urlencoded", "I-Twilio-Idempotency-Token": "tok-1",
               "X-Twilio-Signature": compute_signature(TOKEN, url, params)}
    first = requests.post(url, data=urlencode(params), headers=headers, timeout=10)
    assert first.status_code == 200  # a call to our number (refused by policy, in TwiML)
    again = requests.post(url, data=urlencode(params), headers=headers, timeout=10)
    assert again.status_code == 200 and again.text == first.text
    forged = dict(headers, **{"X-Twilio-Signature": "AAAA", "I-Twilio-Idempotency-Token": "tok-2"})
    assert requests.post(url, data=urlencode(params), headers=forged, timeout=10).status_code == 401
    assert requests.get(url, timeout=10).status_code == 405
    assert webhook_counts(address) == {"accepted": 1, "replay": 1, "rejected": 1, "error": 1}


def test_telnyx_webhook_outcomes(start_daemon) -> None:
    key = nacl.signing.SigningKey.generate()
    port = free_port()
    d = start_daemon({"provider": "telnyx", "fromNumber": FROM, "publicUrl": f"http://127.0.0.1:{port}",
                      "serve": {"port": port}, "responder": "off", "metrics": {"listen": "127.0.0.1:0"},
                      "telnyx": {"apiKey": "KEYmetrics", "connectionId": "conn-1",
                                 "apiBaseUrl": f"http://127.0.0.1:{free_port()}",
                                 "publicKey": base64.b64encode(bytes(key.verify_key)).decode()}})
    address = d.rpc("daemon.status")["metrics"]["listen"]

    def post(body: bytes, signer: nacl.signing.SigningKey) -> int:
        ts = str(int(time.time()))
        sig = base64.b64encode(signer.sign(ts.encode() + b"|" + body).signature).decode()
        return requests.post(f"http://127.0.0.1:{port}/voice/webhook", data=body, timeout=10,
                             headers={"Content-Type": "application/json", "telnyx-timestamp": ts,
                                      "telnyx-signature-ed25519": sig}).status_code

    hook = json.dumps({"data": {"record_type": "event", "event_type": "call.hangup", "id": str(uuid.uuid4()),
                                "occurred_at": "2026-11-23T22:00:00Z",
                                "payload": {"call_control_id": "v3:unknown", "hangup_cause": "normal_clearing"}},
                       "meta": {"attempt": 1}}).encode()
    assert post(hook, key) == 200
    assert post(hook, key) == 200  # Telnyx's retry of the same event
    assert post(hook, nacl.signing.SigningKey.generate()) == 401
    assert post(b'{"not": "a webhook"}', key) == 400
    assert webhook_counts(address) == {"accepted": 1, "replay": 1, "rejected": 1, "error": 1}


def test_media_metrics_of_a_streamed_call(start_daemon) -> None:
    from test_streaming import World

    from voicecalld.testing.media_client import silence, speech_like

    world = World(start_daemon, metrics={"listen": "127.0.0.1:0"})
    try:
        d = world.daemon
        address = d.rpc("daemon.status")["metrics"]["listen"]
        call_id = d.rpc("voicecall.initiate", {"message": "Hi, metrics here.", "mode": "conversation"})["callId"]
        client = world.client()
        world.openai.wait_for_session(0)
        world.openai.transcripts.put("after the drop")
        world.openai.drop_realtime_after(30)
        client.play(silence(0.3) + speech_like(0.6) + silence(0.7))
        d.wait(lambda: d.rpc("voicecall.status", {"callId": call_id})["transcript"][-1]["text"] == "after the drop",
               timeout=15, what="a transcript after the reconnect")
        got = samples(scrape(address))
        media = d.rpc("daemon.status")["media"]
        assert got[("voicecalld_media_streams", ())] == media["openStreams"] == 1
        # One forwarding sample per caller frame handed to speech-to-text, as daemon.status counts them.
        assert got[("voicecalld_media_forward_seconds_count", ())] == media["forwarding"]["frames"] > 50
        assert got[("voicecalld_stt_reconnects_total", ())] == len(world.openai.realtime_sessions) - 1 >= 1
        assert got[("voicecalld_tts_first_audio_seconds_count", ())] == len(world.openai.speech_requests)
        d.wait_state(call_id, "listening", timeout=15)
        before = len(client.received_media)
        d.rpc("voicecall.speak", {"callId": call_id, "message": "Text to speech, timed."})
        client.wait_for(lambda: len(client.received_media) > before + 5, timeout=10)
        got = samples(scrape(address))
        assert got[("voicecalld_tts_first_audio_seconds_count", ())] == len(world.openai.speech_requests) >= 1
        d.rpc("voicecall.end", {"callId": call_id})
        client.wait_closed(10)
        d.wait(lambda: samples(scrape(address))[("voicecalld_media_streams", ())] == 0, what="the stream closed")
    finally:
        world.close()
