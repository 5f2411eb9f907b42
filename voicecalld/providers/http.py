"""HTTP for carrier REST APIs: one pooled session per carrier, a timeout on
every request, and retries that are safe.

Retrying is only safe when repeating the request cannot repeat its effect.
``idempotent=True`` requests (GETs, hang-ups, Telnyx commands carrying a
``command_id``) are retried on 429, 5xx, timeouts and dropped connections.
Other requests (placing a Twilio call, which has no idempotency key) are
retried only when the carrier certainly did not act: a 429 (the request was
refused before it was processed) or a failure to connect at all. Backoff is
exponential with full jitter, capped, and honours ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ..errors import ProviderError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RestClient:
    def __init__(self, name: str, base_url: str, *, auth: tuple[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 4.0, timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = auth
        self.session.headers.update({"User-Agent": "voicecalld", **(headers or {})})

    def close(self) -> None:
        self.session.close()

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        hinted = retry_after(response.headers.get("Retry-After")) if response is not None else None
        if hinted is not None:
            return min(hinted, MAX_RETRY_AFTER)
        # Full jitter: uniform over [0, capped exponential], so clients that
        # failed together do not retry together.
        return self._rng.uniform(0, min(self.max_backoff, self.backoff * (2 ** attempt)))

    def request(self, method: str, path: str, *, idempotent: bool, retry_rate_limited: bool = True,
                **kwargs: Any) -> requests.Response:
        """Send the request; returns the final response (any status), or
        raises ProviderError when the carrier could not be reached.
        ``retry_rate_limited=False``: a 429 is returned at once, for a caller
        that paces its requests itself (the dial queue) rather than sleep here."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        attempt = 0
        while True:
            response: requests.Response | None = None
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
                status = response.status_code
                retry = status in RETRYABLE_STATUS and (idempotent or status == 429) and (
                    retry_rate_limited or status != 429)
                failure = f"HTTP {response.status_code}"
            except requests.ConnectionError as exc:
                # A connect failure means the carrier never saw the request;
                # a drop after sending might mean it acted.
                never_sent = isinstance(exc, requests.ConnectTimeout) or _refused(exc)
                retry, failure = idempotent or never_sent, _describe(exc)
            except requests.Timeout as exc:  # read timeout: it may have acted
                retry, failure = idempotent, _describe(exc)
            except requests.RequestException as exc:
                raise ProviderError(f"{self.name} request failed: {_describe(exc)}") from None
            if not retry or attempt >= self.retries:
                if response is not None:
                    return response
                raise ProviderError(f"cannot reach {self.name} at {self.base_url}: {failure}", retryable=True)
            delay = self._delay(attempt, response)
            log.warning("%s %s %s: %s; retry %d/%d in %.2f s", self.name, method, path, failure, attempt + 1,
                        self.retries, delay)
            self._sleep(delay)
            attempt += 1


def _refused(exc: BaseException) -> bool:
    """Was the connection refused? requests wraps urllib3 wraps the OSError,
    sometimes as a cause and sometimes as an argument."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        todo += [e for e in (current.__cause__, current.__context__, *current.args) if isinstance(e, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no response in time"
    if _refused(exc):
        return "connection refused"
    return type(exc).__name__
