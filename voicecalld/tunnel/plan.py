"""Which tunnel the configuration asks for, and what it publishes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config, tunnel_provider
from ..publicurl import covers


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


def local_host(bind: str) -> str:
    """Where a tunnel on this machine reaches the webhook server."""
    if bind in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if bind in ("::", "[::]"):
        return "[::1]"
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def published_paths(config: Config) -> tuple[str, ...]:
    """URL paths Tailscale publishes: ``tailscale.path`` when set (a parent of
    serve.path, so one handler can cover the webhook and the media stream),
    else serve.path, plus the media-stream path when streaming is on."""
    paths = [config.tailscale.path or config.serve.path]
    stream_path = config.streaming.streamPath
    if config.streaming.enabled and not covers(paths[0], stream_path):
        paths.append(stream_path)
    return tuple(paths)


def plan(config: Config, port: int) -> Plan | None:
    """The tunnel to start, or None (no tunnel asked for, or publicUrl set)."""
    provider = tunnel_provider(config)
    if provider == "none" or config.publicUrl:
        return None
    return Plan(provider=provider, host=local_host(config.serve.bind), port=port, paths=published_paths(config),
                ngrok_authtoken=config.tunnel.ngrokAuthToken, ngrok_domain=config.tunnel.ngrokDomain,
                allow_free_tier=config.tunnel.allowNgrokFreeTier)


def tailscale_plan(config: Config, port: int) -> Plan:
    """What ``daemon.expose`` publishes with Tailscale, whatever the
    configuration says about publicUrl and tunnels."""
    found = plan(dataclasses.replace(config, publicUrl=None), port)
    return found or Plan("tailscale-serve", local_host(config.serve.bind), port, published_paths(config))
