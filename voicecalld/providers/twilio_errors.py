"""Twilio REST errors as messages a person can act on. Pure.

Twilio answers a failed request with ``{"code", "message", "more_info",
"status"}`` (https://www.twilio.com/docs/api/errors lists the codes).
The code says what to fix, and in which
setting of ours; Twilio's own message is kept as the fallback. Phone numbers
in the text are masked, as everywhere in logs and errors.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ProviderError
from ..phone import mask

#: Hanging up a call that is already over: not an error.
ALREADY_ENDED = frozenset({20404, 21220})

# code -> advice; {to}/{from_} are the masked numbers of the request.
_ADVICE: dict[int, str] = {
    20003: "Twilio rejected the credentials: check twilio.accountSid and twilio.authToken "
           "(or TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)",
    20404: "Twilio does not know this account or call: check twilio.accountSid",
    20429: "Twilio is rate-limiting this account; try again in a moment",
    21201: "the call has no 'To' number",
    21205: "Twilio refused the webhook URL: publicUrl must be a public http(s) URL",
    21208: "Twilio refused the ring timeout: ringTimeoutMs must be between 1000 and 600000",
    21210: "fromNumber {from_} is not a Twilio number or verified caller ID of this account: "
           "buy or verify it in the Twilio console, or change fromNumber",
    21211: "the 'To' number {to} is not a valid phone number: use E.164 like +15550001234",
    21212: "fromNumber {from_} is not a valid caller ID: use a Twilio number in E.164 form",
    21213: "the call has no 'From' number: set fromNumber",
    21214: "the 'To' number {to} cannot be reached",
    21215: "Twilio's geographic permissions block calls to {to}: enable the destination country "
           "under Voice > Settings > Geo permissions in the Twilio console",
    21216: "the 'To' number {to} is blocked by Twilio",
    21217: "the 'To' number {to} is not a valid phone number",
    21219: "trial accounts may only call verified numbers: verify {to} in the Twilio console, "
           "or upgrade the account",
    21220: "the call is no longer in progress at Twilio",
    32018: "the TwiML for this call is longer than Twilio's 4000-character limit",
}

_NUMBER = re.compile(r"\+?\d{7,15}")


def _mask_numbers(text: str) -> str:
    return _NUMBER.sub(lambda m: mask(m.group(0)), text)


def parse(body: Any) -> tuple[int | None, str | None]:
    """(code, message) from a Twilio error body, when it has them."""
    if not isinstance(body, dict):
        return None, None
    code = body.get("code")
    message = body.get("message")
    return (code if isinstance(code, int) and not isinstance(code, bool) else None,
            message if isinstance(message, str) else None)


def provider_error(status: int, body: Any, doing: str, *, to: str | None = None,
                   from_: str | None = None) -> ProviderError:
    """The ProviderError for a failed request (``doing``: "placing the call"...)."""
    code, message = parse(body)
    if code is None:
        return ProviderError(f"Twilio answered HTTP {status} while {doing}", status=status,
                             retryable=status == 429 or status >= 500)
    advice = _ADVICE.get(code)
    if advice is not None:
        text = advice.format(to=mask(to), from_=mask(from_))
    else:
        text = _mask_numbers(message or "no message")
    return ProviderError(f"{text} (Twilio error {code}, HTTP {status}, while {doing})",
                         provider_code=code, status=status, retryable=status == 429 or status >= 500)
