"""The ``release-kit`` command: a thin layer over :mod:`release_kit.gate` and the other library modules.

Exit codes: 0 pass (release allowed), 1 blocked by a gate decision, 2 usage, config or input error,
3 skipped (the registry could not be used), 4 internal error (a bug: one line, the traceback with --debug).
Only click is imported at start-up; everything else loads inside the command that needs it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import (
    EXIT_BLOCK, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PASS, EXIT_SKIPPED, InputError, RegistryUnavailable,
    ReleaseKitError, first_line, one_line,
)

if TYPE_CHECKING:
    from .config import Config


class _Group(click.Group):
    """Turns every error into one line on stderr and its exit code (the traceback with --debug): release-kit's
    own errors exit 2; anything unexpected is an internal error, exit 4, never 1 (which means "blocked")."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a bad option or value: one line, like every other bad input
            click.echo(f"release-kit: error: {one_line(error.format_message())} (see --help)", err=True)
            ctx.exit(EXIT_INPUT)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:  # click would call it "Aborted!" and exit 1, the code for "blocked"
            click.echo("release-kit: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except ReleaseKitError as error:
            if ctx.params.get("debug"):
                raise
            click.echo(f"release-kit: error: {one_line(error)}", err=True)
            ctx.exit(EXIT_INPUT)
        except Exception as error:  # a bug in release-kit or a library it drives
            if ctx.params.get("debug"):
                raise
            click.echo(f"release-kit: internal error: {type(error).__name__}: {one_line(first_line(error, 200))} "
                       "(rerun with --debug for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


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
        click.option("--data", help="Golden dataset: .csv, .parquet (a directory or glob of Parquet files is streamed), .npz or .safetensors."),
        click.option("--engine", type=click.Choice(["local", "ray"]), help="How a streamed golden set runs: in this process or on Ray (default: [run] engine)."),
        click.option("--max-rows", type=click.IntRange(min=1), help="Gate on the first N golden rows only (default: [run] max_rows, all)."),
        click.option("--stage", "stages", multiple=True, help="Run only this built-in stage (repeatable; default: [gate] stages, all four)."),
        click.option("--allow-pickle", is_flag=True, help="Trust the model files: load pickled models and pickled parts of .pt2 archives, and run operators beyond tensor computation (runs arbitrary code from the file)."),
        click.option("--no-mlflow", is_flag=True, help="Do not log the gate run to MLflow (a report from such a run cannot be released with --report)."),
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


def _gate_files(inputs: dict) -> tuple[Config, Path, dict[Path, str]]:
    """The run's config, its project dir, and the files the gate run reads (file → what it is): what no
    output of the command may name."""
    from . import gate
    from .config import find_config

    config, project_dir = gate.resolve_config(inputs["config_path"])
    config_file = inputs["config_path"] or find_config(Path.cwd())
    reads = gate.files_read(config, config_file, candidate=inputs["candidate"], baseline=inputs["baseline"], data=inputs["data"])
    return config, project_dir, reads


def _run_gate(inputs: dict, config: Config, project_dir: Path, *, benchmark_json: Path | None = None):
    """The library's gate with a progress bar on stderr; → the report."""
    from rich.console import Console

    from . import gate, render

    listener = render.ProgressListener(Console(stderr=True))
    # stdout is the command's output alone (a --format json consumer parses it): what the libraries and a
    # model factory print while the gate runs goes to stderr (Ray's driver prints its raylet's warnings, such
    # as "8 PYTHON worker processes have been started", to sys.stdout from a thread).
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = gate.check(
                config, directory=project_dir, candidate=inputs["candidate"], baseline=inputs["baseline"],
                baseline_version=inputs["baseline_version"], data=inputs["data"], stages=list(inputs["stages"]) or None,
                allow_pickle=inputs["allow_pickle"], log_to_mlflow=False if inputs["no_mlflow"] else None,
                registry=inputs["registry_mode"], waivers=tuple(inputs["waive"]), prerelease=inputs["prerelease"],
                build=inputs["build_metadata"], listener=listener, benchmark_json=benchmark_json,
                engine=inputs["engine"], max_rows=inputs["max_rows"],
            )
    finally:
        listener.close()
    if (inputs["engine"] or config.run.engine) == "ray" and report.environment.get("golden_read") == "whole":
        click.echo(f"release-kit: note: the golden set {one_line(report.data['golden'].path)} was read whole, not on Ray "
                   "(the Ray engine streams Parquet golden sets)", err=True)
    return report


@main.command()
@_gate_options
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown", "json", "github"]), default="text", show_default=True,
              help="What to print on stdout. github: step summary, step outputs, annotations and the PR comment body (see --comment-out).")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Also write the checks as JUnit XML here.")
@click.option("--comment-out", type=click.Path(path_type=Path), default="release-kit-comment.md", show_default=True,
              help="With --format github: where to write the sticky PR comment's body.")
@click.option("--benchmark-json", type=click.Path(path_type=Path), help="Write pytest-benchmark's JSON for user checks that use the `benchmark` fixture.")
@click.option("--verbose", "-v", is_flag=True, help="Text format: list passing checks too (collapsed into a count by default).")
def check(report_path: Path | None, output_format: str, junit_path: Path | None, comment_out: Path, benchmark_json: Path | None,
          verbose: bool, **inputs) -> None:
    """Compare the candidate with the baseline on the golden set and decide: pass or block, and the bump.

    Exit codes: 0 pass, 1 blocked, 2 input error, 3 skipped (the registry could not be used), 4 internal error.
    """
    import tempfile

    from rich.console import Console

    from . import render
    from .outputs import Outputs

    github = output_format == "github"
    # Every file this run writes is checked before the gate runs, and written only when all is rendered.
    outputs = Outputs()
    outputs.declare(report_path, "--report")
    outputs.declare(junit_path, "--junit")
    outputs.declare(benchmark_json, "--benchmark-json")
    if github:
        from . import github as gh

        outputs.declare(comment_out, "--comment-out")
        gh.check_runner_files()
    config, project_dir, reads = _gate_files(inputs)
    outputs.check(reads)
    with tempfile.TemporaryDirectory(prefix="release-kit-") as scratch:
        # The gate writes pytest-benchmark's JSON when its checks end; it reaches --benchmark-json with the
        # other outputs, once everything succeeded.
        benchmarks = Path(scratch) / "benchmark.json" if benchmark_json is not None else None
        try:
            report = _run_gate(inputs, config, project_dir, benchmark_json=benchmarks)
        except RegistryUnavailable as reason:
            _skipped(str(reason), github=github)
        if benchmarks is not None:
            outputs.add(benchmark_json, benchmarks.read_text(encoding="utf-8"))
    templates = config.release.templates
    if report_path is not None:
        outputs.add(report_path, report.to_json())
    if junit_path is not None:
        from .junit import to_junit

        outputs.add(junit_path, to_junit(report))
    if output_format == "json":
        outputs.write()
        click.echo(report.to_json(), nl=False)
    elif output_format == "markdown":
        text = render.render_markdown(report, templates_dir=templates)
        outputs.write()
        click.echo(text, nl=False)
    elif github:
        from . import github as gh

        markdown = render.render_markdown(report, templates_dir=templates)
        outputs.add(comment_out, gh.comment_body(report, event=gh.Event.from_environment(), link=gh.run_url()))
        outputs.write()
        gh.publish_check(report, markdown, report_path=report_path, comment_out=comment_out, echo=click.echo)
    else:
        outputs.write()
        render.print_report(report, Console(), verbose=verbose)
    sys.exit(EXIT_PASS if report.verdict.value == "pass" else EXIT_BLOCK)


def _skipped(reason: str, *, github: bool) -> None:
    """The gate could not compare: say so everywhere a result is read, and exit 3 (never a pass)."""
    if github:
        from . import github as gh

        gh.publish_skipped(reason, echo=click.echo)
    click.echo(f"release-kit: skipped, not passed: {one_line(reason)}", err=True)
    sys.exit(EXIT_SKIPPED)


@main.command()
@click.option("--report", "report_path", type=click.Path(path_type=Path), required=True, help="A report written by `check --report`.")
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False), help="Directory of templates overriding the shipped ones.")
@click.option("--format", "output_format", type=click.Choice(["markdown", "html"]), default="markdown", show_default=True)
@click.option("--out", "out_path", type=click.Path(path_type=Path), help="Write the note to this file instead of stdout.")
def note(report_path: Path, templates: Path | None, output_format: str, out_path: Path | None) -> None:
    """Render a saved report as markdown, or as one self-contained HTML page."""
    from . import render
    from .outputs import Outputs
    from .report import load_report

    outputs = Outputs()
    outputs.declare(out_path, "--out")
    outputs.check({report_path: "the report it renders"})
    report = load_report(report_path)
    text = (render.render_html if output_format == "html" else render.render_markdown)(report, templates_dir=templates)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        outputs.add(out_path, text)
        outputs.write()


@main.command()
@_gate_options
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Release from this saved report (default: run the gate now). It must match a gate run logged in MLflow.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--allow-dirty", is_flag=True, help="Release from a git tree with uncommitted changes (recorded in the manifest).")
@click.option("--note-out", type=click.Path(path_type=Path), help="Also write the release note (markdown) to this file.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github: also the note as the step summary and version/tag/note as step outputs.")
def release(report_path: Path | None, dry_run: bool, allow_dirty: bool, note_out: Path | None, output_format: str, **inputs) -> None:
    """Cut the release the gate decided: registry version, tags, manifest, git tag, CHANGELOG, then the alias.

    Every step checks first and is skipped when already done, so re-running after a failure completes
    the same release. A saved --report is accepted only when it is the report of a gate run logged in
    MLflow (its digest is recorded there), and its verdict, bump and version are derived again.
    Exit codes: 0 released (or nothing to release), 1 refused (blocked, or something moved meanwhile),
    2 input error, 4 internal error.
    """
    import json

    from rich.console import Console

    from . import release as releases
    from .outputs import Outputs
    from .render import terminal_text

    github = output_format == "github"
    outputs = Outputs()
    outputs.declare(note_out, "--note-out")
    if github:
        from . import github as gh

        gh.check_runner_files()
    if report_path is not None:
        ignored = [f"--{name.replace('_', '-')}" for name, value in inputs.items()
                   if name not in ("config_path", "registry_mode") and value not in (None, False, ())]
        if ignored:
            raise InputError(f"{', '.join(ignored)} shape(s) a gate run; with --report the saved report decides (drop one or the other)")
    config, project_dir, reads = _gate_files(inputs)
    if config.release.changelog:
        reads[project_dir / config.release.changelog] = "the CHANGELOG the release writes"
    if report_path is not None:
        reads[report_path] = "the report to release"
    outputs.check(reads)
    if report_path is not None:
        from .report import load_report

        report = load_report(report_path)
    else:
        report = _run_gate(inputs, config, project_dir)
    err = Console(stderr=True, highlight=False)
    try:
        plan = releases.plan(config, project_dir, report, allow_dirty=allow_dirty, from_file=report_path is not None)
    except releases.NothingToRelease as reason:
        click.echo(f"release-kit: {one_line(reason)}", err=True)
        if github:
            gh.write_outputs({"version": "", "tag": "", "note": ""})
        sys.exit(EXIT_PASS)
    except releases.ReleaseConflict as conflict:
        click.echo(f"release-kit: not released: {one_line(conflict)}", err=True)
        sys.exit(EXIT_BLOCK)
    marks = {"done": "[green]✓[/]", "already": "[dim]= done before:[/]", "skipped": "[dim]- skipped[/]", "planned": "[cyan]→ would[/]"}
    err.print(f"[bold]{'Plan' if dry_run else 'Releasing'} {plan.model} {plan.version}[/] (release id {plan.release_id})")
    try:
        state = releases.execute(
            plan, dry_run=dry_run, on_step=lambda o: err.print(f"  {marks[o.action]} {o.step}: {terminal_text(o.detail)}", soft_wrap=True)
        )
    except releases.ReleaseConflict as conflict:
        click.echo(f"release-kit: stopped: {one_line(conflict)}", err=True)
        sys.exit(EXIT_BLOCK)
    if not dry_run:
        outputs.add(note_out, plan.note)
        outputs.write()
        if github:
            gh.write_summary(plan.note)
            gh.write_outputs({"version": plan.version, "tag": plan.tag_name or "", "note": str(note_out or "")})
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
@click.option("--prediction", type=click.Choice(["logits", "probabilities"]),
              help="Classification: what the model outputs (required with --task classification).")
@click.option("--target", help="The target column of a golden table (a tensor golden set has a 'target' array instead).")
@click.option("--features", help="Feature columns, comma-separated, in the order the model takes them.")
@click.option("--data", help="Golden dataset: sets [data] golden; a table's features are its columns but the target (unless "
              "--features); a tensor set (.npz, .safetensors) names neither.")
@click.option("--action", help="The composite action the workflows use (default: release-kit/release-kit@v0).")
@click.option("--directory", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(name: str, task: str, prediction: str | None, target: str | None, features: str | None, data: str | None, action: str | None,
         directory: Path, force: bool) -> None:
    """Scaffold a model repository: release-kit.toml, checks/, release_templates/ and the two workflows."""
    from . import scaffolding

    scaffold = scaffolding.plan(directory, name=name, task=task, prediction=prediction, target=target,
                                features=features.split(",") if features else None, data=data,
                                action=action or scaffolding.DEFAULT_ACTION)
    for path in scaffolding.write(directory, scaffold, force=force):
        click.echo(f"wrote {path}")
    click.echo("next: commit these, add MLFLOW_TRACKING_URI (and a token) as repository secrets, open a pull request")


@main.group("github")
def github_group() -> None:
    """GitHub Actions helpers."""


@github_group.command("comment")
@click.option("--report", "report_path", type=click.Path(path_type=Path), required=True,
              help="The JSON report the gate job wrote (untrusted: validated, and the comment is built from it here).")
def github_comment(report_path: Path) -> None:
    """Create or update the pull request's sticky release-kit comment (needs GITHUB_TOKEN with pull-requests: write).

    The body is rendered here, with the shipped templates only, from the report's validated fields: a gate
    job runs pull-request code, so nothing it produced is posted as it is. Only a comment written by the
    token's own identity is ever edited.
    """
    from . import github
    from .report import load_report

    report = load_report(report_path)
    body = github.comment_body(report, event=github.Event.from_environment(), link=github.run_url())
    click.echo(f"release-kit: PR comment {github.post_sticky_comment(body)}")


def _registry_target(config_path: Path | None, model_name: str | None):
    """(config, tracking URI, model name) from the config, the name overridable."""
    from . import gate
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
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Take [data.profile] (margins, categorical columns, mostly) from this config (default: the one found here, if any).")
@click.option("--name", help="Suite name (default: the reference's file name).")
@click.option("--golden-rows", type=click.IntRange(min=1),
              help="Rows of the golden sets the suite will validate (default: the reference's): the null allowances and "
                   "how far the ranges reach into the reference's tails are sized for them.")
def profile(reference: str, out_path: Path, config_path: Path | None, name: str | None, golden_rows: int | None) -> None:
    """Profile a reference dataset into a GX expectation suite to review and commit."""
    from .config import ProfileSpec, find_config, load_config
    from .data import read_table
    from .outputs import Outputs
    from .validation import profile as profile_frame

    outputs = Outputs()
    outputs.declare(out_path, "--out")
    found = config_path if config_path is not None else find_config(Path.cwd())
    outputs.check({Path(reference): "the reference it profiles", **({found: "the config it reads"} if found is not None else {})})
    spec = load_config(found).data.profile if found is not None else ProfileSpec()
    frame = read_table(reference)
    suite = profile_frame(frame, spec, name=name or Path(reference.rpartition("#")[2]).stem, source=reference,
                          compared_rows=golden_rows)
    suite.gx_suite()  # the profile must be a suite GX accepts
    outputs.add(out_path, suite.to_json())
    outputs.write()
    click.echo(f"wrote {len(suite.expectations)} expectations for {len(frame.columns)} columns to {out_path}")


if __name__ == "__main__":
    main()
