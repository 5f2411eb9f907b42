"""Fast paths through WebSocket frames (RFC 6455 section 5) for what the
media layer does fifty times a second per call: reading a carrier's small
text frames, and writing audio to speech-to-text.

A carrier sends fifty small text messages a second per call, each in one
masked frame. Taking those apart with wsproto costs more than everything
else the loop does with them, so ``FrameSplitter`` parses them itself and
hands every other frame to wsproto, whole and in order: control frames
(ping, pong, close), fragmented messages (until their last fragment),
binary and compressed (RSV1) frames, unmasked frames (a protocol error
wsproto reports), text that is not UTF-8 (likewise), and frames over
``FAST_LIMIT`` bytes. wsproto therefore only ever sees whole frames (or the
start of one it is owed the rest of), so its own state stays right:
between two frames it holds nothing, and a fragmented message is wholly
its own.
"""

from __future__ import annotations

import os

FAST_LIMIT = 65535  # payload bytes; larger frames go to wsproto (streamed, not buffered here)
_TEXT_FIN = 0x81  # FIN, no RSV bits, opcode 1 (text)
_MASKED = 0x80


def unmask(mask: bytes, payload: bytes | bytearray) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def masked_text_frame(text: bytes) -> bytes:
    """``text`` (UTF-8) as one client-to-server frame: masked with a fresh
    random key, as RFC 6455 5.3 requires of a client."""
    n = len(text)
    if n < 126:
        head = bytes((_TEXT_FIN, _MASKED | n))
    elif n < 65536:
        head = bytes((_TEXT_FIN, _MASKED | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((_TEXT_FIN, _MASKED | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + unmask(mask, text)


class FrameSplitter:
    """One connection's incoming bytes, split into text messages it parsed
    itself and byte runs that belong to wsproto."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._owed = 0  # bytes of a frame wsproto has begun and not yet been given
        self._fragmented = False  # wsproto holds an unfinished message

    def feed(self, data: bytes) -> list[str | bytes]:
        """Text messages (``str``) and runs of bytes for wsproto
        (``bytes``), in the order they came."""
        buffer = self._buffer
        buffer += data
        out: list[str | bytes] = []
        pos, end = 0, len(buffer)
        run = -1  # where the bytes for wsproto not yet in ``out`` begin (-1: none)
        while pos < end:
            if self._owed:
                take = min(self._owed, end - pos)
                if run < 0:
                    run = pos
                self._owed -= take
                pos += take
                continue
            if end - pos < 2:
                break
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if second & _MASKED:
                head += 4
            if end - pos < head:
                break
            if length == 126:
                length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buffer[pos + 2:pos + 10], "big")
            if first != _TEXT_FIN or not second & _MASKED or self._fragmented or length > FAST_LIMIT:
                self._hand_over(first)
                self._owed = head + length
                continue
            if end - pos < head + length:
                break  # the rest of this frame has not arrived yet
            payload = unmask(bytes(buffer[pos + head - 4:pos + head]), buffer[pos + head:pos + head + length])
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._owed = head + length  # wsproto fails the connection (1007) as it should
                continue
            if run >= 0:
                out.append(bytes(buffer[run:pos]))  # one slice per run: a flood of pings stays linear
                run = -1
            out.append(text)
            pos += head + length
        if run >= 0:
            out.append(bytes(buffer[run:pos]))
        del buffer[:pos]
        return out

    def _hand_over(self, first: int) -> None:
        """Note what a frame wsproto is given does to message state."""
        opcode = first & 0x0F
        if opcode < 8:  # a data frame (text, binary, continuation); control frames interleave
            self._fragmented = not first & 0x80
