"""The ``release-kit`` command: a thin layer over :mod:`release_kit.gate`.

Exit codes: 0 pass (release allowed), 1 blocked by the gate, 2 usage, config or input error.
Only click is imported at start-up; everything else loads inside the command that needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__

EXIT_PASS, EXIT_BLOCK, EXIT_INPUT = 0, 1, 2


class _Group(click.Group):
    """Turns release-kit's own errors into one line on stderr and exit code 2 (traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        from .errors import ReleaseKitError

        try:
            return super().invoke(ctx)
        except ReleaseKitError as error:
            if ctx.params.get("debug"):
                raise
            click.echo(f"release-kit: error: {error}", err=True)
            ctx.exit(EXIT_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="release-kit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Decide whether a candidate PyTorch model may be released, and what version it is."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="release-kit.toml or pyproject.toml (default: found in the current directory).")
@click.option("--candidate", help="Candidate model: file (.pt TorchScript, .pt2 export, .safetensors) or MLflow URI.")
@click.option("--baseline", help="Baseline model (the previous release): file or MLflow URI such as models:/NAME@champion.")
@click.option("--baseline-version", help="Semantic version of a file baseline (registry baselines carry their own).")
@click.option("--data", help="Golden dataset (.csv or .parquet).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True, help="What to print on stdout.")
@click.option("--stage", "stages", multiple=True, help="Run only this built-in stage (repeatable; default from [gate] stages).")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickled models (runs arbitrary code from the file).")
@click.option("--no-mlflow", is_flag=True, help="Do not log this run to MLflow.")
@click.option("--benchmark-json", type=click.Path(path_type=Path), help="Write pytest-benchmark's JSON for user checks that use the `benchmark` fixture.")
@click.option("--waive", "waive", nargs=3, multiple=True, metavar="CHECK REASON BY",
              help="Let the failing check 'stage::name' through, recording why and who (repeatable).")
@click.option("--prerelease", help="Release as a pre-release with this label: 1.4.0-rc.1.")
@click.option("--build-metadata", help="Append build metadata to the version: 1.4.0+abc123.")
def check(
    config_path: Path | None,
    candidate: str | None,
    baseline: str | None,
    baseline_version: str | None,
    data: str | None,
    report_path: Path | None,
    output_format: str,
    stages: tuple[str, ...],
    allow_pickle: bool,
    no_mlflow: bool,
    benchmark_json: Path | None,
    waive: tuple[tuple[str, str, str], ...],
    prerelease: str | None,
    build_metadata: str | None,
) -> None:
    """Compare the candidate with the baseline on the golden set and decide: pass or block, and the bump."""
    from rich.console import Console

    from . import gate, render

    config, project_dir = gate.resolve_config(config_path)
    config = gate.with_overrides(config, waivers=waive, prerelease=prerelease, build=build_metadata)
    prepared = gate.prepare(
        config, project_dir, candidate=candidate, baseline=baseline,
        baseline_version=baseline_version, data=data, allow_pickle=allow_pickle,
    )
    err_console = Console(stderr=True)
    listener = render.ProgressListener(err_console)
    try:
        report = gate.run(prepared, stages=list(stages) or None, listener=listener, benchmark_json=benchmark_json)
    finally:
        listener.close()
    if config.mlflow.enabled and not no_mlflow:
        from .tracking import log_gate_run

        report.mlflow = log_gate_run(prepared, report)
    if report_path is not None:
        report.write(report_path)

    if output_format == "json":
        click.echo(report.to_json(), nl=False)
    elif output_format == "markdown":
        click.echo(render.render_markdown(report, templates_dir=config.release.templates, confidence=config.quality.confidence), nl=False)
    else:
        render.print_report(report, Console())
    sys.exit(EXIT_PASS if report.verdict.value == "pass" else EXIT_BLOCK)


@main.command()
@click.option("--report", "report_path", type=click.Path(path_type=Path), required=True, help="A report written by `check --report`.")
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False), help="Directory of templates overriding the shipped ones.")
def note(report_path: Path, templates: Path | None) -> None:
    """Render a saved report as markdown."""
    from . import render
    from .report import load_report

    click.echo(render.render_markdown(load_report(report_path), templates_dir=templates), nl=False)


@main.group()
def data() -> None:
    """Data-validation helpers (Great Expectations)."""


@data.command("profile")
@click.option("--reference", required=True, help="Dataset to profile (.csv, .parquet, or a SQL table as URL#table).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Where to write the GX suite JSON.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Take margins from [data.profile] of this config.")
@click.option("--name", help="Suite name (default: the reference's file name).")
def profile(reference: str, out_path: Path, config_path: Path | None, name: str | None) -> None:
    """Profile a reference dataset into a GX expectation suite to review and commit."""
    from .config import ProfileSpec
    from .data import read_table
    from .report import write_atomic
    from .validation import profile as profile_frame

    spec = ProfileSpec()
    if config_path is not None:
        from .config import load_config

        spec = load_config(config_path).data.profile
    frame = read_table(reference)
    suite = profile_frame(frame, spec, name=name or Path(reference.rpartition("#")[2]).stem, source=reference)
    suite.gx_suite()  # the profile must be a suite GX accepts
    try:
        write_atomic(out_path, suite.to_json())
    except OSError as error:
        from .errors import InputError

        raise InputError(f"cannot write {out_path}: {error.strerror or error}") from None
    click.echo(f"wrote {len(suite.expectations)} expectations for {len(frame.columns)} columns to {out_path}")


if __name__ == "__main__":
    main()
