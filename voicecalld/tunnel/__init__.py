"""Public URLs for the webhook: ngrok or Tailscale serve/funnel.

``publicUrl`` always wins. Otherwise ``tunnel.provider`` (or the legacy
``[tailscale] mode``) names a tunnel that the daemon starts *before* it
reports ``READY=1``, so a carrier is never handed a URL that does not work
yet, and stops on shutdown (voicecalld(8)). ``plan`` says which tunnel and
what it publishes, ``ngrok`` supervises the ngrok agent, ``tailscale``
drives the Tailscale CLI (``voicecallctl expose`` switches the mode of a
running daemon), and ``Tunnels`` below is what the daemon holds.

Every command runs with a timeout, and children get a scrubbed environment
(no systemd notify/watchdog variables, no carrier or OpenAI secrets).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..config import Config, tunnel_provider
from .ngrok import NgrokTunnel, parse_ngrok_line
from .plan import Plan, local_host, plan, published_paths, tailscale_plan
from .process import START_TIMEOUT, TunnelError, UrlCallback, child_env
from .tailscale import Tailscale, TailscaleTunnel

__all__ = ["NgrokTunnel", "Plan", "Tailscale", "TailscaleTunnel", "TunnelError", "Tunnels", "UrlCallback",
           "child_env", "local_host", "parse_ngrok_line", "plan", "published_paths"]

log = logging.getLogger(__name__)


class Tunnels:
    """The daemon's tunnel: started before READY=1, switched by
    ``daemon.expose``, stopped after the calls have drained. ``on_url`` is
    told every change of the public URL (None while there is none)."""

    def __init__(self, config: Config, port: int, on_url: UrlCallback,
                 ngrok: str = "ngrok", tailscale: str = "tailscale") -> None:
        self.config = config
        self.port = port
        self.on_url = on_url
        self.ngrok_executable = ngrok
        self.tailscale_executable = tailscale
        self.plan = plan(config, port)
        self._lock = threading.Lock()
        self.ngrok: NgrokTunnel | None = None
        self.tailscale: TailscaleTunnel | None = None

    def start(self, timeout: float = START_TIMEOUT) -> str | None:
        """Bring up the configured tunnel; returns its URL (None if there is none)."""
        p = self.plan
        if p is None:
            if tunnel_provider(self.config) != "none":
                log.info("publicUrl is set, so tunnel %s is not started", tunnel_provider(self.config))
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
                base = tailscale_plan(self.config, self.port)
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
