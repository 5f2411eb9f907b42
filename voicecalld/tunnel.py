"""Public URLs for the webhook: ngrok or Tailscale serve/funnel.

``publicUrl`` always wins. Otherwise ``tunnel.provider`` (or the legacy
``[tailscale] mode``) names a tunnel that the daemon starts *before* it
reports ``READY=1``, so a carrier is never handed a URL that does not work
yet, and stops on shutdown.

* ngrok: the agent runs as a child process (``ngrok http HOST:PORT --log
  stdout --log-format json``); its JSON log lines carry the public URL in the
  ``started tunnel`` message. A supervisor thread restarts the agent with
  backoff if it exits, and reports a changed URL (a free-tier agent gets a
  new random one each time). The authtoken goes to the agent through
  ``NGROK_AUTHTOKEN`` in its environment, never on its command line, where
  every local user could read it in ``ps``.
* Tailscale: no process to supervise. ``tailscale status --json`` gives the
  node's DNS name; ``tailscale serve|funnel --bg --https=443 --set-path=P
  http://HOST:PORT/P`` adds one handler per path (the Tailscale >= 1.52
  CLI), and ``... --set-path=P off`` removes exactly those handlers on
  shutdown. ``voicecallctl expose`` switches the mode of a running daemon.

Every command runs with a timeout, and children get a scrubbed environment
(no systemd notify/watchdog variables, no carrier or OpenAI secrets).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import jsonsafe

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0     # seconds a tunnel may take to come up before READY=1
COMMAND_TIMEOUT = 15.0   # one tailscale CLI call
STOP_TIMEOUT = 5.0       # a child's grace after SIGTERM
BACKOFF_MAX = 60.0       # longest wait between ngrok restarts
STABLE_AFTER = 60.0      # an agent that ran this long resets the backoff

#: Environment variables a tunnel child must not inherit: systemd's, and
#: every secret the daemon may have been given.
_SCRUBBED_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "CREDENTIALS_DIRECTORY", "TWILIO_", "TELNYX_",
                      "OPENAI_", "NGROK_", "VOICECALLD_")

UrlCallback = Callable[[str | None], None]


class TunnelError(Exception):
    """A tunnel cannot be set up; the message says why and what to do."""


# --- which tunnel --------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the configuration asks for: ``provider`` is ngrok,
    tailscale-serve or tailscale-funnel; ``paths`` are the URL paths to
    publish (Tailscale only)."""

    provider: str
    host: str
    port: int
    paths: tuple[str, ...]
    ngrok_authtoken: str | None = None
    ngrok_domain: str | None = None
    allow_free_tier: bool = True

    @property
    def tailscale_mode(self) -> str | None:
        return self.provider.removeprefix("tailscale-") if self.provider.startswith("tailscale-") else None


def requested_provider(values: Mapping[str, Any]) -> str:
    """``tunnel.provider``, else the legacy ``tailscale.mode`` (``none`` if neither)."""
    provider = values["tunnel.provider"]
    if provider == "none" and values["tailscale.mode"] != "off":
        provider = f"tailscale-{values['tailscale.mode']}"
    return str(provider)


def local_host(bind: str) -> str:
    """Where a tunnel on this machine reaches the webhook server."""
    if bind in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if bind in ("::", "[::]"):
        return "[::1]"
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def published_paths(values: Mapping[str, Any]) -> tuple[str, ...]:
    """URL paths Tailscale publishes: ``tailscale.path`` when set (a parent of
    serve.path, so one handler can cover the webhook and the media stream),
    else serve.path, plus the media-stream path when streaming is on."""
    legacy = values.get("tailscale.path")
    if legacy:
        paths = [legacy]
    else:
        paths = [values["serve.path"]]
    if values.get("streaming.enabled") and not _covers(paths[0], values["streaming.streamPath"]):
        paths.append(values["streaming.streamPath"])
    return tuple(paths)


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def check_config(values: Mapping[str, Any]) -> list[str]:
    """Cross-key problems of the tunnel settings (config._cross_checks)."""
    problems = []
    provider, legacy = values["tunnel.provider"], values["tailscale.mode"]
    if provider != "none" and legacy != "off" and provider != f"tailscale-{legacy}":
        problems.append(f"tailscale.mode: the legacy [tailscale] mode = {json.dumps(legacy)} contradicts "
                        f"tunnel.provider = {json.dumps(provider)}; set only tunnel.provider")
    if requested_provider(values) == "ngrok" and not values["tunnel.allowNgrokFreeTier"] \
            and not values["tunnel.ngrokDomain"]:
        problems.append("tunnel.ngrokDomain: tunnel.allowNgrokFreeTier = false needs a reserved ngrok domain "
                        "(a random free-tier URL changes on every restart)")
    domain = values["tunnel.ngrokDomain"]
    if domain and not _domain_host(domain):
        problems.append(f"tunnel.ngrokDomain: expected a host name like voice.example.ngrok.app, got "
                        f"{json.dumps(domain)}")
    path = values["tailscale.path"]
    if path and not _covers(path, values["serve.path"]):
        problems.append(f"tailscale.path: must be serve.path ({values['serve.path']}) or a parent path of it, "
                        f"got {path}")
    return problems


def plan(values: Mapping[str, Any], port: int) -> Plan | None:
    """The tunnel to start, or None (no tunnel asked for, or publicUrl set)."""
    provider = requested_provider(values)
    if provider == "none" or values["publicUrl"]:
        return None
    return Plan(provider=provider, host=local_host(values["serve.bind"]), port=port,
                paths=published_paths(values), ngrok_authtoken=values["tunnel.ngrokAuthToken"],
                ngrok_domain=values["tunnel.ngrokDomain"], allow_free_tier=values["tunnel.allowNgrokFreeTier"])


def child_env(extra: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    out = {k: v for k, v in env.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    out.update(extra or {})
    return out


def _find(executable: str, what: str) -> str:
    path = shutil.which(executable)
    if path is None:
        raise TunnelError(f"the {executable} command was not found on PATH ({os.environ.get('PATH', '')}); "
                          f"install {what}, or set publicUrl instead of a tunnel")
    return path


def _domain_host(domain: str) -> str | None:
    text = domain if "://" in domain else f"https://{domain}"
    parts = urlsplit(text)
    host = parts.hostname
    if not host or parts.path not in ("", "/") or parts.query or "." not in host:
        return None
    return host


# --- ngrok ---------------------------------------------------------------------------------


def parse_ngrok_line(line: str) -> dict[str, Any] | None:
    """One line of ``--log-format json`` output as a dict, or None for other
    text (the agent prints its final error to stderr as plain text)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = jsonsafe.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _ngrok_error(record: dict[str, Any]) -> str | None:
    if record.get("lvl") in ("eror", "crit", "error") and record.get("err") not in (None, "<nil>", ""):
        # ngrok puts "\r\n\r\nERR_NGROK_nnnn\r\n" at the end; keep it readable on one line.
        text = " ".join(str(record["err"]).split())
        return f"{record.get('msg', 'error')}: {text}"
    return None


class NgrokTunnel:
    name = "ngrok"

    def __init__(self, plan: Plan, on_url: UrlCallback, executable: str = "ngrok") -> None:
        self.plan = plan
        self.on_url = on_url
        self.executable = executable
        self.public_url: str | None = None
        self.restarts = 0
        self.state = "stopped"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._first = threading.Event()
        self._first_error: str | None = None
        self._domain = _domain_host(plan.ngrok_domain) if plan.ngrok_domain else None

    def command(self, path: str) -> list[str]:
        cmd = [path, "http", f"{self.plan.host}:{self.plan.port}", "--log", "stdout", "--log-format", "json"]
        if self._domain:
            cmd += ["--url", f"https://{self._domain}"]
        return cmd

    def start(self, timeout: float = START_TIMEOUT) -> str:
        path = _find(self.executable, "the ngrok agent (https://ngrok.com/download)")
        self._thread = threading.Thread(target=self._supervise, args=(path,), name="tunnel-ngrok", daemon=True)
        self.state = "starting"
        self._thread.start()
        if not self._first.wait(timeout):
            self.stop()
            raise TunnelError(f"ngrok reported no public URL within {timeout:g} s")
        if self.public_url is None:
            self.stop()
            raise TunnelError(self._first_error or "ngrok exited before reporting a public URL")
        return self.public_url

    def _accept(self, url: str) -> str | None:
        """Why ``url`` is unacceptable, or None."""
        host = urlsplit(url).hostname or ""
        if self._domain and host != self._domain:
            return f"ngrok gave {url}, not the reserved domain {self._domain}"
        if not self.plan.allow_free_tier and not self._domain:
            return f"ngrok gave the random URL {url} and tunnel.allowNgrokFreeTier is false"
        return None

    def _supervise(self, path: str) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            url, error, code = self._run_once(path)
            if self._stop.is_set():
                break
            if not self._first.is_set():
                # Failing before the first URL is a start-up error, not something to retry.
                self._first_error = error or f"ngrok exited with status {code} before reporting a public URL"
                self._first.set()
                break
            if time.monotonic() - started > STABLE_AFTER:
                backoff = 1.0
            self.restarts += 1
            self.state = "restarting"
            self._set_url(None)
            log.warning("ngrok exited with status %s (%s); restarting it in %g s", code, error or "no error logged",
                        backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(BACKOFF_MAX, backoff * 2)
        self.state = "stopped"

    def _run_once(self, path: str) -> tuple[str | None, str | None, int | None]:
        extra = {"NGROK_AUTHTOKEN": self.plan.ngrok_authtoken} if self.plan.ngrok_authtoken else {}
        if not os.environ.get("HOME"):
            # A DynamicUser= service has no $HOME, and the agent looks for its
            # (optional) config file under it: give it the state directory.
            extra["HOME"] = (os.environ.get("STATE_DIRECTORY") or os.environ.get("RUNTIME_DIRECTORY")
                             or "/").split(":")[0]
        try:
            proc = subprocess.Popen(self.command(path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", env=child_env(extra),
                                    start_new_session=True)
        except OSError as exc:
            return None, f"cannot run {path}: {exc.strerror}", None
        with self._lock:
            self._proc = proc
        if self._stop.is_set():  # stop() raced with the spawn
            self._terminate(proc)
        url: str | None = None
        error: str | None = None
        text_tail: deque[str] = deque(maxlen=8)
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the agent exits (or stop() ends it)
            record = parse_ngrok_line(line)
            if record is None:
                if line.strip():
                    text_tail.append(line.strip())
                continue
            problem = _ngrok_error(record)
            if problem:
                error = problem
            if record.get("msg") == "started tunnel" and isinstance(record.get("url"), str) and url is None:
                candidate = record["url"]
                if not candidate.startswith("https://"):
                    continue  # old agents also announce an http:// twin; webhooks want https
                refusal = self._accept(candidate)
                if refusal:
                    error = refusal
                    self._terminate(proc)
                    continue
                url = candidate
                self.state = "running"
                self._set_url(url)
                self._first.set()
        code = proc.wait()
        if error is None and text_tail:
            error = " ".join(" ".join(text_tail).split())
        token = self.plan.ngrok_authtoken
        if error and token:
            error = error.replace(token, "<redacted>")  # ngrok echoes a malformed token back
        return url, error, code

    def _set_url(self, url: str | None) -> None:
        if url == self.public_url:
            return
        old, self.public_url = self.public_url, url
        if url is not None:
            if old is None:
                log.info("ngrok tunnel up: %s", url)
            else:
                log.warning("ngrok tunnel URL changed from %s to %s", old, url)
        self.on_url(url)

    def _terminate(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._terminate(proc)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT + 1)
        self.state = "stopped"

    def describe(self) -> dict[str, Any]:
        return {"provider": "ngrok", "state": self.state, "publicUrl": self.public_url, "restarts": self.restarts}


# --- Tailscale -----------------------------------------------------------------------------


class Tailscale:
    """The ``tailscale`` CLI, one bounded call at a time."""

    def __init__(self, executable: str = "tailscale", timeout: float = COMMAND_TIMEOUT) -> None:
        self.executable = executable
        self.timeout = timeout

    def run(self, args: Sequence[str], timeout: float | None = None) -> str:
        path = _find(self.executable, "Tailscale (https://tailscale.com/download)")
        limit = self.timeout if timeout is None else timeout
        try:
            proc = subprocess.run([path, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=limit, env=child_env())
        except subprocess.TimeoutExpired:
            raise TunnelError(f"tailscale {' '.join(args)} did not finish within {limit:g} s (is HTTPS enabled "
                              "for the tailnet? run the command by hand to see what it waits for)") from None
        except OSError as exc:
            raise TunnelError(f"cannot run {path}: {exc.strerror}") from None
        if proc.returncode != 0:
            detail = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
            raise TunnelError(f"tailscale {' '.join(args)} failed: {detail}")
        return proc.stdout

    def dns_name(self) -> str:
        """The node's MagicDNS name, after checking that it is logged in."""
        out = self.run(["status", "--json"])
        try:
            status = jsonsafe.loads(out)
        except ValueError:
            raise TunnelError("tailscale status --json printed something that is not JSON") from None
        state = status.get("BackendState")
        if state != "Running":
            hint = {"NeedsLogin": "it is logged out; run tailscale up (or tailscale login)",
                    "NeedsMachineAuth": "a tailnet admin has not yet approved this machine",
                    "Stopped": "it is stopped; run tailscale up"}.get(str(state), "run tailscale up")
            raise TunnelError(f"Tailscale is not running (state {state}): {hint}")
        name = str((status.get("Self") or {}).get("DNSName") or "").rstrip(".")
        if not name:
            raise TunnelError("Tailscale reports no DNS name for this node; enable MagicDNS for the tailnet")
        return name


class TailscaleTunnel:
    name = "tailscale"

    def __init__(self, plan: Plan, cli: Tailscale | None = None) -> None:
        self.plan = plan
        self.cli = cli or Tailscale()
        self.mode: str | None = None  # serve or funnel while configured
        self.public_url: str | None = None
        self.state = "stopped"
        self._added: list[str] = []

    def target(self, path: str) -> str:
        # Tailscale strips the mount point before proxying, so the target
        # carries the path again: /voice/webhook -> http://host:port/voice/webhook.
        return f"http://{self.plan.host}:{self.plan.port}{path}"

    def start(self, mode: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        name = self.cli.dns_name()
        for path in self.plan.paths:
            remaining = max(1.0, min(self.cli.timeout, deadline - time.monotonic()))
            self.cli.run([mode, "--bg", "--https=443", f"--set-path={path}", self.target(path)], remaining)
            if path not in self._added:
                self._added.append(path)
        self.mode, self.state = mode, "running"
        self.public_url = f"https://{name}"
        log.info("tailscale %s: %s%s -> %s", mode, self.public_url, ", ".join(self.plan.paths),
                 self.target(self.plan.paths[0]))
        if mode == "serve":
            log.warning("tailscale serve publishes the webhook inside the tailnet only; carriers on the internet "
                        "cannot reach it (use tailscale-funnel for them)")
        return self.public_url

    def stop(self) -> None:
        """Remove the handlers this daemon added (and nothing else)."""
        mode = self.mode or "serve"
        for path in list(self._added):
            try:
                self.cli.run([mode, "--https=443", f"--set-path={path}", "off"])
                self._added.remove(path)
            except TunnelError as exc:
                log.error("could not remove the Tailscale %s handler for %s: %s", mode, path, exc)
        if not self._added:
            self.mode, self.public_url, self.state = None, None, "stopped"

    def describe(self) -> dict[str, Any]:
        return {"provider": f"tailscale-{self.mode}" if self.mode else "tailscale", "state": self.state,
                "publicUrl": self.public_url, "paths": list(self.plan.paths)}


# --- what the daemon holds ------------------------------------------------------------------


class Tunnels:
    """The daemon's tunnel: started before READY=1, switched by
    ``daemon.expose``, stopped after the calls have drained. ``on_url`` is
    told every change of the public URL (None while there is none)."""

    def __init__(self, values: Mapping[str, Any], port: int, on_url: UrlCallback,
                 ngrok: str = "ngrok", tailscale: str = "tailscale") -> None:
        self.values = values
        self.port = port
        self.on_url = on_url
        self.ngrok_executable = ngrok
        self.tailscale_executable = tailscale
        self.plan = plan(values, port)
        self._lock = threading.Lock()
        self.ngrok: NgrokTunnel | None = None
        self.tailscale: TailscaleTunnel | None = None

    def start(self, timeout: float = START_TIMEOUT) -> str | None:
        """Bring up the configured tunnel; returns its URL (None if there is none)."""
        p = self.plan
        if p is None:
            if requested_provider(self.values) != "none":
                log.info("publicUrl is set, so tunnel %s is not started", requested_provider(self.values))
            return None
        with self._lock:
            if p.provider == "ngrok":
                self.ngrok = NgrokTunnel(p, self.on_url, self.ngrok_executable)
                return self.ngrok.start(timeout)
            self.tailscale = TailscaleTunnel(p, Tailscale(self.tailscale_executable))
            try:
                url = self.tailscale.start(p.tailscale_mode or "funnel", timeout)
            except TunnelError:
                self.tailscale.stop()  # leave no half-added handlers behind
                raise
            self.on_url(url)
            return url

    def expose(self, mode: str) -> dict[str, Any]:
        """Switch Tailscale to ``serve``, ``funnel`` or ``off`` at run time."""
        if mode not in ("serve", "funnel", "off"):
            raise TunnelError(f"mode must be funnel, serve or off, got {mode!r}")
        with self._lock:
            if self.ngrok is not None:
                raise TunnelError("the tunnel is ngrok (tunnel.provider); expose only configures Tailscale")
            if self.tailscale is None:
                values = dict(self.values)
                values["publicUrl"] = None
                base = plan(values, self.port) or Plan("tailscale-serve", local_host(values["serve.bind"]),
                                                       self.port, published_paths(values))
                self.tailscale = TailscaleTunnel(base, Tailscale(self.tailscale_executable))
            ts = self.tailscale
            if mode == "off":
                ts.stop()
                if ts.mode is not None:
                    raise TunnelError("Tailscale handlers could not all be removed; see the daemon log")
                self.on_url(None)
                return {"mode": "off", "publicUrl": None}
            if ts.mode is not None and ts.mode != mode:
                # A handler switched from funnel to serve loses the funnel flag by itself,
                # but removing first keeps the two modes' bookkeeping simple and exact.
                ts.stop()
            url = ts.start(mode)
            self.on_url(url)
            return {"mode": mode, "publicUrl": url}

    def stop(self) -> None:
        with self._lock:
            if self.ngrok is not None:
                self.ngrok.stop()
            if self.tailscale is not None and self.tailscale.mode is not None:
                self.tailscale.stop()

    def describe(self) -> dict[str, Any] | None:
        if self.ngrok is not None:
            return self.ngrok.describe()
        if self.tailscale is not None and self.tailscale.mode is not None:
            return self.tailscale.describe()
        return None
