"""The inbound call policy: who may call in. Pure and strict.

Matching is exact E.164 string equality. Empty, ``anonymous``, national,
suffix-only or otherwise non-canonical caller IDs never pass an allowlist,
whatever digits they end in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .phone import is_e164


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str


def decide(policy: str, allow_from: Iterable[str], caller: object) -> Decision:
    if policy == "open":
        return Decision(True, "inbound policy is open")
    if policy in ("allowlist", "pairing"):
        if not is_e164(caller):
            return Decision(False, "caller ID is missing or not E.164")
        if caller in set(allow_from):
            return Decision(True, "caller is on the allowlist")
        return Decision(False, "caller is not on the allowlist")
    return Decision(False, "inbound calls are disabled")
