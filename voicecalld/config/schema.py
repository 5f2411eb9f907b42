"""The settings: a frozen tree of dataclasses, one class per TOML table.

Each field is one key of voicecalld.toml(5), declared with its type and
``setting(default, doc, ...)``; ``SETTINGS``, the flat table that loading,
``--print-config`` and the man page read, is derived from these classes.
Code reads a loaded configuration by attribute (``cfg.serve.port`` is an
``int``, ``cfg.streaming.openaiApiKey`` a ``str | None``), so mypy checks
every read. Keys keep the camelCase names of the original voice-call plugin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .kinds import Setting, section, setting, table

Provider = Literal["twilio", "telnyx", "mock"]
InboundPolicy = Literal["disabled", "allowlist", "pairing", "open"]
ResponderKind = Literal["llm", "socket", "off"]
OutboundMode = Literal["notify", "conversation"]
TranscriptionEngine = Literal["Google", "Telnyx", "Deepgram", "Azure"]
TtsProvider = Literal["openai"]
TunnelProvider = Literal["none", "ngrok", "tailscale-serve", "tailscale-funnel"]
TailscaleMode = Literal["off", "serve", "funnel"]
VoicemailPolicy = Literal["hangup", "leave-message"]
RecordingChannels = Literal["dual", "mono"]
TurnDetection = Literal["server_vad", "semantic_vad"]
Eagerness = Literal["low", "medium", "high", "auto"]

REDACTED = "<redacted>"


@dataclass(frozen=True)
class ServeSettings:
    """``[serve]``: the webhook server."""

    port: int = setting(3334, "TCP port of the webhook server; 0 picks a free port.", minimum=0, maximum=65535)
    bind: str = setting("127.0.0.1", "Address the webhook server listens on.")
    path: str = setting("/voice/webhook", "URL path of the carrier webhook.", kind="urlpath")
    maxConnections: int = setting(
        512, "Connections the webhook server keeps open while their request arrives, and requests it answers at "
        "once: at most this many of each, media streams not counted. When the waiting connections are at the "
        "limit, the one that has waited longest is closed to make room for a new one; a request that arrives "
        "while this many are being answered gets 503.", minimum=1)
    readTimeoutSec: float = setting(
        10, "A connection must deliver its whole request (line, headers and body) within this many seconds of "
        "connecting, or it is closed. Media streams are exempt once upgraded.", positive=True)


@dataclass(frozen=True)
class OutboundSettings:
    """``[outbound]``: defaults for calls the daemon places."""

    defaultMode: OutboundMode = setting(
        "notify", "Mode of a call request without one: notify (speak, then hang up) or conversation.")
    notifyHangupDelaySec: float = setting(
        3, "In notify mode, hang up this long after the message has finished playing.", minimum=0)
    dialsPerSecond: float | None = setting(
        None, "Outbound calls are dialled at most this many per second; calls waiting for their turn are in "
        "the state queued, first in, first out, and a carrier's rate-limit answer puts a call back at the head "
        "of the queue with backoff. Unset, the carrier's own limit applies: 1 on twilio, 6 on telnyx, none on "
        "mock.", positive=True)
    maxQueued: int = setting(
        1000, "Outbound calls that may wait in the dial queue (for their turn under dialsPerSecond, or for a "
        "free slot under maxConcurrentCalls); past it voicecall.initiate fails with -32001. 0: no queue, a call "
        "that cannot be dialled at once is refused.", minimum=0)
    voicemail: VoicemailPolicy = setting(
        "hangup", "What an outbound call does when an answering machine picks up: hangup (with answering-machine "
        "detection on, the call ends as voicemail) or leave-message (detection is turned on; the message waits "
        "for the detection verdict, a machine gets it after its greeting ends, at the beep, then the call hangs "
        "up and ends as voicemail).")


@dataclass(frozen=True)
class TwilioSettings:
    """``[twilio]``: Twilio Programmable Voice."""

    accountSid: str | None = setting(None, "Twilio Account SID (AC...).", env="TWILIO_ACCOUNT_SID",
                                     credential="twilio-account-sid")
    authToken: str | None = setting(None, "Twilio auth token; also the webhook signing key.", secret=True,
                                    env="TWILIO_AUTH_TOKEN", credential="twilio-auth-token")
    apiBaseUrl: str = setting("https://api.twilio.com", "Twilio REST API base URL.", kind="url")
    machineDetection: bool = setting(
        False, "Ask Twilio to detect answering machines (MachineDetection=Enable); a call a machine answers "
        "is hung up and ends as voicemail.")
    voice: str | None = setting(
        None, "Voice of <Say> (man, woman, Polly.<Name>[-Neural], Google.<name>). Default: Twilio's.")
    language: str = setting("en-US", "Language of <Say> and of <Gather> speech recognition.")
    trustForwardedHeaders: bool = setting(
        False, "Also check webhook signatures against the URL rebuilt from X-Forwarded-Proto/-Host/-Prefix. "
        "Turn on only behind a reverse proxy that sets these headers itself.")


@dataclass(frozen=True)
class TelnyxSettings:
    """``[telnyx]``: Telnyx Call Control v2."""

    apiKey: str | None = setting(None, "Telnyx API key (Bearer token).", secret=True, env="TELNYX_API_KEY",
                                 credential="telnyx-api-key")
    connectionId: str | None = setting(None, "Telnyx Call Control application (connection) id.",
                                       env="TELNYX_CONNECTION_ID", credential="telnyx-connection-id")
    publicKey: str | None = setting(
        None, "Telnyx webhook signing public key: base64 of the raw 32-byte Ed25519 key (PEM also accepted).",
        env="TELNYX_PUBLIC_KEY", credential="telnyx-public-key")
    apiBaseUrl: str = setting("https://api.telnyx.com", "Telnyx REST API base URL.", kind="url")
    voice: str = setting(
        "female", "Voice of speak commands: male or female (basic service level), AWS.Polly.<VoiceId>[-Neural], "
        "Azure.<Voice>, Telnyx.<model>.<voice> or ElevenLabs.<model>.<voice>.")
    language: str = setting(
        "en-US", "Language of speech and of transcription (ignored by Polly voices, which imply their own).")
    transcriptionEngine: TranscriptionEngine = setting(
        "Google", "Speech recognition engine for listening turns (Google gives interim results).")
    machineDetection: bool = setting(
        False, "Detect answering machines on outbound calls; a machine ends the call as voicemail.")


@dataclass(frozen=True)
class StreamingSettings:
    """``[streaming]``: call audio over media streams, transcribed by OpenAI Realtime."""

    enabled: bool = setting(
        False, "Take the call audio over a media stream (Twilio Media Streams, Telnyx media streaming), "
        "transcribe it with OpenAI Realtime and speak over it with OpenAI text-to-speech.")
    streamPath: str = setting("/voice/stream", "URL path of the media-stream WebSocket (both carriers).",
                              kind="urlpath")
    openaiApiKey: str | None = setting(None, "OpenAI API key for speech-to-text and text-to-speech.",
                                       secret=True, env="OPENAI_API_KEY", credential="openai-api-key")
    sttModel: str = setting("gpt-4o-transcribe", "OpenAI transcription model.")
    vadThreshold: float = setting(0.5, "Server VAD activation threshold (0-1).", minimum=0, maximum=1)
    silenceDurationMs: int = setting(
        800, "Silence that ends a caller turn (server_vad). Every reply waits this long after the caller's last "
        "word before it is even requested: the largest single part of a turn's latency. 800 ms, as in the "
        "original plugin, lets slow speakers pause; 400-500 ms answers faster but may cut them off mid-thought.",
        minimum=0)
    turnDetection: TurnDetection = setting(
        "server_vad", "How the end of a caller turn is detected: server_vad (a fixed silence, silenceDurationMs, "
        "after voice energy above vadThreshold) or semantic_vad (the service judges from the words whether the "
        "caller has finished, so a finished sentence ends the turn quickly and a trailing \"and...\" waits; "
        "silenceDurationMs and vadThreshold then do not apply).")
    eagerness: Eagerness = setting(
        "auto", "semantic_vad only: how readily a turn is taken as finished. high answers soonest and may cut a "
        "slow or hesitant speaker off; low lets the caller finish, at the cost of slower replies; auto (the "
        "service's choice) is medium.")
    realtimeUrl: str = setting("wss://api.openai.com/v1/realtime?intent=transcription",
                               "OpenAI Realtime transcription WebSocket URL.", kind="url", schemes=("ws", "wss"))
    maxStreams: int | None = setting(
        None, "Media streams open at once; more are refused with 503 (the call then listens with the carrier's "
        "own recognition: <Gather>, Telnyx transcription). "
        "Unset, it follows maxConcurrentCalls: twice its value, so every call can open a stream while its "
        "previous one closes.", minimum=1)
    maxPendingStreams: int | None = setting(
        None, "Media streams that have connected but not yet sent start; more are refused with 503 (the call "
        "then listens with the carrier's own recognition). Unset, it follows maxConcurrentCalls: every call "
        "can open its stream at once.", minimum=1)


@dataclass(frozen=True)
class RealtimeSettings:
    """``[realtime]``: speech-to-speech through one OpenAI Realtime session per streamed call."""

    enabled: bool = setting(
        False, "Converse through one OpenAI Realtime speech-to-speech session per call that has a media stream "
        "(Twilio or Telnyx; the streaming keys apply), instead of speech-to-text, the responder and "
        "text-to-speech. G.711 audio goes in and comes out unchanged. If the service cannot be reached, the call goes "
        "on with those instead, and the log says so.")
    model: str = setting("gpt-realtime", "Realtime speech-to-speech model.")
    voice: str = setting("marin", "Voice of the model's speech.")
    url: str = setting("wss://api.openai.com/v1/realtime", "OpenAI Realtime WebSocket URL; the model is added "
                       "as its model query parameter.", kind="url", schemes=("ws", "wss"))
    apiKey: str | None = setting(
        None, "OpenAI API key for the Realtime session. Default: streaming.openaiApiKey (OPENAI_API_KEY, "
        "credential openai-api-key).", secret=True)
    instructions: str | None = setting(
        None, "The model's instructions; {caller} is replaced by the other party's number. Default: "
        "responseSystemPrompt, else a built-in prompt for a spoken phone conversation.")
    inputTranscriptionModel: str = setting(
        "gpt-4o-transcribe", "Model that transcribes the caller's speech into the call record.")


@dataclass(frozen=True)
class TtsSettings:
    """``[tts]``: text-to-speech for streamed calls."""

    provider: TtsProvider = setting("openai", "Text-to-speech service for streamed calls.")
    model: str = setting("gpt-4o-mini-tts", "Text-to-speech model.")
    voice: str = setting("coral", "Text-to-speech voice.")
    baseUrl: str = setting("https://api.openai.com/v1", "Base URL of the text-to-speech API.", kind="url")


@dataclass(frozen=True)
class TunnelSettings:
    """``[tunnel]``: a tunnel that gives the webhook a public URL."""

    provider: TunnelProvider = setting(
        "none", "Tunnel that gives the webhook a public URL when publicUrl is unset: ngrok (the ngrok agent), "
        "tailscale-serve (reachable inside the tailnet only) or tailscale-funnel (the internet).")
    ngrokAuthToken: str | None = setting(
        None, "Authtoken of the ngrok account; the agent gets it in its environment, not on its command line.",
        secret=True, env="NGROK_AUTHTOKEN", credential="ngrok-authtoken")
    ngrokDomain: str | None = setting(
        None, "Reserved ngrok domain (like voice.example.ngrok.app) to use instead of a random URL.")
    allowNgrokFreeTier: bool = setting(
        True, "Accept a random ngrok URL, which changes whenever the agent restarts; false requires ngrokDomain.")


@dataclass(frozen=True)
class TailscaleSettings:
    """``[tailscale]``: the legacy form of ``tunnel.provider``."""

    mode: TailscaleMode = setting("off", "Legacy form of tunnel.provider: off, serve or funnel.")
    path: str | None = setting(
        None, "Legacy: URL path Tailscale publishes: serve.path (the default) or a parent path of it.",
        kind="urlpath")


@dataclass(frozen=True)
class ControlSettings:
    """``[control]``: the control socket."""

    socket: str | None = setting(
        None, "Control socket path. Default: $RUNTIME_DIRECTORY/control.sock, else "
        "$XDG_RUNTIME_DIR/voicecalld/control.sock, else /tmp/voicecalld-<uid>/control.sock.", kind="path")
    mode: int = setting(0o660, "File mode of the control socket; other users never get access.", kind="mode")
    maxConnections: int = setting(
        256, "Control connections open at once; further clients get a JSON-RPC error and are disconnected.",
        minimum=1)
    lineTimeoutSec: float = setting(
        30, "A client that has started a request line must finish it within this time, and one that stops "
        "reading replies is disconnected after it.", positive=True)


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: the Prometheus metrics listener (voicecalld(8), Monitoring)."""

    listen: str = setting(
        "", "host:port of a separate HTTP listener serving GET /metrics in the Prometheus text format, like "
        "127.0.0.1:9334 (port 0 picks a free one; daemon.status names it). Empty: no listener, and the "
        "per-request and per-frame figures are not collected.")
    allowRemote: bool = setting(
        False, "Let metrics.listen bind an address other than loopback (the metrics then reach whoever can "
        "reach that address; they name no call or number, but tell call volume and failures).")


@dataclass(frozen=True)
class MockSettings:
    """``[mock]``: the simulated carrier."""

    answerDelayMs: int = setting(1000, "Simulated callee answers after this long.", minimum=0)
    calleeReplies: tuple[str, ...] = setting(
        (), "What the simulated callee says: item i answers the i-th continue; then silence until mock.say.")
    msPerChar: float = setting(60, "Simulated speech takes this long per character.", minimum=0)
    replyDelayMs: int = setting(300, "Simulated callee starts its reply this long after the prompt ended.",
                                minimum=0)
    machineDetection: bool = setting(
        False, "Simulate answering-machine detection (as outbound.voicemail = leave-message always does): every "
        "answered outbound call gets an answeredBy verdict; with outbound.voicemail = hangup a machine ends the "
        "call as voicemail.")
    voicemailNumbers: tuple[str, ...] = setting(
        (), "Numbers whose simulated phone is an answering machine: it answers with a greeting of greetingMs, "
        "then beeps.", kind="list[e164]")
    greetingMs: int = setting(2000, "How long a simulated answering machine's greeting lasts.", minimum=0)
    transferBusy: tuple[str, ...] = setting(
        (), "Transfer targets the simulated network reports busy (the transfer fails; the call goes on).",
        kind="list[e164]")


@dataclass(frozen=True)
class TransferSettings:
    """``[transfer]``: handing calls to other numbers (voicecall.transfer)."""

    allowTo: tuple[str, ...] = setting(
        (), "The only numbers (exact E.164) calls may be transferred to, by a command, an agent or a model; "
        "anything else is refused before the carrier is asked. Empty (the default): transfers are off, and the "
        "auto-responder is offered no transfer_call tool.", kind="list[e164]")


@dataclass(frozen=True)
class RecordingSettings:
    """``[recording]``: the carrier records calls; the daemon keeps metadata only."""

    enabled: bool = setting(
        False, "Record every call (voicecall.initiate's record overrides it per call). The carrier keeps the "
        "audio; the call record lists each recording's URL, duration and channels.")
    channels: RecordingChannels = setting(
        "dual", "dual (the callee and the bot on separate channels) or mono.")
    announce: str = setting(
        "", "A sentence said before anything else on a call that records, e.g. \"This call is recorded.\" "
        "Empty: none.")


@dataclass(frozen=True)
class Config:
    """A validated configuration: the top-level keys, then one field per
    section. ``sources`` says where each key's value came from (file,
    credential, environment or default); ``path`` is the file read."""

    provider: Provider = setting(
        "mock", "Carrier: twilio, telnyx, or mock (simulated calls, no network).")
    fromNumber: str | None = setting(
        None, "Caller ID for outbound calls (E.164). Required for twilio and telnyx.", kind="e164")
    toNumber: str | None = setting(
        None, "Default destination when a call request has no number (E.164).", kind="e164")
    publicUrl: str | None = setting(
        None, "Where carriers reach the webhook: an origin (https://voice.example.com, to which serve.path is "
        "appended) or the whole webhook URL with a path (https://voice.example.com/voice/webhook), used "
        "exactly as given. Media streams go to wss:// on the same host, under the path prefix in front of "
        "serve.path if there is one, at streaming.streamPath. Takes precedence over a tunnel.", kind="url")
    store: str | None = setting(
        None, "Directory of the call log calls.jsonl. Default: $STATE_DIRECTORY, else "
        "$XDG_STATE_HOME/voicecalld (~/.local/state/voicecalld).", kind="path")
    storeCompactBytes: int = setting(
        64 * 1024 * 1024, "When calls.jsonl grows past this many bytes it is rewritten in the background keeping "
        "only the last snapshot of each call (atomically: temporary file, fsync, rename).", minimum=4096)
    storeKeepCalls: int = setting(
        50000, "Ended calls a compaction keeps (the most recent ones); calls in progress are always kept.",
        minimum=1)
    skipSignatureVerification: bool = setting(
        False, "Accept webhooks without verifying the carrier's signature. For local experiments only.")
    maxDurationSeconds: float = setting(
        300, "Hang up with reason timeout this long after the call was answered.", positive=True)
    maxConcurrentCalls: int = setting(
        1, "Calls that may be active at once, inbound and outbound together.", minimum=1)
    transcriptTimeoutMs: int = setting(180000, "How long continue waits for the callee's reply.", minimum=1)
    ringTimeoutMs: int = setting(
        30000, "An outbound call not answered within this time ends as no-answer.", minimum=1)
    inboundPolicy: InboundPolicy = setting(
        "disabled", "Who may call in: disabled (nobody), allowlist (numbers in allowFrom), pairing (as "
        "allowlist), open (anyone).")
    allowFrom: tuple[str, ...] = setting(
        (), "Caller IDs (exact E.164) accepted by the allowlist and pairing policies.", kind="list[e164]")
    inboundGreeting: str = setting(
        "Hello, you have reached the voice assistant. How can I help?", "What an accepted inbound caller hears "
        "first.")
    responder: ResponderKind = setting(
        "llm", "Who answers caller speech that no continue is waiting for, on inbound and conversation calls: "
        "llm (Chat Completions at responseBaseUrl), socket (events.subscribe clients get a call.turn event and "
        "answer with voicecall.speak within responseTimeoutMs), or off.")
    responseModel: str = setting(
        "openai/gpt-4o-mini", "Model for automatic replies as provider/model; the part after the first slash is "
        "sent to the API (so a vLLM model named org/name is written local/org/name).")
    responseSystemPrompt: str | None = setting(
        None, "System prompt for automatic replies; {caller} is replaced by the other party's number. Default: "
        "one or two spoken sentences, no markdown, the caller's number, and when to hang up.")
    responseTimeoutMs: int = setting(
        30000, "How long an automatic reply may take before the caller hears an apology.", minimum=1)
    responseBaseUrl: str = setting(
        "https://api.openai.com/v1", "Base URL of an OpenAI-compatible Chat Completions API (OpenAI, "
        "llama.cpp, vLLM, ...).", kind="url")
    responseApology: str = setting(
        "Sorry, I'm having trouble answering right now. Could you say that again?", "What the caller hears "
        "when an automatic reply fails, times out or comes back empty.")
    responseApiKey: str | None = setting(
        None, "Bearer token for responseBaseUrl. Default: streaming.openaiApiKey (OPENAI_API_KEY).",
        secret=True, credential="response-api-key")
    shutdownGraceSeconds: float = setting(
        10, "On SIGTERM, how long active calls may finish before they are hung up.", minimum=0)

    serve: ServeSettings = section(ServeSettings)
    outbound: OutboundSettings = section(OutboundSettings)
    twilio: TwilioSettings = section(TwilioSettings)
    telnyx: TelnyxSettings = section(TelnyxSettings)
    streaming: StreamingSettings = section(StreamingSettings)
    tts: TtsSettings = section(TtsSettings)
    realtime: RealtimeSettings = section(RealtimeSettings)
    tunnel: TunnelSettings = section(TunnelSettings)
    tailscale: TailscaleSettings = section(TailscaleSettings)
    control: ControlSettings = section(ControlSettings)
    metrics: MetricsSettings = section(MetricsSettings)
    mock: MockSettings = section(MockSettings)
    transfer: TransferSettings = section(TransferSettings)
    recording: RecordingSettings = section(RecordingSettings)

    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: str | None = field(default=None, compare=False)

    def __getitem__(self, key: str) -> object:
        """A value by its dotted key (``cfg["serve.port"]``), as the table names it."""
        if key not in SETTINGS_BY_KEY:
            raise KeyError(key)
        section_name, _, name = key.rpartition(".")
        return getattr(getattr(self, section_name) if section_name else self, name)

    @property
    def values(self) -> dict[str, object]:
        """Every value by dotted key, in table order."""
        return {s.key: self[s.key] for s in SETTINGS}

    def replace(self, changes: Mapping[str, object]) -> Config:
        """A copy with the values of some dotted keys replaced (already
        validated ones: the daemon keeps values that need a restart)."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key not in SETTINGS_BY_KEY:
                raise KeyError(key)
            section_name, _, name = key.rpartition(".")
            (sections.setdefault(section_name, {}) if section_name else top)[name] = value
        for section_name, values in sections.items():
            top[section_name] = dataclasses.replace(getattr(self, section_name), **values)
        return dataclasses.replace(self, **top)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as a nested dict with secrets hidden."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = self[s.key]
            if s.secret and value:
                value = REDACTED
            if s.kind == "mode":
                value = f"{value:04o}"
            elif isinstance(value, tuple):
                value = list(value)
            target = out.setdefault(s.section, {}) if s.section else out
            target[s.name] = value
        return out

    @property
    def secrets(self) -> list[str]:
        """Secret values in use, so log filters can scrub them."""
        return [v for s in SETTINGS if s.secret and isinstance(v := self[s.key], str) and v]


SETTINGS: tuple[Setting, ...] = table(Config)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS if s.section))


# --- values derived from several keys -------------------------------------------------


def stream_limits(config: Config) -> tuple[int, int]:
    """(media streams open at once, streams connected but not started).
    Unless configured, every call the daemon may have can open its stream
    at once, and each can have a second one open while the first closes
    (a stream replaced after ``<Say>``)."""
    calls = config.maxConcurrentCalls
    streaming = config.streaming
    return streaming.maxStreams or 2 * calls, streaming.maxPendingStreams or calls


def tunnel_provider(config: Config) -> TunnelProvider:
    """``tunnel.provider``, else the legacy ``tailscale.mode`` (``none`` if neither)."""
    legacy = config.tailscale.mode
    if config.tunnel.provider != "none" or legacy == "off":
        return config.tunnel.provider
    return "tailscale-serve" if legacy == "serve" else "tailscale-funnel"
