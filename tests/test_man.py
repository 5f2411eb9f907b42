"""The man pages in man/: voicecalld.toml(5) is exactly what
``python -m voicecalld.docs man5`` prints; the hand-written pages name every
command, option and control method the code has; all render without a
warning from groff and mandoc (skipped where those are not installed;
.ci/run installs them) and keep man-pages(7) section order."""

from __future__ import annotations

import argparse
import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voicecalld import ctl, daemon, docs
from voicecalld.config import SETTINGS
from voicecalld.control.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = {"voicecalld.8": 8, "voicecallctl.1": 1, "voicecalld.toml.5": 5, "voicecalld-tools.7": 7}

#: man-pages(7): the conventional order of sections.
ORDER = ["NAME", "SYNOPSIS", "CONFIGURATION", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "RETURN VALUE",
         "ERRORS", "ENVIRONMENT", "FILES", "ATTRIBUTES", "VERSIONS", "STANDARDS", "HISTORY", "NOTES", "CAVEATS",
         "BUGS", "EXAMPLES", "AUTHORS", "REPORTING BUGS", "COPYRIGHT", "SEE ALSO"]
# voicecalld.toml(5) CREDENTIALS: after DESCRIPTION, before ENVIRONMENT;
# voicecalld(8) CALL STATES and SECURITY: after FILES, before NOTES.
EXTRA_SECTIONS = {"CREDENTIALS", "CALL STATES", "SECURITY"}


def text(page: str) -> str:
    """The page's words: escapes for minus signs, fonts and spacing removed."""
    raw = (MAN / page).read_text()
    raw = raw.replace("\\-", "-").replace("\\(dq", '"').replace("\\e", "\\")
    raw = re.sub(r"\\f[BIRP]|\\&|\\\||\\ ", "", raw)
    return raw


def test_config_page_is_generated_from_the_settings_table() -> None:
    committed = (MAN / "voicecalld.toml.5").read_text()
    assert committed == docs.man5(), (
        "man/voicecalld.toml.5 is out of date; regenerate it with: "
        "python -m voicecalld.docs man5 > man/voicecalld.toml.5")


def test_config_page_documents_every_key_with_type_and_default() -> None:
    page = text("voicecalld.toml.5")
    sections = page.split('.SS "')
    for s in SETTINGS:
        title = f"[{s.section}]" if s.section else "Top-level keys"
        (body,) = [b for b in sections if b.startswith(title + '"')]
        entry = body.split(f".TP\n.B {s.name}\n", 1)
        assert len(entry) == 2, f"{s.key} is missing from its section"
        first = entry[1].split(".TP")[0]
        assert first.startswith("Type: ") and "\nDefault: " in first, s.key
        if s.credential:
            assert s.credential in first


def _parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_voicecallctl_page_names_every_command_and_option() -> None:
    page = text("voicecallctl.1")
    commands = page.split(".SS Commands", 1)[1].split(".SH OPTIONS", 1)[0]
    options = page.split(".SH OPTIONS", 1)[1].split(".SH EXIT STATUS", 1)[0]
    missing = []
    for path, parser in _parsers(ctl._parser()):
        if path and not re.search(r"^\.B " + re.escape(" ".join(path)) + r"\b", commands, re.M):
            missing.append(" ".join(path))
        for action in parser._actions:
            for flag in action.option_strings:
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options):
                    missing.append(f"{' '.join(path) or 'voicecallctl'} {flag}")
    assert not missing, f"not documented in man/voicecallctl.1: {missing}"


def test_voicecallctl_page_gives_every_exit_status() -> None:
    page = text("voicecallctl.1").split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in (ctl.EX_OK, ctl.EX_ERROR, ctl.EX_USAGE, ctl.EX_UNAVAILABLE, 130):
        assert f".B {code}\n" in page


def test_daemon_page_names_every_option_exit_status_and_variable() -> None:
    page = text("voicecalld.8")
    options = page.split(".SH OPTIONS", 1)[1].split(".SH EXIT STATUS", 1)[0]
    for action in daemon._parser()._actions:
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options), flag
    status = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in (daemon.EX_OK, daemon.EX_FAILURE, daemon.EX_USAGE, daemon.EX_CONFIG):
        assert f".B {code}\n" in status
    environment = page.split(".SH ENVIRONMENT", 1)[1].split(".SH FILES", 1)[0]
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY",
                 "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "VOICECALLD_SOCKET"):
        assert name in environment, name
    for s in SETTINGS:
        if s.credential:
            assert s.credential in environment, s.credential
        if s.env:
            assert s.env in environment, s.env
    description = page.split(".SH DESCRIPTION", 1)[1].split(".SH OPTIONS", 1)[0]
    for signal in ("SIGTERM", "SIGINT", "SIGHUP"):
        assert signal in description


def test_tools_page_names_every_control_method_and_tool_action(engine) -> None:
    from voicecalld import tool

    page = text("voicecalld-tools.7")
    served = [*METHODS, *engine.provider.control_methods()]  # the core's and the mock carrier's
    assert "mock.say" in served
    missing = [m for m in served if f".B {m}\n" not in page]
    assert not missing, f"control methods not documented in man/voicecalld-tools.7: {missing}"
    for action in tool.ACTIONS:
        assert f".B {action}\n" in page
    for fmt in tool.FORMATS:
        assert fmt in page
    for mcp_method in ("initialize", "tools/list", "tools/call", "ping"):
        assert mcp_method in page


@pytest.mark.parametrize("page", PAGES)
def test_sections_follow_man_pages_order(page) -> None:
    headings = re.findall(r"^\.SH (.+)$", (MAN / page).read_text(), re.M)
    assert headings[:2] == ["NAME", "SYNOPSIS"] or (page.endswith(".7") and headings[0] == "NAME")
    known = [h for h in headings if h not in EXTRA_SECTIONS]
    assert all(h in ORDER for h in known), known
    assert known == sorted(known, key=ORDER.index)
    assert headings[-1] == "SEE ALSO"
    th = re.search(r"^\.TH (\S+) (\d)", (MAN / page).read_text(), re.M)
    assert th and th.group(2) == str(PAGES[page])


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_groff_renders_without_warnings(page) -> None:
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_is_clean(page) -> None:
    proc = subprocess.run(["mandoc", "-T", "lint", str(MAN / page)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
def test_mandoc_lint_would_catch_a_bad_page(tmp_path) -> None:
    bad = tmp_path / "bad.1"
    bad.write_text(".TH BAD 1\n.SH NAME\nbad \\- a page. With two sentences on a line   \n.SH FOO\n.BOGUS\n")
    proc = subprocess.run(["mandoc", "-T", "lint", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout + proc.stderr


def test_setup_cfg_installs_every_page() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    files = cfg["options.data_files"]
    for page, section in PAGES.items():
        assert f"man/{page}" in files.get(f"share/man/man{section}", "").split(), page


def test_voicecalld_8_has_a_security_section() -> None:
    page = (MAN / "voicecalld.8").read_text()
    security = page.split(".SH SECURITY", 1)[1].split("\n.SH ", 1)[0]
    for needle in (".SS What is verified", ".SS What is trusted", ".SS Behind a reverse proxy",
                   "X\\-Twilio\\-Signature", "Ed25519", "1008", "control.mode", "Caller ID is not authentication",
                   "twilio.trustForwardedHeaders"):
        assert needle in security, needle
