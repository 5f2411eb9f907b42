from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from engine import Engine  # noqa: E402


@pytest.fixture
def make_engine(tmp_path) -> Iterator:
    engines: list[Engine] = []

    def make(**overrides) -> Engine:
        engine = Engine(str(tmp_path / f"store{len(engines)}"), **overrides)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine) -> Engine:
    return make_engine()
