"""Carrier adapters. ``create`` builds the one the configuration names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..timers import TimerService
    from .base import Provider


#: The carriers this build has (``provider`` in voicecalld.toml(5)).
NAMES = ("mock", "telnyx", "twilio")


def create(config: Config, timers: TimerService) -> Provider:
    name = config.provider
    if name == "mock":
        import os

        from .. import paths
        from .mock import STATE_FILE, MockProvider

        return MockProvider(timers, os.path.join(paths.store_dir(config.store), STATE_FILE))
    if name == "telnyx":
        from .telnyx import TelnyxProvider

        return TelnyxProvider(config)
    if name == "twilio":
        from .twilio import TwilioProvider

        return TwilioProvider()
    raise ValueError(f"provider {name} is not available in this build")
