"""X-Twilio-Signature, computed the way Twilio's servers do.

Deliberately written from the protocol description (protocols.md C) and not
imported from the daemon: the fake exists to be an *independent* check of
the daemon's validator, so sharing code would let one bug pass both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

Params = Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    """Normalise a mapping (values may be lists) or a list of pairs to pairs."""
    if params is None:
        return []
    if isinstance(params, Mapping):
        out: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                out.append((name, value))
            else:
                out.extend((name, v) for v in value)
        return out
    return [(str(k), str(v)) for k, v in params]


def signing_string(url: str, params: Params | None = None) -> str:
    """The exact text Twilio feeds to HMAC: URL, then sorted name+value pairs.

    Names sort by code point (case-sensitive) and a repeated name contributes
    once per value, values sorted too; there are no separators at all.
    """
    pairs = sorted(_pairs(params))
    return url + "".join(name + value for name, value in pairs)


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """base64(HMAC-SHA1(auth_token, url + sorted params)), as sent by Twilio."""
    mac = hmac.new(auth_token.encode("utf-8"), signing_string(url, params).encode("utf-8"),
                   hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


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
