"""Documentation generated from the settings table, so it cannot drift.

    python -m voicecalld.docs man5 > man/voicecalld.toml.5

writes voicecalld.toml(5) from ``config.SETTINGS``; tests/test_man.py fails
when the committed page differs from what this prints. The other man pages
are written by hand.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterable

from . import __version__
from .config import DEFAULT_CONFIG_PATH, SECTIONS, SETTINGS, Setting, describe_default

#: Date in the page header; bump it when the page's text (not only a key) changes.
DATE = "2026-11-23"

_KIND = {
    "str": "string", "path": "path (string)", "bool": "boolean", "int": "integer", "number": "number",
    "e164": "E.164 phone number (string)", "list[str]": "list of strings",
    "list[e164]": "list of E.164 phone numbers", "url": "URL (string)", "urlpath": "URL path (string)",
    "mode": "octal file mode (string)",
}

_SECTION_INTRO = {
    "": "Keys at the top level of the file, before any section.",
    "serve": "The webhook server: carriers POST to serve.path, GET /healthz answers health checks.",
    "outbound": "Defaults for calls the daemon places.",
    "twilio": "Twilio Programmable Voice (provider = \"twilio\").",
    "telnyx": "Telnyx Call Control v2 (provider = \"telnyx\").",
    "streaming": "Twilio Media Streams with OpenAI Realtime speech-to-text and OpenAI text-to-speech.",
    "tts": "Text-to-speech for streamed calls.",
    "realtime": "Speech-to-speech conversations through the OpenAI Realtime API on a call's media stream, "
                "instead of speech-to-text, the responder and text-to-speech.",
    "tunnel": "A tunnel that gives the webhook a public URL when publicUrl is unset: the daemon starts it "
              "before it reports ready and stops it on shutdown (see voicecalld(8)).",
    "tailscale": "The legacy form of tunnel.provider = \"tailscale-serve\" or \"tailscale-funnel\"; still "
                 "honoured.",
    "control": "The control socket that voicecallctl(1) and agents use (see voicecalld-tools(7)).",
    "mock": "The simulated carrier (provider = \"mock\"), for tests and demonstrations.",
}


def roff_escape(text: str) -> str:
    """Text safe inside a roff line: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def sentences(text: str) -> list[str]:
    """One sentence per output line, as roff wants (the end of a line ends a sentence)."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z$(])", text.strip())
    return [roff_escape(p) for p in parts if p]


def wrap(page: str, width: int = 80) -> str:
    """Fold text lines longer than ``width`` bytes (mandoc's style limit);
    request lines and example blocks stay as they are."""
    out: list[str] = []
    in_example = False
    for line in page.split("\n"):
        if line.startswith(".EX"):
            in_example = True
        elif line.startswith(".EE"):
            in_example = False
        if in_example or line.startswith((".", "'")) or len(line.encode()) <= width:
            out.append(line)
            continue
        for part in textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False):
            out.append("\\&" + part if part.startswith((".", "'")) else part)
    return "\n".join(out)


def _type(s: Setting) -> str:
    if s.kind == "choice":
        return "one of " + ", ".join(f'"{c}"' for c in s.choices)
    kind = _KIND.get(s.kind, s.kind)
    limits = []
    if s.positive:
        limits.append("> 0")
    if s.minimum is not None:
        limits.append(f">= {s.minimum:g}")
    if s.maximum is not None:
        limits.append(f"<= {s.maximum:g}")
    if s.kind == "url" and s.schemes:
        kind = f"{' or '.join(s.schemes)} URL (string)"
    return kind + (f", {' and '.join(limits)}" if limits else "")


def _default(s: Setting) -> str:
    text = describe_default(s)
    return "unset" if text == "unset" else roff_escape(text)


def _entry(s: Setting) -> list[str]:
    lines = [".TP", f".B {s.name}"]
    lines.append(f"Type: {_type(s)}.")
    lines.append(f"Default: {_default(s)}.")
    lines += sentences(s.doc)
    sources = []
    if s.credential:
        sources.append(f"the systemd credential \\fB{s.credential}\\fR")
    if s.env:
        sources.append(f"the environment variable \\fB{s.env}\\fR")
    if sources:
        lines.append("When not in the file, it is read from " + ", else ".join(sources) + ".")
    if s.secret:
        lines.append("A secret: never logged or printed.")
    return lines


def _credentials(settings: Iterable[Setting]) -> list[str]:
    lines = [".SH CREDENTIALS",
             "Secrets are best kept out of the configuration file.",
             "A value missing from the file is read, in this order, from",
             ".IR $CREDENTIALS_DIRECTORY / name",
             "(systemd's",
             ".BR LoadCredential= ;",
             "see",
             ".BR systemd.exec (5)",
             "and",
             ".BR systemd\\-creds (1))",
             "and then from an environment variable:"]
    for s in settings:
        if s.credential or s.env:
            lines += [".TP", f".B {s.key}"]
            parts = []
            if s.credential:
                parts.append(f"credential \\fB{s.credential}\\fR")
            if s.env:
                parts.append(f"environment \\fB{s.env}\\fR")
            lines.append(", ".join(parts) + ("; secret" if s.secret else "") + ".")
    lines += [".PP",
              "A credential file holds the value alone; surrounding white space is ignored.",
              "Values of secrets never appear in logs, in",
              ".B \\-\\-print\\-config",
              "output or in",
              ".B daemon.status",
              "results."]
    return lines


def man5() -> str:
    out = [
        ".\\\" Generated by \"python -m voicecalld.docs man5\" from voicecalld/config/schema.py; do not edit.",
        f".TH VOICECALLD.TOML 5 {DATE} \"voicecalld {__version__}\" \"File Formats Manual\"",
        ".SH NAME",
        "voicecalld.toml \\- voicecalld configuration file",
        ".SH SYNOPSIS",
        f".I {DEFAULT_CONFIG_PATH}",
        ".SH DESCRIPTION",
        ".BR voicecalld (8)",
        "reads its settings from a TOML file,",
        f".I {DEFAULT_CONFIG_PATH}",
        "unless",
        ".B \\-\\-config",
        "names another.",
        "A file whose name ends in",
        ".I .json",
        "is read as JSON with the same structure.",
        "Without any file the daemon runs the",
        ".B mock",
        "carrier with the defaults below.",
        ".PP",
        "Keys keep the camelCase names of the original voice-call plugin.",
        "Sections are TOML tables; this page writes a key of a section as",
        ".IR section.key ,",
        "e.g.",
        ".B serve.port",
        "is",
        ".B port",
        "under",
        ".BR [serve] .",
        "An unknown key, a value of the wrong type and a missing required key are errors:",
        "the daemon names every one of them, with the expected form, and exits with status 78",
        ".RB ( \\-\\-check\\-config",
        "reports them without starting).",
        "On",
        ".B SIGHUP",
        "the daemon reloads the file; keys that shape its sockets, carrier or tunnel",
        "(provider, store, publicUrl, serve.*, control.*, streaming.enabled, streaming.streamPath, tunnel.*,",
        "tailscale.*) keep their old values until a restart, and the log says so.",
        ".PP",
        "Small values such as",
        ".B maxDurationSeconds = 2",
        "or",
        ".B ringTimeoutMs = 1500",
        "are valid.",
    ]
    for section in ("", *SECTIONS):
        title = "Top-level keys" if section == "" else f"[{section}]"
        out += [f".SS \"{title}\"", *sentences(_SECTION_INTRO.get(section, ""))]
        for s in SETTINGS:
            if s.section == section:
                out += _entry(s)
    out += _credentials(SETTINGS)
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        ".B CREDENTIALS_DIRECTORY",
        "Directory of systemd credentials; see",
        ".BR CREDENTIALS .",
        ".TP",
        ".B STATE_DIRECTORY",
        "Default for",
        ".BR store .",
        ".TP",
        ".B RUNTIME_DIRECTORY",
        "Default directory of the control socket.",
        ".PP",
        "The variables named under",
        ".B CREDENTIALS",
        "supply secrets.",
        ".SH FILES",
        ".TP",
        f".I {DEFAULT_CONFIG_PATH}",
        "The default configuration file.",
        ".TP",
        ".I /usr/share/doc/voicecalld/examples/",
        "Commented example files for the mock, Twilio and Telnyx carriers",
        "(in the source tree:",
        ".IR examples/ ).",
        ".SH EXAMPLES",
        "Twilio behind a Tailscale Funnel, secrets from systemd credentials:",
        ".PP",
        ".in +4n",
        ".EX",
        "provider = \"twilio\"",
        "fromNumber = \"+15550001234\"",
        "inboundPolicy = \"allowlist\"",
        "allowFrom = [\"+15550009876\"]",
        "",
        "[tunnel]",
        "provider = \"tailscale\\-funnel\"",
        ".EE",
        ".in",
        ".PP",
        "Check a file without starting the daemon:",
        ".PP",
        ".in +4n",
        ".EX",
        "$ \\fBvoicecalld \\-\\-config /etc/voicecalld/voicecalld.toml \\-\\-check\\-config\\fR",
        ".EE",
        ".in",
        ".SH SEE ALSO",
        ".BR voicecallctl (1),",
        ".BR voicecalld\\-tools (7),",
        ".BR voicecalld (8),",
        ".BR systemd.exec (5)",
    ]
    return wrap("\n".join(out)) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["man5"]:
        print("usage: python -m voicecalld.docs man5 > man/voicecalld.toml.5", file=sys.stderr)
        return 2
    sys.stdout.write(man5())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
