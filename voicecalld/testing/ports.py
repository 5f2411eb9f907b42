"""Picking a port for a test server or daemon."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago. The daemon's ``serve.port``
    must be known before it starts (carriers call it back, and signatures
    cover the URL), so tests pick one this way rather than binding port 0."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
