"""``voicecallctl doctor`` and ``voicecalld --check-config --online``: is
this setup ready for its first real call? (voicecallctl(1), DOCTOR)

One line per check, each failure with what to fix; exit status 0 only when
every check passes. Every request is a read-only GET, so the doctor never
places a call and changes nothing at the carrier:

* the configuration loads (every problem is named);
* the carrier accepts the credentials: Twilio's Account resource
  (https://www.twilio.com/docs/iam/api/account), Telnyx's Call Control
  application (https://developers.telnyx.com/api-reference/call-control-applications/retrieve-a-call-control-application),
  which also proves ``telnyx.connectionId``;
* the OpenAI key, where streaming or the auto-responder use one: the model
  list (https://platform.openai.com/docs/api-reference/models/list);
* the public URL reaches *this* daemon: ``GET /healthz?probe=TOKEN``
  through it, with a token the running daemon issued on its control socket
  and reports seen (``probe.py``). With the daemon stopped, the doctor
  answers on the daemon's own port for the moment of the check, so what
  is proven is that the public URL leads to that port;
* the tunnel, when one is configured, is up (with the daemon running) or
  its program is installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests

from . import config as cfgmod
from .config import Config, ConfigError
from .control.client import Client, RpcError, Unreachable
from .publicurl import path_prefix

TIMEOUT = 10.0
EX_OK, EX_FAILED = 0, 1


class _Session(requests.Session):
    """Every request bounded by ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.headers["User-Agent"] = "voicecalld-doctor"

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS failed (certificate?)"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# --- the carrier ------------------------------------------------------------------------------


def twilio(cfg: Config, session: requests.Session) -> Check:
    sid, token = cfg.twilio.accountSid or "", cfg.twilio.authToken or ""
    url = f"{cfg.twilio.apiBaseUrl}/2010-04-01/Accounts/{sid}.json"
    try:
        r = session.get(url, auth=(sid, token))
    except requests.RequestException as exc:
        return Check("twilio", False, f"cannot reach Twilio at {cfg.twilio.apiBaseUrl}: {_reason(exc)}; "
                                      "check the network and twilio.apiBaseUrl")
    body = _json(r)
    code = body.get("code") if isinstance(body, dict) else None
    if r.status_code == 401:
        return Check("twilio", False, f"Twilio rejected the credentials ({code or 20003}): check twilio.accountSid "
                                      "/ TWILIO_ACCOUNT_SID and twilio.authToken / TWILIO_AUTH_TOKEN")
    if r.status_code == 404:
        return Check("twilio", False, f"Twilio knows no account {sid} for these credentials ({code or 20404}): "
                                      "check twilio.accountSid / TWILIO_ACCOUNT_SID")
    if r.status_code != 200 or not isinstance(body, dict):
        return Check("twilio", False, f"Twilio answered HTTP {r.status_code}"
                                      + (f" ({code})" if code else "") + "; try again later")
    status = body.get("status")
    if status != "active":
        return Check("twilio", False, f"the Twilio account {sid} is {status}: calls will fail until it is active "
                                      "again (Twilio console)")
    return Check("twilio", True, f"Twilio accepted the credentials of account {sid} ({body.get('type', '?')}, "
                                 "active)")


def telnyx(cfg: Config, session: requests.Session) -> Check:
    app = cfg.telnyx.connectionId or ""
    url = f"{cfg.telnyx.apiBaseUrl}/v2/call_control_applications/{app}"
    try:
        r = session.get(url, headers={"Authorization": f"Bearer {cfg.telnyx.apiKey or ''}"})
    except requests.RequestException as exc:
        return Check("telnyx", False, f"cannot reach Telnyx at {cfg.telnyx.apiBaseUrl}: {_reason(exc)}; "
                                      "check the network and telnyx.apiBaseUrl")
    body = _json(r)
    errors = body.get("errors") if isinstance(body, dict) else None
    code = errors[0].get("code") if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
    if r.status_code == 401:
        return Check("telnyx", False, f"Telnyx rejected the API key ({code or 10009}): check telnyx.apiKey / "
                                      "TELNYX_API_KEY")
    if r.status_code in (404, 422):
        return Check("telnyx", False, f"Telnyx has no Call Control application {app!r} ({code or 10005}): check "
                                      "telnyx.connectionId / TELNYX_CONNECTION_ID")
    data = body.get("data") if isinstance(body, dict) else None
    if r.status_code != 200 or not isinstance(data, dict):
        return Check("telnyx", False, f"Telnyx answered HTTP {r.status_code}" + (f" ({code})" if code else "")
                     + "; try again later")
    if data.get("active") is False:
        return Check("telnyx", False, f"the Telnyx Call Control application {app} is inactive: activate it in the "
                                      "Telnyx portal")
    return Check("telnyx", True, f"Telnyx accepted the API key; Call Control application {app} exists")


# --- OpenAI -----------------------------------------------------------------------------------------


def _openai_uses(cfg: Config) -> list[tuple[str, str, str | None, str]]:
    """(what, base URL, key, key setting) for each use of an OpenAI-style API."""
    uses: list[tuple[str, str, str | None, str]] = []
    if cfg.streaming.enabled:
        uses.append(("streaming", cfg.tts.baseUrl, cfg.streaming.openaiApiKey,
                     "streaming.openaiApiKey / OPENAI_API_KEY"))
    if cfg.realtime.enabled:
        uses.append(("realtime", _rest_base(cfg.realtime.url), cfg.realtime.apiKey or cfg.streaming.openaiApiKey,
                     "realtime.apiKey / streaming.openaiApiKey / OPENAI_API_KEY"))
    if cfg.responder == "llm":
        uses.append(("responder", cfg.responseBaseUrl, cfg.responseApiKey or cfg.streaming.openaiApiKey,
                     "responseApiKey / OPENAI_API_KEY"))
    return uses


def _rest_base(websocket_url: str) -> str:
    """The REST base URL next to a Realtime WebSocket URL
    (wss://api.openai.com/v1/realtime -> https://api.openai.com/v1), where
    the key can be checked."""
    parts = urlsplit(websocket_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    path = parts.path.rsplit("/realtime", 1)[0]
    return f"{scheme}://{parts.netloc}{path}"


def openai(cfg: Config, session: requests.Session) -> list[Check]:
    uses = _openai_uses(cfg)
    if not uses:
        return [Check("openai", True, "no OpenAI key needed (streaming and the LLM responder are off)")]
    checks: list[Check] = []
    done: dict[tuple[str, str | None], Check] = {}
    for what, base, key, setting in uses:
        base = base.rstrip("/")
        official = urlsplit(base).hostname == "api.openai.com"
        if not key and what == "responder" and official and cfg.provider == "mock":
            checks.append(Check(f"openai ({what})", True, f"no key, so the LLM responder is off (set {setting} "
                                                          "for replies)"))
            continue
        if not key and (official or what != "responder"):
            extra = ', or responder = "off"' if what == "responder" else ""
            checks.append(Check(f"openai ({what})", False, f"{what} needs an OpenAI API key: set {setting}{extra}"))
            continue
        if (base, key) not in done:
            done[(base, key)] = _models(base, key, setting, session)
        result = done[(base, key)]
        checks.append(Check(f"openai ({what})", result.ok, result.message))
    return checks


def _models(base: str, key: str | None, setting: str, session: requests.Session) -> Check:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = session.get(f"{base}/models", headers=headers)
    except requests.RequestException as exc:
        return Check("openai", False, f"cannot reach {base}: {_reason(exc)}; check the network and the base URL")
    if r.status_code == 401:
        body = _json(r)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return Check("openai", False, f"{base} rejected the API key ({code or 'HTTP 401'}): check {setting}")
    if r.status_code != 200:
        return Check("openai", False, f"{base}/models answered HTTP {r.status_code}; check the base URL")
    return Check("openai", True, f"{base} accepted the API key")


# --- the public URL and the tunnel ----------------------------------------------------------------


def health_url(public_url: str, serve_path: str) -> str:
    """Where /healthz is through ``public_url`` (behind the same path prefix as the webhook)."""
    parts = urlsplit(public_url)
    return urlunsplit((parts.scheme, parts.netloc, path_prefix(public_url, serve_path) + "/healthz", "", ""))


class _StandIn(BaseHTTPRequestHandler):
    """The daemon's /healthz, for the moment of the check, while the daemon is stopped."""

    timeout = 10
    token = ""
    seen = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        query = parse_qs(urlsplit(self.path).query)
        if query.get("probe") == [self.token]:
            self.seen.set()
        body = b'{"status": "ok"}\n'
        self.send_response(200 if urlsplit(self.path).path.endswith("/healthz") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def _stand_in(cfg: Config, token: str) -> Iterator[threading.Event]:
    seen = threading.Event()

    class Handler(_StandIn):
        pass

    Handler.token, Handler.seen = token, seen
    host = cfg.serve.bind.strip("[]") or "0.0.0.0"

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, cfg.serve.port), Handler)  # where the daemon will listen
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def public_url(cfg: Config, status: dict[str, Any] | None, socket_path: str, session: _Session) -> Check:
    url = cfg.publicUrl or (status or {}).get("publicUrl")  # else the running daemon's tunnel
    if not url:
        if cfg.provider == "mock":
            return Check("public URL", True, "none, and the mock carrier needs none")
        hint = "start the daemon (its tunnel makes one)" if status is None else "set publicUrl or tunnel.provider"
        return Check("public URL", False, f"no public URL to test: {hint}")
    target = health_url(url, cfg.serve.path)
    if status is not None:
        try:
            with Client(socket_path) as client:
                token = client.call("daemon.probe")["token"]
                problem = _get_health(session, target, token)
                seen = client.call("daemon.probe", {"token": token}).get("seen")
        except (Unreachable, RpcError) as exc:
            return Check("public URL", False, f"the daemon did not answer the probe: {exc}")
        where = "this daemon"
    else:
        import secrets

        token = secrets.token_urlsafe(18)
        try:
            with _stand_in(cfg, token) as arrived:
                problem = _get_health(session, target, token)
                seen = arrived.is_set()
        except OSError as exc:
            return Check("public URL", False, f"the daemon is not running and port {cfg.serve.port} is taken "
                                              f"({exc.strerror}): is another program on serve.port?")
        where = f"port {cfg.serve.port} (where the daemon will listen)"
    if problem is not None:
        return Check("public URL", False, f"{target}: {problem}")
    if not seen:
        return Check("public URL", False, f"{target} answered, but not from {where}: check that publicUrl (or "
                                          "the tunnel / proxy) leads to serve.port")
    return Check("public URL", True, f"{target} reaches {where}")


def _get_health(session: requests.Session, url: str, token: str) -> str | None:
    """What went wrong fetching ``url?probe=token``, or None."""
    try:
        r = session.get(url, params={"probe": token}, allow_redirects=False)
    except requests.RequestException as exc:
        return f"unreachable ({_reason(exc)}): check publicUrl, DNS, the firewall and the tunnel or proxy"
    if r.status_code == 503:
        return "the daemon answers but is unhealthy (see voicecallctl status / daemon.status)"
    if r.status_code != 200:
        return f"answered HTTP {r.status_code}, not the daemon's health check: check the proxy's routes"
    return None


def tunnel(cfg: Config, status: dict[str, Any] | None) -> Check:
    from .config import tunnel_provider

    provider = tunnel_provider(cfg)
    if provider == "none":
        return Check("tunnel", True, "none configured")
    if status is not None:
        info = status.get("tunnel") or {}
        if info.get("state") == "running" and info.get("publicUrl"):
            return Check("tunnel", True, f"{provider} is running: {info['publicUrl']}")
        return Check("tunnel", False, f"{provider} is {info.get('state', 'not running')}: see the daemon's log "
                                      "(journalctl -u voicecalld)")
    program = "ngrok" if provider == "ngrok" else "tailscale"
    if shutil.which(program) is None:
        return Check("tunnel", False, f"tunnel.provider {provider} needs the {program} program, which is not on "
                                      "PATH: install it")
    return Check("tunnel", True, f"{program} is installed (the daemon starts the {provider} tunnel)")


# --- running it -----------------------------------------------------------------------------------


def run(config_path: str | None, socket_path: str | None, timeout: float | None = None) -> list[Check]:
    """Every check, in order; ``timeout`` bounds each request (default TIMEOUT)."""
    timeout = timeout or TIMEOUT
    try:
        cfg = cfgmod.load(config_path)
    except ConfigError as exc:
        where = exc.path or "configuration"
        return [Check("config", False, f"{where}: {problem}") for problem in exc.problems]
    checks = [Check("config", True, f"{cfg.path or 'defaults'}: valid (provider {cfg.provider})")]
    from . import paths

    socket_path = socket_path or paths.client_socket_path(cfg.control.socket)
    status: dict[str, Any] | None = None
    try:
        with Client(socket_path) as client:
            status = client.call("daemon.status")
        checks.append(Check("daemon", True, f"running (pid {status.get('pid')}, version {status.get('version')}) "
                                            f"at {socket_path}"))
        if status.get("provider") != cfg.provider:
            checks.append(Check("daemon", False, f"the running daemon uses provider {status.get('provider')}, the "
                                                 f"configuration {cfg.provider}: restart it to apply"))
    except (Unreachable, RpcError):
        checks.append(Check("daemon", True, f"not running (no answer at {socket_path}); checking without it"))
    with _Session(timeout) as session:
        if cfg.provider == "twilio":
            checks.append(twilio(cfg, session))
        elif cfg.provider == "telnyx":
            checks.append(telnyx(cfg, session))
        else:
            checks.append(Check("carrier", True, "mock: simulated calls need no credentials"))
        checks += openai(cfg, session)
        checks.append(public_url(cfg, status, socket_path, session))
    checks.append(tunnel(cfg, status))
    return checks


def lines(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.message}" for c in checks)


def run_cli(config_path: str | None, socket_path: str | None, timeout: float | None, human: bool) -> int:
    """``voicecallctl doctor``: lines on a terminal, else ``{"ok", "checks"}`` as JSON."""
    checks = run(config_path, socket_path, timeout)
    ok = all(c.ok for c in checks)
    if human:
        sys.stdout.write(lines(checks) + "\n")
    else:
        sys.stdout.write(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2) + "\n")
    sys.stdout.flush()
    return EX_OK if ok else EX_FAILED
