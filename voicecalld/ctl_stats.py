"""``voicecallctl stats``: call figures from the call log (voicecallctl(1)).

Which log: ``--store`` (the store directory, or the log file itself), else
the ``store`` of the configuration file, else the one the running daemon
reports (``daemon.status``), else the default store directory. The file is
read directly, so this works with the daemon stopped. A log the user may
not read (it is the daemon's, mode 0600) is read through the daemon
instead, when it runs: its last 10000 calls (``voicecall.history``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import paths, stats
from .control.client import Client, Unreachable
from .store import LOG_NAME

HISTORY_LIMIT = 10_000


class StatsError(Exception):
    """The log cannot be read; the message says what to do."""


def log_file(store: str) -> str:
    store = os.path.expanduser(store)
    return store if os.path.isfile(store) or store.endswith(".jsonl") else os.path.join(store, LOG_NAME)


def _daemon_store(socket_path: str, timeout: float) -> str | None:
    try:
        with Client(socket_path, timeout=timeout) as client:
            path = (client.call("daemon.status").get("store") or {}).get("path")
    except Unreachable:
        return None
    return path if isinstance(path, str) else None


def _through_daemon(socket_path: str, timeout: float) -> list[dict[str, Any]] | None:
    try:
        with Client(socket_path, timeout=timeout) as client:
            calls = client.call("voicecall.history", {"limit": HISTORY_LIMIT})["calls"]
    except Unreachable:
        return None
    return [c for c in calls if isinstance(c, dict)]


def records(store: str | None, configured: str | None, socket_path: str, timeout: float) -> list[dict[str, Any]]:
    """The last snapshot of every call in the log; raises StatsError."""
    explicit = store or configured
    path = log_file(explicit) if explicit else None
    if path is None:
        reported = _daemon_store(socket_path, timeout)
        path = reported or os.path.join(paths.store_dir(), LOG_NAME)
    try:
        return list(stats.read_log(path).values())
    except FileNotFoundError:
        raise StatsError(f"no call log at {path} (pass --store DIR, or --config with the daemon's store)") \
            from None
    except PermissionError:
        fallback = _through_daemon(socket_path, timeout)
        if fallback is None:
            raise StatsError(f"cannot read {path}: permission denied (run as the daemon's user, or with the "
                             "daemon running, which reads it for you)") from None
        return fallback
    except OSError as exc:
        raise StatsError(f"cannot read {path}: {exc.strerror or exc}") from None


def figures(since: str | None, store: str | None, configured: str | None, socket_path: str,
            timeout: float) -> dict[str, Any]:
    """The figures of ``voicecallctl stats``; ValueError for a bad ``since``."""
    since_ms = None
    if since:
        since_ms = int((time.time() - stats.parse_duration(since)) * 1000)
    out = stats.summarize(records(store, configured, socket_path, timeout), since_ms)
    return {"since": since_ms, **out}
