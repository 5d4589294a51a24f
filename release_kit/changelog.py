"""CHANGELOG.md in Keep a Changelog form (https://keepachangelog.com/en/1.1.0/).

A release's entry goes above the first older version, below ``## [Unreleased]`` and anything newer, so
entries stay newest first even when an older line is patched later. The file is replaced atomically, and
the new text is checked to hold every entry the old one had before it is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError
from .outputs import write_atomic

HEADER = """# Changelog

All notable changes to this model are documented in this file.
The format is based on [Keep a Changelog](https://keepachangelog.com/en/1.1.0/),
and this model's versions follow [Semantic Versioning](https://semver.org/spec/v2.0.0.html).
"""

_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\]", re.MULTILINE)


def versions(text: str) -> list[str]:
    """The versions that have an entry, in file order (``Unreleased`` included)."""
    return [match["version"] for match in _HEADING.finditer(text)]


def has_entry(text: str, version: str) -> bool:
    return version in versions(text)


def insert(text: str, version: str, entry: str) -> str:
    """``text`` with ``entry`` (which starts with ``## [version]``) placed by version order."""
    import semver

    if not text.strip():
        text = HEADER
    new = semver.Version.parse(version)
    block = entry.strip("\n") + "\n\n"
    for match in _HEADING.finditer(text):
        try:
            older = semver.Version.parse(match["version"]) < new
        except ValueError:  # "Unreleased" and hand-written headings stay above
            continue
        if older:
            return text[: match.start()] + block + text[match.start():]
    # Newest of all, or the first entry: append after everything (Unreleased and newer entries included).
    # Link reference definitions at the end of the file ("[1.0.0]: https://...") stay last.
    links = re.search(r"(?:^\[[^\]]+\]:[^\n]*\n?)+\Z", text, re.MULTILINE)
    cut = links.start() if links else len(text)
    head = text[:cut].rstrip("\n") + "\n\n"
    return head + block.rstrip("\n") + "\n" + ("\n" + text[cut:] if links else "")


def write_entry(path: Path, version: str, entry: str) -> bool:
    """Add the entry for ``version`` unless it is there; True when the file was written."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if has_entry(text, version):
        return False
    updated = insert(text, version, entry)
    before, after = versions(text), versions(updated)
    if [v for v in after if v != version] != before or after.count(version) != 1:
        raise InputError(f"{path}: refusing to write a CHANGELOG that would reorder or lose entries ({before} → {after})")
    try:
        write_atomic(path, updated)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    return True
