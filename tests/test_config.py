"""Configuration: defaults, every kind of error, secret sources, rendering."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing

import pytest

from voicecalld import config as C
from voicecalld.config import kinds

TWILIO_OK = {"provider": "twilio", "fromNumber": "+15550001234", "publicUrl": "https://example.com",
             "twilio": {"accountSid": "AC" + "0" * 32, "authToken": "tok"}}


def problems(data, env=None) -> list[str]:
    with pytest.raises(C.ConfigError) as info:
        C.from_mapping(data, env or {})
    return info.value.problems


def test_defaults_run_the_mock_carrier() -> None:
    cfg = C.from_mapping({}, {})
    assert cfg.provider == "mock"
    assert cfg.serve.port == 3334 and cfg.serve.bind == "127.0.0.1" and cfg.serve.path == "/voice/webhook"
    assert cfg["maxConcurrentCalls"] == 1 and cfg.maxDurationSeconds == 300
    assert cfg.transcriptTimeoutMs == 180000 and cfg.ringTimeoutMs == 30000
    assert cfg.inboundPolicy == "disabled" and cfg.allowFrom == ()
    assert cfg.outbound.defaultMode == "notify" and cfg.outbound.notifyHangupDelaySec == 3
    assert cfg.control.mode == 0o660
    assert cfg.streaming.realtimeUrl == "wss://api.openai.com/v1/realtime?intent=transcription"
    assert cfg.mock.answerDelayMs == 1000 and cfg.mock.calleeReplies == ()
    assert cfg.responseModel == "openai/gpt-4o-mini"
    assert cfg.responseBaseUrl == "https://api.openai.com/v1"


def test_every_design_key_exists_with_its_default() -> None:
    design = {
        "provider": "mock", "fromNumber": None, "toNumber": None, "publicUrl": None, "store": None,
        "skipSignatureVerification": False, "maxDurationSeconds": 300, "maxConcurrentCalls": 1,
        "transcriptTimeoutMs": 180000, "ringTimeoutMs": 30000, "inboundPolicy": "disabled", "allowFrom": (),
        "responseModel": "openai/gpt-4o-mini", "responseSystemPrompt": None, "responseTimeoutMs": 30000,
        "responseBaseUrl": "https://api.openai.com/v1", "serve.port": 3334, "serve.bind": "127.0.0.1",
        "serve.path": "/voice/webhook", "outbound.defaultMode": "notify", "outbound.notifyHangupDelaySec": 3,
        "twilio.accountSid": None, "twilio.authToken": None, "twilio.apiBaseUrl": "https://api.twilio.com",
        "telnyx.apiKey": None, "telnyx.connectionId": None, "telnyx.publicKey": None,
        "telnyx.apiBaseUrl": "https://api.telnyx.com", "streaming.enabled": False,
        "streaming.streamPath": "/voice/stream", "streaming.openaiApiKey": None,
        "streaming.sttModel": "gpt-4o-transcribe", "streaming.vadThreshold": 0.5,
        "streaming.silenceDurationMs": 800,
        "streaming.realtimeUrl": "wss://api.openai.com/v1/realtime?intent=transcription",
        "tts.provider": "openai", "tts.model": "gpt-4o-mini-tts", "tts.voice": "coral",
        "tts.baseUrl": "https://api.openai.com/v1", "tunnel.provider": "none", "tunnel.ngrokAuthToken": None,
        "tunnel.ngrokDomain": None, "tunnel.allowNgrokFreeTier": True, "tailscale.mode": "off",
        "tailscale.path": None, "control.socket": None, "control.mode": 0o660, "mock.answerDelayMs": 1000,
        "mock.calleeReplies": (),
    }
    cfg = C.from_mapping({}, {})
    for key, default in design.items():
        assert cfg[key] == default, key
    assert "inboundGreeting" in C.SETTINGS_BY_KEY


ERROR_CASES = [
    ({"fromNumber": "555-1234"}, 'fromNumber: expected E.164 like +15550001234, got "555-1234"'),
    ({"toNumber": "+0123"}, 'toNumber: expected E.164 like +15550001234, got "+0123"'),
    ({"provider": "twilio", "fromNumber": "+15550001234", "publicUrl": "https://x.example"},
     "provider: twilio needs twilio.accountSid (or TWILIO_ACCOUNT_SID)"),
    ({"provider": "twilio", "fromNumber": "+15550001234", "publicUrl": "https://x.example"},
     "provider: twilio needs twilio.authToken (or TWILIO_AUTH_TOKEN)"),
    ({"provider": "telnyx", "fromNumber": "+15550001234", "publicUrl": "https://x.example"},
     "provider: telnyx needs telnyx.apiKey (or TELNYX_API_KEY)"),
    ({"provider": "sip"}, 'provider: expected one of twilio, telnyx, mock, got "sip"'),
    ({"maxConcurrentCalls": 0}, "maxConcurrentCalls: expected a value >= 1, got 0"),
    ({"maxConcurrentCalls": True}, "maxConcurrentCalls: expected an integer, got true"),
    ({"maxConcurrentCalls": 1.5}, "maxConcurrentCalls: expected an integer, got 1.5"),
    ({"ringTimeoutMs": "30s"}, 'ringTimeoutMs: expected an integer, got "30s"'),
    ({"skipSignatureVerification": "yes"}, 'skipSignatureVerification: expected true or false, got "yes"'),
    ({"allowFrom": "+15550001234"}, "allowFrom: expected a list of E.164 numbers"),
    ({"allowFrom": ["+15550001234", "0001234"]}, 'allowFrom: expected E.164 numbers like +15550001234, got "0001234"'),
    ({"inboundPolicy": "allowlist"}, "allowFrom: inboundPolicy allowlist needs at least one number"),
    ({"publicUrl": "example.com"}, "publicUrl: expected a http or https URL"),
    ({"serve": {"port": 70000}}, "serve.port: expected a value <= 65535, got 70000"),
    ({"serve": {"path": "voice"}}, "serve.path: expected an absolute URL path"),
    ({"serve": "3334"}, 'serve: expected a section (table), got "3334"'),
    ({"control": {"mode": "0666"}}, "control.mode: expected a mode without permissions for other users, got 0666"),
    ({"control": {"mode": "rw"}}, 'control.mode: expected an octal file mode like "0660", got "rw"'),
    ({"streaming": {"vadThreshold": 2}}, "streaming.vadThreshold: expected a value <= 1, got 2"),
    ({"streaming": {"realtimeUrl": "https://api.openai.com"}}, "streaming.realtimeUrl: expected a ws or wss URL"),
    ({"mock": {"calleeReplies": ["ok", 3]}}, "mock.calleeReplies: expected a list of strings"),
    ({"tunnel": {"provider": "cloudflare"}}, "tunnel.provider: expected one of none, ngrok"),
    ({"responder": "agent"}, "responder: expected one of llm, socket, off"),
    ({"responseModel": "openai/"}, "responseModel: expected provider/model or model, like openai/gpt-4o-mini"),
    ({"responseApology": " "}, "responseApology: must not be empty"),
    ({"responseTimeoutMs": 0}, "responseTimeoutMs: expected a value >= 1"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"serve": {"prot": 1}}, "serve.prot: unknown key (did you mean serve.port?)"),
    ({"maxConcurentCalls": 2}, "maxConcurentCalls: unknown key (did you mean maxConcurrentCalls?)"),
    ({"provider": "telnyx", "fromNumber": "+15550001234", "publicUrl": "https://x.example",
      "telnyx": {"apiKey": "k", "connectionId": "c"}}, "telnyx.publicKey: needed to verify Telnyx webhooks"),
    ({"provider": "twilio", "fromNumber": "+15550001234", "twilio": {"accountSid": "AC1", "authToken": "t"}},
     "publicUrl: provider twilio needs a public URL"),
]


@pytest.mark.parametrize("data,expected", ERROR_CASES, ids=[e[:40] for _, e in ERROR_CASES])
def test_error_names_key_and_form(data, expected) -> None:
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_are_reported_at_once() -> None:
    found = problems({"fromNumber": "555", "maxConcurrentCalls": 0, "bogus": 1, "serve": {"port": -1}})
    keys = sorted(p.split(":")[0] for p in found)
    assert keys == ["bogus", "fromNumber", "maxConcurrentCalls", "serve.port"]


def test_valid_twilio_config() -> None:
    cfg = C.from_mapping(TWILIO_OK, {})
    assert cfg.twilio.accountSid.startswith("AC")
    assert cfg.publicUrl == "https://example.com"


def test_secrets_from_environment() -> None:
    data = {k: v for k, v in TWILIO_OK.items() if k != "twilio"}
    cfg = C.from_mapping(data, {"TWILIO_ACCOUNT_SID": "ACenv", "TWILIO_AUTH_TOKEN": "envtok"})
    assert cfg.twilio.accountSid == "ACenv" and cfg.twilio.authToken == "envtok"
    assert cfg.sources["twilio.authToken"] == "environment TWILIO_AUTH_TOKEN"


def test_credentials_directory_beats_environment_and_file_beats_both(tmp_path) -> None:
    (tmp_path / "twilio-auth-token").write_text("credtok\n")
    (tmp_path / "openai-api-key").write_text("sk-cred")
    data = {k: v for k, v in TWILIO_OK.items() if k != "twilio"}
    data["twilio"] = {"accountSid": "ACfile"}
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "TWILIO_AUTH_TOKEN": "envtok", "TWILIO_ACCOUNT_SID": "ACenv"}
    cfg = C.from_mapping(data, env)
    assert cfg.twilio.authToken == "credtok"
    assert cfg.twilio.accountSid == "ACfile"
    assert cfg.streaming.openaiApiKey == "sk-cred"


def test_empty_environment_value_counts_as_unset(tmp_path) -> None:
    (tmp_path / "telnyx-api-key").write_text("   \n")  # an empty credential file is unset too
    cfg = C.from_mapping({}, {"TELNYX_CONNECTION_ID": "", "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.telnyx.connectionId is None and cfg.sources["telnyx.connectionId"] == "default"
    assert cfg.telnyx.apiKey is None


def test_redacted_hides_secrets_and_keeps_the_rest() -> None:
    cfg = C.from_mapping({**TWILIO_OK, "streaming": {"openaiApiKey": "sk-secret"}}, {})
    red = cfg.redacted()
    assert red["twilio"]["authToken"] == C.REDACTED
    assert red["streaming"]["openaiApiKey"] == C.REDACTED
    assert red["twilio"]["accountSid"] == "AC" + "0" * 32
    text = C.render_toml(cfg)
    assert "tok" not in text.replace("authToken", "") and "sk-secret" not in text
    assert set(cfg.secrets) == {"tok", "sk-secret"}


def test_render_toml_round_trips(tmp_path) -> None:
    cfg = C.from_mapping({"toNumber": "+15550001234", "mock": {"calleeReplies": ['say "hi"', "bye"]},
                          "inboundGreeting": "Héllo\nthere"}, {})
    parsed = tomllib.loads(C.render_toml(cfg))
    again = C.from_mapping(parsed, {})
    assert again.values == cfg.values


def test_json_and_toml_files(tmp_path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('toNumber = "+15550001234"\n[serve]\nport = 4000\n[control]\nmode = "0600"\n')
    js = tmp_path / "v.json"
    js.write_text(json.dumps({"toNumber": "+15550001234", "serve": {"port": 4000}, "control": {"mode": "0600"}}))
    a, b = C.load(str(toml), env={}), C.load(str(js), env={})
    assert a.values == b.values and a.serve.port == 4000 and a.control.mode == 0o600


@pytest.mark.parametrize("name,content,expected", [
    ("bad.toml", "provider = \n", "invalid TOML"),
    ("bad.json", "{", "invalid JSON"),
    ("list.json", "[1]", "expected a JSON object"),
    ("latin1.toml", b"provider = \"mock\xe9\"", "not valid UTF-8"),
])
def test_unparseable_files(tmp_path, name, content, expected) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(C.ConfigError) as info:
        C.load(str(path), env={})
    assert expected in info.value.problems[0]
    assert str(path) in str(info.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(C.ConfigError) as info:
        C.load(str(tmp_path / "nope.toml"), env={})
    assert "cannot read config file" in info.value.problems[0]


def test_mode_accepts_integer_form() -> None:
    assert C.from_mapping({"control": {"mode": 0o640}}, {}).control.mode == 0o640


def test_small_values_used_by_tests_are_valid() -> None:
    cfg = C.from_mapping({"maxDurationSeconds": 2, "ringTimeoutMs": 1500, "mock": {"answerDelayMs": 200}}, {})
    assert cfg.maxDurationSeconds == 2


def test_every_setting_has_docs_and_a_valid_default() -> None:
    for s in C.SETTINGS:
        assert s.doc.endswith(".") or s.doc.endswith(")"), s.key
        if s.default is not None:
            assert s.check(s.default) == (s.default, None), s.key
        assert C.describe_default(s)


# --- the typed tree -----------------------------------------------------------------------------

RICH = {**TWILIO_OK, "allowFrom": ["+15550009999"], "inboundPolicy": "allowlist", "maxDurationSeconds": 12.5,
        "streaming": {"enabled": True, "maxStreams": 7, "openaiApiKey": "sk-1"},
        "mock": {"calleeReplies": ["a", "b"]}, "control": {"mode": "0600", "socket": "/run/x.sock"},
        "tailscale": {"path": "/voice"}, "twilio": {**TWILIO_OK["twilio"], "voice": "woman"}}


def conforms(value: object, annotation: object) -> bool:
    """``value`` is of the declared type (a float field may hold an int, as in Python's numeric tower)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType:
        return any(conforms(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, tuple) and all(conforms(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    assert isinstance(annotation, type), annotation
    return isinstance(value, annotation)


@pytest.mark.parametrize("data", [{}, RICH], ids=["defaults", "rich"])
def test_every_value_has_its_declared_type(data) -> None:
    cfg = C.from_mapping(data, {})
    checked = 0
    for holder in [cfg, *(getattr(cfg, name) for name in C.SECTIONS)]:
        hints = typing.get_type_hints(type(holder))
        for f in dataclasses.fields(holder):
            if holder is cfg and f.name in (*C.SECTIONS, "sources", "path"):
                continue
            value = getattr(holder, f.name)
            assert conforms(value, hints[f.name]), (type(holder).__name__, f.name, value, hints[f.name])
            checked += 1
    assert checked == len(C.SETTINGS)
    if data:
        assert cfg.allowFrom == ("+15550009999",) and cfg.mock.calleeReplies == ("a", "b")
        assert cfg.control.mode == 0o600 and cfg.streaming.maxStreams == 7 and cfg.maxDurationSeconds == 12.5


def test_the_table_is_the_tree() -> None:
    cfg = C.from_mapping(RICH, {})
    fields = {f.name for f in dataclasses.fields(C.Config)} - {"sources", "path"}
    assert set(C.SECTIONS) <= fields
    keys = [s.key for s in C.SETTINGS]
    assert len(keys) == len(set(keys))
    for name in fields - set(C.SECTIONS):
        assert name in C.SETTINGS_BY_KEY
    for section in C.SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            assert f"{section}.{f.name}" in C.SETTINGS_BY_KEY
    for s in C.SETTINGS:
        holder = getattr(cfg, s.section) if s.section else cfg
        assert getattr(holder, s.name) == cfg[s.key] == cfg.values[s.key], s.key
    assert C.SETTINGS_BY_KEY["provider"].choices == ("twilio", "telnyx", "mock")
    assert C.SETTINGS_BY_KEY["streaming.realtimeUrl"].schemes == ("ws", "wss")
    with pytest.raises(KeyError):
        cfg["serve.nope"]  # noqa: B018


def test_the_tree_is_frozen_and_replace_makes_a_copy() -> None:
    cfg = C.from_mapping(TWILIO_OK, {"OPENAI_API_KEY": "sk-env"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.serve.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.provider = "mock"  # type: ignore[misc]
    new = cfg.replace({"serve.port": 4000, "provider": "mock", "streaming.enabled": True})
    assert (new.serve.port, new.provider, new.streaming.enabled) == (4000, "mock", True)
    assert (cfg.serve.port, cfg.provider, cfg.streaming.enabled) == (3334, "twilio", False)
    assert new.serve.bind == cfg.serve.bind and new.twilio == cfg.twilio
    assert new.sources == cfg.sources and new.sources["streaming.openaiApiKey"] == "environment OPENAI_API_KEY"
    with pytest.raises(KeyError):
        cfg.replace({"serve.nope": 1})


@pytest.mark.parametrize("annotation, default, kw, message", [
    (int, None, {}, "default None needs an optional type"),
    (str, "x", {"kind": "mode"}, "kind mode does not go with the type"),
    (int, 0, {"minimum": 1}, "the default 0 is not valid: expected a value >= 1"),
    (dict[str, str], "x", {}, "no kind of setting has the type"),
    (typing.Literal["a", "b"], "c", {}, "the default 'c' is not valid"),
])
def test_a_mistyped_declaration_fails_on_import(annotation, default, kw, message) -> None:
    broken = dataclasses.make_dataclass("Broken", [("bad", annotation, kinds.setting(default, "Doc.", **kw))],
                                        frozen=True)
    with pytest.raises(TypeError, match=message):
        kinds.table(broken)
