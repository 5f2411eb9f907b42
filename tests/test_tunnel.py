"""Public URL tunnels: ngrok and Tailscale serve/funnel, driven against the
fake ``ngrok`` and ``tailscale`` executables in tests/fakes (same flags,
JSON shapes and exit statuses as the real ones), first in-process, then
through the real daemon."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from voicecalld import config, tunnel
from voicecalld.config import ConfigError
from voicecalld.tunnel import NgrokTunnel, Plan, Tailscale, TailscaleTunnel, TunnelError, Tunnels

TOKEN = "2fakeNgrokAuthtoken_0123456789abcdef"
NODE = "voice.tail1234.ts.net"
FREE_URL = re.compile(r"https://[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}\.ngrok-free\.app")


def configured(**overrides) -> config.Config:
    data: dict = {}
    for key, value in overrides.items():
        section, _, name = key.replace("__", ".").rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return config.from_mapping(data, env={})


def write_state(path: Path, **overrides) -> Path:
    state = {"BackendState": "Running", "DNSName": NODE + ".", "Capabilities": ["https", "funnel"],
             "ServeConfig": {}}
    state.update(overrides)
    path.write_text(json.dumps(state))
    return path


def serve_config(path: Path) -> dict:
    return json.loads(path.read_text()).get("ServeConfig", {})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    ({"tunnel": {"provider": "ngrok"}, "tailscale": {"mode": "funnel"}}, "contradicts tunnel.provider"),
    ({"tunnel": {"provider": "ngrok", "allowNgrokFreeTier": False}}, "needs a reserved ngrok domain"),
    ({"tunnel": {"provider": "ngrok", "ngrokDomain": "https://x.ngrok.app/path"}}, "expected a host name"),
    ({"tailscale": {"mode": "serve", "path": "/elsewhere"}}, "must be serve.path (/voice/webhook) or a parent"),
])
def test_contradictory_or_incomplete_tunnel_settings_are_config_errors(data, message) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(data, env={})
    assert any(message in p for p in info.value.problems), info.value.problems


def test_agreeing_legacy_section_and_reserved_domain_are_fine() -> None:
    config.from_mapping({"tunnel": {"provider": "tailscale-funnel"}, "tailscale": {"mode": "funnel"}}, env={})
    config.from_mapping({"tunnel": {"provider": "ngrok", "allowNgrokFreeTier": False,
                                    "ngrokDomain": "voice.example.ngrok.app"}}, env={})


@pytest.mark.parametrize("overrides, expected", [
    ({}, None),
    ({"tunnel__provider": "ngrok", "publicUrl": "https://calls.example.com"}, None),  # publicUrl wins
    ({"tunnel__provider": "ngrok"}, ("ngrok", ("/voice/webhook",))),
    ({"tailscale__mode": "serve"}, ("tailscale-serve", ("/voice/webhook",))),
    ({"tunnel__provider": "tailscale-funnel", "streaming__enabled": True},
     ("tailscale-funnel", ("/voice/webhook", "/voice/stream"))),
    ({"tailscale__mode": "funnel", "tailscale__path": "/voice", "streaming__enabled": True},
     ("tailscale-funnel", ("/voice",))),  # one handler covers both paths
])
def test_plan(overrides, expected) -> None:
    p = tunnel.plan(configured(**overrides), 4321)
    assert (p.provider, p.paths) == expected if expected else p is None
    if p:
        assert (p.host, p.port) == ("127.0.0.1", 4321)


@pytest.mark.parametrize("bind, host", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]"),
                                        ("::1", "[::1]"), ("localhost", "localhost")])
def test_local_host(bind, host) -> None:
    assert tunnel.local_host(bind) == host


def test_children_get_no_systemd_variables_or_secrets() -> None:
    env = tunnel.child_env({"NGROK_AUTHTOKEN": "t"}, env={
        "PATH": "/bin", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "LISTEN_FDS": "1",
        "OPENAI_API_KEY": "sk", "TWILIO_AUTH_TOKEN": "x", "CREDENTIALS_DIRECTORY": "/c", "NGROK_AUTHTOKEN": "old"})
    assert env == {"PATH": "/bin", "NGROK_AUTHTOKEN": "t"}


@pytest.mark.parametrize("line, parsed, error", [
    ('{"lvl":"info","msg":"started tunnel","url":"https://a.ngrok.app"}',
     {"lvl": "info", "msg": "started tunnel", "url": "https://a.ngrok.app"}, None),
    ('{"lvl":"eror","msg":"session closing","err":"failed\\r\\n\\r\\nERR_NGROK_105\\r\\n"}',
     {"lvl": "eror", "msg": "session closing", "err": "failed\r\n\r\nERR_NGROK_105\r\n"},
     "session closing: failed ERR_NGROK_105"),
    ('{"lvl":"info","msg":"open config file","err":null}', {"lvl": "info", "msg": "open config file", "err": None},
     None),
    ("ERROR:  authentication failed", None, None),
    ("{not json", None, None),
    ("[1, 2]", None, None),
])
def test_parse_ngrok_line(line, parsed, error) -> None:
    assert tunnel.parse_ngrok_line(line) == parsed
    assert (tunnel.ngrok._ngrok_error(parsed) if parsed else None) == error


# --- ngrok against the fake agent ------------------------------------------------------------------


def ngrok_plan(**kw) -> Plan:
    base = {"provider": "ngrok", "host": "127.0.0.1", "port": 3334, "paths": ("/voice/webhook",),
            "ngrok_authtoken": TOKEN}
    base.update(kw)
    return Plan(**base)


@pytest.fixture
def ngrok_env(fake_bin, tmp_path, monkeypatch) -> tuple[str, Path]:
    record = tmp_path / "ngrok-runs.jsonl"
    monkeypatch.setenv("FAKE_NGROK_RECORD", str(record))
    return os.path.join(fake_bin, "ngrok"), record


def test_ngrok_reports_a_free_url_and_gets_the_token_through_its_environment(ngrok_env) -> None:
    exe, record = ngrok_env
    urls: list = []
    t = NgrokTunnel(ngrok_plan(), urls.append, exe)
    try:
        url = t.start(timeout=10)
        assert FREE_URL.fullmatch(url) and urls == [url]
        (run,) = records(record)
        assert run["argv"] == ["http", "127.0.0.1:3334", "--log", "stdout", "--log-format", "json"]
        assert run["authtokenFrom"] == "env" and TOKEN not in " ".join(run["argv"])
        assert t.describe() == {"provider": "ngrok", "state": "running", "publicUrl": url, "restarts": 0}
    finally:
        t.stop()
    assert not alive(run["pid"]) and t.state == "stopped"


def test_ngrok_reserved_domain(ngrok_env, monkeypatch) -> None:
    exe, record = ngrok_env
    monkeypatch.setenv("FAKE_NGROK_RESERVED", "voice.example.ngrok.app")
    t = NgrokTunnel(ngrok_plan(ngrok_domain="voice.example.ngrok.app", allow_free_tier=False), lambda u: None, exe)
    try:
        assert t.start(timeout=10) == "https://voice.example.ngrok.app"
        assert records(record)[0]["argv"][-2:] == ["--url", "https://voice.example.ngrok.app"]
    finally:
        t.stop()
    t = NgrokTunnel(ngrok_plan(ngrok_domain="other.example.ngrok.app"), lambda u: None, exe)
    with pytest.raises(TunnelError, match="ERR_NGROK_320"):
        t.start(timeout=10)


@pytest.mark.parametrize("token, message", [
    (None, "authentication failed: Usage of ngrok requires a verified account and authtoken"),
    ("bad token!", "does not look like a proper ngrok tunnel authtoken"),
])
def test_ngrok_login_errors_are_clear_and_never_echo_the_token(ngrok_env, token, message) -> None:
    exe, record = ngrok_env
    t = NgrokTunnel(ngrok_plan(ngrok_authtoken=token), lambda u: None, exe)
    with pytest.raises(TunnelError) as info:
        t.start(timeout=10)
    assert message in str(info.value) and "ERR_NGROK" in str(info.value)
    assert "bad token!" not in str(info.value)
    assert not alive(records(record)[0]["pid"])


def test_ngrok_is_restarted_when_it_exits_and_the_new_url_is_reported(ngrok_env, monkeypatch) -> None:
    exe, record = ngrok_env
    monkeypatch.setenv("FAKE_NGROK_CRASHES", "1")
    urls: list = []
    t = NgrokTunnel(ngrok_plan(), urls.append, exe)
    try:
        first = t.start(timeout=10)
        deadline = time.monotonic() + 10
        while len(urls) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert urls[0] == first and urls[1] is None and FREE_URL.fullmatch(urls[2]) and urls[2] != first
        assert t.restarts == 1 and t.public_url == urls[2] and t.state == "running"
        assert len(records(record)) == 2
    finally:
        t.stop()
    assert not any(alive(r["pid"]) for r in records(record))


def test_missing_executables_name_what_to_install(tmp_path) -> None:
    t = NgrokTunnel(ngrok_plan(), lambda u: None, str(tmp_path / "no-ngrok"))
    with pytest.raises(TunnelError, match="ngrok command was not found on PATH.*install the ngrok agent"):
        t.start()
    with pytest.raises(TunnelError, match="tailscale command was not found on PATH.*install Tailscale"):
        Tailscale(str(tmp_path / "no-tailscale")).dns_name()


# --- Tailscale against the fake CLI -------------------------------------------------------------------


@pytest.fixture
def ts_state(fake_bin, tmp_path, monkeypatch) -> tuple[str, Path]:
    state = tmp_path / "tailscaled.json"
    monkeypatch.setenv("FAKE_TAILSCALE_STATE", str(state))
    return os.path.join(fake_bin, "tailscale"), state


def ts_plan(paths=("/voice/webhook",)) -> Plan:
    return Plan("tailscale-funnel", "127.0.0.1", 4444, tuple(paths))


def test_funnel_adds_its_handlers_and_removes_only_those(ts_state) -> None:
    exe, state = ts_state
    other = {"Proxy": "http://127.0.0.1:8080"}
    write_state(state, ServeConfig={"TCP": {"443": {"HTTPS": True}},
                                    "Web": {f"{NODE}:443": {"Handlers": {"/grafana": other}}}})
    t = TailscaleTunnel(ts_plan(("/voice/webhook", "/voice/stream")), Tailscale(exe))
    assert t.start("funnel") == f"https://{NODE}"
    sc = serve_config(state)
    assert sc["Web"][f"{NODE}:443"]["Handlers"] == {
        "/grafana": other, "/voice/webhook": {"Proxy": "http://127.0.0.1:4444/voice/webhook"},
        "/voice/stream": {"Proxy": "http://127.0.0.1:4444/voice/stream"}}
    assert sc["AllowFunnel"] == {f"{NODE}:443": True}
    t.stop()
    assert serve_config(state)["Web"][f"{NODE}:443"]["Handlers"] == {"/grafana": other}
    assert t.public_url is None and t.mode is None


@pytest.mark.parametrize("state_overrides, mode, message", [
    ({"BackendState": "NeedsLogin"}, "funnel", "Tailscale is not running (state NeedsLogin): it is logged out"),
    ({"BackendState": "Stopped"}, "serve", "it is stopped; run tailscale up"),
    ({"Capabilities": ["https"]}, "funnel", 'Funnel not available; "funnel" node attribute not set'),
    ({"DNSName": ""}, "serve", "no DNS name"),
    (None, "serve", "doesn't appear to be running"),
])
def test_tailscale_errors_are_clear(ts_state, state_overrides, mode, message) -> None:
    exe, state = ts_state
    if state_overrides is not None:
        write_state(state, **state_overrides)
    t = TailscaleTunnel(ts_plan(), Tailscale(exe))
    with pytest.raises(TunnelError) as info:
        t.start(mode)
    assert message in str(info.value)
    if state_overrides is not None:
        assert serve_config(state) == {}


def test_a_command_that_waits_for_the_admin_times_out(ts_state) -> None:
    exe, state = ts_state
    write_state(state, Capabilities=[])  # HTTPS not enabled: the CLI waits for someone to enable it
    t = TailscaleTunnel(ts_plan(), Tailscale(exe, timeout=1.0))
    start = time.monotonic()
    with pytest.raises(TunnelError, match="did not finish within 1 s"):
        t.start("serve", timeout=1.0)
    assert time.monotonic() - start < 10


def test_tunnels_expose_switches_modes(ts_state) -> None:
    exe, state = ts_state
    write_state(state)
    urls: list = []
    t = Tunnels(configured(), 5555, urls.append, tailscale=exe)
    assert t.start() is None and t.describe() is None
    assert t.expose("serve") == {"mode": "serve", "publicUrl": f"https://{NODE}"}
    assert "AllowFunnel" not in serve_config(state)
    assert t.describe()["provider"] == "tailscale-serve"
    assert t.expose("funnel")["mode"] == "funnel"
    assert serve_config(state)["AllowFunnel"] == {f"{NODE}:443": True}
    assert t.expose("off") == {"mode": "off", "publicUrl": None}
    assert serve_config(state) == {} and urls == [f"https://{NODE}", f"https://{NODE}", None]
    with pytest.raises(TunnelError, match="mode must be"):
        t.expose("public")


def test_expose_refuses_to_touch_an_ngrok_tunnel(ngrok_env) -> None:
    exe, _ = ngrok_env
    t = Tunnels(configured(tunnel__provider="ngrok", tunnel__ngrokAuthToken=TOKEN), 5555, lambda u: None, ngrok=exe)
    try:
        t.start(timeout=10)
        with pytest.raises(TunnelError, match="the tunnel is ngrok"):
            t.expose("funnel")
    finally:
        t.stop()


# --- through the real daemon ------------------------------------------------------------------------


def daemon_env(fake_bin: str, **extra: str) -> dict[str, str]:
    return {"PATH": f"{fake_bin}:{os.environ.get('PATH', '')}", **extra}


def test_daemon_starts_ngrok_before_ready_and_stops_it(start_daemon, fake_bin, tmp_path) -> None:
    record = tmp_path / "ngrok.jsonl"
    d = start_daemon({"tunnel": {"provider": "ngrok"}},
                     env=daemon_env(fake_bin, NGROK_AUTHTOKEN=TOKEN, FAKE_NGROK_RECORD=str(record)))
    (run,) = records(record)  # READY=1 came after the agent was started ...
    status = d.rpc("daemon.status")
    assert FREE_URL.fullmatch(status["publicUrl"])  # ... and had reported its URL
    assert status["tunnel"] == {"provider": "ngrok", "state": "running", "publicUrl": status["publicUrl"],
                                "restarts": 0}
    assert run["argv"][:2] == ["http", f"127.0.0.1:{status['webhook']['port']}"]
    assert "STATUS=starting the ngrok tunnel" in d.notify.lines()
    assert d.notify.lines().index("STATUS=starting the ngrok tunnel") < d.notify.lines().index("READY=1")
    code, out, _ = d.ctl("expose", "--mode", "funnel")
    assert code == 1 and out is None
    assert alive(run["pid"])
    assert d.stop() == 0
    assert not alive(run["pid"])
    assert TOKEN not in d.log()


def test_daemon_follows_a_restarted_ngrok(start_daemon, fake_bin, tmp_path) -> None:
    record = tmp_path / "ngrok.jsonl"
    d = start_daemon({"tunnel": {"provider": "ngrok"}},
                     env=daemon_env(fake_bin, NGROK_AUTHTOKEN=TOKEN, FAKE_NGROK_RECORD=str(record),
                                    FAKE_NGROK_CRASHES="1"))
    first = d.rpc("daemon.status")["publicUrl"]
    status = d.wait(lambda: (s := d.rpc("daemon.status"))["tunnel"]["restarts"] == 1
                    and s["publicUrl"] not in (None, first) and s, what="the restarted tunnel's URL")
    assert FREE_URL.fullmatch(status["publicUrl"]) and "ngrok exited with status 1" in d.log()


def test_daemon_funnel_and_expose(start_daemon, fake_bin, tmp_path) -> None:
    state = write_state(tmp_path / "tailscaled.json")
    d = start_daemon({"tunnel": {"provider": "tailscale-funnel"}},
                     env=daemon_env(fake_bin, FAKE_TAILSCALE_STATE=str(state)))
    status = d.rpc("daemon.status")
    port = status["webhook"]["port"]
    assert status["publicUrl"] == f"https://{NODE}" and status["tunnel"]["provider"] == "tailscale-funnel"
    handler = {"/voice/webhook": {"Proxy": f"http://127.0.0.1:{port}/voice/webhook"}}
    assert serve_config(state)["Web"][f"{NODE}:443"]["Handlers"] == handler
    assert serve_config(state)["AllowFunnel"] == {f"{NODE}:443": True}

    code, out, err = d.ctl("expose", "--mode", "serve")
    assert code == 0, err
    assert out == {"ok": True, "mode": "serve", "publicUrl": f"https://{NODE}"}
    assert "AllowFunnel" not in serve_config(state)
    assert d.rpc("daemon.status")["tunnel"]["provider"] == "tailscale-serve"
    code, out, _ = d.ctl("expose", "--mode", "off")
    assert out == {"ok": True, "mode": "off", "publicUrl": None} and serve_config(state) == {}
    assert d.rpc("daemon.status")["publicUrl"] is None
    code, out, _ = d.ctl("expose", "--mode", "funnel")
    assert out == {"ok": True, "mode": "funnel", "publicUrl": f"https://{NODE}"}
    assert d.rpc("daemon.status")["publicUrl"] == f"https://{NODE}"
    assert d.stop() == 0
    assert serve_config(state) == {}  # removed on shutdown


def test_expose_on_a_daemon_without_a_tunnel(start_daemon, fake_bin, tmp_path) -> None:
    state = write_state(tmp_path / "tailscaled.json")
    d = start_daemon(env=daemon_env(fake_bin, FAKE_TAILSCALE_STATE=str(state)))
    assert d.rpc("daemon.status")["publicUrl"] is None
    code, out, err = d.ctl("expose", "--mode", "funnel")
    assert code == 0, err
    assert out["publicUrl"] == f"https://{NODE}" and d.rpc("daemon.status")["publicUrl"] == f"https://{NODE}"
    assert d.stop() == 0
    assert serve_config(state) == {}


def test_legacy_tailscale_section(start_daemon, fake_bin, tmp_path) -> None:
    state = write_state(tmp_path / "tailscaled.json")
    d = start_daemon({"tailscale": {"mode": "serve"}}, env=daemon_env(fake_bin, FAKE_TAILSCALE_STATE=str(state)))
    assert d.rpc("daemon.status")["tunnel"]["provider"] == "tailscale-serve"
    assert list(serve_config(state)["Web"][f"{NODE}:443"]["Handlers"]) == ["/voice/webhook"]
    assert "inside the tailnet only" in d.log()


def test_publicurl_wins_over_a_tunnel(start_daemon, fake_bin, tmp_path) -> None:
    record = tmp_path / "ngrok.jsonl"
    d = start_daemon({"publicUrl": "https://calls.example.com", "tunnel": {"provider": "ngrok"}},
                     env=daemon_env(fake_bin, NGROK_AUTHTOKEN=TOKEN, FAKE_NGROK_RECORD=str(record)))
    status = d.rpc("daemon.status")
    assert status["publicUrl"] == "https://calls.example.com" and status["tunnel"] is None
    assert not record.exists() and "publicUrl is set, so tunnel ngrok is not started" in d.log()


@pytest.mark.parametrize("tunnel_config, env_of, message", [
    ({"provider": "ngrok"}, lambda b, s: {"PATH": "/nonexistent"}, "the ngrok command was not found on PATH"),
    ({"provider": "ngrok"}, lambda b, s: daemon_env(b), "requires a verified account and authtoken"),
    ({"provider": "tailscale-funnel"}, lambda b, s: daemon_env(b, FAKE_TAILSCALE_STATE=str(
        write_state(s, BackendState="NeedsLogin"))), "Tailscale is not running (state NeedsLogin)"),
])
def test_daemon_refuses_to_start_without_its_tunnel(tmp_path, fake_bin, tunnel_config, env_of, message) -> None:
    from daemon import Daemon, remove, short_tmp

    tmp = short_tmp("tun")
    d = Daemon(tmp, {"tunnel": tunnel_config}, env=env_of(fake_bin, tmp_path / "ts.json"), wait_ready=False)
    try:
        assert d.proc.wait(30) == 1
        assert message in d.log() and "cannot start: tunnel.provider" in d.log()
        assert "READY=1" not in d.notify.lines()
    finally:
        d.kill()
        remove(tmp)


@pytest.mark.parametrize("domain, allow_free, url, refused", [
    (None, True, "https://ab12-cd34-ef56.ngrok-free.app", None),
    (None, False, "https://ab12-cd34-ef56.ngrok-free.app", "allowNgrokFreeTier is false"),
    ("voice.example.ngrok.app", False, "https://voice.example.ngrok.app", None),
    ("voice.example.ngrok.app", True, "https://other.ngrok-free.app", "not the reserved domain"),
])
def test_ngrok_url_acceptance(domain, allow_free, url, refused) -> None:
    t = NgrokTunnel(ngrok_plan(ngrok_domain=domain, allow_free_tier=allow_free), lambda u: None)
    problem = t._accept(url)
    assert (problem is None) if refused is None else (refused in problem)


def test_the_tunnel_url_is_the_base_of_the_providers_webhook_url(fake_bin, tmp_path, monkeypatch) -> None:
    # In-process, to look at the provider itself: its webhook URLs (and so
    # the URLs carrier signatures are checked against) follow the tunnel.
    import signal

    from voicecalld.daemon import Daemon

    state = write_state(tmp_path / "tailscaled.json")
    monkeypatch.setenv("FAKE_TAILSCALE_STATE", str(state))
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = config.from_mapping({"store": str(tmp_path / "state"), "serve": {"port": 0},
                               "control": {"socket": str(tmp_path / "c.sock")},
                               "tunnel": {"provider": "tailscale-funnel"}, "shutdownGraceSeconds": 0}, env={})
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    d = Daemon(cfg)
    try:
        d.start()
        assert d.provider.public_url == f"https://{NODE}"
        assert d.provider.webhook_url == f"https://{NODE}/voice/webhook"
        d.expose("off")
        assert d.provider.public_url is None
        with pytest.raises(RuntimeError, match="no public URL"):
            d.provider.webhook_url  # noqa: B018
        d.expose("serve")
        assert d.provider.webhook_url == f"https://{NODE}/voice/webhook"
    finally:
        d.shutdown()
        signal.set_wakeup_fd(-1)
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert serve_config(state) == {}
