"""Log formatting under journald and the systemd protocol helpers."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from voicecalld import logs, systemd


def record(msg: str, level: int = logging.INFO, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("voicecalld.test", level, __file__, 1, msg, None, exc_info)


@pytest.mark.parametrize("level,prefix", [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
                                          (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>")])
def test_journald_priority_prefix(level, prefix) -> None:
    line = logs.LineFormatter(journald=True).format(record("hello", level))
    assert line == f"{prefix}voicecalld.test: hello"


def test_traceback_stays_one_entry() -> None:
    line = logs.LineFormatter(journald=True).format(record("webhook failed", logging.ERROR, exc=True))
    assert "\n" not in line and line.startswith("<3>voicecalld.test: webhook failed\\nTraceback")
    assert "ValueError: boom\\nsecond line" in line


def test_hostile_text_cannot_forge_log_lines() -> None:
    line = logs.LineFormatter(journald=False).format(record("caller said: hi\n<3>fake: entry\r\x1b[2J\u2028"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "\\n<3>fake: entry\\r\\x1b[2J\\u2028" in line


def test_secrets_are_scrubbed_even_in_tracebacks() -> None:
    fmt = logs.LineFormatter(journald=False, secrets=["sk-very-secret", "abc"])
    line = fmt.format(record("token sk-very-secret leaked; abc stays", exc=True))
    assert "sk-very-secret" not in line and "<redacted>" in line
    assert "abc stays" in line  # too short to be a real secret: not blanked


def test_notifier_path_and_abstract_sockets(tmp_path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        n = systemd.Notifier({"NOTIFY_SOCKET": path})
        assert n.notify("READY=1", "STATUS=ok")
        assert listener.recv(100) == b"READY=1\nSTATUS=ok"
        n.close()
    name = f"voicecalld-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        n = systemd.Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("WATCHDOG=1")
        assert listener.recv(100) == b"WATCHDOG=1"
        n.close()
    assert not systemd.Notifier({}).notify("READY=1")
    assert not systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("READY=1")


@pytest.mark.parametrize("env,expected", [
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected) -> None:
    assert systemd.watchdog_interval(env) == expected


def test_watchdog_pid_matching_this_process() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0


def test_listen_fds_only_for_this_pid_and_cleans_env() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd.listen_fds(env) == [3, 4] and env == {}
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd.listen_fds(env) == [] and env == {}
    assert systemd.listen_fds({}) == []


def test_under_journald_matches_device_and_inode(tmp_path) -> None:
    r, w = os.pipe()
    try:
        st = os.fstat(w)
        assert systemd.under_journald(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not systemd.under_journald(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not systemd.under_journald(w, {"JOURNAL_STREAM": "garbage"})
        assert not systemd.under_journald(w, {})
    finally:
        os.close(r)
        os.close(w)
