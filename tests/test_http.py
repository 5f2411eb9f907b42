"""The carrier REST client's timeouts and retry rules, against a real local server."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from voicecalld.errors import ProviderError
from voicecalld.providers.http import RestClient, retry_after


class Script:
    """A server answering each request with the next scripted reply."""

    def __init__(self, replies) -> None:
        self.replies = list(replies)
        self.hits = 0
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __call__(self, environ, start_response):
        Request(environ).get_data()
        self.hits += 1
        reply = self.replies.pop(0) if self.replies else (200, {}, 0)
        status, headers, delay = reply
        time.sleep(delay)
        return Response("{}", status=status, headers=headers, mimetype="application/json")(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()


@pytest.fixture
def sleeps():
    return []


def client(url: str, sleeps: list, **kw) -> RestClient:
    return RestClient("test", url, sleep=sleeps.append, retries=3, **kw)


@pytest.mark.parametrize("idempotent,replies,hits,status", [
    (True, [(500, {}, 0), (503, {}, 0), (200, {}, 0)], 3, 200),
    (False, [(500, {}, 0)], 1, 500),                        # may have acted: never repeated
    (False, [(429, {}, 0), (200, {}, 0)], 2, 200),           # refused before processing: safe
    (True, [(502, {}, 0)] * 5, 4, 502),                      # gives up after the retries
    (True, [(404, {}, 0)], 1, 404),                          # a client error is final
])
def test_retry_rules(idempotent, replies, hits, status, sleeps) -> None:
    server = Script(replies)
    try:
        response = client(server.url, sleeps).request("POST", "/x", idempotent=idempotent)
        assert (response.status_code, server.hits) == (status, hits)
        assert len(sleeps) == hits - 1
        assert all(0 <= s <= 4.0 for s in sleeps)
    finally:
        server.close()


def test_retry_after_is_honoured(sleeps) -> None:
    server = Script([(429, {"Retry-After": "2"}, 0), (200, {}, 0)])
    try:
        client(server.url, sleeps).request("GET", "/x", idempotent=True)
        assert sleeps == [2.0]
    finally:
        server.close()


def test_backoff_grows_and_is_capped(sleeps) -> None:
    import random

    server = Script([(503, {}, 0)] * 10)
    try:
        c = RestClient("test", server.url, sleep=sleeps.append, retries=6, backoff=0.5, max_backoff=2.0,
                       rng=random.Random(3))
        c.request("GET", "/x", idempotent=True)
        assert len(sleeps) == 6 and max(sleeps) <= 2.0
    finally:
        server.close()


def test_read_timeout_retried_only_when_idempotent(sleeps) -> None:
    server = Script([(200, {}, 1.0), (200, {}, 0)])
    try:
        c = client(server.url, sleeps, timeout=(1.0, 0.2))
        assert c.request("GET", "/x", idempotent=True).status_code == 200
        server.replies = [(200, {}, 1.0)]
        with pytest.raises(ProviderError, match="no response in time"):
            c.request("POST", "/x", idempotent=False)
    finally:
        server.close()


def test_connection_refused_is_retried_even_when_not_idempotent(sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(ProviderError) as info:
        client(f"http://127.0.0.1:{port}", sleeps).request("POST", "/x", idempotent=False)
    assert "connection refused" in info.value.message and len(sleeps) == 3


def test_retry_after_forms() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
