"""How a control method is declared: its named parameters and its handler.

A leaf module, so that a carrier can declare methods of its own (the mock's
simulated callee) without importing the engine or the method table: the
handler's first argument, the daemon's services, is a type parameter. The
core's methods take ``control.methods.Services``; a carrier's take
``object`` (they need nothing from the daemon but themselves), and since a
handler that accepts anything also accepts the services, such a
``Method[object]`` is a ``Method[Services]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

ServicesT = TypeVar("ServicesT", contravariant=True)


class Session(Protocol):
    """One client connection."""

    def subscribe(self, call_id: str | None) -> None: ...


@dataclass(frozen=True)
class Param:
    name: str
    kind: type | tuple[type, ...]
    required: bool = True


@dataclass(frozen=True)
class Method(Generic[ServicesT]):
    params: tuple[Param, ...]
    handler: Callable[[ServicesT, Session, dict[str, Any]], Any]
    #: May block for a long time (waits for the callee): run it off the
    #: connection's reader so later requests on the connection are served.
    slow: bool = False
