"""voicecallctl's output for people (on a terminal, checked through a real
pseudo-terminal), JSON when piped or with --json, the live view of one
call (call --follow, watch) with its exit status, and stats over a log."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, ctl_command, to_toml

from voicecalld import ctl_format, stats


class Tty:
    """voicecallctl with its stdout on a pseudo-terminal (stdin and stderr are not)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([*ctl_command(), *args], stdout=slave, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env)
        os.close(slave)
        self._master = master
        self.output = ""

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at end of output."""
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return bool(data)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output, re.M)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s on the terminal:\n{self.output}")
            if not self._read(0.1) and not re.search(pattern, self.output, re.M):
                raise AssertionError(f"output ended without {pattern!r}:\n{self.output}")

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self._read(0.1):
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"voicecallctl did not finish within {timeout} s:\n{self.output}")
        code = self.proc.wait(timeout)
        os.close(self._master)
        return code, self.output


def tty(d: Daemon, *args: str) -> tuple[int, str]:
    return Tty("--socket", d.socket_path, *args, env=d.env).finish()


def ended(d: Daemon, call_id: str) -> dict[str, Any]:
    return d.wait_state(call_id, "completed", "hangup-user", "hangup-bot", "no-answer", "failed", "error")


@pytest.fixture
def talked(start_daemon) -> tuple[Daemon, str, str]:
    """A daemon with one completed notify call and one live conversation with two replies."""
    d = start_daemon({"mock": {"calleeReplies": ["yes", "fine thanks"]}, "maxConcurrentCalls": 3,
                      "responder": "off"})
    notify = d.rpc("voicecall.initiate", {"message": "Your parcel is here."})["callId"]
    ended(d, notify)
    chat = d.rpc("voicecall.initiate", {"message": "Hello.", "mode": "conversation"})["callId"]
    d.wait_state(chat, "listening")
    d.rpc("voicecall.continue", {"callId": chat, "message": "Can you hear me?"}, timeout=20)
    d.rpc("voicecall.continue", {"callId": chat, "message": "How are you?"}, timeout=20)
    return d, notify, chat


# --- on a terminal --------------------------------------------------------------------------


def test_list_status_and_tail_print_lines_for_people_on_a_terminal(talked) -> None:
    d, notify, chat = talked
    code, out = tty(d, "list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["STARTED", "CALL", "DIR", "NUMBER", "STATE", "MODE", "DURATION"]
    assert row.split()[1:6] == [chat[:8], "out", "+*******1111", "listening", "conversation"]
    assert "+15550001111" not in out  # numbers are masked for people, as in the logs

    code, out = tty(d, "status", "--call-id", chat)
    assert code == 0
    assert f"call      {chat}" in out
    assert "outbound conversation call with +*******1111 (mock)" in out
    assert re.search(r"^\d\d:\d\d:\d\d  bot:    Can you hear me\?$", out, re.M)
    assert re.search(r"^\d\d:\d\d:\d\d  caller: yes$", out, re.M)
    assert re.search(r"^turns     1, latency \d+ ms median, \d+ ms max$", out, re.M)

    code, out = tty(d, "tail", "-n", "5")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[1] for line in lines] == [notify[:8], chat[:8]]
    assert re.fullmatch(rf"\d\d:\d\d:\d\d  {notify[:8]}  out  \+\*{{7}}1111 +completed +\d:\d\d  "
                        r"'Your parcel is here\.'", lines[0])


def test_json_flag_keeps_json_on_a_terminal(talked) -> None:
    d, notify, chat = talked
    for args in (["--json", "list"], ["list", "--json"]):
        code, out = tty(d, *args)
        assert code == 0 and json.loads(out)["calls"][0]["callId"] == chat
    code, out = tty(d, "status", "--call-id", notify, "--json")
    assert json.loads(out) == d.rpc("voicecall.status", {"callId": notify})
    code, out = tty(d, "--json", "tail", "-n", "1")
    assert json.loads(out)["callId"] == chat


def test_piped_output_is_the_json_it_always_was(talked) -> None:
    d, notify, chat = talked
    code, out, _ = d.ctl("list")
    assert code == 0 and out == d.rpc("voicecall.list")
    code, out, _ = d.ctl("status", "--call-id", notify)
    assert out == d.rpc("voicecall.status", {"callId": notify})
    proc = subprocess.run([*ctl_command(), "--socket", d.socket_path, "tail", "-n", "2"], capture_output=True,
                          text=True, timeout=30, env=d.env)
    assert [json.loads(line)["callId"] for line in proc.stdout.splitlines()] == [notify, chat]


def test_tail_follow_shows_state_changes_and_who_said_what(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["sure"]}, "responder": "off"})
    first = d.rpc("voicecall.initiate", {"message": "Earlier call."})["callId"]
    ended(d, first)
    view = Tty("--socket", d.socket_path, "tail", "-n", "1", "-f", env=d.env)
    try:
        # tail subscribes before it reads the history: once the history line is
        # on the terminal, every later event will be too.
        view.expect(rf"^\d\d:\d\d:\d\d  {first[:8]}  out .* completed")
        call_id = d.rpc("voicecall.initiate", {"message": "Hi there.", "mode": "conversation"})["callId"]
        short = call_id[:8]
        view.expect(rf"^\d\d:\d\d:\d\d  {short}  out  \+\*{{7}}1111 +ringing -> answered$")
        view.expect(rf"^\d\d:\d\d:\d\d  {short}  .*bot:    Hi there\.$")
        d.wait_state(call_id, "listening")
        d.rpc("voicecall.continue", {"callId": call_id, "message": "Shall we?"}, timeout=20)
        view.expect(rf"^\d\d:\d\d:\d\d  {short}  .*caller: sure$")
        d.rpc("voicecall.end", {"callId": call_id})
        view.expect(rf"^\d\d:\d\d:\d\d  {short}  .*ended:  hangup-bot after \d+:\d\d$")
    finally:
        view.proc.terminate()
        view.finish()


# --- one call, live, with its exit status ------------------------------------------------------


def follow_json(d: Daemon, *args: str) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([*ctl_command(), "--socket", d.socket_path, *args], capture_output=True, text=True,
                          timeout=60, env=d.env)
    assert proc.stderr == "", proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_call_follow_exits_0_when_the_call_ends_well(start_daemon) -> None:
    d = start_daemon()
    code, lines = follow_json(d, "call", "--message", "Your parcel is here.", "--follow")
    assert code == 0
    call_id = lines[0]["callId"]
    assert lines[0]["state"] == "initiated"
    events = lines[1:]
    assert all(e["callId"] == call_id for e in events)
    assert [e["data"]["to"] for e in events if e["event"] == "call.state"] == \
        ["ringing", "answered", "speaking", "completed"]
    assert events[-1]["event"] == "call.ended" and events[-1]["data"]["reason"] == "completed"


def test_call_follow_exits_1_when_nobody_answers(start_daemon) -> None:
    d = start_daemon({"ringTimeoutMs": 300, "mock": {"answerDelayMs": 60_000}})
    code, lines = follow_json(d, "call", "--message", "Anyone?", "--follow")
    assert code == 1
    assert lines[-1]["event"] == "call.ended" and lines[-1]["data"]["reason"] == "no-answer"


def test_call_follow_on_a_terminal(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["hello"]}, "responder": "off"})
    view = Tty("--socket", d.socket_path, "call", "--to", "+15550002222", "--message", "Hi.", "--mode",
               "conversation", "--follow", env=d.env)
    match = view.expect(r"^\d\d:\d\d:\d\d  ([0-9a-f]{8})  placed call ([0-9a-f-]{36}) to \+\*{7}2222$")
    call_id = match.group(2)
    assert call_id.startswith(match.group(1))
    view.expect(r"ringing -> answered$")
    d.wait_state(call_id, "listening")
    d.rpc("mock.hangup", {"callId": call_id})
    code, out = view.finish()
    assert code == 0, out
    assert re.search(r"listening -> hangup-user$", out, re.M)
    assert re.search(r"ended:  hangup-user after \d+:\d\d$", out, re.M)


def test_watch_follows_a_live_call_until_it_ends(start_daemon) -> None:
    d = start_daemon({"responder": "off"})
    call_id = d.rpc("voicecall.initiate", {"message": "Hello.", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    proc = subprocess.Popen([*ctl_command(), "--socket", d.socket_path, "watch", "--call-id", call_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env)
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True)
    reader.start()
    d.wait(lambda: lines, what="the call's record from watch")  # printed after the subscription is made
    assert lines[0]["callId"] == call_id and lines[0]["state"] == "listening"
    d.rpc("voicecall.end", {"callId": call_id})
    assert proc.wait(30) == 0
    reader.join(10)
    assert lines[-1]["event"] == "call.ended" and lines[-1]["data"]["reason"] == "hangup-bot"


def test_watch_of_an_ended_call_returns_its_verdict_at_once(start_daemon) -> None:
    d = start_daemon({"ringTimeoutMs": 300, "mock": {"answerDelayMs": 60_000}})
    call_id = d.rpc("voicecall.initiate", {"message": "Anyone?"})["callId"]
    ended(d, call_id)
    code, lines = follow_json(d, "watch", "--call-id", call_id)
    assert code == 1 and len(lines) == 1 and lines[0]["endReason"] == "no-answer"
    code, _, err = d.ctl("watch", "--call-id", "no-such-call")
    assert code == 1 and "no call with id no-such-call" in err


# --- stats over a log -------------------------------------------------------------------------


NOW = int(time.time() * 1000)
HOUR = 3_600_000


def record(call_id: str, direction: str, reason: str | None, *, started: int, answered: int | None = None,
           ended_at: int | None = None, turns: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"callId": call_id, "provider": "mock", "providerCallId": None, "direction": direction,
            "mode": "conversation", "state": reason or "listening", "from": "+15557770000", "to": "+15550001111",
            "startedAt": started, "answeredAt": answered, "endedAt": ended_at, "endReason": reason,
            "transcript": [], "error": None, "turns": [{"at": started, "latencyMs": t} for t in turns]}


def write_log(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        # An earlier snapshot of c1, superseded by its last line below.
        record("c1", "outbound", None, started=NOW - 2 * HOUR, answered=NOW - 2 * HOUR + 1000),
        record("c2", "outbound", "no-answer", started=NOW - 3 * HOUR, ended_at=NOW - 3 * HOUR + 30_000),
        record("c3", "inbound", "hangup-user", started=NOW - 30 * 60_000, answered=NOW - 30 * 60_000,
               ended_at=NOW - 30 * 60_000 + 90_000, turns=(900, 1200)),
        record("c1", "outbound", "completed", started=NOW - 2 * HOUR, answered=NOW - 2 * HOUR + 1000,
               ended_at=NOW - 2 * HOUR + 61_000, turns=(300, 500, 700)),
        record("c4", "outbound", "busy", started=NOW - 10 * 24 * HOUR, ended_at=NOW - 10 * 24 * HOUR + 5000,
               turns=(5000,)),
        record("c5", "outbound", None, started=NOW - 60_000, answered=NOW - 50_000, turns=(400,)),
    ]
    text = "\n".join(json.dumps(r) for r in lines[:3]) + "\n{torn line\n" + \
        "\n".join(json.dumps(r) for r in lines[3:]) + "\n"
    (directory / "calls.jsonl").write_text(text)


def test_stats_over_a_log_with_the_daemon_stopped(tmp_path) -> None:
    write_log(tmp_path / "state")
    nowhere = str(tmp_path / "no-daemon.sock")
    proc = subprocess.run([*ctl_command(), "--socket", nowhere, "stats", "--store", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures == {
        "since": None, "calls": 4, "active": 1,
        "byEndReason": {"busy": 1, "completed": 1, "hangup-user": 1, "no-answer": 1},
        "byDirection": {"inbound": 1, "outbound": 3},
        "answerRate": round(1 / 3, 4),  # outbound: c1 answered; c2, c4 not
        "averageDurationSec": 75.0,     # c1 60 s, c3 90 s
        "turnLatencyMs": {"turns": 7, "p50": 700.0, "p95": 5000.0, "max": 5000.0},
    }
    # --since counts calls started in the window; the configuration names the store.
    config = tmp_path / "voicecalld.toml"
    config.write_text(to_toml({"store": str(tmp_path / "state")}))
    proc = subprocess.run([*ctl_command(), "--socket", nowhere, "--config", str(config), "stats", "--since", "24h"],
                          capture_output=True, text=True, timeout=30)
    day = json.loads(proc.stdout)
    assert day["calls"] == 3 and day["active"] == 1 and "busy" not in day["byEndReason"]
    assert day["turnLatencyMs"] == {"turns": 6, "p50": 500.0, "p95": 1200.0, "max": 1200.0}
    assert day["since"] == pytest.approx(NOW - 24 * HOUR, abs=120_000)
    proc = subprocess.run([*ctl_command(), "--socket", nowhere, "--config", str(config), "stats", "--since", "1h"],
                          capture_output=True, text=True, timeout=30)
    hour = json.loads(proc.stdout)
    assert hour["byEndReason"] == {"hangup-user": 1} and hour["answerRate"] is None


def test_stats_on_a_terminal_and_its_errors(tmp_path) -> None:
    write_log(tmp_path / "state")
    nowhere = str(tmp_path / "no-daemon.sock")
    code, out = Tty("--socket", nowhere, "stats", "--store", str(tmp_path / "state" / "calls.jsonl")).finish()
    assert code == 0
    assert "calls            4 ended, 1 not ended" in out
    assert "by end reason    busy 1, completed 1, hangup-user 1, no-answer 1" in out
    assert "answer rate      33% (outbound)" in out
    assert "average length   1:15" in out
    assert "turn latency     p50 700 ms, p95 5000 ms, max 5000 ms (7 turns)" in out
    for since in ("1x", "0h", "-1d", "h"):
        proc = subprocess.run([*ctl_command(), "--socket", nowhere, "stats", "--since", since, "--store",
                               str(tmp_path / "state")], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "--since" in proc.stderr
    proc = subprocess.run([*ctl_command(), "--socket", nowhere, "stats", "--store", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "no call log at" in proc.stderr


def test_stats_figures_match_the_daemons_own(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["a", "b"]}, "responder": "off"})
    call_id = d.rpc("voicecall.initiate", {"message": "Hi.", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    for line in ("One?", "Two?"):  # the callee answers each; the 2nd and the speak below are measured replies
        d.rpc("voicecall.continue", {"callId": call_id, "message": line}, timeout=20)
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Three."})
    d.wait(lambda: len(d.rpc("voicecall.status", {"callId": call_id})["turns"]) == 2)
    d.rpc("voicecall.end", {"callId": call_id})
    ended(d, call_id)
    code, figures, _ = d.ctl("stats")  # the store, as the running daemon reports it
    assert code == 0
    live = d.rpc("daemon.status")["stats"]
    assert figures["byEndReason"] == live["byEndReason"] == {"hangup-bot": 1}
    assert figures["turnLatencyMs"]["turns"] == live["turnLatencyMs"]["turns"] == 2
    assert figures["turnLatencyMs"]["max"] == pytest.approx(live["turnLatencyMs"]["max"], abs=1)


def test_format_helpers() -> None:
    assert ctl_format.duration(0) == "0:00" and ctl_format.duration(75) == "1:15"
    assert ctl_format.duration(3723) == "1:02:03" and ctl_format.duration(None) == "-"
    assert stats.parse_duration("90s") == 90 and stats.parse_duration("7d") == 7 * 86400
    assert stats.quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 and stats.quantile([], 0.5) is None
    assert ctl_format.event_line({"event": "call.transcript", "callId": "abc",
                                  "data": {"speaker": "user", "text": "hm", "isFinal": False}}) is None
