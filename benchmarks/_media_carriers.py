"""The carriers benchmarks/media.py measures voicecalld with: each fake
carrier, the daemon configuration that points at it, and how each call's
stream request reaches the client processes (which connect like the
carrier does: Twilio's signed upgrade and custom parameters, or Telnyx's
stream URL with the call's token and a ``start`` naming its
``call_control_id``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

SID = "AC" + "b" * 32
TOKEN = "bench-auth-token"
CARRIERS = ("twilio", "telnyx")


class Carrier:
    """One fake carrier for a round; ``stop`` when done."""

    def __init__(self, name: str, requests: list[Any]) -> None:
        self.name = name
        counter: Iterator[int] = iter(range(10**9))
        if name == "twilio":
            from voicecalld.testing.fake_twilio import FakeTwilio

            self.fake: Any = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=0.05)
            self.fake.start()

            def on_stream(req: Any) -> None:
                index = next(counter)
                requests[index % len(requests)].put(("stream", index, urlsplit(req.url).path, {
                    "headers": dict(req.headers), "custom_parameters": dict(req.parameters),
                    "call_sid": req.call_sid, "stream_sid": req.stream_sid}))

            self.fake.on_stream = on_stream
        elif name == "telnyx":
            from voicecalld.testing._telnyx_media import TelnyxWire
            from voicecalld.testing.fake_telnyx import FakeTelnyx

            self.fake = FakeTelnyx(ms_per_char=1, answer_after=0.02)
            self.fake.start()

            def on_telnyx_stream(call: Any, req: Any) -> None:
                index = next(counter)
                url = urlsplit(req.url)
                wire = TelnyxWire.of(call, req.stream_id)
                requests[index % len(requests)].put(("stream", index, f"{url.path}?{url.query}", {
                    "telnyx": {k: getattr(wire, k) for k in ("call_control_id", "stream_id", "encoding",
                                                               "call_session_id", "from_", "to", "client_state")}}))

            self.fake.streams.on_stream = on_telnyx_stream
        else:
            raise SystemExit(f"unknown carrier {name!r}; choose from {', '.join(CARRIERS)}")

    def config(self) -> str:
        """The daemon's carrier table (TOML; ``provider = name`` goes at the top)."""
        if self.name == "twilio":
            return (f'[twilio]\naccountSid = "{SID}"\nauthToken = "{TOKEN}"\n'
                    f'apiBaseUrl = "{self.fake.base_url}"\n')
        return (f'[telnyx]\napiKey = "{self.fake.api_key}"\n'
                f'connectionId = "{self.fake.connection_id}"\npublicKey = "{self.fake.public_key_b64}"\n'
                f'apiBaseUrl = "{self.fake.base_url}"\n')

    def stop(self) -> None:
        self.fake.stop()


def media_client(url: str, spec: dict[str, Any]) -> Any:
    """A client for one stream request (in a client process)."""
    from voicecalld.testing._telnyx_media import TelnyxWire
    from voicecalld.testing.media_client import MediaStreamClient

    if "telnyx" in spec:
        return MediaStreamClient(url, wire=TelnyxWire(**spec["telnyx"]))
    return MediaStreamClient(url, **spec)
