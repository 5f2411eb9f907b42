"""Configuration: one typed tree of settings (``schema``) drives loading,
defaults, validation, ``--print-config`` and the generated man page
voicecalld.toml(5).

A file is TOML (or JSON when it ends in ``.json``); sections become dotted
keys (``[serve] port`` is ``serve.port``, read as ``cfg.serve.port``).
Secrets may instead come from ``$CREDENTIALS_DIRECTORY/<name>`` (systemd
``LoadCredential=``) or from an environment variable.
"""

from __future__ import annotations

from .kinds import Setting
from .load import DEFAULT_CONFIG_PATH, ConfigError, from_mapping, load, parse_file
from .render import describe_default, render_toml, toml_value
from .schema import (
    REDACTED,
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_KEY,
    Config,
    ControlSettings,
    MockSettings,
    OutboundSettings,
    ServeSettings,
    StreamingSettings,
    TailscaleSettings,
    TelnyxSettings,
    TtsSettings,
    TunnelSettings,
    TwilioSettings,
    stream_limits,
    tunnel_provider,
)

__all__ = [
    "DEFAULT_CONFIG_PATH", "REDACTED", "SECTIONS", "SETTINGS", "SETTINGS_BY_KEY", "Config", "ConfigError",
    "ControlSettings", "MockSettings", "OutboundSettings", "ServeSettings", "Setting", "StreamingSettings",
    "TailscaleSettings", "TelnyxSettings", "TtsSettings", "TunnelSettings", "TwilioSettings", "describe_default",
    "from_mapping", "load", "parse_file", "render_toml", "stream_limits", "toml_value", "tunnel_provider",
]
