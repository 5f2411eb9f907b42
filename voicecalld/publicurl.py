"""Public URLs: where carriers reach the webhook and the media streams.
Every carrier builds its URLs here, so the two forms of ``publicUrl``
(voicecalld.toml(5)) mean the same thing everywhere:

* an origin, ``https://voice.example.com`` (a tunnel's URL is always one):
  the webhook is that plus ``serve.path``;
* a whole webhook URL with a path, ``https://voice.example.com/voice/webhook``
  (the form the original plugin documented): used exactly as given. A
  reverse proxy may mount the daemon under a prefix
  (``https://proxy.example/prefix/voice/webhook`` -> ``/voice/webhook``).

Media streams go to ``wss://`` + the same host + that prefix (the part of
the path in front of ``serve.path``; none when the path does not end in it)
+ ``streaming.streamPath``. Carriers connect media streams over TLS only,
so the scheme is ``wss`` even when ``publicUrl`` is plain http.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_origin(public_url: str) -> bool:
    return urlsplit(public_url).path in ("", "/")


def webhook_url(public_url: str, serve_path: str) -> str:
    """The URL carriers post webhooks to (and sign)."""
    if is_origin(public_url):
        parts = urlsplit(public_url)
        return urlunsplit((parts.scheme, parts.netloc, serve_path, "", ""))
    return public_url


def path_prefix(public_url: str, serve_path: str) -> str:
    """The path a proxy puts in front of the daemon's own paths ("" if none)."""
    path = urlsplit(public_url).path.rstrip("/")
    return path[:-len(serve_path)] if path.endswith(serve_path) else ""


def stream_url(public_url: str, serve_path: str, stream_path: str) -> str:
    """The ``wss://`` URL of the media-stream endpoint."""
    parts = urlsplit(public_url)
    return urlunsplit(("wss", parts.netloc, path_prefix(public_url, serve_path) + stream_path, "", ""))


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` (already encoded) appended, if there is one."""
    if not query:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def covers(prefix: str, path: str) -> bool:
    """True if URL path ``path`` is ``prefix`` or lies under it."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def domain_host(domain: str) -> str | None:
    """The host name of a bare domain or an origin URL (``voice.example.ngrok.app``,
    ``https://voice.example.ngrok.app/``), or None for anything else."""
    text = domain if "://" in domain else f"https://{domain}"
    parts = urlsplit(text)
    host = parts.hostname
    if not host or parts.path not in ("", "/") or parts.query or "." not in host:
        return None
    return host
