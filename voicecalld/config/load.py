"""Loading: a TOML or JSON file, then secrets from systemd credentials or
the environment, then validation that collects *every* problem before
failing, each naming the key and the expected form (voicecalld.toml(5))."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..publicurl import covers, domain_host
from .kinds import got
from .schema import SECTIONS, SETTINGS, SETTINGS_BY_KEY, Config, tunnel_provider

DEFAULT_CONFIG_PATH = "/etc/voicecalld/voicecalld.toml"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


def _flatten(data: Mapping[str, object], problems: list[str]) -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in data.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{name}: expected a section (table), got {got(value)}")
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
    values: dict[str, object] = {}
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
            values[s.key], sources[s.key] = s.default, "default"
            continue
        value, error = s.check(raw)
        if error:
            origin = "" if source == "file" else f" (from {source})"
            problems.append(f"{s.key}: {error}{origin}")
        else:
            values[s.key], sources[s.key] = value, source
    if problems:
        raise ConfigError(problems, path)
    # The checkers returned each value in its field's type.
    config = dataclasses.replace(Config().replace(values), sources=sources, path=path)
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems, path)
    return config


# --- problems that involve several keys ---------------------------------------------------


def _needs(config: Config, provider: str, keys: Iterable[str]) -> list[str]:
    out = []
    for key in keys:
        if not config[key]:
            s = SETTINGS_BY_KEY[key]
            alt = f" (or {s.env})" if s.env else ""
            out.append(f"provider: {provider} needs {key}{alt}")
    return out


_TELNYX_VOICE = re.compile(r"male|female|(AWS\.Polly|Azure|Telnyx|ElevenLabs)\.[A-Za-z0-9_.:-]+")


def _check_telnyx(config: Config) -> list[str]:
    telnyx = config.telnyx
    problems = _needs(config, "telnyx", ("telnyx.apiKey", "telnyx.connectionId", "fromNumber"))
    if not telnyx.publicKey and not config.skipSignatureVerification:
        problems.append("telnyx.publicKey: needed to verify Telnyx webhooks (or TELNYX_PUBLIC_KEY); "
                        "set skipSignatureVerification = true only for local experiments")
    elif telnyx.publicKey:
        from ..providers.telnyx_signature import load_public_key  # nacl: only when Telnyx is configured

        try:
            load_public_key(telnyx.publicKey)
        except ValueError as exc:
            problems.append(f"telnyx.publicKey: {exc} (expected base64 of the raw 32-byte Ed25519 key, or PEM)")
    if not _TELNYX_VOICE.fullmatch(telnyx.voice):
        problems.append(f"telnyx.voice: expected male, female, AWS.Polly.<VoiceId>, Azure.<Voice>, "
                        f"Telnyx.<model>.<voice> or ElevenLabs.<model>.<voice>, got {got(telnyx.voice)}")
    return problems


def _check_tunnel(config: Config) -> list[str]:
    problems = []
    provider, legacy = config.tunnel.provider, config.tailscale.mode
    if provider != "none" and legacy != "off" and provider != f"tailscale-{legacy}":
        problems.append(f"tailscale.mode: the legacy [tailscale] mode = {json.dumps(legacy)} contradicts "
                        f"tunnel.provider = {json.dumps(provider)}; set only tunnel.provider")
    domain = config.tunnel.ngrokDomain
    if tunnel_provider(config) == "ngrok" and not config.tunnel.allowNgrokFreeTier and not domain:
        problems.append("tunnel.ngrokDomain: tunnel.allowNgrokFreeTier = false needs a reserved ngrok domain "
                        "(a random free-tier URL changes on every restart)")
    if domain and not domain_host(domain):
        problems.append(f"tunnel.ngrokDomain: expected a host name like voice.example.ngrok.app, got "
                        f"{json.dumps(domain)}")
    path = config.tailscale.path
    if path and not covers(path, config.serve.path):
        problems.append(f"tailscale.path: must be serve.path ({config.serve.path}) or a parent path of it, "
                        f"got {path}")
    return problems


def _cross_checks(config: Config) -> list[str]:
    problems: list[str] = []
    provider = config.provider
    if provider == "twilio":
        problems += _needs(config, "twilio", ("twilio.accountSid", "twilio.authToken", "fromNumber"))
    elif provider == "telnyx":
        problems += _check_telnyx(config)
    public_url = config.publicUrl
    if provider != "mock" and not public_url and tunnel_provider(config) == "none":
        problems.append(f"publicUrl: provider {provider} needs a public URL for its webhooks "
                        "(set publicUrl, or tunnel.provider)")
    if public_url and (urlsplit(public_url).query or "#" in public_url):
        problems.append("publicUrl: expected an origin or a webhook URL without a query or fragment, like "
                        f"https://voice.example.com/voice/webhook, got {got(public_url)}")
    if config.inboundPolicy in ("allowlist", "pairing") and not config.allowFrom:
        problems.append(f"allowFrom: inboundPolicy {config.inboundPolicy} needs at least one number "
                        "(or use inboundPolicy = \"disabled\")")
    model = config.responseModel
    if not model.strip() or model.endswith("/") or model.startswith("/"):
        problems.append(f"responseModel: expected provider/model or model, like openai/gpt-4o-mini, got {model!r}")
    if not config.responseApology.strip():
        problems.append("responseApology: must not be empty (the caller would hear nothing)")
    if config.serve.path == config.streaming.streamPath:
        problems.append("streaming.streamPath: must differ from serve.path")
    if config.metrics.listen:
        from ..metrics_http import check_listen

        problem = check_listen(config.metrics.listen, config.metrics.allowRemote)
        if problem:
            problems.append(f"metrics.listen: {problem}")
    return problems + _check_tunnel(config)


# --- files ------------------------------------------------------------------------------------


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
