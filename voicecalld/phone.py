"""Phone numbers: strict E.164 checks and masking for logs.

Strictness matters for security: the inbound allowlist compares caller IDs
exactly, so anything that is not canonical E.164 (national formats, suffixes,
``anonymous``, non-ASCII digits, a trailing newline) must fail here rather
than be "normalised" into a match.
"""

from __future__ import annotations

import re

# re.ASCII keeps \d-like classes from matching non-ASCII digits, and
# fullmatch (unlike "$") does not accept a trailing newline.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)


def is_e164(value: object) -> bool:
    """True if ``value`` is a string in canonical E.164 form (``+15550001234``)."""
    return isinstance(value, str) and _E164.fullmatch(value) is not None


def mask(number: object, *, keep: int = 4) -> str:
    """Hide all but the last ``keep`` digits: ``+15550001234`` -> ``+*******1234``.

    Used for info-level logs, where a full phone number is personal data.
    """
    if not isinstance(number, str) or not number:
        return "<none>"
    if len(number) <= keep:
        return "*" * len(number)
    head = "+" if number.startswith("+") else ""
    hidden = len(number) - len(head) - keep
    return head + "*" * hidden + number[-keep:]
