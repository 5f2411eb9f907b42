"""Kinds of setting values, and the flat table derived from the typed tree.

A setting is a dataclass field declared with its Python type and
``setting(default, doc, ...)``. Its *kind* (what a file may write and how
it is checked) follows from the type: ``str``, ``bool``, ``int``,
``float`` (a number), ``tuple[str, ...]`` (a list of strings) or a
``Literal`` of strings (a choice); ``kind=`` refines a type where the type
alone says too little (an E.164 number, a URL, a file mode). ``table``
walks the tree and returns one ``Setting`` row per key, which loading,
``--print-config`` and voicecalld.toml(5) read.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from ..phone import is_e164

T = TypeVar("T")

#: What a checker returns: (the value as the configuration holds it, None),
#: or (None, "expected ..., got ...").
Checked = tuple[object, str | None]

_SPEC = "voicecalld.setting"
_SECTION = "voicecalld.section"


def got(value: object) -> str:
    """A value as an error message quotes it."""
    return json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else type(value).__name__


# --- checkers: one per kind ------------------------------------------------------------


def _check_str(value: object, s: Setting) -> Checked:
    if not isinstance(value, str):
        return None, f"expected a string, got {got(value)}"
    return value, None


def _check_bool(value: object, s: Setting) -> Checked:
    if not isinstance(value, bool):
        return None, f"expected true or false, got {got(value)}"
    return value, None


def _check_number(value: object, s: Setting) -> Checked:
    integral = s.kind == "int"
    if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
        what = "an integer" if integral else "a number"
        return None, f"expected {what}, got {got(value)}"
    if s.positive and value <= 0:
        return None, f"expected a value > 0, got {value}"
    if s.minimum is not None and value < s.minimum:
        return None, f"expected a value >= {s.minimum:g}, got {value}"
    if s.maximum is not None and value > s.maximum:
        return None, f"expected a value <= {s.maximum:g}, got {value}"
    return value, None


def _check_choice(value: object, s: Setting) -> Checked:
    if value not in s.choices:
        return None, f"expected one of {', '.join(s.choices)}, got {got(value)}"
    return value, None


def _check_e164(value: object, s: Setting) -> Checked:
    if not is_e164(value):
        return None, f"expected E.164 like +15550001234, got {got(value)}"
    return value, None


def _check_str_list(value: object, s: Setting) -> Checked:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return None, f"expected a list of strings, got {got(value)}"
    return tuple(value), None


def _check_e164_list(value: object, s: Setting) -> Checked:
    if not isinstance(value, (list, tuple)):
        return None, f"expected a list of E.164 numbers like [\"+15550001234\"], got {got(value)}"
    bad = [v for v in value if not is_e164(v)]
    if bad:
        return None, f"expected E.164 numbers like +15550001234, got {got(bad[0])}"
    return tuple(value), None


def _check_url(value: object, s: Setting) -> Checked:
    schemes = s.schemes or ("http", "https")
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in schemes and parts.netloc:
            return value.rstrip("/"), None
    return None, f"expected a {' or '.join(schemes)} URL like {schemes[-1]}://host/path, got {got(value)}"


def _check_url_path(value: object, s: Setting) -> Checked:
    if not isinstance(value, str) or not value.startswith("/") or "?" in value or "#" in value:
        return None, f"expected an absolute URL path like /voice/webhook, got {got(value)}"
    return value, None


def _check_mode(value: object, s: Setting) -> Checked:
    # TOML has no octal strings, so accept "0660" as text or 0o660 as a number.
    mode: int | None = None
    if isinstance(value, str) and value and all(c in "01234567" for c in value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    if mode is None or not 0 <= mode <= 0o777:
        return None, f'expected an octal file mode like "0660", got {got(value)}'
    if mode & 0o007:
        return None, f"expected a mode without permissions for other users, got {mode:04o}"
    if not mode & 0o600 == 0o600:
        return None, f"expected a mode the daemon's own user can read and write, got {mode:04o}"
    return mode, None


_CHECKERS: dict[str, Callable[[object, Setting], Checked]] = {
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

#: The kind a bare type means, and the type each refining ``kind=`` needs.
_KIND_OF_TYPE: dict[object, str] = {str: "str", bool: "bool", int: "int", float: "number",
                                    tuple[str, ...]: "list[str]"}
_TYPE_OF_KIND: dict[str, object] = {"path": str, "e164": str, "url": str, "urlpath": str, "mode": int,
                                    "list[e164]": tuple[str, ...]}


# --- declaring settings ----------------------------------------------------------------


def setting(default: T, doc: str, *, kind: str | None = None, minimum: float | None = None,
            maximum: float | None = None, positive: bool = False, secret: bool = False, env: str | None = None,
            credential: str | None = None, schemes: tuple[str, ...] = ()) -> T:
    """A setting field: its default, the sentence voicecalld.toml(5) prints,
    and how a value is checked beyond its type. ``secret`` values are
    redacted and scrubbed from logs; ``credential`` and ``env`` name where
    a value missing from the file is read from (in that order); ``schemes``
    those a URL may have (http and https unless given)."""
    # The row without its key, and without its kind unless given: table() adds them.
    row = Setting("", kind or "", default, doc, (), minimum, maximum, positive, secret, env, credential, schemes)
    return field(default=default, metadata={_SPEC: row})


def section(cls: Callable[[], T]) -> T:
    """A field holding a section (a TOML table) of settings."""
    return field(default_factory=cls, metadata={_SECTION: True})


@dataclass(frozen=True)
class Setting:
    """One key of the table: ``serve.port``, its kind, default and doc."""

    key: str
    kind: str
    default: object
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    secret: bool = False
    env: str | None = None
    credential: str | None = None
    schemes: tuple[str, ...] = ()  # of a URL; none given means http and https

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def check(self, value: object) -> Checked:
        return _CHECKERS[self.kind](value, self)


def _row(key: str, annotation: object, spec: Setting) -> Setting:
    """The table row of one field; raises TypeError when its type, kind and
    default disagree (so a mistyped declaration fails on import)."""
    # Only ``X | None`` is optional: a value is either set or None (unset).
    optional = get_origin(annotation) is types.UnionType and type(None) in get_args(annotation)
    base = next(a for a in get_args(annotation) if a is not type(None)) if optional else annotation
    choices: tuple[str, ...] = ()
    if get_origin(base) is Literal:
        kind, choices = "choice", tuple(str(a) for a in get_args(base))
    elif base in _KIND_OF_TYPE:
        kind = _KIND_OF_TYPE[base]
    else:
        raise TypeError(f"{key}: no kind of setting has the type {annotation}")
    if spec.kind:
        if _TYPE_OF_KIND.get(spec.kind) != base:
            raise TypeError(f"{key}: kind {spec.kind} does not go with the type {annotation}")
        kind = spec.kind
    if spec.default is None and not optional:
        raise TypeError(f"{key}: default None needs an optional type, not {annotation}")
    row = dataclasses.replace(spec, key=key, kind=kind, choices=choices)
    if spec.default is not None and row.check(spec.default)[1] is not None:
        raise TypeError(f"{key}: the default {spec.default!r} is not valid: {row.check(spec.default)[1]}")
    return row


def table(root: type) -> tuple[Setting, ...]:
    """The flat table of ``root``'s settings: its own fields first, then
    those of each section, in declaration order."""
    rows: list[Setting] = []
    sections: list[tuple[str, type]] = []
    hints = get_type_hints(root)
    for f in fields(root):
        if _SPEC in f.metadata:
            rows.append(_row(f.name, hints[f.name], f.metadata[_SPEC]))
        elif f.metadata.get(_SECTION):
            cls = hints[f.name]
            assert is_dataclass(cls) and isinstance(cls, type)
            sections.append((f.name, cls))
    for name, cls in sections:
        section_hints = get_type_hints(cls)
        for f in fields(cls):
            rows.append(_row(f"{name}.{f.name}", section_hints[f.name], f.metadata[_SPEC]))
    return tuple(rows)
