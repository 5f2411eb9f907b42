"""The control protocol's methods (voicecalld-tools(7)) as a table: name,
named parameters with their types, and the handler. Validation happens here,
once, so handlers receive well-typed arguments.

The core's methods are ``METHODS``; a carrier may add its own
(``Provider.control_methods``: the mock's simulated callee), and ``table``
is what a daemon serves: both together."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .. import providers, tool
from ..errors import METHOD_NOT_FOUND, InvalidParams, VoiceCallError
from .spec import Method as MethodOf
from .spec import Param, Session

if TYPE_CHECKING:  # pragma: no cover
    from ..manager import CallManager


class Services(Protocol):
    """What the daemon offers the control server."""

    manager: CallManager

    def daemon_status(self) -> dict[str, Any]: ...
    def expose(self, mode: str) -> dict[str, Any]: ...
    def probe(self, token: str | None) -> dict[str, Any]: ...


#: A method of the daemon's control socket.
Method = MethodOf["Services"]


class MethodNotFound(VoiceCallError):
    code = METHOD_NOT_FOUND


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "true or false"}


def validate(method: str, spec: Method, params: dict[str, Any]) -> dict[str, Any]:
    known = {p.name for p in spec.params}
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            accepted = ", ".join(sorted(known)) or "none"
            raise InvalidParams(f"{method} has no parameter {name!r}{hint}; it takes: {accepted}")
    out: dict[str, Any] = {}
    for p in spec.params:
        value = params.get(p.name)
        if value is None:
            if p.required:
                raise InvalidParams(f"{method} needs the parameter {p.name!r}")
            continue
        if not isinstance(value, p.kind) or (p.kind is int and isinstance(value, bool)):
            kinds = p.kind if isinstance(p.kind, tuple) else (p.kind,)
            expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise InvalidParams(f"{method}: {p.name} must be {expected}")
        out[p.name] = value
    return out


def _history(s: Services, _: Session, p: dict[str, Any]) -> dict[str, Any]:
    limit = p.get("limit", 50)
    if not 1 <= limit <= 10_000:
        raise InvalidParams("voicecall.history: limit must be between 1 and 10000")
    return {"calls": s.manager.history(limit)}


def _subscribe(s: Services, session: Session, p: dict[str, Any]) -> dict[str, Any]:
    session.subscribe(p.get("callId"))
    return {"subscribed": True}


def _tool_schema(s: Services, _: Session, p: dict[str, Any]) -> dict[str, Any]:
    try:
        return tool.schema(p.get("format", "openai"))
    except ValueError as exc:
        raise InvalidParams(f"tool.schema: {exc}") from None


def _tool_call(s: Services, _: Session, p: dict[str, Any]) -> dict[str, Any]:
    if p["name"] != tool.NAME:
        raise InvalidParams(f"tool.call: unknown tool {p['name']!r}; the only tool is {tool.NAME!r}")
    return tool.call(s.manager, p["arguments"])


_CALL_ID = Param("callId", str)
_MESSAGE = Param("message", str)

METHODS: dict[str, Method] = {
    "voicecall.initiate": Method(
        (_MESSAGE, Param("to", str, False), Param("mode", str, False), Param("dtmf", str, False),
         Param("record", bool, False)),
        lambda s, _, p: s.manager.initiate(p["message"], p.get("to"), p.get("mode"), dtmf=p.get("dtmf"),
                                           record=p.get("record"))),
    "voicecall.continue": Method(
        (_CALL_ID, _MESSAGE), lambda s, _, p: s.manager.continue_(p["callId"], p["message"]), slow=True),
    "voicecall.speak": Method((_CALL_ID, _MESSAGE), lambda s, _, p: s.manager.speak(p["callId"], p["message"])),
    "voicecall.end": Method((_CALL_ID,), lambda s, _, p: s.manager.end(p["callId"])),
    "voicecall.status": Method((_CALL_ID,), lambda s, _, p: s.manager.status(p["callId"])),
    "voicecall.list": Method((), lambda s, _, p: {"calls": s.manager.active_calls()}),
    "voicecall.history": Method((Param("limit", int, False),), _history),
    "events.subscribe": Method((Param("callId", str, False),), _subscribe),
    "tool.schema": Method((Param("format", str, False),), _tool_schema),
    "tool.call": Method((Param("name", str), Param("arguments", (dict, str))), _tool_call, slow=True),
    "voicecall.dtmf": Method((_CALL_ID, Param("digits", str)),
                            lambda s, _, p: s.manager.send_dtmf(p["callId"], p["digits"])),
    "voicecall.transfer": Method((_CALL_ID, Param("to", str), Param("message", str, False)),
                                lambda s, _, p: s.manager.transfer(p["callId"], p["to"], p.get("message")), slow=True),
    "daemon.status": Method((), lambda s, _, p: s.daemon_status()),
    "daemon.expose": Method((Param("mode", str),), lambda s, _, p: s.expose(p["mode"])),
    "daemon.probe": Method((Param("token", str, False),), lambda s, _, p: s.probe(p.get("token"))),
}


def table(services: Services | None = None) -> Mapping[str, Method]:
    """The methods a daemon serves: the core's, and its carrier's own."""
    if services is None:
        return METHODS
    extra = services.manager.provider.control_methods()
    return {**METHODS, **extra} if extra else METHODS


def lookup(name: str, services: Services | None = None) -> Method:
    """The method ``name`` as the daemon behind ``services`` serves it
    (without ``services``: the core's methods only)."""
    methods = table(services)
    spec = methods.get(name)
    if spec is None:
        carrier = name.partition(".")[0]
        used = services.manager.provider.name if services is not None else None
        if used is not None and carrier != used and carrier in providers.NAMES:
            # Another carrier's method (mock.say on a Twilio daemon): say why.
            raise MethodNotFound(f"{carrier} methods only exist with provider = {carrier} "
                                 f"(this daemon uses {used})")
        close = difflib.get_close_matches(name, methods, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise MethodNotFound(f"Method not found: {name!r}{hint}")
    return spec
