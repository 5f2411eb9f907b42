"""Tailscale serve and funnel through the ``tailscale`` CLI.

No process to supervise: ``tailscale status --json`` gives the node's DNS
name; ``tailscale serve|funnel --bg --https=443 --set-path=P
http://HOST:PORT/P`` adds one handler per path (the Tailscale >= 1.52 CLI,
https://tailscale.com/kb/1242/tailscale-serve), and ``... --set-path=P off``
removes exactly those handlers on shutdown.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from .. import jsonsafe
from .plan import Plan
from .process import COMMAND_TIMEOUT, START_TIMEOUT, TunnelError, child_env, find_executable

log = logging.getLogger("voicecalld.tunnel")  # one name for all of the tunnel's log lines


class Tailscale:
    """The ``tailscale`` CLI, one bounded call at a time."""

    def __init__(self, executable: str = "tailscale", timeout: float = COMMAND_TIMEOUT) -> None:
        self.executable = executable
        self.timeout = timeout

    def run(self, args: Sequence[str], timeout: float | None = None) -> str:
        path = find_executable(self.executable, "Tailscale (https://tailscale.com/download)")
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
