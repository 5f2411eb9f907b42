"""Run the real ``voicecalld`` as a subprocess for end-to-end tests.

The harness owns a notify socket (so it sees ``READY=1`` and friends exactly
as systemd would), writes a TOML config into a temp directory, and drives
the daemon only through ``voicecallctl`` and raw JSON-RPC on the socket.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from voicecalld.config import toml_value
from voicecalld.control.client import Client
from voicecalld.testing._wait import wait_until

FAST_MOCK: dict[str, Any] = {
    "toNumber": "+15550001111",
    "serve": {"port": 0},
    "mock": {"answerDelayMs": 50, "msPerChar": 1, "replyDelayMs": 10},
    "outbound": {"notifyHangupDelaySec": 0.05},
    "shutdownGraceSeconds": 0.2,
}


def to_toml(data: dict[str, Any]) -> str:
    top = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    sections = [f"\n[{k}]\n" + "\n".join(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())
                for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def ctl_command() -> list[str]:
    """The installed ``voicecallctl`` next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("voicecallctl")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "voicecalld.ctl"]


def daemon_command() -> list[str]:
    script = Path(sys.executable).with_name("voicecalld")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "voicecalld"]


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(path):
            os.unlink(path)  # left by an earlier daemon run in the same directory
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.extend(data.decode().split("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, line: str, timeout: float = 15.0, after: int = 0) -> int:
        """Index of the first message equal to ``line`` at or after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            for i in range(after, len(lines)):
                if lines[i] == line:
                    return i
            time.sleep(0.01)
        raise AssertionError(f"no {line!r} on the notify socket within {timeout} s; got {self.lines()}")

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


class LineReader:
    """Reads a child process's output on a thread, so that a test waits for
    the next line with a timeout instead of blocking on ``readline()``."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):
            pass  # the stream was closed under us
        finally:
            self._lines.put("")  # EOF, as readline() reports it

    def readline(self, timeout: float = 10.0) -> str:
        """The next line (with its newline), or "" at end of file."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None
        if line == "":
            self._lines.put("")  # stay at EOF for later calls
        return line


class Daemon:
    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
                 args: Sequence[str] = (), wait_ready: bool = True, pass_fds: Sequence[int] = (),
                 command: list[str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.store_dir = tmp / "state"
        self.config = merge({"store": str(self.store_dir), "control": {"socket": str(tmp / "run" / "control.sock")}},
                            merge(FAST_MOCK, config or {}))
        self.socket_path = self.config["control"]["socket"]
        self.config_path = tmp / "voicecalld.toml"
        self.write_config(self.config)
        self.notify = NotifySocket(str(tmp / "notify.sock"))
        self.log_path = tmp / "daemon.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TWILIO_", "TELNYX_", "OPENAI_", "NGROK_", "VOICECALLD_", "LISTEN_",
                                         "WATCHDOG_", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY"))}
        full_env.update({"NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self.env = full_env
        self._log = open(self.log_path, "wb")
        cmd = command or [*daemon_command(), "--config", str(self.config_path), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     pass_fds=tuple(pass_fds))
        if wait_ready:
            self.wait_ready()

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(to_toml(config))

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY=1" in self.notify.lines():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"voicecalld exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.01)
        raise AssertionError(f"voicecalld not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket_path, timeout=timeout)

    def rpc(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self.client(timeout) as c:
            return c.call(method, params)

    @property
    def webhook_port(self) -> int:
        return int(self.rpc("daemon.status")["webhook"]["port"])

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 30.0,
            socket_path: str | None = None) -> tuple[int, Any, str]:
        """Run voicecallctl; returns (exit status, parsed stdout or raw text, stderr)."""
        cmd = [*ctl_command(), "--socket", socket_path or self.socket_path, *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env)
        try:
            out: Any = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            out = proc.stdout
        return proc.returncode, out, proc.stderr

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what, interval=0.02, context=lambda: self.log()[-3000:])

    def wait_state(self, call_id: str, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait(lambda: (r := self.rpc("voicecall.status", {"callId": call_id}))["state"] in states
                         and r, timeout, f"{call_id} to reach {states}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"voicecalld did not stop within {timeout} s:\n{self.log()}") from None
        self.notify.close()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)  # SIGKILL cannot be ignored; the bound is for a stuck kernel
        self.notify.close()
        self._log.close()


def short_tmp(name: str) -> Path:
    """Unix socket paths are limited to 108 bytes; pytest's tmp_path can be
    longer, so daemons get a short directory of their own."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"vc-{name[:10]}-", dir="/tmp"))
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
