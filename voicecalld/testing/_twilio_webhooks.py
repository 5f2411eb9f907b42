"""Requests the fake sends to the daemon: parameters, signing, retries.

Retries follow Twilio's connection-override model: by default a webhook is
retried once when the connection fails (``rc=1``, ``rp=ct``) and never on
an HTTP error; a URL fragment such as ``#rc=2&rp=5xx`` changes that for one
URL, and ``FakeTwilio.webhook_retries`` turns on 5xx retries everywhere (a
fault-injection switch). Every attempt carries the same
``I-Twilio-Idempotency-Token``, which is how a daemon recognises a replay.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from ._twilio_model import Delivery, FakeCall, RecordingRecord, rfc2822
from ._twilio_signing import compute_signature

API_VERSION = "2010-04-01"
_COUNTRIES = {"+1": "US", "+44": "GB", "+49": "DE", "+33": "FR", "+61": "AU"}


def _country(number: str) -> str:
    for prefix, country in _COUNTRIES.items():
        if number.startswith(prefix):
            return country
    return ""


def standard_params(call: FakeCall, call_status: str | None = None) -> list[tuple[str, str]]:
    """What Twilio posts with every voice request
    (https://www.twilio.com/docs/voice/twiml, "Twilio's request")."""
    params = [
        ("AccountSid", call.account_sid), ("ApiVersion", API_VERSION), ("CallSid", call.sid),
        ("CallStatus", call_status or call.status), ("Direction", call.direction),
        ("From", call.from_), ("To", call.to),
        # Legacy duplicates and geographic fields; unknown values are empty, as on Twilio.
        ("Caller", call.from_), ("Called", call.to),
    ]
    for prefix, number in (("From", call.from_), ("To", call.to), ("Caller", call.from_),
                           ("Called", call.to)):
        params += [(f"{prefix}City", ""), (f"{prefix}State", ""), (f"{prefix}Zip", ""),
                   (f"{prefix}Country", _country(number))]
    if call.answered_by is not None:
        params.append(("AnsweredBy", call.answered_by))
    return params


def status_params(call: FakeCall, call_status: str, sequence: int,
                  extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    now = time.gmtime()
    return standard_params(call, call_status) + [
        ("SequenceNumber", str(sequence)),
        ("Timestamp", time.strftime("%a, %d %b %Y %H:%M:%S +0000", now)),
        ("CallbackSource", "call-progress-events"),
    ] + extra


def child_params(call: FakeCall, child_sid: str, number: str, call_status: str) -> list[tuple[str, str]]:
    """A ``<Number>`` status callback: about the dialed leg, whose parent is ``call``
    (https://www.twilio.com/docs/voice/twiml/number#attributes-status-callback)."""
    return [("AccountSid", call.account_sid), ("ApiVersion", API_VERSION), ("CallSid", child_sid),
            ("ParentCallSid", call.sid), ("CallStatus", call_status), ("Direction", "outbound-dial"),
            ("From", call.from_ if call.direction != "inbound" else call.to), ("To", number),
            ("Timestamp", time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())),
            ("CallbackSource", "call-progress-events"), ("SequenceNumber", "0")]


def recording_params(call: FakeCall, recording: RecordingRecord) -> list[tuple[str, str]]:
    """A RecordingStatusCallback
    (https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback)."""
    return [("AccountSid", call.account_sid), ("CallSid", call.sid), ("RecordingSid", recording.sid),
            ("RecordingUrl", recording.url), ("RecordingStatus", recording.status),
            ("RecordingDuration", str(recording.duration or 0)), ("RecordingChannels", str(recording.channels)),
            ("RecordingStartTime", rfc2822(recording.started) or ""), ("RecordingSource", recording.source),
            ("RecordingTrack", "both")]


def _decode(body: bytes, content_type: str) -> str:
    # TwiML is UTF-8 unless the response says otherwise. (requests' own
    # .text would assume ISO-8859-1 for text/xml and garble non-ASCII Say.)
    match = re.search(r"charset=([\w.-]+)", content_type, re.IGNORECASE)
    try:
        return body.decode(match.group(1) if match else "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


class _Policy:
    """How often to retry, and on which failure classes (Twilio's rc/rp)."""

    def __init__(self, fragment: str, global_5xx: int) -> None:
        opts = {k: v[-1] for k, v in parse_qs(fragment).items()}
        self.count = int(opts.get("rc", "1"))
        self.classes = set(opts.get("rp", "ct").split(","))
        if global_5xx > 0:
            self.classes.add("5xx")
            self.count = max(self.count, global_5xx)

    def retry(self, delivery: Delivery) -> bool:
        if delivery.attempt > self.count:
            return False
        if "all" in self.classes:
            return not delivery.ok
        if delivery.status is None:
            return "ct" in self.classes or "rt" in self.classes
        return f"{delivery.status // 100}xx" in self.classes


class FakeTwilio(Protocol):
    """What sending webhooks uses of ``fake_twilio.FakeTwilio``."""

    auth_token: str
    webhook_timeout: float
    webhook_retries: int
    retry_delay: float
    _stopping: threading.Event

    def _record_delivery(self, delivery: Delivery) -> None: ...


class WebhookSender:
    def __init__(self, fake: FakeTwilio) -> None:
        self.fake = fake

    def deliver(self, call: FakeCall, kind: str, url: str, method: str,
                params: list[tuple[str, str]], token: str | None = None, *,
                replay: bool = False) -> Delivery:
        """Send one webhook (with retries); return the last attempt."""
        target, _, fragment = url.partition("#")  # fragments are Twilio overrides, never sent
        policy = _Policy(fragment, self.fake.webhook_retries)
        token = token or str(uuid.uuid4())
        attempt = 1
        while True:
            delivery = self._send(kind, target, method, params, token, attempt)
            delivery.replay = replay
            call.deliveries.append(delivery)
            self.fake._record_delivery(delivery)
            if not policy.retry(delivery) or self.fake._stopping.wait(self.fake.retry_delay):
                return delivery
            attempt += 1

    def _send(self, kind: str, url: str, method: str, params: list[tuple[str, str]],
              token: str, attempt: int) -> Delivery:
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*",
                   "Cache-Control": "max-age=259200", "I-Twilio-Idempotency-Token": token}
        if method == "GET":
            # GET carries the params in the query string and signs the URL alone.
            sep = "&" if urlsplit(url).query else "?"
            prepared = requests.Request("GET", url + sep + urlencode(params), headers=headers).prepare()
            signature = compute_signature(self.fake.auth_token, prepared.url or "")
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            prepared = requests.Request("POST", url, headers=headers,
                                        data=urlencode(params).encode()).prepare()
            # Sign what is actually requested (requests may normalise the URL).
            signature = compute_signature(self.fake.auth_token, prepared.url or "", params)
        prepared.headers["X-Twilio-Signature"] = signature
        headers_sent = {name: value if isinstance(value, str) else value.decode("latin-1")
                        for name, value in prepared.headers.items()}
        delivery = Delivery(kind, prepared.url or url, method, list(params), headers_sent, attempt)
        try:
            with requests.Session() as session:
                resp = session.send(prepared, timeout=self.fake.webhook_timeout, allow_redirects=False)
            delivery.status = resp.status_code
            delivery.content_type = resp.headers.get("Content-Type", "")
            delivery.body = _decode(resp.content, delivery.content_type)
        except requests.RequestException as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        return delivery
