"""What the tunnels share: their error, their time limits, and how a child
process is found and started without the daemon's secrets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping

START_TIMEOUT = 30.0     # seconds a tunnel may take to come up before READY=1
COMMAND_TIMEOUT = 15.0   # one tailscale CLI call
STOP_TIMEOUT = 5.0       # a child's grace after SIGTERM
BACKOFF_MAX = 60.0       # longest wait between ngrok restarts
STABLE_AFTER = 60.0      # an agent that ran this long resets the backoff

#: Environment variables a tunnel child must not inherit: systemd's, and
#: every secret the daemon may have been given.
_SCRUBBED_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "CREDENTIALS_DIRECTORY", "TWILIO_", "TELNYX_",
                      "OPENAI_", "NGROK_", "VOICECALLD_")

#: Told every change of the public URL (None while there is none).
UrlCallback = Callable[[str | None], None]


class TunnelError(Exception):
    """A tunnel cannot be set up; the message says why and what to do."""


def child_env(extra: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    out = {k: v for k, v in env.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    out.update(extra or {})
    return out


def find_executable(executable: str, what: str) -> str:
    path = shutil.which(executable)
    if path is None:
        raise TunnelError(f"the {executable} command was not found on PATH ({os.environ.get('PATH', '')}); "
                          f"install {what}, or set publicUrl instead of a tunnel")
    return path
