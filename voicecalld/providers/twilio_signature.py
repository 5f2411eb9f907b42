"""X-Twilio-Signature (HMAC-SHA1), verification side. Pure: no I/O, no clock.

What Twilio signs (https://www.twilio.com/docs/usage/security, and
twilio-python's ``twilio/request_validator.py``, whose behaviour this follows):

* the full URL it requested, query string included, exactly as given to it;
* for a form POST, every parameter appended as ``name + value`` with no
  separators, names sorted by code point and each name's values sorted;
* for a JSON body, the URL alone, which then carries ``bodySHA256=<hex>``
  in its query; the hash must match the raw body;
* for a Media Streams WebSocket upgrade, the ``wss://host/path`` URL alone.

``base64(HMAC-SHA1(auth token, that string))``. Twilio's own validator
accepts a signature made over the URL with or without its port (":443" for
https, ":80" for anything else, wss included), because Twilio's back end is
inconsistent about it; this one does the same, and nothing looser.

The caller decides *which* URL to check: the public URL the daemon handed
to Twilio, never one rebuilt from a Host header an attacker controls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

#: Form parameters: a mapping (a value may be a list of values) or name/value pairs.
Params = Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


def _pairs(params: Params | None) -> list[tuple[str, str]]:
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
    return [(str(name), str(value)) for name, value in params]


def signing_string(url: str, params: Params | None = None) -> str:
    """The text fed to the HMAC: ``url`` then sorted ``name + value`` pairs."""
    return url + "".join(name + value for name, value in sorted(_pairs(params)))


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    mac = hmac.new(auth_token.encode("utf-8"), signing_string(url, params).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _split_netloc(netloc: str) -> tuple[str, str, str | None]:
    """(userinfo@ or "", host, port or None); IPv6 hosts keep their brackets."""
    userinfo, _, hostport = netloc.rpartition("@")
    prefix = userinfo + "@" if userinfo else ""
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else None
        return prefix, host, port
    host, colon, port = hostport.partition(":")
    return prefix, host, port if colon else None


def port_variants(url: str) -> tuple[str, str]:
    """(``url`` without its port, ``url`` with a port), as twilio-python's
    ``remove_port``/``add_port`` build them. A URL that names a port keeps it
    in the second form; one that does not gets 443 for https, else 80.

    Only the authority changes: the rest of the URL stays byte for byte what
    was signed (urlsplit would, for one, silently drop tabs and newlines)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, url
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    end = min(ends, default=len(rest))
    prefix, host, port = _split_netloc(rest[:end])
    tail = rest[end:]
    without = f"{scheme}://{prefix}{host}{tail}"
    if not port:
        port = "443" if scheme.lower() == "https" else "80"
        return without, f"{scheme}://{prefix}{host}:{port}{tail}"
    return without, url


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def validate(auth_token: str, url: str, signature: str | None, params: Params | None = None, *,
             body: bytes | None = None) -> bool:
    """Is ``signature`` what Twilio sends for a request to ``url``?

    Form requests pass their ``params``. JSON requests pass the raw ``body``
    instead: the URL must then carry ``bodySHA256`` and the hash must match
    (a body without it is refused, as nothing would bind the body to the
    signature). Every comparison is constant-time.
    """
    if not signature or not auth_token:
        return False
    body_ok = True
    if body is not None:
        hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        if not hashes:
            return False
        body_ok = _equal(body_sha256(body), hashes[0])
        params = None
    without, with_port = port_variants(url)
    # Compute both before deciding, so timing does not say which form matched.
    match_without = _equal(compute_signature(auth_token, without, params), signature)
    match_with = _equal(compute_signature(auth_token, with_port, params), signature)
    return body_ok and (match_without or match_with)
