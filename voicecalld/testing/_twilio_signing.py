"""X-Twilio-Signature, computed the way Twilio's servers do.

Written from Twilio's own description of the algorithm
(https://www.twilio.com/docs/usage/security, "Validating requests are
coming from Twilio"), one documented step at a time, and not imported from
the daemon: the fake exists to be an *independent* check of the daemon's
validator (``providers/twilio_signature.py``), so sharing its code, or
copying it, would let one bug pass both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

#: Form parameters: a mapping (a value may be a list of values) or name/value pairs.
Params = Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


def _values_by_name(params: Params | None) -> dict[str, list[str]]:
    """Every value sent under each name (a repeated name has several)."""
    by_name: dict[str, list[str]] = {}
    pairs = params.items() if isinstance(params, Mapping) else (params or ())
    for name, value in pairs:
        values = [value] if isinstance(value, str) else list(value)
        by_name.setdefault(name, []).extend(values)
    return by_name


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio sends with a request to ``url``."""
    # 1. Take the full URL of the request, query string and all.
    data = url
    # 2. Sort the POST parameters by name, case-sensitively (Unix sort
    #    order); a name sent several times comes once per value, in order.
    by_name = _values_by_name(params)
    # 3. Append each name and then its value, with no delimiters.
    for name in sorted(by_name):
        for value in sorted(by_name[name]):
            data += name + value
    # 4. Sign the result with HMAC-SHA1, the auth token being the key.
    digest = hmac.digest(auth_token.encode("utf-8"), data.encode("utf-8"), "sha1")
    # 5. Base64-encode the hash.
    return base64.b64encode(digest).decode("ascii")


def body_sha256_url(url: str, body: bytes) -> str:
    """The URL Twilio signs for a JSON body: ``bodySHA256=<hex>`` appended to the query."""
    digest = hashlib.sha256(body).hexdigest()
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}bodySHA256={digest}"


def url_with_port(url: str) -> str:
    """``url`` with its default port spelled out (443 for https, 80 otherwise).

    Twilio's validators accept a signature over either spelling; the fake
    offers this so tests can check that a validator really does too.
    """
    parts = urlsplit(url)
    if parts.port is not None:
        return url
    port = 443 if parts.scheme == "https" else 80
    netloc = f"{parts.netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
