"""Release notes, CHANGELOG entries and the HTML note: golden files with dates and versions pinned, the
Keep a Changelog writer, and the HTML page rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from release_kit import changelog, render
from release_kit.errors import InputError
from release_kit.report import Bump, CheckResult, MetricDiff, Report, Status, Verdict

GOLDEN = Path(__file__).parent / "golden"


def pinned_report() -> Report:
    """A passing minor release with every section of the note filled, nothing time- or machine-dependent."""
    return Report(
        model="power-forecast",
        task="regression",
        verdict=Verdict.PASS,
        bump=Bump.MINOR,
        bump_reason="mae improved by at least 0.0248 (interval's lower bound), clearing the minimum effect 0.000939",
        checks=[
            CheckResult("quality", "mae", Status.PASS, "mae 0.04695 → 0.01988",
                        (MetricDiff("mae", 0.01988, 0.04695, -0.02707, -0.0294, -0.0248, False, 0.0023),)),
            CheckResult("quality", "r2", Status.PASS, "r2 0.9963 → 0.9994",
                        (MetricDiff("r2", 0.9994, 0.9963, 0.0031, 0.0027, 0.0034, True, 0.02),)),
            CheckResult("outliers", "slices", Status.WARN, "slice hour ≥ 18 | <b>dusk</b> @team regressed by 4%",
                        details={"chart": {"title": "loss change", "labels": ["-0.1", "0", "+0.1"], "values": [3, 40, 2], "y_label": "rows"},
                                 "table": {"title": "worst slices", "columns": ["slice", "rows", "Δ mae"], "rows": [["hour ≥ 18", 212, 0.004]]}}),
            CheckResult("data", "drift", Status.FAIL, "irradiance drifted (PSI 0.31)"),
        ],
        candidate={"source": "models/candidate-better.pt2", "sha256": "b" * 64, "kind": "torch.export"},
        baseline={"source": "models:/power-forecast@champion", "sha256": "a" * 64, "version": "1.0.0"},
        data={"golden": {"path": "data/golden.csv", "rows": 3000, "sha256": "c" * 64}},
        current_version="1.0.0",
        next_version="1.1.0",
        created_at="2026-11-21T12:00:00+00:00",
        environment={"release_kit": "0.1.0"},
        contract={"compared": True, "breaking": [], "additive": ["bounds widened: max 6.0 → 8.0"]},
        waivers=[{"check": "data::drift", "reason": "new sensors, reviewed", "by": "ana", "applied": True}],
    )


RELEASE = {
    "model": "power-forecast", "version": "1.1.0", "date": "2026-11-21", "previous": "1.0.0",
    "tag": "power-forecast-v1.1.0", "alias": "champion", "commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False,
    "release_id": "6b9fcf13dca48900bbd8", "previous_manifest": True,
    "changes": [
        {"what": "code (git sha)", "before": "fedcba987654", "after": "0123456789ab"},
        {"what": "package torch", "before": "2.12.0", "after": "2.13.0"},
    ],
}


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; ``UPDATE_GOLDEN=1`` rewrites the file (review the diff)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_release_note_matches_the_golden_file():
    assert_golden("release-note.md", render.render_release_note(pinned_report(), RELEASE))


def test_changelog_entry_matches_the_golden_file():
    assert_golden("changelog-entry.md", render.render_changelog_entry(pinned_report(), RELEASE))


def test_a_first_releases_changelog_entry_says_so_once():
    """The first release's reason starts "first release: …": the entry said "First release: first release: …"."""
    import dataclasses

    first = dataclasses.replace(pinned_report(), bump=Bump.MAJOR, first_release=True, baseline=None, current_version=None,
                                next_version="1.0.0", bump_reason="first release: no baseline, version 1.0.0")
    entry = render.render_changelog_entry(first, {**RELEASE, "version": "1.0.0", "previous": None})
    assert entry.lower().count("first release") == 1, entry
    assert "- First release: no earlier version to compare with\n" in entry


def test_a_metric_near_a_whole_number_is_not_shown_as_one():
    """A near-perfect AUC is written with the digits that show it is not 1, in the note's metric table as in
    the check's summary; an exact 1 stays "1"."""
    from dataclasses import replace

    report = pinned_report()
    auc = CheckResult("quality", "roc_auc", Status.PASS, "ROC AUC 0.99996 → 0.99998",
                      (MetricDiff("roc_auc", 0.99998, 0.99996, 0.00002, 0.00001, 0.00003, True, 0.01),))
    note = render.render_release_note(replace(report, checks=[*report.checks, auc]), RELEASE)
    row = next(line for line in note.splitlines() if "roc_auc" in line and "|" in line)
    assert "0.99998" in row and "0.99996" in row and "| 1 |" not in row, row
    assert render.significant(1.0) == "1" and render.significant(0.99996, 0.99998) == ("0.99996", "0.99998")


def test_note_escapes_untrusted_text():
    note = render.render_release_note(pinned_report(), RELEASE)
    assert "<b>" not in note and "&lt;b&gt;dusk&lt;/b&gt;" in note
    assert "@team" not in note and "@\u200bteam" in note  # no @-mention ping
    assert "\\| &lt;b&gt;" in note  # a pipe cannot end the table cell


def test_summaries_of_charts_and_tables_are_escaped_as_html_not_markdown():
    """A ``<summary>`` is raw HTML, which GitHub and CommonMark show as it is: a markdown escape there showed
    its backslash (``outliers::newly\\_broken``), in the PR comment and the HTML page alike."""
    report = pinned_report()
    title = "rows_changed <i>x</i> @team"
    report.checks.append(CheckResult("outliers", "newly_broken", Status.WARN, "3 rows newly broken",
                                     details={"chart": {"title": title, "labels": ["a"], "values": [1], "y_label": "rows"},
                                              "table": {"title": "worst_rows", "columns": ["row"], "rows": [[1]]}}))
    markdown = render.render_markdown(report)
    assert "<summary>outliers::newly_broken: rows_changed &lt;i&gt;x&lt;/i&gt; @\u200bteam</summary>" in markdown
    assert "<summary>outliers::newly_broken: worst_rows</summary>" in markdown
    page = render.render_html(report)
    assert "<summary>outliers::newly_broken: rows_changed &lt;i&gt;x&lt;/i&gt; @\u200bteam</summary>" in page
    assert "<i>x</i>" not in page and "newly\\_broken" not in page


def test_a_user_template_overrides_the_shipped_one(tmp_path):
    (tmp_path / "changelog-entry.md.j2").write_text("## [{{ release.version }}] - {{ release.date }}\n\n- {{ report.bump }}\n")
    assert render.render_changelog_entry(pinned_report(), RELEASE, templates_dir=tmp_path) == "## [1.1.0] - 2026-11-21\n\n- minor\n"


def test_template_syntax_error_names_the_template_and_line(tmp_path):
    (tmp_path / "release-note.md.j2").write_text("# {{ release.version }}\n{% if %}\n")
    with pytest.raises(InputError, match=r"cannot render template release-note.md.j2 \(line 2 of release-note.md.j2\)"):
        render.render_release_note(pinned_report(), RELEASE, templates_dir=tmp_path)


# Keep a Changelog --------------------------------------------------------------------------------------

EXISTING = """# Changelog

Intro text that must stay.

## [Unreleased]

- work in progress

## [2.0.0] - 2026-10-01

- two

## [1.0.0] - 2026-01-01

- one

[2.0.0]: https://example.com/2.0.0
[1.0.0]: https://example.com/1.0.0
"""


@pytest.mark.parametrize(("version", "order"), [
    ("2.1.0", ["Unreleased", "2.1.0", "2.0.0", "1.0.0"]),
    ("1.5.0", ["Unreleased", "2.0.0", "1.5.0", "1.0.0"]),
    ("0.9.0", ["Unreleased", "2.0.0", "1.0.0", "0.9.0"]),
    ("2.0.0-rc.1", ["Unreleased", "2.0.0", "2.0.0-rc.1", "1.0.0"]),
])
def test_entry_goes_in_version_order_below_unreleased(version, order):
    updated = changelog.insert(EXISTING, version, f"## [{version}] - 2026-11-21\n\n- new\n")
    assert changelog.versions(updated) == order
    assert "Intro text that must stay." in updated and "- work in progress" in updated
    assert updated.rstrip().endswith("[1.0.0]: https://example.com/1.0.0")  # link definitions stay last


def test_first_entry_creates_the_keep_a_changelog_header(tmp_path):
    path = tmp_path / "CHANGELOG.md"
    assert changelog.write_entry(path, "1.0.0", "## [1.0.0] - 2026-11-21\n\n- first\n")
    text = path.read_text()
    assert text.startswith("# Changelog\n") and "keepachangelog.com" in text and changelog.versions(text) == ["1.0.0"]
    assert not changelog.write_entry(path, "1.0.0", "## [1.0.0] - 2026-11-22\n\n- again\n")  # once per version
    assert path.read_text() == text


def semvers(patch_max: int = 3):
    return st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, patch_max)).map(lambda v: ".".join(map(str, v)))


@settings(max_examples=60, deadline=None)
@given(existing=st.lists(semvers(), unique=True, max_size=6), new=semvers(patch_max=4))
def test_inserting_never_loses_or_reorders_entries(existing, new):
    import semver

    if new in existing:
        return
    ordered = sorted(existing, key=semver.Version.parse, reverse=True)
    text = changelog.HEADER + "".join(f"\n## [{v}] - 2026-01-01\n\n- body of {v}\n" for v in ordered)
    updated = changelog.insert(text, new, f"## [{new}] - 2026-11-21\n\n- new\n")
    assert [v for v in changelog.versions(updated) if v != new] == ordered
    assert changelog.versions(updated) == sorted([*existing, new], key=semver.Version.parse, reverse=True)
    assert all(f"- body of {v}\n" in updated for v in existing)


# HTML in a real browser ----------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_note_is_one_self_contained_page():
    html = render.render_html(pinned_report())
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html)  # nothing loaded from elsewhere
    assert "<table>" in html and "<svg" in html and "```" not in html  # tables and charts rendered, no raw markdown
    assert "&lt;b&gt;dusk" in html and "<b>dusk" not in html
    # The chart has a y axis with its unit and ticks, and each bar its value above it.
    ticks = re.findall(r'<text x="\d+" y="[\d.]+" class="label" text-anchor="end">([^<]*)</text>', html)
    assert ticks == ["0", "20", "40"]
    assert re.findall(r'class="value" text-anchor="middle">([^<]*)</text>', html) == ["3", "40", "2"]


def test_a_figure_measured_without_an_interval_shows_a_dash_not_an_empty_one():
    report = pinned_report()
    report.checks.append(CheckResult("performance", "latency:batch=1", Status.PASS, "p50 0.0106 → 0.0107 ms",
                                     (MetricDiff("p50_latency_ms", 0.0107, 0.0106, 0.0001, float("nan"), None, False, None),)))
    markdown = render.render_markdown(report)
    assert re.search(r"\| p50\\_latency\\_ms +\| 0.0106 \| 0.0107 \| \+0.0001 \| — \| — \|", markdown)
    assert "| [-0.0294, -0.0248] |" in markdown  # an interval is shown as one


def test_large_and_small_chart_numbers_fit_their_bars():
    report = pinned_report()
    report.checks[2] = CheckResult("outliers", "slices", Status.WARN, "regressed", details={
        "chart": {"title": "rows", "labels": ["a", "b", "c", "d"], "values": [1387, 25_300, 4_200_000, 2.5e-7], "y_label": "rows"}})
    html = render.render_html(report)
    assert re.findall(r'class="value" text-anchor="middle">([^<]*)</text>', html) == ["1.39k", "25.3k", "4.2M", "2.5e-07"]
    assert re.findall(r'class="label" text-anchor="end">([^<]*)</text>', html) == ["0", "2.1M", "4.2M"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium); .ci/run installs it")
def test_html_note_renders_in_headless_chromium(tmp_path, cli, monkeypatch):
    report_path = tmp_path / "report.json"
    pinned_report().write(report_path)
    page = tmp_path / "note.html"
    result = cli("note", "--report", report_path, "--format", "html", "--out", page)
    assert result.exit_code == 0, result.output

    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    # The browser parsed the page into the structure the note promises.
    assert re.search(r"<h2>✅ release-kit: <code>power-forecast</code> — PASS</h2>", rendered)
    assert len(re.findall(r"<rect ", rendered)) == 3  # the chart's three bars, drawn as SVG
    assert re.search(r"<td>mae ▲</td>\s*<td[^>]*>0.04695</td>", rendered)
    assert "<b>dusk</b>" not in rendered and "&lt;b&gt;dusk&lt;/b&gt;" in rendered

    shot = tmp_path / "note.png"
    done = subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10_000  # a real, non-blank picture


def test_terminal_table_shows_every_check_name_whole_broken_after_its_separators():
    import io

    from rich.console import Console

    report = pinned_report()
    for rows in (1, 64):
        report.checks.append(CheckResult("performance", f"latency:batch={rows}", Status.FAIL, "slower beyond the budget"))
    out = io.StringIO()
    render.print_report(report, Console(file=out, width=80, force_terminal=False))
    lines = out.getvalue().splitlines()
    assert "…" not in out.getvalue()  # two "performance::latency:batc…" rows could not be told apart
    names = [(line, after) for line, after in zip(lines, lines[1:]) if "performance::latency:" in line]
    assert len(names) == 2
    assert [re.search(r"batch=\d+", after)[0] for _, after in names] == ["batch=1", "batch=64"]
    assert render.check_name_lines("outliers::search:robustness", 24) == ["outliers::search:", "robustness"]
    assert render.check_name_lines("data::" + "a" * 30, 24) == ["data::", "a" * 24, "a" * 6]
    assert render.check_name_lines("quality::mae", 24) == ["quality::mae"]
    assert render.check_name_lines("data::golden/debt_ratio:column_values_to_be_between", 26) == [
        "data::golden/debt_ratio:", "column_values_to_be_", "between"]


def test_the_history_table_on_an_80_column_terminal_folds_no_word():
    """A two-output model's metrics, its data's digests and its alias, each a line, wrapped at their spaces
    only: "mae_output_1" had been folded into "mae_outpu" and "t_1", "@champion" into "@champ" and "ion"."""
    import io

    from rich.console import Console

    from release_kit.ledger import LedgerEntry

    entry = LedgerEntry(
        version="1.1.0", registry_version="2", released_at="2026-12-07T01:00:00", bump="minor", git_sha="e770bdf32fcf" + "0" * 28,
        metrics={"quality.mae": 0.02312, "quality.mae:output_0": 0.01445, "quality.mae:output_1": 0.03179, "quality.rmse": 0.02885},
        data={"golden": "b9c6930c" + "0" * 56, "reference": "712c7758" + "0" * 56}, aliases=["champion"], release_id="r",
        rollbacks=[{"at": "2026-12-08T00:00:00", "from": "1.2.0", "reason": "night forecasts drift", "to": "1.1.0", "alias": "champion", "by": "x"}],
    )
    # A version registered before release-kit: no commit, data, metrics or alias recorded.
    bare = LedgerEntry(version="1.0.0", registry_version="1", released_at="2026-11-01T00:00:00", bump=None, git_sha=None,
                       metrics={}, data={}, aliases=[], release_id=None)
    out = io.StringIO()
    render.print_history("seq-reg", [entry, bare], Console(file=out, width=80, force_terminal=False))
    text = out.getvalue()
    assert re.search(r"1\.0\.0 #1 +│ 2026-11-01 │ — +│ — +│ — +│", text), text
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(re.findall(r"[^\s│┃]+", text))
    assert {"mae:output_0", "mae:output_1", "0.01445", "@champion", "git", "e770bdf3", "golden", "b9c6930c", "reference", "712c7758"} <= words
    assert {"↩", "2026-12-08", "1.2.0:", "night", "forecasts", "drift"} <= words, text  # the rollback's line


def test_a_chart_of_long_labels_is_drawn_horizontally_with_every_label_whole():
    """Feature names under vertical bars were cut to the bar's width ("inputs.0…" forty times over): labels
    longer than 9 characters go beside horizontal bars, with a value axis of three ticks; short ones (a
    histogram's bins) stay under vertical bars."""
    report = pinned_report()
    labels = [f"channel_statistic[{k}] mean" for k in range(12)]
    report.checks[2] = CheckResult("data", "drift", Status.WARN, "drifted", details={
        "chart": {"title": "PSI per feature", "labels": labels, "values": [0.5 - 0.04 * k for k in range(12)], "y_label": "PSI"}})
    html = render.render_html(report)
    row_labels = re.findall(r'class="label" text-anchor="end">([^<]*)</text>', html)
    assert row_labels == labels  # whole, in order, none cut
    assert re.findall(r'class="label" text-anchor="middle">([^<]*)</text>', html) == ["0", "0.25", "0.5"]  # the value axis


def test_a_drift_chart_draws_the_largest_psis_of_many_and_says_so():
    from release_kit.drift import FeatureDrift
    from release_kit.stages.data import DRIFT_CHART_BARS, drift_chart

    results = [FeatureDrift(f"inputs.0[{k}]", "ks", psi, 0.1, 0.5) for k, psi in enumerate([0.01 * (k % 7) for k in range(40)])]
    results[3] = FeatureDrift("inputs.0[3]", "ks", float("nan"), float("nan"), float("nan"), undecided=True)
    results[5] = FeatureDrift("inputs.0[5]", "ks", 0.9, 0.5, 0.001, drifted=True)
    chart = drift_chart(results, "channel statistics")
    assert len(chart["labels"]) == DRIFT_CHART_BARS and chart["labels"][0] == "inputs.0[5]" and "inputs.0[3]" not in chart["labels"]
    assert chart["values"] == sorted(chart["values"], reverse=True)
    assert chart["title"] == f"PSI per channel statistic (golden vs reference, the {DRIFT_CHART_BARS} largest of 40)"
    few = drift_chart(results[:5], "features")
    assert few["labels"] == [r.feature for r in results[:5]] and few["title"] == "PSI per feature (golden vs reference)"
