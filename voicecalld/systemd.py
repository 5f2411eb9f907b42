"""The small part of the systemd protocols the daemon speaks, from the
standard library: sd_notify, socket activation, the watchdog interval and
journald detection. Each is a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends ``KEY=value`` datagrams to ``$NOTIFY_SOCKET`` (a path, or an
    abstract socket written ``@name``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or ""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
            return True
        except OSError as exc:
            # systemd went away or the socket is gone: nothing to tell.
            log.debug("sd_notify failed: %s", exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or
    None when no watchdog is asked for (or it is meant for another process)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[int]:
    """File descriptors passed by socket activation, for this process only.
    The variables are removed so that child processes do not inherit them."""
    env = os.environ if env is None else env
    try:
        pid, count = int(env.get("LISTEN_PID", "")), int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != os.getpid() or count < 1:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def under_journald(stream_fd: int = 2, env: Mapping[str, str] | None = None) -> bool:
    """True if ``stream_fd`` is the journal stream systemd connected (the
    device:inode pair in ``$JOURNAL_STREAM`` matches), so log lines should
    carry ``<N>`` priority prefixes."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
