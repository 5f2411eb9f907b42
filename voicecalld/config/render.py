"""The configuration as text: ``--print-config`` (TOML, secrets redacted)
and defaults as voicecalld.toml(5) shows them."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .kinds import Setting
from .schema import SECTIONS, Config


def toml_value(value: object) -> str:
    """A value as TOML (strings as JSON strings, which TOML accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_toml(config: Config) -> str:
    """The effective configuration as TOML, secrets redacted, unset keys commented."""
    nested = config.redacted()
    lines: list[str] = []

    def emit(table: Mapping[str, object]) -> None:
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
    if s.kind == "mode":
        return f'"{s.default:04o}"'
    if isinstance(s.default, str):
        return f'"{s.default}"'
    return toml_value(s.default)
