"""A plain asyncio media bridge: the yardstick for voicecalld's media path.

One process, the ``websockets`` library, one coroutine per call. It accepts
the simulated carrier's WebSocket (Twilio Media Streams frames, as
``voicecalld.testing.media_client`` sends them), parses every JSON frame,
base64-decodes the caller's audio and forwards it to the speech-to-text
WebSocket (the fake OpenAI Realtime service) as
``input_audio_buffer.append``, after the same ``session.update`` voicecalld
sends, while a second coroutine per call reads that session's events.
That is the work voicecalld's media path does per frame, and nothing else
(no call engine, no call log, no text-to-speech).

``websockets`` is a benchmark-only dependency (``pip install -e '.[bench]'``);
voicecalld itself never imports it.

benchmarks/media.py runs it side by side with voicecalld
(``--servers voicecalld,asyncio``); on its own::

    python benchmarks/asyncio_bridge.py --port 8765 --stt-url ws://127.0.0.1:PORT/v1/realtime?intent=transcription

It prints ``listening`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicecalld.media.realtime_stt import session_update  # noqa: E402 - the very session voicecalld asks for


class Bridge:
    def __init__(self, stt_url: str, api_key: str) -> None:
        self.stt_url = stt_url
        self.api_key = api_key
        self.setup = json.dumps(session_update("gpt-4o-transcribe", 0.5, 800), separators=(",", ":"))

    async def call(self, carrier: ServerConnection) -> None:
        """One call: the carrier's stream until ``stop`` or the socket closes."""
        stt: ClientConnection | None = None
        reader: asyncio.Task[None] | None = None
        try:
            async for raw in carrier:
                message = json.loads(raw)
                event = message.get("event")
                if event == "media" and stt is not None:
                    audio = base64.b64decode(message["media"]["payload"], validate=True)
                    await stt.send('{"type":"input_audio_buffer.append","audio":"'
                                   + base64.b64encode(audio).decode("ascii") + '"}')
                elif event == "start" and stt is None:
                    # Compression off, as voicecalld's client has it (and the
                    # fake would accept permessage-deflate if offered).
                    stt = await connect(self.stt_url, compression=None, ping_interval=None,
                                        additional_headers={"Authorization": f"Bearer {self.api_key}"})
                    await stt.send(self.setup)
                    while json.loads(await stt.recv()).get("type") != "session.updated":
                        pass
                    reader = asyncio.create_task(self.events(stt))
                elif event == "stop":
                    break
        except ConnectionClosed:
            pass
        finally:
            if reader is not None:
                reader.cancel()
            if stt is not None:
                await stt.close()

    async def events(self, stt: ClientConnection) -> None:
        """The session's events (transcripts), parsed as voicecalld parses them."""
        try:
            async for raw in stt:
                event: dict[str, Any] = json.loads(raw)
                event.get("type")
        except ConnectionClosed:
            pass


async def main(port: int, stt_url: str, api_key: str) -> None:
    bridge = Bridge(stt_url, api_key)
    async with serve(bridge.call, "127.0.0.1", port, compression=None, ping_interval=None, max_size=1 << 20):
        print("listening", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stt-url", required=True)
    parser.add_argument("--api-key", default="sk-bench")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.port, args.stt_url, args.api_key))
    except KeyboardInterrupt:
        pass
