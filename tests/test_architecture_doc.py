"""docs/architecture.rst stays true to the code: every module it names
exists, and every module of the package is named somewhere on it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "architecture.rst").read_text()
PACKAGE = ROOT / "voicecalld"


def _modules() -> set[str]:
    """Dotted names relative to the package: ``media.stream``, ``manager``."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            out.add(".".join(parts))
    return out


def _named() -> set[str]:
    """Modules the page names: ``media.stream``, ``providers/twilio_media.py``,
    ``control/`` (a package) and bare names inside a package's listing."""
    names = set()
    for literal in re.findall(r"``([^`]+)``", PAGE):
        text = literal.strip().removesuffix(".py").rstrip("/").replace("/", ".")
        names.add(text.removeprefix("voicecalld."))
    return names


def test_every_module_the_page_names_exists() -> None:
    modules = _modules()
    packages = {m.rpartition(".")[0] for m in modules if "." in m}
    leaf_names = {m.rpartition(".")[2] for m in modules}
    missing = []
    for name in _named():
        if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", name) or name in modules or name in packages:
            continue
        head = name.split(".")[0]
        if head in modules or head in packages or name in leaf_names:
            continue
        # Only names that look like modules of ours are checked (skip words
        # such as ``start`` that name a method or an event).
        if "." in name and head in {"media", "providers", "control", "config", "tunnel", "testing"}:
            missing.append(name)
    assert not missing, f"the page names modules that do not exist: {sorted(missing)}"


def test_every_module_is_on_the_page() -> None:
    named = _named()
    leaf_named = {n.rpartition(".")[2] for n in named}
    modules = _modules()
    packages = {m.rpartition(".")[0] for m in modules if "." in m}
    absent = sorted(m for m in modules - packages
                    if m not in named and m.rpartition(".")[2] not in leaf_named
                    and not m.startswith("testing._"))
    assert not absent, f"modules the architecture page does not mention: {absent}"
