"""Text to telephone audio: OpenAI ``/audio/speech`` as raw 24 kHz PCM
(``response_format: pcm``, 16-bit little-endian mono, no header:
https://platform.openai.com/docs/api-reference/audio/createSpeech; no
format it offers is 8 kHz µ-law), low-passed and decimated to 8 kHz, then
G.711 µ-law (ITU-T G.711).

The response is streamed and converted chunk by chunk, so playback can
start before the whole utterance has been synthesized.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .. import jsonsafe, metrics
from ..errors import ProviderError
from . import mulaw
from .resample import Decimator

MAX_INPUT = 4096          # the API's limit on ``input``
CHUNK = 24000 * 2 // 10   # read 100 ms of 24 kHz s16le at a time


class Synthesizer:
    def __init__(self, base_url: str, api_key: str, *, model: str, voice: str,
                 timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self.url = base_url.rstrip("/") + "/audio/speech"
        self.model = model
        self.voice = voice
        self.timeout = timeout
        self.session = requests.Session()
        # One session serves every call that speaks: keep a connection per
        # concurrent utterance instead of requests' default ten.
        self.session.mount(urlsplit(self.url).scheme + "://", HTTPAdapter(pool_connections=1, pool_maxsize=64))
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "User-Agent": "voicecalld"})

    def close(self) -> None:
        self.session.close()

    def stream(self, text: str) -> Iterator[bytes]:
        """µ-law 8 kHz audio for ``text``, in chunks as they arrive. Raises
        ProviderError (before yielding anything) if the service refuses."""
        body = {"model": self.model, "input": text[:MAX_INPUT], "voice": self.voice, "response_format": "pcm"}
        started = time.monotonic()
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout, stream=True)
        except requests.RequestException as exc:
            raise ProviderError(f"text-to-speech request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ProviderError(f"text-to-speech refused ({response.status_code}): {_error_message(response)}",
                                status=response.status_code)
        return self._convert(response, started)

    @staticmethod
    def _convert(response: requests.Response, started: float | None = None) -> Iterator[bytes]:
        decimator = Decimator()
        pending = b""
        try:
            for chunk in response.iter_content(CHUNK):
                data = pending + chunk
                usable = len(data) - len(data) % 2  # a chunk may split a sample
                pending = data[usable:]
                pcm8k = decimator.process(data[:usable])
                if pcm8k:
                    if started is not None:
                        metrics.TTS_FIRST_AUDIO.observe(time.monotonic() - started)
                        started = None
                    yield mulaw.encode(pcm8k)
        except requests.RequestException as exc:
            raise ProviderError(f"text-to-speech stream broke off: {type(exc).__name__}") from None
        finally:
            response.close()


def _error_message(response: requests.Response) -> str:
    try:
        return str(jsonsafe.loads(response.content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason
