"""The systemd units in systemd/: what they promise (notify, watchdog,
credentials, directories), that ``systemd-analyze verify`` is clean and
that ``systemd-analyze security`` rates them 2.5 or better. The analyzer
tests skip where systemd-analyze is not installed (.ci/run installs it).

``verify`` checks that ExecStart= names an existing executable. The unit
names /usr/local/bin/voicecalld (where ``pip install .`` as root puts it);
the test verifies a copy whose ExecStart= points at a wrapper that runs this
checkout, and MANPATH points ``man`` (which verify runs for Documentation=)
at man/ in this checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicecalld import paths
from voicecalld.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "systemd" / "voicecalld.service"
SOCKET = ROOT / "systemd" / "voicecalld.socket"
SYSUSERS = ROOT / "systemd" / "voicecalld.sysusers"
MAX_EXPOSURE = 2.5

analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def one(d: dict[str, list[str]], key: str) -> str:
    values = [v for v in d.get(key, []) if v]
    assert len(values) == 1, f"{key}: {d.get(key)}"
    return values[0]


def test_service_promises() -> None:
    d = directives(SERVICE)
    assert one(d, "Service.Type") == "notify"
    assert one(d, "Service.NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one(d, "Service.WatchdogSec"))
    assert one(d, "Service.Restart") == "on-failure"
    assert one(d, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(d, "Service.ExecStart").startswith("/usr/local/bin/voicecalld ")
    assert one(d, "Service.RuntimeDirectory") == "voicecalld"
    assert one(d, "Service.StateDirectory") == "voicecalld"
    assert one(d, "Service.ConfigurationDirectory") == "voicecalld"
    assert one(d, "Service.DynamicUser") == "yes" and one(d, "Service.User") == "voicecalld"
    # The daemon stops its own tunnel child after draining calls.
    assert one(d, "Service.KillMode") == "mixed"
    assert one(d, "Service.NoNewPrivileges") == "yes" and one(d, "Service.MemoryDenyWriteExecute") == "yes"
    assert one(d, "Service.RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one(d, "Unit.Requires") == "voicecalld.socket"


def test_every_credential_the_settings_know_is_loaded() -> None:
    loaded = directives(SERVICE)["Service.LoadCredential"]
    names = [s.credential for s in SETTINGS if s.credential]
    assert sorted(loaded) == sorted(names)  # ID only: found in /etc/credstore/ etc., skipped if absent
    for required in ("twilio-auth-token", "telnyx-api-key", "telnyx-public-key", "openai-api-key"):
        assert required in loaded


def test_socket_is_where_the_daemon_and_voicecallctl_look() -> None:
    d = directives(SOCKET)
    listen = one(d, "Socket.ListenStream")
    assert listen == paths.SYSTEM_SOCKET
    # The daemon started by the service (no socket activation) binds the same path.
    assert paths.socket_path(env={"RUNTIME_DIRECTORY": "/run/voicecalld"}) == listen
    assert one(d, "Socket.SocketMode") == "0660"
    assert one(d, "Install.WantedBy") == "sockets.target"


def test_sysusers_entry() -> None:
    lines = [line for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    kind, name, uid, *_ = re.findall(r'"[^"]*"|\S+', lines[0])
    assert (kind, name, uid) == ("u", "voicecalld", "-")


@pytest.mark.parametrize("exists, env, configured, explicit, expected", [
    ({"/u/voicecalld/control.sock", "SYS"}, {"XDG_RUNTIME_DIR": "/u"}, None, None, "/u/voicecalld/control.sock"),
    ({"SYS"}, {"XDG_RUNTIME_DIR": "/u"}, None, None, "SYS"),  # the per-user socket is absent
    (set(), {"XDG_RUNTIME_DIR": "/u"}, None, None, "/u/voicecalld/control.sock"),  # nothing: name the default
    ({"SYS"}, {"XDG_RUNTIME_DIR": "/u"}, "/etc-named.sock", None, "/etc-named.sock"),
    ({"SYS"}, {"VOICECALLD_SOCKET": "/env.sock"}, None, None, "/env.sock"),
    ({"SYS"}, {}, None, "/flag.sock", "/flag.sock"),
    ({"SYS"}, {"RUNTIME_DIRECTORY": "/run/x"}, None, None, "/run/x/control.sock"),
])
def test_client_socket_path(tmp_path, exists, env, configured, explicit, expected) -> None:
    def real(p: str) -> str:
        return str(tmp_path / "sys.sock") if p == "SYS" else str(tmp_path) + p

    for p in exists:
        Path(real(p)).parent.mkdir(parents=True, exist_ok=True)
        Path(real(p)).touch()
    env = {k: (str(tmp_path) + v if k == "XDG_RUNTIME_DIR" else v) for k, v in env.items()}
    got = paths.client_socket_path(configured, explicit=explicit, env=env, system_socket=real("SYS"))
    want = real(expected) if expected in ("SYS",) or expected.startswith("/u/") else expected
    assert got == want


@pytest.fixture
def unit_copy(tmp_path) -> Path:
    wrapper = tmp_path / "bin" / "voicecalld"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m voicecalld "$@"\n')
    wrapper.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    text = SERVICE.read_text()
    assert text.count("ExecStart=/usr/local/bin/voicecalld ") == 1
    (units / SERVICE.name).write_text(text.replace("ExecStart=/usr/local/bin/voicecalld ", f"ExecStart={wrapper} "))
    shutil.copy(SOCKET, units / SOCKET.name)
    return units


@analyze
def test_verify_is_clean(unit_copy, tmp_path) -> None:
    # Documentation= is checked with man(1): give it this checkout's pages as an installed tree.
    for page in (ROOT / "man").iterdir():
        section = tmp_path / "manpath" / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section / page.name)
    env = {**os.environ, "MANPATH": str(tmp_path / "manpath"), "SYSTEMD_LOG_COLOR": "0"}
    man = [] if shutil.which("man") else ["--man=no"]
    proc = subprocess.run(["systemd-analyze", "verify", *man, str(unit_copy / "voicecalld.service"),
                           str(unit_copy / "voicecalld.socket")], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@analyze
def test_verify_would_catch_a_broken_unit(unit_copy) -> None:
    # The check above can fail: a misspelt directive is reported.
    broken = unit_copy / "voicecalld.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True,
                          timeout=60)
    assert "WatchdogSecs" in proc.stdout + proc.stderr


def exposure(path: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_COLORS": "0"})
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


@analyze
def test_security_exposure_is_low() -> None:
    assert exposure(SERVICE) <= MAX_EXPOSURE


@analyze
def test_security_exposure_measures_the_hardening(tmp_path) -> None:
    # Without its hardening block the same unit scores far worse, so the
    # figure above measures this file and not the analyzer's defaults.
    text = SERVICE.read_text()
    start, end = text.index("# Hardening."), text.index("[Install]")
    bare = tmp_path / "voicecalld.service"
    bare.write_text(text[:start] + text[end:])
    assert exposure(bare) > MAX_EXPOSURE + 2
