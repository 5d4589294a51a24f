"""Renderers: the report as a terminal table (rich), markdown (jinja2 templates) or JSON."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, first_line, visible_controls
from .report import Record, Report

if TYPE_CHECKING:
    from rich.console import Console

    from .report import CheckResult, MetricDiff

STATUS_ICON = {"pass": "✅", "fail": "❌", "warn": "⚠️", "skip": "⏭️", "error": "💥"}
STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim", "error": "bold magenta"}


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else significant(value)


def significant(*values: float) -> str | tuple[str, ...]:
    """``values`` in 4 significant digits, more (up to 10) where those would show two different values
    alike, or a value as the whole number it is not: an AUC of 0.99998 is "0.99998", not "1", and a change
    from 0.99996 to it "0.99996 → 0.99998", not "1 → 1". One value gives a string, several a tuple."""
    for digits in range(4, 11):
        shown = tuple(f"{value:.{digits}g}" for value in values)
        alike = len(set(shown)) < len(shown) and len(set(values)) > 1
        rounded_whole = any(text.lstrip("-").isdigit() and value != float(text) for text, value in zip(shown, values))
        if not (alike or rounded_whole):
            break
    return shown[0] if len(shown) == 1 else shown


def _interval(diff: MetricDiff) -> str:
    """A metric's interval as ``[low, high]``; a dash for a figure measured without one (a latency in ms)."""
    if _finite(diff.ci_low) is None and _finite(diff.ci_high) is None:
        return "—"
    return f"[{_signed(diff.ci_low)}, {_signed(diff.ci_high)}]"


def _short(value: float | None) -> str:
    """A number in at most about seven characters, for a chart's ticks and bar values: 3 significant
    digits, thousands and millions as k and M."""
    if value is None or not math.isfinite(value):
        return "—"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _finite(value: object, default: float | None = None) -> float | None:
    """A chart's value when it is a finite number, else ``default``: a NaN (null in a saved report) draws no bar."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return default


def _signed(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.3g}"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape_markdown(text: object) -> str:
    """Escape untrusted text (check names, summaries, titles) for GitHub markdown, tables included.

    No raw HTML, no links or emphasis, no @-mention pings (a zero-width space after @), no line breaks
    that would end a table row.
    """
    value = _MARKDOWN_SPECIAL.sub(r"\\\1", visible_controls(str(text)))
    for raw, escaped in (("<", "&lt;"), (">", "&gt;"), ("@", "@\u200b"), ("\r", " "), ("\n", " ")):
        value = value.replace(raw, escaped)
    return value


def escape_html_text(text: object) -> str:
    """Escape untrusted text inside the templates' raw HTML (a ``<summary>``): GitHub and CommonMark take an
    HTML block as it is, so a markdown escape there would show its backslash; HTML's escapes, @ defused,
    one line."""
    value = html.escape(visible_controls(str(text)), quote=True)
    for raw, escaped in (("@", "@\u200b"), ("\r", " "), ("\n", " ")):
        value = value.replace(raw, escaped)
    return value


def code_span(text: object) -> str:
    """Untrusted text as an inline code span: a fence longer than any run of backticks inside, so the
    text cannot close it; pipes escaped for tables (GitHub honours ``\\|`` even in code); @ defused; one line."""
    value = visible_controls(str(text)).replace("\r", " ").replace("\n", " ").replace("|", "\\|").replace("@", "@\u200b")
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _cell(value: object) -> str:
    """A table cell: numbers compactly, None as a dash, text escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return _num(value)
    return escape_markdown(value)


def _mermaid(text: object) -> str:
    """Text inside a mermaid quoted string: no quotes or line breaks that would end it."""
    return str(text).replace('"', "'").replace("\n", " ")


def _arrow(diff: MetricDiff) -> str:
    better = diff.improvement_interval
    if better is None:
        return ""
    if better[0] > 0:
        return "▲"
    if better[1] < 0:
        return "▼"
    return "≈"


def failures_first(checks) -> list[CheckResult]:
    """Checks ordered by what a reader must act on: failures, errors, warnings, skips, passes; in their
    order within each."""
    return sorted(checks, key=lambda check: STATUS_ORDER[str(check.status)])


def metric_rows(report: Report) -> list[MetricDiff]:
    return [diff for check in report.checks for diff in check.metrics if diff.baseline is not None]


CHART_TEMPLATES = {"mermaid": "chart.mermaid.j2", "svg": "chart.svg.j2"}


def _environment(templates_dir: str | Path | None, charts: str = "mermaid"):
    """Every template, shipped or the user's, renders in jinja2's sandbox: a template is data from the
    repository (a pull request can change it), so it may format values but never reach Python internals."""
    from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    loaders = [PackageLoader("release_templates", ".")]
    if templates_dir is not None:
        if not Path(templates_dir).is_dir():
            raise InputError(f"templates directory not found: {templates_dir} ([release] templates or --templates)")
        loaders.insert(0, FileSystemLoader(str(templates_dir)))
    env = SandboxedEnvironment(loader=ChoiceLoader(loaders), undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(
        md=escape_markdown, html=escape_html_text, code=code_span, num=_num, short=_short, interval=_interval, signed=_signed, finite=_finite, arrow=_arrow, cell=_cell, mermaid=_mermaid, status_icon=lambda status: STATUS_ICON[str(status)],
        failures_first=failures_first
    )
    env.globals.update(metric_rows=metric_rows, chart_template=CHART_TEMPLATES[charts])
    return env


def _render(name: str, templates_dir: str | Path | None, *, charts: str = "mermaid", **context) -> str:
    """Render a template; a template error (an unknown variable, a syntax error) is the user's input error.
    With a repository's templates, in a child process whose memory and CPU time are bounded
    (:func:`render_isolated`): the sandbox keeps a template from Python's internals, not from asking for
    gigabytes or hours."""
    if templates_dir is not None:  # a missing directory is the child's input error, as it is in process
        return render_isolated(name, str(templates_dir), charts, {key: _as_json(value) for key, value in context.items()})
    return _render_here(name, None, charts, context)


# A repository's templates render in release_kit.template_worker, a child process under these limits.
# Its address space: the interpreter, jinja2 and markdown-it take ~100 MB of it; a release note is kilobytes.
MEMORY_LIMIT_BYTES = 1 << 30
# CPU seconds, and the parent's wall-clock wait (the shipped templates render in milliseconds).
CPU_SECONDS = 30
WAIT_SECONDS = 60
# The rendered text, at most: a note or a changelog entry is kilobytes, GitHub's comments stop at 64 KiB.
OUTPUT_LIMIT_CHARS = 16 << 20
# The child's exit when the template is at fault; anything else is a failure of the child itself.
TEMPLATE_FAULT = 2


def render_isolated(name: str, templates_dir: str, charts: str, context: dict[str, Any]) -> str:
    """``name`` rendered from ``templates_dir`` in the child, which gets no environment variable of this job
    (no token a template could print); an InputError naming the template when it cannot be (its own error,
    or the time or memory it asked for)."""
    import json
    import os
    import subprocess
    import sys

    from .errors import one_line

    request = json.dumps({"name": name, "templates": templates_dir, "charts": charts, "context": context}, allow_nan=False)
    # The child finds release-kit and jinja2 where this process did (an install may live on PYTHONPATH alone).
    search_path = os.pathsep.join([str(Path(__file__).resolve().parent.parent), *(p for p in sys.path if p)])
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": search_path, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
    try:
        done = subprocess.run([sys.executable, "-m", "release_kit.template_worker"], input=request, capture_output=True,
                              text=True, encoding="utf-8", env=environment, timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"cannot render template {name}: it took longer than {WAIT_SECONDS} s (a release note takes milliseconds)") from None
    if done.returncode == 0:
        return done.stdout
    if done.returncode == TEMPLATE_FAULT:  # its last line: a library's warning may come first
        raise InputError(one_line(done.stderr.strip().splitlines()[-1]))
    if done.returncode in (-9, -24):  # SIGKILL, SIGXCPU: past RLIMIT_CPU
        raise InputError(f"cannot render template {name}: it took more than {CPU_SECONDS} s of CPU (a release note takes milliseconds)")
    raise RuntimeError(f"the template renderer failed (exit {done.returncode}): {one_line(done.stderr.strip()[-500:])}")


def render_from_json(name: str, templates_dir: str, charts: str, context: dict[str, Any]) -> str:
    """The child's side of :func:`_render`: the context from its JSON form, rendered in this process."""
    typed = dict(context)
    if typed.get("report") is not None:
        typed["report"] = Report.from_dict(typed["report"])
    if typed.get("release") is not None:
        typed["release"] = ReleaseContext.from_dict(typed["release"])
    return _render_here(name, templates_dir, charts, typed)


def _as_json(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if isinstance(value, Report):
        return value.to_dict()
    return asdict(value) if is_dataclass(value) else value


def _render_here(name: str, templates_dir: str | None, charts: str, context: dict[str, Any]) -> str:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    env = _environment(templates_dir, charts)
    try:
        return env.get_template(name).render(**context)
    except SecurityError as error:
        raise InputError(f"template {name} tried something the sandbox refuses: {first_line(error)}") from None
    except TemplateError as error:
        where = f" (line {error.lineno} of {error.name})" if getattr(error, "lineno", None) and getattr(error, "name", None) else ""
        raise InputError(f"cannot render template {name}{where}: {error}") from None


def render_markdown(report: Report, *, templates_dir: str | Path | None = None, confidence: float = 0.95) -> str:
    return _render("report.md.j2", templates_dir, report=report, confidence=confidence)


def render_html(report: Report, *, templates_dir: str | Path | None = None, confidence: float = 0.95) -> str:
    """The report as one self-contained HTML page: the markdown note rendered, charts as inline SVG."""
    markdown = _render("report.md.j2", templates_dir, charts="svg", report=report, confidence=confidence)
    title = f"release-kit · {report.model} · {report.verdict.value}"
    return _render("page.html.j2", templates_dir, title=title, body=markdown_to_html(markdown))


def markdown_to_html(markdown: str) -> str:
    """GitHub-flavoured enough for our templates: tables, raw HTML blocks (details, figures) passed through.

    Raw HTML is safe here because every user-supplied string in the templates goes through the ``md``
    filter, or inside the templates' own HTML the ``html`` filter: both escape ``<`` and ``>``.
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


@dataclass(frozen=True)
class ReleaseContext(Record):
    """What the release templates (release-note.md.j2, changelog-entry.md.j2) know of the release, besides
    the report: ``release.version``, ``release.changes`` …"""

    model: str
    version: str
    date: str  # ISO date
    previous: str | None  # the version released before, None on a first release
    tag: str | None  # the git tag, None without one
    alias: str | None  # the alias moved, None when none is
    commit: str | None
    dirty: bool
    release_id: str
    changes: list[dict[str, Any]] = field(default_factory=list)  # {"what", "before", "after"} since the previous manifest
    previous_manifest: bool = False  # whether the previous release had a manifest to compare with


def render_release_note(report: Report, release: ReleaseContext | dict, *, templates_dir: str | Path | None = None,
                        confidence: float = 0.95) -> str:
    return _render("release-note.md.j2", templates_dir, report=report, release=ReleaseContext.from_dict(release), confidence=confidence)


def render_changelog_entry(report: Report, release: ReleaseContext | dict, *, templates_dir: str | Path | None = None) -> str:
    return _render("changelog-entry.md.j2", templates_dir, report=report, release=ReleaseContext.from_dict(release))


# Failures first: what a reader must act on comes before what merely passed.
STATUS_ORDER = {"fail": 0, "error": 1, "warn": 2, "skip": 3, "pass": 4}


def status_counts(report: Report) -> str:
    """"2 fail · 1 warn · 30 pass" in the order a reader cares about."""
    counts: dict[str, int] = {}
    for check in report.checks:
        counts[check.status.value] = counts.get(check.status.value, 0) + 1
    return " · ".join(f"{counts[s]} {s}" for s in sorted(counts, key=STATUS_ORDER.get))


def check_name_lines(name: str, width: int) -> list[str]:
    """A check's name in lines of at most ``width`` characters, broken after its ':' separators; a part
    longer than a line after its '_' and '/' too ("column_values_to_be_" and "between", not "…betwee" and
    "n"), and a word longer than a line is folded."""
    parts = []
    for part in re.findall(r"[^:]+:*|:+", name):
        parts.extend(re.findall(r"[^_/]+[_/]*|[_/]+", part) if len(part) > width else [part])
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return [line[k:k + width] for line in lines for k in range(0, len(line), width)]


def terminal_text(text: object) -> str:
    """Untrusted text for a rich console: its markup escaped and its control characters written out."""
    from rich.markup import escape

    return escape(visible_controls(str(text)))


def print_report(report: Report, console: Console, *, verbose: bool = False) -> None:
    """The terminal report: a summary line, then failures, errors and warnings (passing and skipped checks
    collapsed into a count unless ``verbose``), then the verdict naming the waivers it relied on."""
    from rich.table import Table

    console.print(f"[bold]release-kit · {terminal_text(report.model)}[/]: {len(report.checks)} checks: {status_counts(report)}")
    shown = failures_first(c for c in report.checks if verbose or c.status.value in ("fail", "error", "warn"))
    if shown:
        table = Table(expand=True, show_lines=False)
        table.add_column("status", no_wrap=True)
        # Check names are identifiers: a long one is broken after its ':' separators, never cut short (two
        # "performance::latency:batc…" rows could not be told apart); the summary column takes the rest.
        name_width = max(24, console.width // 3)
        table.add_column("check", style="cyan", overflow="fold", max_width=name_width)
        table.add_column("summary", overflow="fold", ratio=1)
        for check in shown:
            status = check.status.value
            name = "\n".join(check_name_lines(f"{check.stage}::{check.name}", name_width))
            table.add_row(f"[{STATUS_STYLE[status]}]{status}[/]", terminal_text(name), terminal_text(check.summary))
        console.print(table)
    hidden = len(report.checks) - len(shown)
    if hidden:
        console.print(f"[dim]{hidden} passing or skipped check(s) not shown (--verbose lists them)[/]")
    waived = [w.check for w in report.waivers if w.applied]
    waiver_note = f" [yellow](waived: {terminal_text(', '.join(waived))})[/]" if waived else ""
    if report.verdict.value == "pass":
        bump = report.bump.value if report.bump else "none"
        # bump none keeps the version: "→ 2.4.0" would announce a release that `release` declines
        version = "" if not report.next_version else f" (stays {report.next_version})" if bump == "none" else f" → {report.next_version}"
        console.print(f"[bold green]PASS[/] bump [bold]{bump}[/]{terminal_text(version)}: {terminal_text(report.bump_reason)}{waiver_note}")
    else:
        console.print(f"[bold red]BLOCK[/]: {terminal_text(report.bump_reason)}{waiver_note}")


def print_history(model: str, entries: list, console: Console) -> None:
    from rich.table import Table

    # A metric, a commit or data digest and an alias a line each, wrapped at their spaces: joined by commas
    # in narrow columns, "mae_output_1 0.03179" was folded mid-name ("mae_outpu", "t_1") and "@champion"
    # into "@champ", "ion". The commit and the data's digests share a column, so that on an 80-column
    # terminal the metrics keep room for their names.
    rows = []
    for entry in entries:
        quality = "\n".join(f"{name.rpartition('.')[2]} {_num(value)}" for name, value in entry.metrics.items() if name.startswith("quality."))
        commit = [f"git {entry.git_sha[:8]}"] if entry.git_sha else []
        provenance = "\n".join(commit + [f"{role} {sha[:8]}" for role, sha in entry.data.items()])
        rolled = "".join(f"\n↩ {event['at'][:10]} from {event['from']}: {event['reason']}" for event in entry.rollbacks)
        rows.append((entry.version, f"#{entry.registry_version}", entry.released_at[:10], entry.bump or "—", quality or "—",
                     provenance or "—", "\n".join(f"@{alias}" for alias in entry.aliases) + rolled))
    table = Table(title=f"release-kit · {model} releases", title_justify="left", expand=True)
    for column in ("version", "released", "bump", "quality", "provenance", "alias"):
        table.add_column(column, overflow="fold", no_wrap=column in ("version", "released", "bump"))
    for version, number, *rest in rows:
        table.add_row(f"[bold]{terminal_text(version)}[/] {number}", *map(terminal_text, rest))
    console.print(table)


class ProgressListener:
    """A transient progress bar on stderr while the checks run. Where stderr is no terminal (a CI log), a
    long streamed scan prints a line every ``LOG_EVERY_S`` seconds instead: a bar is not drawn there."""

    LOG_EVERY_S = 10.0

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        # The counts are in the description, said once: a column of them beside it was cut short first in an
        # 80-column terminal ("50000/5…").
        self.progress = Progress(
            TextColumn("[bold]checks"), BarColumn(bar_width=20), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self.task = None
        self.rows_task = None
        self.next_log_s = self.LOG_EVERY_S  # a scan shorter than that logs nothing

    def rows(self, count: int, total: int, seconds: float) -> None:
        """A streamed golden set's progress: rows through both models so far, of ``total``, and the rate."""
        rate = count / seconds if seconds > 0 else 0.0
        text = f"golden rows: {count:,} of {total:,} ({rate:,.0f} rows/s)"
        if not self.console.is_terminal:
            if seconds >= self.next_log_s:
                self.console.print(f"release-kit: {text}", markup=False, highlight=False, soft_wrap=True)
                self.next_log_s = seconds + self.LOG_EVERY_S
            return
        if self.rows_task is None:
            self.progress.start()
            self.rows_task = self.progress.add_task("", total=total)
        self.progress.update(self.rows_task, completed=count, description=text)

    def started(self, total: int) -> None:
        if self.rows_task is not None:
            self.progress.remove_task(self.rows_task)
        self.progress.start()
        self.task = self.progress.add_task(f"0 of {total}", total=total)

    def finished(self, result: CheckResult) -> None:
        if self.task is not None:
            self.progress.advance(self.task)
            task = next(task for task in self.progress.tasks if task.id == self.task)
            self.progress.update(self.task, description=f"{task.completed:.0f} of {task.total:.0f}: {result.stage}::{result.name}")

    def close(self) -> None:
        if self.task is not None or self.rows_task is not None:  # one never started prints nothing, not even a newline
            self.progress.stop()
