"""The project's own promises about how it is installed and tested."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (ROOT / "README.rst").read_text()
    commands = [line.strip() for line in text.splitlines() if "pytest" in line and line.startswith("    ")]
    assert len(commands) == 1, commands
    return commands[0]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in [line.strip() for line in ci]


def test_runtime_dependencies_are_exactly_the_chosen_five() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    deps = {d.strip() for d in cfg["options"]["install_requires"].splitlines() if d.strip()}
    assert {re.split(r"[<>=!~ ]", d)[0].lower() for d in deps} == {
        "werkzeug", "simple-websocket", "pynacl", "requests", "websocket-client"}
    assert cfg["options"]["python_requires"].replace(" ", "") == ">=3.11"
    assert "pytest" in cfg["options.extras_require"]["test"]
