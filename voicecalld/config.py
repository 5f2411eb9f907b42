"""Configuration: one settings table drives loading, defaults, validation,
``--print-config`` and the generated man page.

Keys keep the camelCase names of the original voice-call plugin. A file is
TOML (or JSON when it ends in ``.json``); sections become dotted keys
(``[serve] port`` is ``serve.port``). Secrets may instead come from
``$CREDENTIALS_DIRECTORY/<name>`` (systemd ``LoadCredential=``) or from an
environment variable. Validation collects *every* problem before failing,
each naming the key and the expected form.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import tunnel
from .phone import is_e164

DEFAULT_CONFIG_PATH = "/etc/voicecalld/voicecalld.toml"
REDACTED = "<redacted>"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


# --- value kinds ------------------------------------------------------------
# Each checker returns (value, None) or (None, "expected ..., got ...").

Checked = tuple[Any, str | None]


def _got(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else type(value).__name__


def _check_str(value: Any, s: Setting) -> Checked:
    if not isinstance(value, str):
        return None, f"expected a string, got {_got(value)}"
    return value, None


def _check_bool(value: Any, s: Setting) -> Checked:
    if not isinstance(value, bool):
        return None, f"expected true or false, got {_got(value)}"
    return value, None


def _check_number(value: Any, s: Setting) -> Checked:
    integral = s.kind == "int"
    ok = isinstance(value, int) if integral else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        what = "an integer" if integral else "a number"
        return None, f"expected {what}, got {_got(value)}"
    if s.positive and value <= 0:
        return None, f"expected a value > 0, got {value}"
    if s.minimum is not None and value < s.minimum:
        return None, f"expected a value >= {s.minimum:g}, got {value}"
    if s.maximum is not None and value > s.maximum:
        return None, f"expected a value <= {s.maximum:g}, got {value}"
    return value, None


def _check_choice(value: Any, s: Setting) -> Checked:
    if value not in s.choices:
        return None, f"expected one of {', '.join(s.choices)}, got {_got(value)}"
    return value, None


def _check_e164(value: Any, s: Setting) -> Checked:
    if not is_e164(value):
        return None, f"expected E.164 like +15550001234, got {_got(value)}"
    return value, None


def _check_str_list(value: Any, s: Setting) -> Checked:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None, f"expected a list of strings, got {_got(value)}"
    return list(value), None


def _check_e164_list(value: Any, s: Setting) -> Checked:
    if not isinstance(value, list):
        return None, f"expected a list of E.164 numbers like [\"+15550001234\"], got {_got(value)}"
    bad = [v for v in value if not is_e164(v)]
    if bad:
        return None, f"expected E.164 numbers like +15550001234, got {_got(bad[0])}"
    return list(value), None


def _check_url(value: Any, s: Setting) -> Checked:
    schemes = s.choices or ("http", "https")
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in schemes and parts.netloc:
            return value.rstrip("/"), None
    return None, f"expected a {' or '.join(schemes)} URL like {schemes[-1]}://host/path, got {_got(value)}"


def _check_url_path(value: Any, s: Setting) -> Checked:
    if not isinstance(value, str) or not value.startswith("/") or "?" in value or "#" in value:
        return None, f"expected an absolute URL path like /voice/webhook, got {_got(value)}"
    return value, None


def _check_mode(value: Any, s: Setting) -> Checked:
    # TOML has no octal strings, so accept "0660" as text or 0o660 as a number.
    mode: int | None = None
    if isinstance(value, str) and value and all(c in "01234567" for c in value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    if mode is None or not 0 <= mode <= 0o777:
        return None, f'expected an octal file mode like "0660", got {_got(value)}'
    if mode & 0o007:
        return None, f"expected a mode without permissions for other users, got {mode:04o}"
    if not mode & 0o600 == 0o600:
        return None, f"expected a mode the daemon's own user can read and write, got {mode:04o}"
    return mode, None


_CHECKERS: dict[str, Callable[[Any, Setting], Checked]] = {
    "str": _check_str,
    "path": _check_str,
    "bool": _check_bool,
    "int": _check_number,
    "number": _check_number,
    "choice": _check_choice,
    "e164": _check_e164,
    "list[str]": _check_str_list,
    "list[e164]": _check_e164_list,
    "url": _check_url,
    "urlpath": _check_url_path,
    "mode": _check_mode,
}


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    secret: bool = False
    env: str | None = None
    credential: str | None = None

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def check(self, value: Any) -> Checked:
        return _CHECKERS[self.kind](value, self)


def _s(key: str, kind: str, default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(key, kind, default, doc, **kw)


SETTINGS: tuple[Setting, ...] = (
    # --- top level ---
    _s("provider", "choice", "mock", "Carrier: twilio, telnyx, or mock (simulated calls, no network).",
       choices=("twilio", "telnyx", "mock")),
    _s("fromNumber", "e164", None, "Caller ID for outbound calls (E.164). Required for twilio and telnyx."),
    _s("toNumber", "e164", None, "Default destination when a call request has no number (E.164)."),
    _s("publicUrl", "url", None,
       "Where carriers reach the webhook: an origin (https://voice.example.com, to which serve.path is "
       "appended) or the whole webhook URL with a path (https://voice.example.com/voice/webhook), used "
       "exactly as given. Media streams go to wss:// on the same host, under the path prefix in front of "
       "serve.path if there is one, at streaming.streamPath. Takes precedence over a tunnel."),
    _s("store", "path", None,
       "Directory of the call log calls.jsonl. Default: $STATE_DIRECTORY, else "
       "$XDG_STATE_HOME/voicecalld (~/.local/state/voicecalld)."),
    _s("storeCompactBytes", "int", 64 * 1024 * 1024,
       "When calls.jsonl grows past this many bytes it is rewritten in the background keeping only the "
       "last snapshot of each call (atomically: temporary file, fsync, rename).", minimum=4096),
    _s("storeKeepCalls", "int", 50000,
       "Ended calls a compaction keeps (the most recent ones); calls in progress are always kept.",
       minimum=1),
    _s("skipSignatureVerification", "bool", False,
       "Accept webhooks without verifying the carrier's signature. For local experiments only."),
    _s("maxDurationSeconds", "number", 300, "Hang up with reason timeout this long after the call was answered.",
       positive=True),
    _s("maxConcurrentCalls", "int", 1, "Calls that may be active at once, inbound and outbound together.",
       minimum=1),
    _s("transcriptTimeoutMs", "int", 180000, "How long continue waits for the callee's reply.", minimum=1),
    _s("ringTimeoutMs", "int", 30000, "An outbound call not answered within this time ends as no-answer.",
       minimum=1),
    _s("inboundPolicy", "choice", "disabled",
       "Who may call in: disabled (nobody), allowlist (numbers in allowFrom), pairing (as allowlist), "
       "open (anyone).", choices=("disabled", "allowlist", "pairing", "open")),
    _s("allowFrom", "list[e164]", [], "Caller IDs (exact E.164) accepted by the allowlist and pairing policies."),
    _s("inboundGreeting", "str", "Hello, you have reached the voice assistant. How can I help?",
       "What an accepted inbound caller hears first."),
    _s("responder", "choice", "llm",
       "Who answers caller speech that no continue is waiting for, on inbound and conversation calls: llm "
       "(Chat Completions at responseBaseUrl), socket (events.subscribe clients get a call.turn event and "
       "answer with voicecall.speak within responseTimeoutMs), or off.",
       choices=("llm", "socket", "off")),
    _s("responseModel", "str", "openai/gpt-4o-mini",
       "Model for automatic replies as provider/model; the part after the first slash is sent to the API "
       "(so a vLLM model named org/name is written local/org/name)."),
    _s("responseSystemPrompt", "str", None,
       "System prompt for automatic replies; {caller} is replaced by the other party's number. Default: "
       "one or two spoken sentences, no markdown, the caller's number, and when to hang up."),
    _s("responseTimeoutMs", "int", 30000,
       "How long an automatic reply may take before the caller hears an apology.", minimum=1),
    _s("responseBaseUrl", "url", "https://api.openai.com/v1",
       "Base URL of an OpenAI-compatible Chat Completions API (OpenAI, llama.cpp, vLLM, ...)."),
    _s("responseApology", "str", "Sorry, I'm having trouble answering right now. Could you say that again?",
       "What the caller hears when an automatic reply fails, times out or comes back empty."),
    _s("responseApiKey", "str", None,
       "Bearer token for responseBaseUrl. Default: streaming.openaiApiKey (OPENAI_API_KEY).",
       secret=True, credential="response-api-key"),
    _s("shutdownGraceSeconds", "number", 10,
       "On SIGTERM, how long active calls may finish before they are hung up.", minimum=0),
    # --- [serve] ---
    _s("serve.port", "int", 3334, "TCP port of the webhook server; 0 picks a free port.", minimum=0,
       maximum=65535),
    _s("serve.bind", "str", "127.0.0.1", "Address the webhook server listens on."),
    _s("serve.path", "urlpath", "/voice/webhook", "URL path of the carrier webhook."),
    _s("serve.maxConnections", "int", 512,
       "Connections the webhook server keeps open while their request arrives, and requests it answers at "
       "once: at most this many of each, media streams not counted. When the waiting connections are at the "
       "limit, the one that has waited longest is closed to make room for a new one; a request that arrives "
       "while this many are being answered gets 503.", minimum=1),
    _s("serve.readTimeoutSec", "number", 10,
       "A connection must deliver its whole request (line, headers and body) within this many seconds of "
       "connecting, or it is closed. Media streams are exempt once upgraded.", positive=True),
    # --- [outbound] ---
    _s("outbound.defaultMode", "choice", "notify",
       "Mode of a call request without one: notify (speak, then hang up) or conversation.",
       choices=("notify", "conversation")),
    _s("outbound.notifyHangupDelaySec", "number", 3,
       "In notify mode, hang up this long after the message has finished playing.", minimum=0),
    # --- [twilio] ---
    _s("twilio.accountSid", "str", None, "Twilio Account SID (AC...).", env="TWILIO_ACCOUNT_SID",
       credential="twilio-account-sid"),
    _s("twilio.authToken", "str", None, "Twilio auth token; also the webhook signing key.", secret=True,
       env="TWILIO_AUTH_TOKEN", credential="twilio-auth-token"),
    _s("twilio.apiBaseUrl", "url", "https://api.twilio.com", "Twilio REST API base URL."),
    _s("twilio.machineDetection", "bool", False,
       "Ask Twilio to detect answering machines (MachineDetection=Enable); a call a machine answers "
       "is hung up and ends as voicemail."),
    _s("twilio.voice", "str", None,
       "Voice of <Say> (man, woman, Polly.<Name>[-Neural], Google.<name>). Default: Twilio's."),
    _s("twilio.language", "str", "en-US", "Language of <Say> and of <Gather> speech recognition."),
    _s("twilio.trustForwardedHeaders", "bool", False,
       "Also check webhook signatures against the URL rebuilt from X-Forwarded-Proto/-Host/-Prefix. "
       "Turn on only behind a reverse proxy that sets these headers itself."),
    # --- [telnyx] ---
    _s("telnyx.apiKey", "str", None, "Telnyx API key (Bearer token).", secret=True, env="TELNYX_API_KEY",
       credential="telnyx-api-key"),
    _s("telnyx.connectionId", "str", None, "Telnyx Call Control application (connection) id.",
       env="TELNYX_CONNECTION_ID", credential="telnyx-connection-id"),
    _s("telnyx.publicKey", "str", None,
       "Telnyx webhook signing public key: base64 of the raw 32-byte Ed25519 key (PEM also accepted).",
       env="TELNYX_PUBLIC_KEY", credential="telnyx-public-key"),
    _s("telnyx.apiBaseUrl", "url", "https://api.telnyx.com", "Telnyx REST API base URL."),
    _s("telnyx.voice", "str", "female",
       "Voice of speak commands: male or female (basic service level), AWS.Polly.<VoiceId>[-Neural], "
       "Azure.<Voice>, Telnyx.<model>.<voice> or ElevenLabs.<model>.<voice>."),
    _s("telnyx.language", "str", "en-US",
       "Language of speech and of transcription (ignored by Polly voices, which imply their own)."),
    _s("telnyx.transcriptionEngine", "choice", "Google",
       "Speech recognition engine for listening turns (Google gives interim results).",
       choices=("Google", "Telnyx", "Deepgram", "Azure")),
    _s("telnyx.machineDetection", "bool", False,
       "Detect answering machines on outbound calls; a machine ends the call as voicemail."),
    # --- [streaming] ---
    _s("streaming.enabled", "bool", False,
       "Twilio only: take the call audio over Media Streams and transcribe it with OpenAI Realtime."),
    _s("streaming.streamPath", "urlpath", "/voice/stream", "URL path of the Media Streams WebSocket."),
    _s("streaming.openaiApiKey", "str", None, "OpenAI API key for speech-to-text and text-to-speech.",
       secret=True, env="OPENAI_API_KEY", credential="openai-api-key"),
    _s("streaming.sttModel", "str", "gpt-4o-transcribe", "OpenAI transcription model."),
    _s("streaming.vadThreshold", "number", 0.5, "Server VAD activation threshold (0-1).", minimum=0,
       maximum=1),
    _s("streaming.silenceDurationMs", "int", 800, "Silence that ends a caller turn.", minimum=0),
    _s("streaming.realtimeUrl", "url", "wss://api.openai.com/v1/realtime?intent=transcription",
       "OpenAI Realtime transcription WebSocket URL.", choices=("ws", "wss")),
    _s("streaming.maxStreams", "int", None,
       "Media streams open at once; more are refused with 503 (the call then listens with <Gather>). "
       "Unset, it follows maxConcurrentCalls: twice its value, so every call can open a stream while its "
       "previous one closes.", minimum=1),
    _s("streaming.maxPendingStreams", "int", None,
       "Media streams that have connected but not yet sent start; more are refused with 503 (the call then "
       "listens with <Gather>). Unset, it follows maxConcurrentCalls: every call can open its stream at "
       "once.", minimum=1),
    # --- [tts] ---
    _s("tts.provider", "choice", "openai", "Text-to-speech service for streamed calls.", choices=("openai",)),
    _s("tts.model", "str", "gpt-4o-mini-tts", "Text-to-speech model."),
    _s("tts.voice", "str", "coral", "Text-to-speech voice."),
    _s("tts.baseUrl", "url", "https://api.openai.com/v1", "Base URL of the text-to-speech API."),
    # --- [tunnel] ---
    _s("tunnel.provider", "choice", "none",
       "Tunnel that gives the webhook a public URL when publicUrl is unset: ngrok (the ngrok agent), "
       "tailscale-serve (reachable inside the tailnet only) or tailscale-funnel (the internet).",
       choices=("none", "ngrok", "tailscale-serve", "tailscale-funnel")),
    _s("tunnel.ngrokAuthToken", "str", None,
       "Authtoken of the ngrok account; the agent gets it in its environment, not on its command line.",
       secret=True, env="NGROK_AUTHTOKEN", credential="ngrok-authtoken"),
    _s("tunnel.ngrokDomain", "str", None,
       "Reserved ngrok domain (like voice.example.ngrok.app) to use instead of a random URL."),
    _s("tunnel.allowNgrokFreeTier", "bool", True,
       "Accept a random ngrok URL, which changes whenever the agent restarts; false requires ngrokDomain."),
    # --- [tailscale] (legacy) ---
    _s("tailscale.mode", "choice", "off", "Legacy form of tunnel.provider: off, serve or funnel.",
       choices=("off", "serve", "funnel")),
    _s("tailscale.path", "urlpath", None,
       "Legacy: URL path Tailscale publishes: serve.path (the default) or a parent path of it."),
    # --- [control] ---
    _s("control.socket", "path", None,
       "Control socket path. Default: $RUNTIME_DIRECTORY/control.sock, else "
       "$XDG_RUNTIME_DIR/voicecalld/control.sock, else /tmp/voicecalld-<uid>/control.sock."),
    _s("control.mode", "mode", "0660", "File mode of the control socket; other users never get access."),
    _s("control.maxConnections", "int", 256,
       "Control connections open at once; further clients get a JSON-RPC error and are disconnected.",
       minimum=1),
    _s("control.lineTimeoutSec", "number", 30,
       "A client that has started a request line must finish it within this time, and one that stops "
       "reading replies is disconnected after it.", positive=True),
    # --- [mock] ---
    _s("mock.answerDelayMs", "int", 1000, "Simulated callee answers after this long.", minimum=0),
    _s("mock.calleeReplies", "list[str]", [],
       "What the simulated callee says: item i answers the i-th continue; then silence until mock.say."),
    _s("mock.msPerChar", "number", 60, "Simulated speech takes this long per character.", minimum=0),
    _s("mock.replyDelayMs", "int", 300, "Simulated callee starts its reply this long after the prompt ended.",
       minimum=0),
)

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS if s.section))


# --- the loaded configuration ---------------------------------------------------


class _Section:
    """Read-only attribute view of one section: ``config.serve.port``."""

    def __init__(self, values: Mapping[str, Any], prefix: str) -> None:
        self._values = values
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[f"{self._prefix}.{name}"]
        except KeyError:
            raise AttributeError(f"no setting {self._prefix}.{name}") from None


@dataclass(frozen=True)
class Config:
    """Validated settings, read by dotted key (``cfg["serve.port"]``) or
    attribute (``cfg.serve.port``, ``cfg.provider``)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __getattr__(self, name: str) -> Any:
        if name in SECTIONS:
            return _Section(self.values, name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as a nested dict with secrets hidden."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = self.values[s.key]
            if s.secret and value:
                value = REDACTED
            if s.kind == "mode":
                value = f"{value:04o}"
            target = out.setdefault(s.section, {}) if s.section else out
            target[s.name] = value
        return out

    @property
    def secrets(self) -> list[str]:
        """Secret values in use, so log filters can scrub them."""
        return [v for s in SETTINGS if s.secret and isinstance(v := self.values[s.key], str) and v]


def _flatten(data: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{name}: expected a section (table), got {_got(value)}")
                continue
            for sub, subvalue in value.items():
                flat[f"{name}.{sub}"] = subvalue
        else:
            flat[name] = value
    return flat


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key}: unknown key{hint}"


def _read_credential(name: str, env: Mapping[str, str]) -> str | None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 path: str | None = None) -> Config:
    """Validate ``data`` (a parsed config file) and fill in defaults and secrets."""
    env = os.environ if env is None else env
    problems: list[str] = []
    flat = _flatten(data, problems)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in flat:
        if key not in SETTINGS_BY_KEY:
            problems.append(_unknown(key))
    for s in SETTINGS:
        raw, source = flat.get(s.key), "file"
        if raw is None and s.credential:
            raw, source = _read_credential(s.credential, env), f"credential {s.credential}"
        if raw is None and s.env:
            raw, source = env.get(s.env) or None, f"environment {s.env}"
        if raw is None:
            default = s.default
            if s.kind == "mode" and isinstance(default, str):
                default = int(default, 8)
            values[s.key], sources[s.key] = (list(default) if isinstance(default, list) else default), "default"
            continue
        value, error = s.check(raw)
        if error:
            origin = "" if source == "file" else f" (from {source})"
            problems.append(f"{s.key}: {error}{origin}")
        else:
            values[s.key], sources[s.key] = value, source
    if not problems:
        problems.extend(_cross_checks(values))
    if problems:
        raise ConfigError(problems, path)
    return Config(values, sources, path)


def _needs(values: Mapping[str, Any], provider: str, keys: Iterable[str]) -> list[str]:
    out = []
    for key in keys:
        if not values[key]:
            s = SETTINGS_BY_KEY[key]
            alt = f" (or {s.env})" if s.env else ""
            out.append(f"provider: {provider} needs {key}{alt}")
    return out


_TELNYX_VOICE = re.compile(r"male|female|(AWS\.Polly|Azure|Telnyx|ElevenLabs)\.[A-Za-z0-9_.:-]+")


def _check_telnyx_key(text: str) -> list[str]:
    from .providers.telnyx_signature import load_public_key  # nacl: only when Telnyx is configured

    try:
        load_public_key(text)
    except ValueError as exc:
        return [f"telnyx.publicKey: {exc} (expected base64 of the raw 32-byte Ed25519 key, or PEM)"]
    return []


def _cross_checks(v: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    provider = v["provider"]
    if provider == "twilio":
        problems += _needs(v, "twilio", ("twilio.accountSid", "twilio.authToken", "fromNumber"))
    elif provider == "telnyx":
        problems += _needs(v, "telnyx", ("telnyx.apiKey", "telnyx.connectionId", "fromNumber"))
        if not v["telnyx.publicKey"] and not v["skipSignatureVerification"]:
            problems.append("telnyx.publicKey: needed to verify Telnyx webhooks (or TELNYX_PUBLIC_KEY); "
                            "set skipSignatureVerification = true only for local experiments")
        elif v["telnyx.publicKey"]:
            problems += _check_telnyx_key(v["telnyx.publicKey"])
        if not _TELNYX_VOICE.fullmatch(v["telnyx.voice"]):
            problems.append(f"telnyx.voice: expected male, female, AWS.Polly.<VoiceId>, Azure.<Voice>, "
                            f"Telnyx.<model>.<voice> or ElevenLabs.<model>.<voice>, got {_got(v['telnyx.voice'])}")
    if provider != "mock" and not v["publicUrl"] and v["tunnel.provider"] == "none" \
            and v["tailscale.mode"] == "off":
        problems.append(f"publicUrl: provider {provider} needs a public URL for its webhooks "
                        "(set publicUrl, or tunnel.provider)")
    if v["publicUrl"] and (urlsplit(v["publicUrl"]).query or "#" in v["publicUrl"]):
        problems.append("publicUrl: expected an origin or a webhook URL without a query or fragment, like "
                        f"https://voice.example.com/voice/webhook, got {_got(v['publicUrl'])}")
    if v["inboundPolicy"] in ("allowlist", "pairing") and not v["allowFrom"]:
        problems.append(f"allowFrom: inboundPolicy {v['inboundPolicy']} needs at least one number "
                        "(or use inboundPolicy = \"disabled\")")
    model = v["responseModel"]
    if not model.strip() or model.endswith("/") or model.startswith("/"):
        problems.append(f"responseModel: expected provider/model or model, like openai/gpt-4o-mini, got {model!r}")
    if not v["responseApology"].strip():
        problems.append("responseApology: must not be empty (the caller would hear nothing)")
    if v["serve.path"] == v["streaming.streamPath"]:
        problems.append("streaming.streamPath: must differ from serve.path")
    problems += tunnel.check_config(v)
    return problems


def parse_file(path: str) -> dict[str, Any]:
    """Read a TOML file, or JSON when the name ends in ``.json``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror}"], path) from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ConfigError(["expected a JSON object at the top level"], path)
            return data
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(["the file is not valid UTF-8"], path) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise ConfigError([f"invalid {kind}: {exc}"], path) from None


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path``; with no path, the default file if it exists, else defaults
    (which run the mock carrier)."""
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    data = parse_file(path) if path else {}
    return from_mapping(data, env, path)


# --- rendering --------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A value as TOML (strings as JSON strings, which TOML accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_toml(config: Config) -> str:
    """The effective configuration as TOML, secrets redacted, unset keys commented."""
    nested = config.redacted()
    lines: list[str] = []

    def emit(table: Mapping[str, Any]) -> None:
        for name, value in table.items():
            if isinstance(value, dict):
                continue
            if value is None:
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {toml_value(value)}")

    emit(nested)
    for section in SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        emit(nested[section])
    return "\n".join(lines) + "\n"


def describe_default(s: Setting) -> str:
    """The default as documentation shows it."""
    if s.default is None:
        return "unset"
    if s.kind == "mode" or isinstance(s.default, str):
        return f'"{s.default}"'
    return toml_value(s.default)


def stream_limits(config: Config) -> tuple[int, int]:
    """(media streams open at once, streams connected but not started).
    Unless configured, every call the daemon may have can open its stream
    at once, and each can have a second one open while the first closes
    (a stream replaced after ``<Say>``)."""
    calls = int(config.maxConcurrentCalls)
    streaming = config.streaming
    return int(streaming.maxStreams or 2 * calls), int(streaming.maxPendingStreams or calls)
