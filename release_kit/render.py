"""Renderers: the report as a terminal table (rich), markdown (jinja2 templates) or JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from .report import CheckResult, MetricDiff, Report

STATUS_ICON = {"pass": "✅", "fail": "❌", "warn": "⚠️", "skip": "⏭️", "error": "💥"}
STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim", "error": "bold magenta"}


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _signed(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.3g}"


def _md(text: object) -> str:
    """Escape text for a markdown table cell: no table breaks, no raw HTML, no @-mention pings."""
    value = str(text)
    for raw, escaped in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("@", "@\u200b"), ("\n", " ")):
        value = value.replace(raw, escaped)
    return value


def _cell(value: object) -> str:
    """A table cell: numbers compactly, None as a dash, text escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return _num(value)
    return _md(value)


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


def metric_rows(report: Report) -> list[MetricDiff]:
    return [diff for check in report.checks for diff in check.metrics if diff.baseline is not None]


def _environment(templates_dir: str | Path | None):
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined

    loaders = [PackageLoader("release_templates", ".")]
    if templates_dir is not None:
        loaders.insert(0, FileSystemLoader(str(templates_dir)))
    env = Environment(loader=ChoiceLoader(loaders), undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(
        md=_md, num=_num, signed=_signed, arrow=_arrow, cell=_cell, mermaid=_mermaid, status_icon=lambda status: STATUS_ICON[str(status)]
    )
    env.globals.update(metric_rows=metric_rows)
    return env


def render_markdown(report: Report, *, templates_dir: str | Path | None = None, confidence: float = 0.95) -> str:
    from jinja2 import TemplateError

    try:
        template = _environment(templates_dir).get_template("report.md.j2")
        return template.render(report=report, confidence=confidence)
    except TemplateError as error:
        raise InputError(f"cannot render template report.md.j2: {error}") from None


def print_report(report: Report, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"release-kit · {report.model}", title_justify="left", expand=True)
    table.add_column("status", no_wrap=True)
    table.add_column("check", style="cyan", overflow="fold", ratio=2)
    table.add_column("summary", overflow="fold", ratio=5)
    for check in report.checks:
        status = check.status.value
        table.add_row(f"[{STATUS_STYLE[status]}]{status}[/]", f"{check.stage}::{check.name}", check.summary)
    console.print(table)
    if report.verdict.value == "pass":
        version = f" → {report.next_version}" if report.next_version else ""
        console.print(f"[bold green]PASS[/] bump [bold]{report.bump.value}[/]{version}: {report.bump_reason}")
    else:
        console.print(f"[bold red]BLOCK[/]: {report.bump_reason}")


class ProgressListener:
    """A transient progress bar on stderr while the checks run."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]checks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self.task = None

    def started(self, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("", total=total)

    def finished(self, result: CheckResult) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, description=f"{result.stage}::{result.name}")

    def close(self) -> None:
        self.progress.stop()
