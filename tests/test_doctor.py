"""voicecallctl doctor and voicecalld --check-config --online, against the
fake carriers and the fake OpenAI: a good setup passes, and each failure it
can report is reported on its line with what to fix. It never places a call."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import ctl_command, daemon_command, merge, to_toml
from test_ctl_output import Tty

from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from voicecalld.testing.ports import free_port

FROM = "+15550001111"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def twilio_config(fake: FakeTwilio, port: int, **extra: Any) -> dict[str, Any]:
    return merge({"provider": "twilio", "fromNumber": FROM, "publicUrl": f"http://127.0.0.1:{port}",
                  "serve": {"port": port}, "responder": "off",
                  "twilio": {"accountSid": DEFAULT_ACCOUNT_SID, "authToken": DEFAULT_AUTH_TOKEN,
                             "apiBaseUrl": fake.base_url}}, extra)


def doctor(config: dict[str, Any] | Path, tmp: Path, socket: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run voicecallctl doctor (stdout piped: JSON); (exit status, checks by name)."""
    path = config if isinstance(config, Path) else tmp / "doctor.toml"
    if not isinstance(config, Path):
        path.write_text(to_toml(config))
    proc = subprocess.run([*ctl_command(), "--socket", socket or str(tmp / "none.sock"), "--config", str(path),
                           "doctor"], capture_output=True, text=True, timeout=60, env=_clean_env())
    out = json.loads(proc.stdout)
    assert out["ok"] is (proc.returncode == 0)
    return proc.returncode, {c["name"]: c for c in out["checks"]}


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TWILIO_", "TELNYX_", "OPENAI_", "VOICECALLD_", "CREDENTIALS_DIRECTORY"))}


def test_a_good_twilio_setup_passes_with_the_daemon_running(start_daemon, twilio, tmp_path) -> None:
    port = free_port()
    d = start_daemon(twilio_config(twilio, port))
    code, checks = doctor(d.config_path, tmp_path, d.socket_path)
    assert code == 0, checks
    assert set(checks) == {"config", "daemon", "twilio", "openai", "public URL", "tunnel"}
    assert checks["twilio"]["message"] == (f"Twilio accepted the credentials of account {DEFAULT_ACCOUNT_SID} "
                                           "(Full, active)")
    assert checks["public URL"]["message"] == f"http://127.0.0.1:{port}/healthz reaches this daemon"
    assert all(r.method == "GET" for r in twilio.requests) and twilio.calls == {}  # read-only, never a call
    # On a terminal: one line per check.
    code, out = Tty("--socket", d.socket_path, "--config", str(d.config_path), "doctor", env=d.env).finish()
    assert code == 0
    assert [line.split()[:2] for line in out.strip().splitlines()] == [
        ["ok", "config"], ["ok", "daemon"], ["ok", "twilio"], ["ok", "openai"], ["ok", "public"], ["ok", "tunnel"]]
    assert DEFAULT_AUTH_TOKEN not in out  # Twilio's account resource carries the token; it is never shown


def test_rejected_twilio_credentials(twilio, tmp_path) -> None:
    port = free_port()
    config = twilio_config(twilio, port, twilio={"authToken": "not-the-token"})
    code, checks = doctor(config, tmp_path)
    assert code == 1
    assert checks["twilio"] == {"name": "twilio", "ok": False, "message":
                                "Twilio rejected the credentials (20003): check twilio.accountSid / "
                                "TWILIO_ACCOUNT_SID and twilio.authToken / TWILIO_AUTH_TOKEN"}
    # The daemon is not running: the doctor answered on its port, and the public URL led there.
    assert checks["daemon"]["ok"] and "not running" in checks["daemon"]["message"]
    assert checks["public URL"]["ok"], checks["public URL"]
    assert "where the daemon will listen" in checks["public URL"]["message"]


def test_a_suspended_twilio_account_fails(twilio, tmp_path) -> None:
    twilio.account_status = "suspended"
    code, checks = doctor(twilio_config(twilio, free_port()), tmp_path)
    assert code == 1 and "is suspended" in checks["twilio"]["message"]


def test_an_unreachable_public_url(start_daemon, twilio, tmp_path) -> None:
    # Nothing listens at the public URL (a proxy or tunnel that is down).
    d = start_daemon(twilio_config(twilio, free_port(), publicUrl=f"http://127.0.0.1:{free_port()}"))
    code, checks = doctor(d.config_path, tmp_path, d.socket_path)
    assert code == 1
    assert not checks["public URL"]["ok"]
    assert "unreachable (connection failed): check publicUrl" in checks["public URL"]["message"]
    assert checks["twilio"]["ok"]


def test_a_public_url_that_leads_to_another_daemon(start_daemon, twilio, tmp_path) -> None:
    other_port = free_port()
    start_daemon({"serve": {"port": other_port}})  # answers /healthz too, but is not the one checked
    d = start_daemon(twilio_config(twilio, free_port(), publicUrl=f"http://127.0.0.1:{other_port}/voice/webhook"))
    code, checks = doctor(d.config_path, tmp_path, d.socket_path)
    assert code == 1
    assert checks["public URL"]["message"] == (
        f"http://127.0.0.1:{other_port}/healthz answered, but not from this daemon: check that publicUrl (or the "
        "tunnel / proxy) leads to serve.port")


def test_telnyx_credentials_and_connection(tmp_path) -> None:
    with FakeTelnyx() as fake:
        port = free_port()
        good = {"provider": "telnyx", "fromNumber": FROM, "publicUrl": f"http://127.0.0.1:{port}",
                "serve": {"port": port}, "responder": "off",
                "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id, "apiBaseUrl": fake.base_url,
                           "publicKey": fake.public_key_b64}}
        code, checks = doctor(good, tmp_path)
        assert code == 0, checks
        assert checks["telnyx"]["message"] == (f"Telnyx accepted the API key; Call Control application "
                                               f"{fake.connection_id} exists")
        code, checks = doctor(merge(good, {"telnyx": {"apiKey": "KEYwrong"}}), tmp_path)
        assert code == 1
        assert checks["telnyx"]["message"] == ("Telnyx rejected the API key (10009): check telnyx.apiKey / "
                                               "TELNYX_API_KEY")
        code, checks = doctor(merge(good, {"telnyx": {"connectionId": "999"}}), tmp_path)
        assert code == 1
        assert checks["telnyx"]["message"] == ("Telnyx has no Call Control application '999' (10005): check "
                                               "telnyx.connectionId / TELNYX_CONNECTION_ID")
        assert not fake.calls


def test_the_openai_key_where_streaming_and_the_responder_need_it(twilio, tmp_path) -> None:
    with FakeOpenAI(api_key="sk-good") as openai:
        port = free_port()
        config = twilio_config(twilio, port, streaming={"enabled": True, "openaiApiKey": "sk-good"},
                               tts={"baseUrl": openai.base_url}, responder="llm", responseBaseUrl=openai.base_url)
        code, checks = doctor(config, tmp_path)
        assert code == 0, checks
        assert checks["openai (streaming)"]["message"] == f"{openai.base_url} accepted the API key"
        assert checks["openai (responder)"]["ok"]
        code, checks = doctor(merge(config, {"streaming": {"openaiApiKey": "sk-bad"}}), tmp_path)
        assert code == 1
        assert checks["openai (streaming)"]["message"] == (f"{openai.base_url} rejected the API key "
                                                           "(invalid_api_key): check streaming.openaiApiKey / "
                                                           "OPENAI_API_KEY")
        assert not checks["openai (responder)"]["ok"]  # it uses the same key
        assert [r.path for r in openai.requests] == ["/v1/models"] * 2  # one request per distinct key
    code, checks = doctor(merge(twilio_config(twilio, free_port()), {"responder": "llm"}), tmp_path)
    assert code == 1
    assert checks["openai (responder)"]["message"] == ("responder needs an OpenAI API key: set responseApiKey / "
                                                       'OPENAI_API_KEY, or responder = "off"')


def test_the_realtime_key_is_checked_next_to_its_websocket_url(twilio, tmp_path) -> None:
    with FakeOpenAI(api_key="sk-good") as openai:
        config = twilio_config(twilio, free_port(), streaming={"enabled": True, "openaiApiKey": "sk-good"},
                               tts={"baseUrl": openai.base_url},
                               realtime={"enabled": True, "url": openai.voice_url, "apiKey": "sk-bad"})
        code, checks = doctor(config, tmp_path)
        assert code == 1
        assert checks["openai (realtime)"]["message"] == (f"{openai.base_url} rejected the API key "
                                                          "(invalid_api_key): check realtime.apiKey / "
                                                          "streaming.openaiApiKey / OPENAI_API_KEY")
        code, checks = doctor(merge(config, {"realtime": {"apiKey": "sk-good"}}), tmp_path)
        assert code == 0 and checks["openai (realtime)"]["ok"], checks


def test_an_invalid_configuration_names_each_problem(tmp_path) -> None:
    code, checks = doctor({"provider": "twilio", "maxConcurrentCalls": 0, "serve": {"port": -1}}, tmp_path)
    assert code == 1
    assert list(checks) == ["config"]  # the rest depends on it
    proc = subprocess.run([*ctl_command(), "--socket", str(tmp_path / "x.sock"), "--config",
                           str(tmp_path / "doctor.toml"), "doctor"], capture_output=True, text=True, timeout=30,
                          env=_clean_env())
    messages = [c["message"] for c in json.loads(proc.stdout)["checks"]]
    assert any("maxConcurrentCalls" in m for m in messages)
    assert any("serve.port" in m for m in messages)


def test_voicecalld_check_config_online(twilio, tmp_path) -> None:
    path = tmp_path / "voicecalld.toml"
    path.write_text(to_toml(twilio_config(twilio, free_port(), twilio={"authToken": "wrong"},
                                          control={"socket": str(tmp_path / "c.sock")})))
    proc = subprocess.run([*daemon_command(), "--config", str(path), "--check-config", "--online"],
                          capture_output=True, text=True, timeout=60, env=_clean_env())
    assert proc.returncode == 1
    assert "FAIL  twilio      Twilio rejected the credentials (20003)" in proc.stdout
    path.write_text(to_toml(twilio_config(twilio, free_port(), control={"socket": str(tmp_path / "c.sock")})))
    proc = subprocess.run([*daemon_command(), "--config", str(path), "--check-config", "--online"],
                          capture_output=True, text=True, timeout=60, env=_clean_env())
    assert proc.returncode == 0, proc.stdout
    assert all(line.startswith("ok  ") for line in proc.stdout.strip().splitlines())
    # Without --online nothing goes out.
    before = len(twilio.requests)
    proc = subprocess.run([*daemon_command(), "--config", str(path), "--check-config"], capture_output=True,
                          text=True, timeout=60, env=_clean_env())
    assert proc.returncode == 0 and len(twilio.requests) == before


def test_the_probe_proves_reachability_without_telling_the_public_anything(start_daemon) -> None:
    import requests

    d = start_daemon()
    health = f"http://127.0.0.1:{d.webhook_port}/healthz"
    plain = requests.get(health, timeout=10)
    token = d.rpc("daemon.probe")["token"]
    assert d.rpc("daemon.probe", {"token": token}) == {"token": token, "seen": False}
    guessed = requests.get(health, params={"probe": "guessed"}, timeout=10)
    real = requests.get(health, params={"probe": token}, timeout=10)
    # The same answer with a token, a wrong one, or none: only the control socket can tell.
    assert plain.status_code == guessed.status_code == real.status_code == 200
    assert plain.content == guessed.content == real.content == b'{"status": "ok"}\n'
    assert d.rpc("daemon.probe", {"token": token}) == {"token": token, "seen": True}
    assert d.rpc("daemon.probe", {"token": "guessed"})["seen"] is None
