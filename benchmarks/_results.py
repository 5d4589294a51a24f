"""Shared by the benchmark scripts: the machine's description and RESULTS.md sections.

Each script owns one section of RESULTS.md (between ``<!-- bench:NAME -->`` markers) and rewrites only it,
stamped with the date and the machine, so figures from different runs never mix silently.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nWritten by the scripts in this directory (`make bench`); each section is replaced by its script.\n"


def machine() -> str:
    from release_kit.environment import summary

    return summary()


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_section(name: str, title: str, body: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"<!-- bench:{name} -->\n## {title}\n\n_{stamp} · {machine()}_\n\n{body.strip()}\n<!-- /bench:{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(body)
