"""Twilio's Calls resource (REST API 2010-04-01) as the provider uses it:
create a call, update its TwiML, hang it up, fetch its status.

https://www.twilio.com/docs/voice/api/call-resource. Requests are form
encoded and authenticated with HTTP Basic (account SID, auth token); every
path ends in ``.json`` (without it the API answers XML). Errors come back
as ``{"code", "message", ...}`` and become ``ProviderError`` through
``twilio_errors``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from urllib.parse import quote

from ..calls import State
from ..errors import ProviderError, RateLimited
from . import twilio_errors
from .base import CarrierStatus
from .http import RestClient, retry_after
from .twilio_wire import END_REASONS, LIVE_STATUSES, json_body

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
MAX_TIMEOUT = 600            # Twilio's limit on a call's ring Timeout, seconds

#: (apiBaseUrl, accountSid, authToken), read at use time so SIGHUP reloads apply.
Credentials = Callable[[], tuple[str, str, str]]


class CallsApi:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._client: RestClient | None = None
        self._client_key: tuple[str, str, str] | None = None

    def _rest(self) -> tuple[RestClient, str]:
        key = self._credentials()
        with self._lock:
            if self._client is None or self._client_key != key:
                # The old session is left to the garbage collector: another
                # thread may still be using it.
                self._client = RestClient("Twilio", key[0], auth=(key[1], key[2]))
                self._client_key = key
            client = self._client
        return client, f"/{API_VERSION}/Accounts/{quote(key[1], safe='')}"

    def _call_path(self, account: str, sid: str) -> str:
        return f"{account}/Calls/{quote(sid, safe='')}.json"

    def create(self, *, to: str, from_: str, url: str, ring_timeout_ms: int,
               detection: list[tuple[str, str]], recording: list[tuple[str, str]] | None = None) -> str:
        """Place a call whose TwiML and status callbacks come from ``url``
        (the latter with ``&type=status``), with the answering-machine
        ``detection`` parameters (``twilio_amd``); returns its sid.
        ``recording``: record it, with these parameters
        (``twilio_control.recording_params``). Raises ``RateLimited`` when
        Twilio refuses it for the account's calls per second (429 / 20429):
        the dial queue paces, nothing sleeps here."""
        ring = min(MAX_TIMEOUT, max(1, math.ceil(ring_timeout_ms / 1000)))
        form: list[tuple[str, str]] = [
            ("To", to), ("From", from_), ("Url", url), ("Method", "POST"),
            ("StatusCallback", url + "&type=status"), ("StatusCallbackMethod", "POST"),
            *[("StatusCallbackEvent", event) for event in STATUS_EVENTS],
            ("Timeout", str(ring)), *detection,
        ]
        if recording is not None:
            form += [("Record", "true"), *recording]
        client, account = self._rest()
        # Not idempotent: Twilio has no idempotency key for creating calls, so
        # a retry could ring the callee twice (RestClient only retries when
        # Twilio certainly did not act).
        response = client.request("POST", f"{account}/Calls.json", idempotent=False, retry_rate_limited=False,
                                  data=form)
        body = json_body(response)
        if response.status_code == 429:
            error = twilio_errors.provider_error(429, body, "placing the call", to=to, from_=from_)
            raise RateLimited(error.message, provider_code=error.provider_code,
                              retry_after=retry_after(response.headers.get("Retry-After")))
        sid = body.get("sid") if isinstance(body, dict) else None
        if response.status_code != 201 or not isinstance(sid, str):
            if 200 <= response.status_code < 300:
                raise ProviderError(f"Twilio answered HTTP {response.status_code} without a call sid "
                                    "while placing the call", status=response.status_code)
            raise twilio_errors.provider_error(response.status_code, body, "placing the call", to=to, from_=from_)
        return sid

    def hang_up(self, sid: str) -> None:
        """End the call; one that is already over is success."""
        client, account = self._rest()
        # Status=completed is idempotent: a second one finds the call over.
        response = client.request("POST", self._call_path(account, sid), idempotent=True,
                                  data={"Status": "completed"})
        if response.ok:
            return
        body = json_body(response)
        code, _ = twilio_errors.parse(body)
        if code in twilio_errors.ALREADY_ENDED or (code is None and response.status_code == 404):
            log.debug("Twilio call %s had already ended (%s)", sid, code or response.status_code)
            return
        raise twilio_errors.provider_error(response.status_code, body, "hanging up")

    def update(self, sid: str, form: dict[str, str], doing: str) -> None:
        """Replace the call's running TwiML (``Twiml`` inline, or ``Url``)."""
        client, account = self._rest()
        # A TwiML update is not idempotent (a repeat restarts the speech).
        response = client.request("POST", self._call_path(account, sid), idempotent=False, data=form)
        if not response.ok:
            raise twilio_errors.provider_error(response.status_code, json_body(response), doing)

    def status(self, sid: str) -> CarrierStatus | None:
        """What Twilio says about the call; None if it cannot say."""
        client, account = self._rest()
        response = client.request("GET", self._call_path(account, sid), idempotent=True)
        body = json_body(response)
        if not response.ok or not isinstance(body, dict):
            return None
        status = body.get("status")
        if status in LIVE_STATUSES:
            return CarrierStatus(live=True, answered=status == "in-progress")
        reason = State.COMPLETED if status == "completed" else END_REASONS.get(str(status), State.COMPLETED)
        return CarrierStatus(live=False, reason=reason, answered=body.get("start_time") is not None)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
