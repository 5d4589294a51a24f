"""The ``release-kit`` command: a thin layer over :mod:`release_kit.gate`.

Exit codes: 0 pass (release allowed), 1 blocked by the gate, 2 usage, config or input error.
Only click is imported at start-up; everything else loads inside the command that needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__

EXIT_PASS, EXIT_BLOCK, EXIT_INPUT, EXIT_SKIPPED = 0, 1, 2, 3


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


def _gate_options(command):
    """The inputs of a gate run, shared by ``check`` and ``release`` (which runs the gate without --report)."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="release-kit.toml or pyproject.toml (default: found in the current directory)."),
        click.option("--candidate", help="Candidate model: file (.pt TorchScript, .pt2 export, .safetensors) or MLflow URI."),
        click.option("--baseline", help="Baseline model (the previous release): file or MLflow URI such as models:/NAME@champion; 'none' for a first release."),
        click.option("--baseline-version", help="Semantic version of a file baseline (registry baselines carry their own)."),
        click.option("--data", help="Golden dataset (.csv or .parquet)."),
        click.option("--stage", "stages", multiple=True, help="Run only this built-in stage (repeatable; default from [gate] stages)."),
        click.option("--allow-pickle", is_flag=True, help="Allow loading pickled models (runs arbitrary code from the file)."),
        click.option("--no-mlflow", is_flag=True, help="Do not log the gate run to MLflow."),
        click.option("--waive", "waive", nargs=3, multiple=True, metavar="CHECK REASON BY",
                     help="Let the failing check 'stage::name' through, recording why and who (repeatable)."),
        click.option("--prerelease", help="Release as a pre-release with this label: 1.4.0-rc.1."),
        click.option("--build-metadata", help="Append build metadata to the version: 1.4.0+abc123."),
        click.option("--registry", "registry_mode", type=click.Choice(["auto", "required", "off"]), default="auto", show_default=True,
                     help="off: never use the model registry (a registry baseline falls back to [baseline] fallback, else the "
                          "gate is skipped, exit 3); auto: off in a GitHub pull request from a fork, which gets no secrets."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_gate(inputs: dict, *, benchmark_json: Path | None = None):
    """Resolve the config, run the gate with a progress bar on stderr, log it; → (config, project dir, report)."""
    from rich.console import Console

    from . import gate, render

    config, project_dir = gate.resolve_config(inputs["config_path"])
    config = gate.with_overrides(config, waivers=inputs["waive"], prerelease=inputs["prerelease"], build=inputs["build_metadata"])
    registry = _registry_allowed(inputs["registry_mode"])
    prepared = gate.prepare(
        config, project_dir, candidate=inputs["candidate"], baseline=inputs["baseline"],
        baseline_version=inputs["baseline_version"], data=inputs["data"], allow_pickle=inputs["allow_pickle"], registry=registry,
    )
    listener = render.ProgressListener(Console(stderr=True))
    try:
        report = gate.run(prepared, stages=list(inputs["stages"]) or None, listener=listener, benchmark_json=benchmark_json)
    finally:
        listener.close()
    if config.mlflow.enabled and registry and not inputs["no_mlflow"]:
        from .tracking import log_gate_run

        report.mlflow = log_gate_run(prepared, report)
    return config, project_dir, report


def _registry_allowed(mode: str) -> bool:
    if mode == "auto":
        from .github import Event

        return not Event.from_environment().from_fork
    return mode == "required"


@main.command()
@_gate_options
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown", "json", "github"]), default="text", show_default=True,
              help="What to print on stdout. github: step summary, step outputs, annotations and the PR comment body (see --comment-out).")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Also write the checks as JUnit XML here.")
@click.option("--comment-out", type=click.Path(path_type=Path), default="release-kit-comment.md", show_default=True,
              help="With --format github: where to write the sticky PR comment's body.")
@click.option("--benchmark-json", type=click.Path(path_type=Path), help="Write pytest-benchmark's JSON for user checks that use the `benchmark` fixture.")
def check(report_path: Path | None, output_format: str, junit_path: Path | None, comment_out: Path, benchmark_json: Path | None, **inputs) -> None:
    """Compare the candidate with the baseline on the golden set and decide: pass or block, and the bump.

    Exit codes: 0 pass, 1 blocked, 2 input error, 3 skipped (the registry could not be used).
    """
    from rich.console import Console

    from . import render
    from .errors import RegistryUnavailable

    try:
        config, _, report = _run_gate(inputs, benchmark_json=benchmark_json)
    except RegistryUnavailable as reason:
        _skipped(str(reason), github=output_format == "github")
    if report_path is not None:
        report.write(report_path)
    if junit_path is not None:
        from .junit import to_junit

        _write(junit_path, to_junit(report))

    def markdown() -> str:
        return render.render_markdown(report, templates_dir=config.release.templates, confidence=config.quality.confidence)

    if output_format == "json":
        click.echo(report.to_json(), nl=False)
    elif output_format == "markdown":
        click.echo(markdown(), nl=False)
    elif output_format == "github":
        _github_outputs(report, markdown(), report_path=report_path, comment_out=comment_out)
    else:
        render.print_report(report, Console())
    sys.exit(EXIT_PASS if report.verdict.value == "pass" else EXIT_BLOCK)


def _github_outputs(report, markdown: str, *, report_path: Path | None, comment_out: Path) -> None:
    """Step summary, outputs, annotations (stdout) and the comment body, for a GitHub Actions step."""
    from . import github

    event = github.Event.from_environment()
    body = github.comment_body(markdown, model=report.model, event=event, link=github.run_url())
    _write(comment_out, body)
    github.write_summary(markdown)
    github.write_outputs({
        "verdict": report.verdict.value,
        "bump": report.bump.value,
        "next_version": report.next_version or "",
        "report": str(report_path or ""),
        "comment": str(comment_out),
    })
    for line in github.annotations(report):
        click.echo(line)
    version = f" → {report.next_version}" if report.next_version else ""
    click.echo(f"release-kit: {report.verdict.value.upper()} ({report.bump.value}{version}): {report.bump_reason}")


def _skipped(reason: str, *, github: bool) -> None:
    """The gate could not compare: say so everywhere a result is read, and exit 3 (never a pass)."""
    message = f"skipped, not passed: {reason}"
    if github:
        from . import github as gh
        from .render import _md

        gh.write_summary(f"## ⏭️ release-kit: skipped\n\n{_md(reason)}\n\nNothing was compared, so this is **not a pass**. "
                         "Set `[baseline] fallback` to a model file in the repository to gate pull requests from forks.\n")
        gh.write_outputs({"verdict": "skipped", "bump": "", "next_version": "", "report": "", "comment": ""})
        click.echo(f"::warning title=release-kit skipped::{gh.escape_data(reason)}")
    click.echo(f"release-kit: {message}", err=True)
    sys.exit(EXIT_SKIPPED)


@main.command()
@click.option("--report", "report_path", type=click.Path(path_type=Path), required=True, help="A report written by `check --report`.")
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False), help="Directory of templates overriding the shipped ones.")
@click.option("--format", "output_format", type=click.Choice(["markdown", "html"]), default="markdown", show_default=True)
@click.option("--out", "out_path", type=click.Path(path_type=Path), help="Write the note to this file instead of stdout.")
def note(report_path: Path, templates: Path | None, output_format: str, out_path: Path | None) -> None:
    """Render a saved report as markdown, or as one self-contained HTML page."""
    from . import render
    from .report import load_report

    report = load_report(report_path)
    text = (render.render_html if output_format == "html" else render.render_markdown)(report, templates_dir=templates)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        _write(out_path, text)


def _write(path: Path, text: str) -> None:
    from .errors import InputError
    from .report import write_atomic

    try:
        write_atomic(path, text)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


@main.command()
@_gate_options
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Release from this saved report (default: run the gate now).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--allow-dirty", is_flag=True, help="Release from a git tree with uncommitted changes (recorded in the manifest).")
@click.option("--note-out", type=click.Path(path_type=Path), help="Also write the release note (markdown) to this file.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github: also the note as the step summary and version/tag/note as step outputs.")
def release(report_path: Path | None, dry_run: bool, allow_dirty: bool, note_out: Path | None, output_format: str, **inputs) -> None:
    """Cut the release the gate decided: registry version, tags, manifest, git tag, CHANGELOG, then the alias.

    Every step checks first and is skipped when already done, so re-running after a failure completes
    the same release. Exit codes: 0 released (or nothing to release), 1 refused (blocked, or something
    moved meanwhile), 2 input error.
    """
    import json

    from rich.console import Console
    from rich.markup import escape

    from . import gate, release as releases

    if report_path is not None:
        from .errors import InputError
        from .report import load_report

        ignored = [f"--{name.replace('_', '-')}" for name, value in inputs.items()
                   if name not in ("config_path", "registry_mode") and value not in (None, False, ())]
        if ignored:
            raise InputError(f"{', '.join(ignored)} shape(s) a gate run; with --report the saved report decides (drop one or the other)")
        config, project_dir = gate.resolve_config(inputs["config_path"])
        report = load_report(report_path)
    else:
        config, project_dir, report = _run_gate(inputs)
    err = Console(stderr=True, highlight=False)
    try:
        plan = releases.plan(config, project_dir, report, allow_dirty=allow_dirty)
    except releases.NothingToRelease as reason:
        click.echo(f"release-kit: {reason}", err=True)
        if output_format == "github":
            from . import github

            github.write_outputs({"version": "", "tag": "", "note": ""})
        sys.exit(EXIT_PASS)
    except releases.ReleaseConflict as conflict:
        click.echo(f"release-kit: not released: {conflict}", err=True)
        sys.exit(EXIT_BLOCK)
    marks = {"done": "[green]✓[/]", "already": "[dim]= done before:[/]", "skipped": "[dim]- skipped[/]", "planned": "[cyan]→ would[/]"}
    err.print(f"[bold]{'Plan' if dry_run else 'Releasing'} {plan.model} {plan.version}[/] (release id {plan.release_id})")
    try:
        state = releases.execute(
            plan, dry_run=dry_run, on_step=lambda o: err.print(f"  {marks[o.action]} {o.step}: {escape(o.detail)}", soft_wrap=True)
        )
    except releases.ReleaseConflict as conflict:
        click.echo(f"release-kit: stopped: {conflict}", err=True)
        sys.exit(EXIT_BLOCK)
    if note_out is not None and not dry_run:
        _write(note_out, plan.note)
    if output_format == "github" and not dry_run:
        from . import github

        github.write_summary(plan.note)
        github.write_outputs({"version": plan.version, "tag": plan.tag_name or "", "note": str(note_out or "")})
    if output_format == "json":
        click.echo(json.dumps({
            "model": plan.model, "version": plan.version, "release_id": plan.release_id, "dry_run": dry_run,
            "registry_version": state.number, "tag": plan.tag_name, "steps": [o.to_dict() for o in state.outcomes],
        }, indent=2))
    else:
        click.echo(plan.note, nl=False)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config to take the model name and MLflow store from.")
@click.option("--model", "model_name", help="Registered model name (default: [model] name).")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def history(config_path: Path | None, model_name: str | None, output_format: str) -> None:
    """The release ledger: every released version with its date, bump, metrics, data, sha and aliases."""
    import json

    from rich.console import Console

    from . import ledger, render

    config, uri, name = _registry_target(config_path, model_name)
    entries = ledger.history(uri, name, config.mlflow.experiment)
    if output_format == "json":
        click.echo(json.dumps([entry.to_dict() for entry in entries], indent=2))
    else:
        render.print_history(name, entries, Console())


@main.command()
@click.option("--to", "target", required=True, help="The semantic version to move the alias back to.")
@click.option("--reason", required=True, help="Why (recorded in the registry and shown by `history`).")
@click.option("--by", "by", help="Who (default: $USER).")
@click.option("--alias", help="The alias to move (default: [release] alias).")
@click.option("--config", "config_path", type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="Registered model name (default: [model] name).")
def rollback(target: str, reason: str, by: str | None, alias: str | None, config_path: Path | None, model_name: str | None) -> None:
    """Move the alias back to an earlier released version, and record why."""
    import os

    from . import ledger

    config, uri, name = _registry_target(config_path, model_name)
    alias = alias or config.release.alias or "champion"
    moved = ledger.rollback(
        uri, name, alias, target, reason=reason, by=by or os.environ.get("USER") or "unknown", experiment=config.mlflow.experiment
    )
    click.echo(moved)


@main.command()
@click.option("--name", required=True, help="The model's registered name.")
@click.option("--task", type=click.Choice(["regression", "classification"]), required=True)
@click.option("--target", required=True, help="The target column of the golden data.")
@click.option("--features", help="Feature columns, comma-separated, in the order the model takes them.")
@click.option("--data", help="Golden dataset: sets [data] golden, and the features are its columns but the target (unless --features).")
@click.option("--action", help="The composite action the workflows use (default: release-kit/release-kit@v0).")
@click.option("--directory", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(name: str, task: str, target: str, features: str | None, data: str | None, action: str | None, directory: Path, force: bool) -> None:
    """Scaffold a model repository: release-kit.toml, checks/, release_templates/ and the two workflows."""
    from . import scaffolding

    scaffold = scaffolding.plan(directory, name=name, task=task, target=target,
                                features=features.split(",") if features else None, data=data,
                                action=action or scaffolding.DEFAULT_ACTION)
    for path in scaffolding.write(directory, scaffold, force=force):
        click.echo(f"wrote {path}")
    click.echo("next: commit these, add MLFLOW_TRACKING_URI (and a token) as repository secrets, open a pull request")


@main.group("github")
def github_group() -> None:
    """GitHub Actions helpers."""


@github_group.command("comment")
@click.option("--body", "body_path", type=click.Path(path_type=Path), required=True, help="The body written by `check --format github`.")
def github_comment(body_path: Path) -> None:
    """Create or update the pull request's sticky release-kit comment (needs GITHUB_TOKEN with pull-requests: write)."""
    from . import github
    from .errors import InputError

    try:
        body = body_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read comment body {body_path}: {error}") from None
    click.echo(f"release-kit: PR comment {github.post_sticky_comment(body)}")


def _registry_target(config_path: Path | None, model_name: str | None):
    """(config, tracking URI, model name) from the config, the name overridable."""
    from . import gate
    from .errors import InputError
    from .tracking import tracking_uri

    config, project_dir = gate.resolve_config(config_path)
    if not config.mlflow.enabled:
        raise InputError("MLflow is disabled in [mlflow]: there is no registry to read")
    return config, tracking_uri(config, project_dir), model_name or config.model.name


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
    from .validation import profile as profile_frame

    spec = ProfileSpec()
    if config_path is not None:
        from .config import load_config

        spec = load_config(config_path).data.profile
    frame = read_table(reference)
    suite = profile_frame(frame, spec, name=name or Path(reference.rpartition("#")[2]).stem, source=reference)
    suite.gx_suite()  # the profile must be a suite GX accepts
    _write(out_path, suite.to_json())
    click.echo(f"wrote {len(suite.expectations)} expectations for {len(frame.columns)} columns to {out_path}")


if __name__ == "__main__":
    main()
