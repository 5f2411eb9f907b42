"""Where the control socket and the call log live.

The daemon and ``voicecallctl`` must resolve the socket the same way, and the
CLI imports this module on every run, so it uses the standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def socket_path(configured: str | None = None, *, explicit: str | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """``--socket``, else ``$VOICECALLD_SOCKET``, else ``control.socket``, else
    ``$RUNTIME_DIRECTORY/control.sock``, else
    ``$XDG_RUNTIME_DIR/voicecalld/control.sock``, else
    ``/tmp/voicecalld-<uid>/control.sock``."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("VOICECALLD_SOCKET"):
        return env["VOICECALLD_SOCKET"]
    if configured:
        return configured
    if env.get("RUNTIME_DIRECTORY"):
        # systemd may list several directories separated by colons.
        return os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], "control.sock")
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "voicecalld", "control.sock")
    return f"/tmp/voicecalld-{os.getuid()}/control.sock"


#: Where voicecalld.socket (the systemd unit) puts the control socket.
SYSTEM_SOCKET = "/run/voicecalld/control.sock"


def client_socket_path(configured: str | None = None, *, explicit: str | None = None,
                       env: Mapping[str, str] | None = None, system_socket: str = SYSTEM_SOCKET) -> str:
    """What a client (voicecallctl, the MCP server) connects to: as
    ``socket_path``, except that when nothing names a socket (no --socket,
    $VOICECALLD_SOCKET or control.socket) and the per-user default does not
    exist, the system service's socket is used if it exists. That is what
    an administrator running voicecallctl in a login shell means."""
    env = os.environ if env is None else env
    path = socket_path(configured, explicit=explicit, env=env)
    if explicit or env.get("VOICECALLD_SOCKET") or configured or env.get("RUNTIME_DIRECTORY"):
        return path
    if not os.path.exists(path) and os.path.exists(system_socket):
        return system_socket
    return path


def store_dir(configured: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """``store``, else ``$STATE_DIRECTORY``, else ``$XDG_STATE_HOME/voicecalld``
    (``~/.local/state/voicecalld``)."""
    env = os.environ if env is None else env
    if configured:
        return os.path.expanduser(configured)
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "voicecalld")
