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


@pytest.fixture
def start_daemon(request) -> Iterator:
    """Start real voicecalld processes; all are stopped (and checked to exit
    0 when they were not killed on purpose) after the test."""
    from daemon import Daemon, remove, short_tmp

    started: list[tuple[Daemon, object]] = []

    def start(config=None, **kwargs) -> Daemon:
        tmp = short_tmp(request.node.name)
        d = Daemon(tmp, config, **kwargs)
        started.append((d, tmp))
        return d

    yield start
    for d, tmp in started:
        if d.proc.poll() is None:
            code = d.stop()
            assert code == 0, f"voicecalld exited with {code}:\n{d.log()}"
        else:
            d.notify.close()
        remove(tmp)  # type: ignore[arg-type]


FAKES = os.path.join(os.path.dirname(__file__), "fakes")


@pytest.fixture
def fake_bin(tmp_path) -> str:
    """A directory with the fake ``ngrok`` and ``tailscale`` executables, their
    shebang pointing at this interpreter (so they run wherever the tests do).
    Put it first on PATH to use them."""
    import stat

    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    for name in ("ngrok", "tailscale"):
        with open(os.path.join(FAKES, name)) as fh:
            body = fh.read().split("\n", 1)[1]
        target = bindir / name
        target.write_text(f"#!{sys.executable}\n{body}")
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return str(bindir)
