"""End-to-end: the real voicecalld process, driven through voicecallctl and
raw JSON-RPC on its Unix socket, watched through a test-owned notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
from daemon import FAST_MOCK, Daemon, LineReader, ctl_command, daemon_command, merge, short_tmp, to_toml

from voicecalld.store import Store


def raw(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.socket_path)
    return s


def read_messages(s: socket.socket, n: int) -> list[dict]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return [json.loads(line) for line in buf.split(b"\n")[:n]]


# --- calls through voicecallctl ----------------------------------------------------------------


def test_notify_call_runs_to_completed(start_daemon) -> None:
    d = start_daemon()
    code, out, err = d.ctl("call", "--to", "+15550002222", "--message", "Your build failed")
    assert code == 0, err
    call_id = out["callId"]
    final = d.wait_state(call_id, "completed")
    assert final["endReason"] == "completed" and final["to"] == "+15550002222"
    code, out, _ = d.ctl("status", "--call-id", call_id)
    assert code == 0 and out["state"] == "completed"
    assert out["transcript"][0]["text"] == "Your build failed"


def test_conversation_continue_returns_the_callee_reply(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["Yes, ship it", "Bye now"]}})
    code, out, _ = d.ctl("call", "--message", "Hi, it's the release bot", "--mode", "conversation")
    call_id = out["callId"]
    d.wait_state(call_id, "listening")
    code, out, err = d.ctl("continue", "--call-id", call_id, "--message", "Ship version 2?")
    assert code == 0, err
    assert out == {"callId": call_id, "transcript": "Yes, ship it"}
    code, out, _ = d.ctl("continue", "--call-id", call_id, "--message", "Shipped. Anything else?")
    assert out["transcript"] == "Bye now"
    code, listed, _ = d.ctl("list")
    assert [c["callId"] for c in listed["calls"]] == [call_id]
    code, out, _ = d.ctl("speak", "--call-id", call_id, "--message", "Goodbye")
    assert out == {"callId": call_id, "ok": True}
    code, out, _ = d.ctl("end", "--call-id", call_id)
    assert out == {"callId": call_id, "ok": True, "endReason": "hangup-bot"}
    code, listed, _ = d.ctl("list")
    assert listed == {"calls": []}


def test_call_uses_configured_defaults(start_daemon) -> None:
    d = start_daemon({"toNumber": "+15550004444", "outbound": {"defaultMode": "conversation"}})
    _, out, _ = d.ctl("call", "--message", "hello")
    record = d.wait_state(out["callId"], "listening")
    assert record["to"] == "+15550004444" and record["mode"] == "conversation"


def test_tail_prints_records_and_follows_events(start_daemon) -> None:
    d = start_daemon()
    first = d.ctl("call", "--message", "first")[1]["callId"]
    d.wait_state(first, "completed")
    code, out, _ = d.ctl("tail", "-n", "5")
    assert code == 0
    assert out["callId"] == first and out["state"] == "completed"  # one record, one line
    # -n 1 -f subscribes first, then prints the latest record: once that line
    # is out, the follower is subscribed and sees every later event.
    follower = subprocess.Popen([*ctl_command(), "--socket", d.socket_path, "tail", "-n", "1", "-f"],
                                stdout=subprocess.PIPE, text=True, env=d.env)
    try:
        assert follower.stdout is not None
        output = LineReader(follower.stdout)
        assert json.loads(output.readline())["callId"] == first
        second = d.ctl("call", "--message", "second")[1]["callId"]
        events = []
        while not any(e["event"] == "call.ended" for e in events):
            line = output.readline()
            assert line, f"voicecallctl tail -f exited with {follower.poll()} after {events}"
            events.append(json.loads(line))
        assert {e["callId"] for e in events} == {second}
        names = [e["event"] for e in events]
        assert names[0] == "call.state" and "call.transcript" in names and names[-1] == "call.ended"
        assert events[-1]["data"] == {"reason": "completed"} and events[-1]["call"]["state"] == "completed"
    finally:
        follower.terminate()
        follower.wait(5)


def test_limit_and_not_found_errors_and_exit_statuses(start_daemon) -> None:
    # No dial queue: a call past maxConcurrentCalls is refused (test_dialer.py: it is queued).
    d = start_daemon({"mock": {"answerDelayMs": 5000}, "outbound": {"maxQueued": 0}})
    assert d.ctl("call", "--message", "one")[0] == 0
    code, out, err = d.ctl("call", "--message", "two")
    assert code == 1 and out is None
    assert "concurrent calls are active" in err and "(error -32001)" in err and err.count("\n") == 1
    code, out, err = d.ctl("status", "--call-id", "no-such-call")
    assert code == 1 and out == {"found": False}
    code, out, err = d.ctl("end", "--call-id", "no-such-call")
    assert code == 1 and "(error -32000)" in err
    with pytest.raises(Exception) as info:
        d.rpc("voicecall.initiate", {"message": "two"})
    assert getattr(info.value, "code", None) == -32001


def test_usage_errors_exit_2(start_daemon) -> None:
    d = start_daemon()
    code, _, err = d.ctl("call")
    assert code == 2 and "--message" in err
    code, _, err = d.ctl("frobnicate")
    assert code == 2
    code, _, err = d.ctl("call", "--message", "x", "--mode", "shout")
    assert code == 2
    code, _, err = d.ctl("tool", stdin="not json")
    assert code == 2 and "not JSON" in err


def test_unreachable_daemon_exits_69_naming_the_socket(tmp_path) -> None:
    path = str(tmp_path / "nobody.sock")
    proc = subprocess.run([*ctl_command(), "--socket", path, "list"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 69
    assert path in proc.stderr and proc.stdout == ""


def test_tool_and_tool_schema(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["fine"]}})
    code, schema, _ = d.ctl("tool-schema")
    assert code == 0 and schema["name"] == "voice_call"
    assert schema["parameters"]["properties"]["action"]["enum"] == [
        "initiate_call", "continue_call", "speak_to_user", "end_call", "get_status", "send_dtmf", "transfer_call"]
    code, out, _ = d.ctl("tool", stdin=json.dumps({"action": "initiate_call", "message": "hi",
                                                   "mode": "conversation"}))
    assert code == 0 and out["initiated"] is True
    call_id = out["callId"]
    d.wait_state(call_id, "listening")
    wrapped = {"name": "voice_call", "arguments": {"action": "continue_call", "callId": call_id, "message": "ok?"}}
    assert d.ctl("tool", stdin=json.dumps(wrapped))[1] == {"success": True, "transcript": "fine"}
    assert d.ctl("tool", stdin=json.dumps({"action": "get_status", "callId": "nope"}))[1] == {"found": False}
    code, out, _ = d.ctl("tool", stdin=json.dumps({"action": "end_call"}))
    assert code == 1 and "needs callId" in out["error"]  # an {error} result: printed, exit 1


# --- the socket protocol -------------------------------------------------------------------------


def test_garbage_and_oversized_lines_keep_the_connection_usable(start_daemon) -> None:
    d = start_daemon()
    s = raw(d)
    s.sendall(b"this is not json\n")
    s.sendall(b"x" * (2 * 1024 * 1024) + b"\n")
    s.sendall(b'[{"jsonrpc":"2.0","id":1,"method":"daemon.status"}]\n')
    s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"no.such.method"}\n')
    s.sendall(b'{"jsonrpc":"2.0","id":3,"method":"voicecall.status","params":{"callId":5}}\n')
    s.sendall(b'{"jsonrpc":"2.0","id":4,"method":"voicecall.status","params":["x"]}\n')
    s.sendall(b'{"jsonrpc":"1.0","id":5,"method":"daemon.status"}\n')
    s.sendall(b'{"jsonrpc":"2.0","method":"daemon.status"}\n')  # a notification: no reply
    s.sendall(b'\xff\xfe\n')
    s.sendall(b'{"jsonrpc":"2.0","id":6,"method":"voicecall.initiate","params":{"mesage":"x"}}\n')
    s.sendall(b'{"jsonrpc":"2.0","id":7,"method":"daemon.status"}\n')
    replies = read_messages(s, 10)
    codes = [(r.get("id"), r.get("error", {}).get("code")) for r in replies]
    assert codes == [(None, -32700), (None, -32600), (None, -32600), (2, -32601), (3, -32602), (4, -32602),
                     (5, -32600), (None, -32700), (6, -32602), (7, None)]
    assert "did you mean message" in replies[8]["error"]["message"]
    assert replies[9]["result"]["provider"] == "mock"
    s.close()


def test_pipelined_requests_are_not_stalled_by_a_blocking_continue(start_daemon) -> None:
    d = start_daemon({"transcriptTimeoutMs": 20000})
    call_id = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    s = raw(d)
    batch = [{"jsonrpc": "2.0", "id": "c", "method": "voicecall.continue",
              "params": {"callId": call_id, "message": "what's up?"}}]
    batch += [{"jsonrpc": "2.0", "id": i, "method": "voicecall.status", "params": {"callId": call_id}}
              for i in range(20)]
    s.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in batch))
    first = read_messages(s, 20)
    assert sorted(m["id"] for m in first) == list(range(20))  # all answered while continue waits
    d.rpc("mock.say", {"callId": call_id, "text": "not much"})
    (reply,) = read_messages(s, 1)
    assert reply == {"jsonrpc": "2.0", "id": "c", "result": {"callId": call_id, "transcript": "not much"}}
    # Another connection was never blocked either.
    assert d.rpc("daemon.status")["activeCalls"] == 1
    s.close()


def test_events_subscribe_filters_by_call(start_daemon) -> None:
    d = start_daemon({"maxConcurrentCalls": 2})
    a = d.rpc("voicecall.initiate", {"message": "a", "mode": "conversation"})["callId"]
    d.wait_state(a, "listening")
    s = raw(d)
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                          "params": {"callId": a}}).encode() + b"\n")
    assert read_messages(s, 1)[0]["result"] == {"subscribed": True}
    b = d.rpc("voicecall.initiate", {"message": "b"})["callId"]
    d.wait_state(b, "completed")
    d.rpc("mock.say", {"callId": a, "text": "hello from a"})
    (event,) = read_messages(s, 1)
    assert event["method"] == "event"
    assert event["params"]["callId"] == a and event["params"]["event"] == "call.transcript"
    assert event["params"]["data"] == {"speaker": "user", "text": "hello from a", "isFinal": True}
    s.close()


def test_mock_methods_and_inbound(start_daemon) -> None:
    d = start_daemon({"inboundPolicy": "allowlist", "allowFrom": ["+15550007777"]})
    assert d.rpc("mock.inbound", {"from": "+15550008888"})["rejected"] is True
    call_id = d.rpc("mock.inbound", {"from": "+15550007777"})["callId"]
    d.wait_state(call_id, "listening")
    d.rpc("mock.hangup", {"callId": call_id})
    assert d.wait_state(call_id, "hangup-user")["direction"] == "inbound"


# --- process behaviour -----------------------------------------------------------------------------


def test_ready_means_both_ports_accept(start_daemon) -> None:
    import urllib.request

    d = start_daemon()
    assert "READY=1" in d.notify.lines()
    with urllib.request.urlopen(f"http://127.0.0.1:{d.webhook_port}/healthz", timeout=5) as resp:
        body = json.loads(resp.read())
    # The internet learns only the verdict; the detail is on the control socket.
    assert resp.status == 200 and body == {"status": "ok"}
    assert d.rpc("daemon.status")["health"] == {"ok": True, "problems": []}
    assert any(line.startswith("STATUS=0 active calls") for line in d.notify.lines())


def test_healthz_says_unhealthy_and_nothing_more_while_stopping(start_daemon) -> None:
    import requests

    d = start_daemon({"shutdownGraceSeconds": 30})
    call_id = d.rpc("voicecall.initiate", {"message": "Still here", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    d.signal(signal.SIGTERM)  # the daemon now waits for the call to finish
    url = f"http://127.0.0.1:{d.webhook_port}/healthz"
    body = d.wait(lambda: (r := requests.get(url, timeout=5)).status_code == 503 and r.json(), what="a 503")
    assert body == {"status": "unhealthy"}
    health = d.rpc("daemon.status")["health"]
    assert health == {"ok": False, "problems": ["the daemon is stopping"]}
    d.rpc("mock.hangup", {"callId": call_id})
    assert d.stop() == 0


def test_control_socket_is_private(start_daemon) -> None:
    d = start_daemon()
    mode = stat.S_IMODE(os.stat(d.socket_path).st_mode)
    assert mode == 0o660
    assert not stat.S_IMODE(os.stat(os.path.dirname(d.socket_path)).st_mode) & 0o002


def test_world_writable_socket_directory_is_refused(tmp_path) -> None:
    tmp = short_tmp("ww")
    (tmp / "run").mkdir()
    os.chmod(tmp / "run", 0o777)
    d = Daemon(tmp, wait_ready=False)
    assert d.proc.wait(20) == 1
    assert "world-writable" in d.log()
    d.notify.close()


def test_second_daemon_does_not_steal_a_live_socket(start_daemon) -> None:
    first = start_daemon()
    second = Daemon(first.tmp / "second", {"control": {"socket": first.socket_path}}, wait_ready=False)
    assert second.proc.wait(20) == 1
    assert "another voicecalld is already listening on" in second.log()
    second.notify.close()
    assert first.rpc("daemon.status")["provider"] == "mock"  # untouched


def test_stale_socket_from_a_crash_is_replaced(start_daemon) -> None:
    first = start_daemon()
    first.kill()  # SIGKILL leaves the socket file behind
    assert os.path.exists(first.socket_path)
    second = start_daemon({"store": str(first.store_dir), "control": {"socket": first.socket_path}})
    assert second.socket_path == first.socket_path
    assert second.rpc("daemon.status")["pid"] == second.proc.pid
    assert "removing stale control socket" in second.log()


def test_sighup_reloads_and_bad_config_keeps_the_old_one(start_daemon) -> None:
    d = start_daemon({"mock": {"answerDelayMs": 5000}})
    d.rpc("voicecall.initiate", {"message": "one"})
    d.write_config({**d.config, "maxConcurrentCalls": 2})
    ready_before = d.notify.lines().count("READY=1")
    d.signal(signal.SIGHUP)
    d.wait(lambda: d.notify.lines().count("READY=1") > ready_before, what="READY=1 after reload")
    assert "RELOADING=1" in d.notify.lines()
    d.rpc("voicecall.initiate", {"message": "two"})  # the new limit applies
    d.config_path.write_text("maxConcurrentCalls = 0\nbogus = 1\n")
    d.signal(signal.SIGHUP)
    d.wait(lambda: "reload failed; keeping the old configuration" in d.log(), what="reload failure in the log")
    assert "maxConcurrentCalls: expected a value >= 1" in d.log() and "bogus: unknown key" in d.log()
    assert d.rpc("daemon.status")["activeCalls"] == 2


def test_reload_keeps_the_keys_that_need_a_restart(start_daemon) -> None:
    d = start_daemon({"mock": {"answerDelayMs": 5000}})
    d.rpc("voicecall.initiate", {"message": "one"})
    d.write_config({**d.config, "maxConcurrentCalls": 2, "serve": {**d.config.get("serve", {}), "path": "/moved"},
                    "control": {**d.config["control"], "lineTimeoutSec": 5}})
    d.signal(signal.SIGHUP)
    d.wait(lambda: "configuration reloaded" in d.log(), what="the reload in the log")
    assert "reload: serve.path, control.lineTimeoutSec changed but needs a restart to take effect" in d.log()
    assert d.rpc("daemon.status")["webhook"]["path"] == "/voice/webhook"  # kept
    d.rpc("voicecall.initiate", {"message": "two"})  # maxConcurrentCalls = 2 applies
    assert d.rpc("daemon.status")["activeCalls"] == 2


def test_sigterm_drains_active_calls_and_exits_0(start_daemon) -> None:
    d = start_daemon({"shutdownGraceSeconds": 0.3})
    call_id = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    assert d.stop() == 0  # d.stop() fails the test if the daemon has not exited within its timeout
    assert "STOPPING=1" in d.notify.lines()
    record = Store(str(d.store_dir)).load().records[call_id]
    assert record["state"] == "hangup-bot" and record["endedAt"]
    assert not os.path.exists(d.socket_path)


def test_sigterm_with_a_call_that_finishes_in_the_grace_period(start_daemon) -> None:
    d = start_daemon({"shutdownGraceSeconds": 5, "mock": {"msPerChar": 20}})
    call_id = d.rpc("voicecall.initiate", {"message": "a message that takes a moment"})["callId"]
    d.wait_state(call_id, "speaking")
    assert d.stop() == 0
    assert Store(str(d.store_dir)).load().records[call_id]["state"] == "completed"


def test_new_calls_are_refused_while_draining(start_daemon) -> None:
    d = start_daemon({"shutdownGraceSeconds": 3, "maxConcurrentCalls": 2})
    call_id = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    d.signal(signal.SIGTERM)
    d.notify.wait_for("STOPPING=1")
    code, _, err = d.ctl("call", "--message", "too late")
    assert code == 1 and "shutting down" in err
    d.proc.wait(15)
    assert d.proc.returncode == 0


def test_watchdog_pings(start_daemon) -> None:
    d = start_daemon(env={"WATCHDOG_USEC": "400000"})
    d.wait(lambda: d.notify.lines().count("WATCHDOG=1") >= 3, timeout=5, what="three watchdog pings")


def test_socket_activation(tmp_path) -> None:
    tmp = short_tmp("sa")
    path = str(tmp / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    # systemd hands the socket over as fd 3 with LISTEN_PID set to the
    # service's own pid: a tiny exec wrapper arranges exactly that.
    wrapper = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.environ['LISTEN_FDS'] = '1'; "
               "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")
    cmd = daemon_command()
    if cmd[0] != sys.executable:
        cmd = [sys.executable, cmd[0]]
    d = Daemon(tmp, {"control": {"socket": str(tmp / "unused.sock")}}, wait_ready=False,
               pass_fds=(listener.fileno(),),
               command=[sys.executable, "-c", wrapper, str(listener.fileno()), *cmd, "--config",
                        str(tmp / "voicecalld.toml")])
    try:
        d.wait_ready()
        listener.close()  # only the daemon holds it now
        d.socket_path = path
        assert d.rpc("daemon.status")["pid"] == d.proc.pid
        assert not os.path.exists(tmp / "unused.sock")
        assert d.stop() == 0
        assert os.path.exists(path)  # systemd owns the file; the daemon leaves it
    finally:
        d.kill()


def test_journald_priority_prefixes() -> None:
    tmp = short_tmp("jd")
    config = merge({"store": str(tmp / "state"), "control": {"socket": str(tmp / "run" / "c.sock")}}, FAST_MOCK)
    (tmp / "v.toml").write_text(to_toml(config))
    r, w = os.pipe()
    st = os.fstat(w)  # journald's stream is recognised by device and inode
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen([*daemon_command(), "--config", str(tmp / "v.toml")], stderr=w,
                            stdout=subprocess.DEVNULL, env=env)
    os.close(w)
    try:
        lines = []
        with os.fdopen(r, "r") as stream:
            output = LineReader(stream)
            while not lines or " ready" not in lines[-1]:
                line = output.readline(20)
                assert line, f"voicecalld exited before it was ready: {lines}"
                lines.append(line.rstrip("\n"))
            proc.send_signal(signal.SIGTERM)
            while line := output.readline(20):  # to end of file: the daemon has exited
                lines.append(line.rstrip("\n"))
        assert proc.wait(15) == 0
        assert len(lines) >= 3 and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
        assert any(line.startswith("<6>voicecalld: voicecalld") and " ready" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()


# --- command-line options ------------------------------------------------------------------------


def test_check_config_reports_every_problem_and_exits_78(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('fromNumber = "555-1234"\nmaxConcurrentCalls = 0\ncolour = "blue"\n[serve]\nport = 99999\n')
    proc = subprocess.run([*daemon_command(), "--config", str(bad), "--check-config"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 78
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4 and all(str(bad) in line for line in lines)
    assert any('fromNumber: expected E.164 like +15550001234, got "555-1234"' in line for line in lines)
    good = tmp_path / "good.toml"
    good.write_text('toNumber = "+15550001234"\n')
    proc = subprocess.run([*daemon_command(), "--config", str(good), "--check-config"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "OK" in proc.stdout


def test_print_config_redacts_secrets(tmp_path) -> None:
    good = tmp_path / "s.toml"
    good.write_text('[streaming]\nopenaiApiKey = "sk-verysecretvalue"\n')
    proc = subprocess.run([*daemon_command(), "--config", str(good), "--print-config"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "TWILIO_AUTH_TOKEN": "envsecret-123"})
    assert proc.returncode == 0
    assert "sk-verysecretvalue" not in proc.stdout and "envsecret-123" not in proc.stdout
    assert 'openaiApiKey = "<redacted>"' in proc.stdout and 'authToken = "<redacted>"' in proc.stdout
    assert 'provider = "mock"' in proc.stdout


def test_version() -> None:
    proc = subprocess.run([*daemon_command(), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("voicecalld ")
    proc = subprocess.run([*ctl_command(), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("voicecallctl ")


def test_no_config_file_runs_the_mock_with_default_paths(tmp_path) -> None:
    tmp = short_tmp("nocfg")
    env = {"XDG_RUNTIME_DIR": str(tmp / "xdg-run"), "XDG_STATE_HOME": str(tmp / "xdg-state")}
    os.makedirs(tmp / "xdg-run", mode=0o700)
    d = Daemon(tmp, env=env, wait_ready=False, command=[*daemon_command()])
    try:
        d.wait_ready()
        d.socket_path = str(tmp / "xdg-run" / "voicecalld" / "control.sock")
        status = d.rpc("daemon.status")
        assert status["provider"] == "mock" and status["webhook"]["port"] == 3334
        assert os.path.isdir(tmp / "xdg-state" / "voicecalld")
        assert d.stop() == 0
    finally:
        d.kill()


@pytest.mark.parametrize("argv", [None, ["--socket", "/nonexistent/x.sock", "mcp"],
                                  ["--socket", "/nonexistent/x.sock", "tool-schema"]])
def test_ctl_imports_only_the_standard_library_and_its_client(argv) -> None:
    # With argv, the command really runs (mcp on an empty stdin, so it ends at once).
    run = f"import io; sys.stdin = io.TextIOWrapper(io.BytesIO(b'')); ctl.main({argv!r}); " if argv else ""
    code = ("import sys; from voicecalld import ctl; " + run +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'werkzeug','requests','websocket','simple_websocket','nacl','urllib3','charset_normalizer',"
            "'idna'} "
            "or m in {'voicecalld.config','voicecalld.manager','voicecalld.daemon','voicecalld.responder'}); "
            "print('mcp' if 'voicecalld.mcp' in sys.modules else '-', bad, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    used_mcp = "mcp" in (argv or [])
    assert proc.stderr.strip().splitlines()[-1] == ("mcp" if used_mcp else "-") + " []", proc.stderr
