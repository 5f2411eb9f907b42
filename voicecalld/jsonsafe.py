"""Parsing JSON that comes from outside (webhooks, carrier and OpenAI
responses, media streams, agents, the log file).

``json.loads`` raises ``RecursionError``, not ``ValueError``, for deeply
nested input, so code that handles bad JSON with ``except ValueError`` would
let a few kilobytes of ``[[[[`` escape as a crash. ``loads`` folds that case
into ``ValueError``. Standard library only: ``voicecallctl`` imports it.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
