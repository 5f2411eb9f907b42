"""The ngrok agent as a supervised child process.

The agent runs as ``ngrok http HOST:PORT --log stdout --log-format json``;
its JSON log lines carry the public URL in the ``started tunnel`` message
(https://ngrok.com/docs/agent/cli/). A supervisor thread restarts the agent
with backoff if it exits, and reports a changed URL (a free-tier agent gets
a new random one each time). The authtoken goes to the agent through
``NGROK_AUTHTOKEN`` in its environment, never on its command line, where
every local user could read it in ``ps``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from .. import jsonsafe
from ..publicurl import domain_host
from .plan import Plan
from .process import (
    BACKOFF_MAX,
    STABLE_AFTER,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TunnelError,
    UrlCallback,
    child_env,
    find_executable,
)

log = logging.getLogger("voicecalld.tunnel")  # one name for all of the tunnel's log lines


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
        self._domain = domain_host(plan.ngrok_domain) if plan.ngrok_domain else None

    def command(self, path: str) -> list[str]:
        cmd = [path, "http", f"{self.plan.host}:{self.plan.port}", "--log", "stdout", "--log-format", "json"]
        if self._domain:
            cmd += ["--url", f"https://{self._domain}"]
        return cmd

    def start(self, timeout: float = START_TIMEOUT) -> str:
        path = find_executable(self.executable, "the ngrok agent (https://ngrok.com/download)")
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
