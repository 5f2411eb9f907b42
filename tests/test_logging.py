"""The logging promise, end to end: one line per call event with its call
id; at info level no secret, no full phone number (only the last four
digits) and nothing of what was said; with -v the numbers and words appear
for debugging, and still no secret. Secrets come in through every route the
daemon has: the environment and systemd credentials."""

from __future__ import annotations

import re

import pytest

from voicecalld.phone import mask

OUT = "+15550002222"
IN = "+15550007777"
SPOKEN = "my account number is 99887766"
SECRETS = {"OPENAI_API_KEY": "sk-test-openai-secret-0123456789",
           "TWILIO_AUTH_TOKEN": "twilio-auth-secret-abcdef"}
CREDENTIALS = {"ngrok-authtoken": "ngrok-credential-secret-987654321",
               "response-api-key": "response-credential-secret-55555"}


def run_calls(start_daemon, tmp_path, args: tuple[str, ...]) -> str:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in CREDENTIALS.items():
        (creds / name).write_text(value + "\n")
    d = start_daemon({"inboundPolicy": "allowlist", "allowFrom": [IN], "maxConcurrentCalls": 2, "responder": "off",
                      "mock": {"calleeReplies": [SPOKEN]}},
                     env={**SECRETS, "CREDENTIALS_DIRECTORY": str(creds)}, args=args)
    out_id = d.rpc("voicecall.initiate", {"message": "Your build failed", "to": OUT, "mode": "conversation"})["callId"]
    d.wait_state(out_id, "listening")
    assert d.rpc("voicecall.continue", {"callId": out_id, "message": "What is it?"})["transcript"] == SPOKEN
    d.rpc("voicecall.end", {"callId": out_id})
    in_id = d.rpc("mock.inbound", {"from": IN})["callId"]
    d.wait_state(in_id, "listening")
    d.rpc("mock.hangup", {"callId": in_id})
    d.wait_state(in_id, "hangup-user")
    assert d.stop() == 0
    log = d.log()
    for call_id, states in ((out_id, ("ringing", "answered", "speaking", "listening", "hangup-bot")),
                            (in_id, ("answered", "speaking", "listening", "hangup-user"))):
        for state in states:
            assert re.search(rf"call {call_id}: \S+ -> {state} ", log), (call_id, state)
    return log


@pytest.mark.parametrize("secret", [*SECRETS.values(), *CREDENTIALS.values()])
def test_secret_sources_reach_the_configuration(tmp_path, secret) -> None:
    # The log test below would pass trivially if the secrets were never loaded.
    from voicecalld import config

    creds = tmp_path / "c"
    creds.mkdir()
    for name, value in CREDENTIALS.items():
        (creds / name).write_text(value + "\n")
    cfg = config.from_mapping({}, env={**SECRETS, "CREDENTIALS_DIRECTORY": str(creds)})
    assert secret in cfg.secrets


def test_info_log_has_masked_numbers_and_no_secrets_or_speech(start_daemon, tmp_path) -> None:
    log = run_calls(start_daemon, tmp_path, ())
    for number in (OUT, IN):
        assert number not in log and mask(number) in log and number[1:] not in log
    assert SPOKEN not in log and "99887766" not in log and "Your build failed" not in log
    assert f"user said {len(SPOKEN)} characters" in log
    for secret in [*SECRETS.values(), *CREDENTIALS.values()]:
        assert secret not in log
    assert " DEBUG " not in log


def test_debug_log_shows_numbers_and_speech_but_no_secrets(start_daemon, tmp_path) -> None:
    log = run_calls(start_daemon, tmp_path, ("-v",))
    assert OUT in log and IN in log and SPOKEN in log
    assert all(number not in line for line in log.splitlines() if " INFO " in line for number in (OUT, IN))
    for secret in [*SECRETS.values(), *CREDENTIALS.values()]:
        assert secret not in log


CRASH = r'''
import sys, threading
from voicecalld import logs

SECRET = sys.argv[1]
logs.setup(secrets=[SECRET])


def boom() -> None:
    raise RuntimeError(f"could not reach https://api.example/?key={SECRET}\nsecond line")


worker = threading.Thread(target=boom, name="worker-thread")
worker.start()
worker.join()
raise ValueError(f"the main thread has {SECRET} too")
'''


def test_uncaught_exceptions_in_any_thread_go_through_the_scrubbing_formatter(tmp_path) -> None:
    import subprocess
    import sys

    secret = SECRETS["TWILIO_AUTH_TOKEN"]
    proc = subprocess.run([sys.executable, "-c", CRASH, secret], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert secret not in proc.stderr and secret not in proc.stdout
    lines = proc.stderr.splitlines()
    thread_line = next(line for line in lines if "uncaught exception in thread worker-thread" in line)
    main_line = next(line for line in lines if "uncaught exception in the main thread" in line)
    # One line each, traceback included, the secret replaced.
    assert "RuntimeError: could not reach https://api.example/?key=<redacted>\\nsecond line" in thread_line
    assert "ValueError: the main thread has <redacted> too" in main_line
    assert len(lines) == 2, proc.stderr
