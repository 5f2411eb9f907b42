"""examples/: each file is commented, keeps its secrets out, and passes
``voicecalld --check-config`` with placeholder secrets in the environment;
the mock example runs a call."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from daemon import daemon_command

from voicecalld.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
PLACEHOLDERS = {"TWILIO_ACCOUNT_SID": "ACplaceholder", "TWILIO_AUTH_TOKEN": "placeholder-auth-token",
                "OPENAI_API_KEY": "sk-placeholder", "TELNYX_API_KEY": "KEYplaceholder",
                "TELNYX_CONNECTION_ID": "1234567890", "TELNYX_PUBLIC_KEY": "A" * 43 + "="}


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in PLACEHOLDERS and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([*daemon_command(), "--config", str(path), "--check-config"], capture_output=True,
                          text=True, timeout=30, env={**clean, **env})


def test_the_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == ["mock.toml", "telnyx-streaming.toml", "telnyx.toml", "twilio.toml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_check_config(path) -> None:
    proc = check(path, PLACEHOLDERS)
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_commented_and_holds_no_secret(path) -> None:
    text = path.read_text()
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert len(comments) >= 8
    data = tomllib.loads(text)
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv if isinstance(v, dict) else v
            for k, v in data.items() for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
    secrets = {s.key for s in SETTINGS if s.secret}
    assert not secrets & set(flat), "secrets belong in credentials or the environment"


@pytest.mark.parametrize("name, needs", [("twilio.toml", "TWILIO_AUTH_TOKEN"), ("telnyx.toml", "TELNYX_API_KEY"),
                                         ("telnyx-streaming.toml", "TELNYX_API_KEY")])
def test_carrier_examples_need_their_secrets(name, needs) -> None:
    proc = check(ROOT / "examples" / name, {k: v for k, v in PLACEHOLDERS.items() if k != needs})
    assert proc.returncode == 78 and needs in proc.stderr


def test_mock_example_places_a_call(start_daemon) -> None:
    config = tomllib.loads((ROOT / "examples" / "mock.toml").read_text())
    config["serve"]["port"] = 0
    config["mock"]["answerDelayMs"] = 50
    d = start_daemon(config)
    call_id = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    assert d.rpc("voicecall.continue", {"callId": call_id, "message": "ok?"})["transcript"] == "Yes, go ahead."
    assert d.rpc("voicecall.status", {"callId": call_id})["to"] == "+15550001234"
