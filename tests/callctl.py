"""Helpers shared by the call-control tests (DTMF, transfer, recording)."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from daemon import Daemon

from voicecalld.testing._wait import wait_until

ALLOWED = "+15550003333"  # in transfer.allowTo
BUSY = "+15550004444"     # in transfer.allowTo; the fakes make it busy
OTHER = "+15550005555"    # not in transfer.allowTo


class Events:
    """events.subscribe on a connection of its own, collected on a thread."""

    def __init__(self, d: Daemon, call_id: str | None = None) -> None:
        self.items: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(10)
        self._sock.connect(d.socket_path)
        params = {"callId": call_id} if call_id else {}
        self._sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                       "params": params}).encode() + b"\n")
        self._file = self._sock.makefile("rb")
        assert json.loads(self._file.readline())["result"] == {"subscribed": True}
        self._sock.settimeout(None)  # the reader thread blocks until close() shuts the socket down
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._file:
                message = json.loads(line)
                if message.get("method") == "event":
                    self.items.append(message["params"])
        except (OSError, ValueError):
            return  # closed

    def named(self, name: str, call_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.items) if e["event"] == name and call_id in (None, e["callId"])]

    def of(self, call_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(event, data) of every event about ``call_id``, in order."""
        return [(e["event"], e["data"]) for e in list(self.items) if e["callId"] == call_id]

    def wait(self, name: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_until(lambda: len(self.named(name)) >= count and self.named(name), timeout,
                          f"{count} {name} event(s); got {[e['event'] for e in self.items]}")

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        self._thread.join(5)
        self._file.close()
        self._sock.close()
