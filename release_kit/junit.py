"""The report as JUnit XML, so that any CI shows the gate's checks as tests.

One ``<testsuite>`` per stage, one ``<testcase>`` per check: a blocking failure is ``<failure>``, a check that
could not run is ``<error>``, a skip is ``<skipped>``; a warning passes with its summary in ``<system-out>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import groupby
from typing import TYPE_CHECKING

from .errors import visible_controls

if TYPE_CHECKING:
    from .report import Report


def to_junit(report: Report) -> str:
    suites = ET.Element("testsuites", name=_text(f"release-kit {report.model}"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for stage, checks in groupby(sorted(report.checks, key=lambda c: c.stage), key=lambda c: c.stage):
        checks = list(checks)
        counts = {
            "tests": len(checks),
            "failures": sum(c.status.value == "fail" for c in checks),
            "errors": sum(c.status.value == "error" for c in checks),
            "skipped": sum(c.status.value == "skip" for c in checks),
        }
        suite = ET.SubElement(suites, "testsuite", name=_text(stage), time=f"{sum(c.duration_s for c in checks):.3f}",
                              **{key: str(value) for key, value in counts.items()})
        for check in checks:
            case = ET.SubElement(suite, "testcase", classname=_text(f"release_kit.{stage}"), name=_text(check.name), time=f"{check.duration_s:.3f}")
            status = check.status.value
            if status == "fail":
                ET.SubElement(case, "failure", message=_one_line(check.summary)).text = _text(check.summary)
            elif status == "error":
                ET.SubElement(case, "error", message=_one_line(check.summary)).text = _text(check.summary)
            elif status == "skip":
                ET.SubElement(case, "skipped", message=_one_line(check.summary))
            elif status == "warn":
                ET.SubElement(case, "system-out").text = _text(f"warning: {check.summary}")
        for key in totals:
            totals[key] += counts[key]
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# Characters XML 1.0 cannot carry at all, not even escaped (a summary may quote arbitrary data).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(text: str) -> str:
    """Control characters written out (``\\x1b``), as release-kit prints untrusted text everywhere: a CI's
    test viewer shows them to a reader too. What is left that XML cannot carry (a lone surrogate) is U+FFFD."""
    return _NOT_XML.sub("\ufffd", visible_controls(text))


def _one_line(text: str) -> str:
    return _text(" ".join(text.split())[:500])
