"""Cutting a release: the planner and its ordered, idempotent "ensure" steps.

:func:`plan` reads everything and validates it before anything is written: the report passed, the model
file is the one the report checked, the registry is reachable and holds no other model under this version,
the alias still points where the check saw it, the git tree is clean and the tag free, the CHANGELOG is
writable, and the note and the CHANGELOG entry render. :func:`execute` then runs the steps in order:

1. ``register``  — the model version, found by this release's id tag or created (the registry numbers it);
2. ``tags``      — semver, git sha, data fingerprints, metrics, verdict, report URI on the version;
3. ``artifacts`` — the manifest, the note and the report, logged with the version's run;
4. ``git-tag``   — ``<model>-v<version>`` on the commit the manifest records;
5. ``changelog`` — the Keep a Changelog entry;
6. ``alias``     — moved last, after re-reading it: if it moved since the plan, the release stops there.

Each step checks the state first and does nothing when it is already done, so a release that crashed
after any step ends, when re-run, in exactly one version, one tag and one CHANGELOG entry. The release id
is a hash of (model, version, model file), so the re-run finds the version the crashed run created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, ReleaseKitError
from .report import Report, Verdict
from .tags import MODEL_SHA256_TAG, RELEASE_ID_TAG, VERSION_TAG, ReleaseTags

if TYPE_CHECKING:
    from .config import Config
    from .git import GitRepo

ARTIFACT_DIR = "release"


class ReleaseConflict(ReleaseKitError):
    """The registry or the repository changed under the release (exit code 1: nothing more was done)."""


class NothingToRelease(ReleaseKitError):
    """The gate passed with bump ``none``: no new version (exit code 0)."""


@dataclass(frozen=True)
class ReleasePlan:
    """Everything a release writes, decided and rendered before the first write."""

    report: Report
    model: str
    version: str
    release_id: str
    tracking_uri: str
    experiment: str
    model_file: Path
    tags: ReleaseTags  # without the report URI, known once the version's run exists
    manifest: dict[str, Any]
    note: str
    changelog_entry: str
    changelog: Path | None
    git: GitRepo | None
    commit: str | None
    tag_name: str | None
    alias: str | None
    alias_expected: str | None  # the alias's version number when planned (None: not set)
    alias_skipped: str | None  # why the alias is not moved (pre-release, disabled)
    lock_dir: Path


@dataclass
class ReleaseState:
    """What the steps learned or created so far (the registry's version number and run)."""

    number: str | None = None
    run_id: str | None = None
    outcomes: list[StepOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class StepOutcome:
    step: str
    action: str  # "done" (acted now) | "already" (found done) | "skipped" | "planned" (dry run)
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step, "action": self.action, "detail": self.detail}


class Step:
    """One ensure-step: ``describe`` the intent, ``is_done`` reads the state, ``apply`` acts."""

    name = ""

    def describe(self, plan: ReleasePlan) -> str:
        raise NotImplementedError

    def is_done(self, plan: ReleasePlan, state: ReleaseState) -> bool:
        raise NotImplementedError

    def apply(self, plan: ReleasePlan, state: ReleaseState) -> None:
        raise NotImplementedError

    def skip_reason(self, plan: ReleasePlan) -> str | None:
        return None


def _client(plan: ReleasePlan):
    from .tracking import connect

    return connect(plan.tracking_uri)


class Register(Step):
    name = "register"

    def describe(self, plan):
        return f"register {plan.model} {plan.version} (release id {plan.release_id}) at {plan.tracking_uri}"

    def is_done(self, plan, state):
        from .registry import find_versions

        found = find_versions(_client(plan), plan.tracking_uri, plan.model, RELEASE_ID_TAG, plan.release_id)
        if found:
            state.number, state.run_id = str(found[0].version), found[0].run_id
        return bool(found)

    def apply(self, plan, state):
        from .registry import register_version

        # The file's hash from the start: a re-run after a crash here must see this version as its own.
        version = register_version(
            plan.model_file, plan.model, key=(RELEASE_ID_TAG, plan.release_id),
            tags={VERSION_TAG: plan.version, MODEL_SHA256_TAG: plan.tags.model_sha256},
            tracking_uri=plan.tracking_uri, experiment=plan.experiment, run_name=f"release {plan.model} {plan.version}",
        )
        state.number, state.run_id = str(version.version), version.run_id


def _tags(plan: ReleasePlan, state: ReleaseState) -> dict[str, str]:
    from dataclasses import replace

    return replace(plan.tags, report_uri=f"runs:/{state.run_id}/{ARTIFACT_DIR}/report.json").to_tags()


class Tags(Step):
    name = "tags"

    def describe(self, plan):
        return f"set {len(plan.tags.to_tags()) + 1} tags on the version (semver, git sha, data, metrics, verdict, report URI)"

    def is_done(self, plan, state):
        if state.number is None:
            return False
        current = _client(plan).get_model_version(plan.model, state.number).tags
        return all(current.get(key) == value for key, value in _tags(plan, state).items())

    def apply(self, plan, state):
        client = _client(plan)
        for key, value in _tags(plan, state).items():
            _settle(
                lambda key=key, value=value: client.set_model_version_tag(plan.model, state.number, key, value),
                lambda key=key, value=value: client.get_model_version(plan.model, state.number).tags.get(key) == value,
            )


class Artifacts(Step):
    name = "artifacts"
    files = ("manifest.json", "release-note.md", "report.json")

    def describe(self, plan):
        return f"log {', '.join(self.files)} under {ARTIFACT_DIR}/ of the version's run"

    def is_done(self, plan, state):
        if state.run_id is None:
            return False
        logged = {Path(a.path).name for a in _client(plan).list_artifacts(state.run_id, ARTIFACT_DIR)}
        return set(self.files) <= logged

    def apply(self, plan, state):
        contents = {
            "manifest.json": json.dumps(plan.manifest, indent=2, sort_keys=True) + "\n",
            "release-note.md": plan.note,
            "report.json": plan.report.to_json(),
        }
        with tempfile.TemporaryDirectory() as folder:
            for name, text in contents.items():
                (Path(folder) / name).write_text(text, encoding="utf-8")
            # The report last: its presence is what marks the step done.
            for name in self.files:
                _client(plan).log_artifact(state.run_id, str(Path(folder) / name), artifact_path=ARTIFACT_DIR)


class GitTag(Step):
    name = "git-tag"

    def describe(self, plan):
        return f"tag {plan.commit[:12]} as {plan.tag_name}" if plan.tag_name else "no git tag"

    def skip_reason(self, plan):
        return None if plan.tag_name else "[release] git_tag = false"

    def is_done(self, plan, state):
        return plan.git.tag_commit(plan.tag_name) == plan.commit

    def apply(self, plan, state):
        plan.git.create_tag(plan.tag_name, plan.commit, f"{plan.model} {plan.version}\n\nrelease id {plan.release_id}")


class Changelog(Step):
    name = "changelog"

    def describe(self, plan):
        return f"add the {plan.version} entry to {plan.changelog}" if plan.changelog else "no CHANGELOG"

    def skip_reason(self, plan):
        return None if plan.changelog else "[release] changelog = \"\""

    def is_done(self, plan, state):
        from .changelog import has_entry

        return plan.changelog.exists() and has_entry(plan.changelog.read_text(encoding="utf-8"), plan.version)

    def apply(self, plan, state):
        from .changelog import write_entry

        write_entry(plan.changelog, plan.version, plan.changelog_entry)


class Alias(Step):
    name = "alias"

    def describe(self, plan):
        was = f"version {plan.alias_expected}" if plan.alias_expected else "unset"
        return f"move @{plan.alias} to this version (now {was}; re-read first)" if plan.alias else "no alias"

    def skip_reason(self, plan):
        return plan.alias_skipped

    def is_done(self, plan, state):
        return state.number is not None and _alias_target(plan.model, plan.alias, plan.tracking_uri) == state.number

    def apply(self, plan, state):
        now = _alias_target(plan.model, plan.alias, plan.tracking_uri)
        if now == state.number:
            return  # a concurrent run of this same release moved it
        if now != plan.alias_expected:
            raise ReleaseConflict(
                f"@{plan.alias} of {plan.model} moved to version {now} while releasing (planned from "
                f"{plan.alias_expected or 'unset'}); not moved. Re-run the check against the new {plan.alias}."
            )
        client = _client(plan)
        _settle(
            lambda: client.set_registered_model_alias(plan.model, plan.alias, state.number),
            lambda: _alias_target(plan.model, plan.alias, plan.tracking_uri) == state.number,
        )


def _settle(write: Callable[[], None], written: Callable[[], bool], attempts: int = 3) -> None:
    """Write, tolerating a concurrent writer of the same value.

    MLflow's server inserts a tag without an upsert, so two releases tagging the same version at once
    can fail one insert with a unique-constraint error although the value is there: re-read before failing.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            write()
            return
        except MlflowException:
            if written():
                return
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


STEPS: tuple[Step, ...] = (Register(), Tags(), Artifacts(), GitTag(), Changelog(), Alias())


def _alias_version(model: str, alias: str, uri: str):
    """The registry version under the alias (its number and tags), or None."""
    from mlflow.exceptions import MlflowException

    from .tracking import call_store, connect

    try:
        return call_store(uri, connect(uri).get_model_version_by_alias, model, alias)
    except MlflowException:
        return None


def _alias_target(model: str, alias: str, uri: str) -> str | None:
    version = _alias_version(model, alias, uri)
    return None if version is None else str(version.version)


def release_id(model: str, version: str, model_sha256: str) -> str:
    return hashlib.sha256(f"{model}\n{version}\n{model_sha256}".encode()).hexdigest()[:20]


def plan(
    config: Config,
    project_dir: Path,
    report: Report,
    *,
    allow_dirty: bool = False,
    today: dt.date | None = None,
    from_file: bool = False,
) -> ReleasePlan:
    """Validate and render the whole release; raises before anything is written.

    ``from_file``: the report was read from a file (``release --report``), so it is trusted only when it
    is a gate run's report logged in this config's MLflow store, and its verdict, bump and version agree
    with what the checks it holds decide (see :func:`verify_report`).
    """
    from . import manifest as manifests
    from .data import content_hashes
    from .outputs import check_writable
    from .git import GitRepo
    from .render import ReleaseContext, render_changelog_entry, render_release_note
    from .tracking import STATE_DIR, tracking_uri

    spec = config.release
    if report.model != config.model.name:
        raise InputError(f"the report is for model {report.model!r} but the config's [model] name is {config.model.name!r}")
    if not config.mlflow.enabled:
        raise InputError("a release registers the model in MLflow, which is disabled in [mlflow]")
    uri = tracking_uri(config, project_dir)
    rederived = verify_report(config, report, uri) if from_file else None
    contents = content_hashes(config.data)  # the reference's and training set's: the digest's and the manifest's
    _require_configured_gate(config, report, project_dir, contents)
    if report.verdict is not Verdict.PASS:
        raise ReleaseConflict(f"the gate blocked this candidate ({report.bump_reason}); nothing to release")
    if report.bump is None or report.bump.value == "none" or not report.next_version:
        raise NothingToRelease(f"nothing to release: {report.bump_reason}")
    if from_file:
        _require_same_golden(config, report)
    version, model = report.next_version, report.model
    model_file = _model_file(report, config, project_dir)
    rid = release_id(model, version, report.candidate.sha256)

    changelog = (project_dir / spec.changelog) if spec.changelog else None
    if changelog is not None:
        check_writable(changelog, "CHANGELOG")  # now, not after the registry was written

    git = GitRepo.find(project_dir)
    if spec.git_tag and git is None:
        raise InputError(f"{project_dir} is not in a git repository (a release tags its commit; set [release] git_tag = false to skip)")
    dirty = git.changed_files(ignore=tuple(filter(None, [changelog]))) if git else []
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
        raise InputError(f"the git tree has uncommitted changes ({shown}); commit them or pass --allow-dirty")
    commit = git.head() if git else None
    tag_name = None
    if spec.git_tag:
        tag_name = spec.tag_format.format(model=model, version=version)
        if not git.valid_tag_name(tag_name):
            raise InputError(f"[release] tag_format gives {tag_name!r}, which is not a valid git tag name")
        at = git.tag_commit(tag_name)
        if at is not None and at != commit:
            raise ReleaseConflict(f"git tag {tag_name} already exists at {at[:12]}, not at this commit {commit[:12]}")

    existing = _registered_under(uri, model, version, rid)
    if rederived is not None and (rederived.bump is not report.bump or rederived.next_version != version):
        raise ReleaseConflict(
            f"the report says {report.bump.value} → {version}, but its checks and the registry now give "
            f"{rederived.bump.value if rederived.bump else 'none'} → {rederived.next_version}; re-run the check"
        )
    alias, alias_skipped = spec.alias or None, None
    if alias is None:
        alias_skipped = '[release] alias = ""'
    elif version and "-" in version.split("+")[0]:
        alias, alias_skipped = None, f"pre-release {version} does not move @{spec.alias}"
    under_alias = _alias_version(model, alias, uri) if alias else None
    alias_now = None if under_alias is None else str(under_alias.version)
    if alias:
        _check_alias(report, model, alias, under_alias, existing)
        _check_not_rolled_back(uri, config.mlflow.experiment, model, version, alias, alias_now, existing)

    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    manifest = manifests.build(config, report, model_file=model_file, git=git, dirty=dirty, created_at=created_at,
                               data_contents=contents)
    previous = _previous_manifest(report, uri)
    changes = manifests.changes(previous, manifest)
    release = ReleaseContext(
        model=model, version=version, date=(today or dt.datetime.now(dt.UTC).date()).isoformat(),
        previous=report.current_version, tag=tag_name, alias=alias, commit=commit, dirty=bool(dirty), release_id=rid,
        changes=changes, previous_manifest=previous is not None,
    )
    note = render_release_note(report, release, templates_dir=spec.templates, confidence=config.quality.confidence)
    entry = render_changelog_entry(report, release, templates_dir=spec.templates)
    return ReleasePlan(
        report=report, model=model, version=version, release_id=rid, tracking_uri=uri, experiment=config.mlflow.experiment,
        model_file=model_file, tags=_version_tags(report, manifest, rid, commit, dirty), manifest=manifest, note=note,
        changelog_entry=entry, changelog=changelog, git=git, commit=commit, tag_name=tag_name,
        alias=alias, alias_expected=alias_now, alias_skipped=alias_skipped, lock_dir=project_dir / STATE_DIR,
    )


def execute(plan: ReleasePlan, *, dry_run: bool = False, on_step: Callable[[StepOutcome], None] | None = None) -> ReleaseState:
    """Run the plan's steps in order; with ``dry_run``, only report what each would do.

    ``on_step`` hears each step's outcome as it ends (the CLI prints them; tests stop a release there).
    """
    from .tracking import call_store

    state = ReleaseState()
    with _exclusive(plan.lock_dir, enabled=not dry_run):
        for step in STEPS:
            skip = step.skip_reason(plan)
            if skip:
                outcome = StepOutcome(step.name, "skipped", skip)
            elif call_store(plan.tracking_uri, step.is_done, plan, state):
                outcome = StepOutcome(step.name, "already", step.describe(plan))
            elif dry_run:
                outcome = StepOutcome(step.name, "planned", step.describe(plan))
            else:
                call_store(plan.tracking_uri, step.apply, plan, state)
                outcome = StepOutcome(step.name, "done", step.describe(plan))
            state.outcomes.append(outcome)
            if on_step is not None:
                on_step(outcome)
    return state


@contextmanager
def _exclusive(directory: Path, *, enabled: bool):
    """One release at a time per project directory on this machine (CI serialises across machines
    with a concurrency group; the registry's release-id tag keeps the version unique either way)."""
    if not enabled:
        yield
        return
    from .outputs import held_lock

    with held_lock(directory / "release.lock"):
        yield


def _require_configured_gate(config: Config, report: Report, project_dir: Path, data_contents: dict[str, str]) -> None:
    """A release follows from the gate the config sets: every stage of ``[gate] stages``, over the golden set
    and rows it names, deciding by its settings. A gate narrowed (``--stage``, ``--max-rows``), pointed at
    other data (``--data``) or run with other settings (``--config``) passed what it saw, which is no
    decision to release: a candidate the whole gate blocks passed ``--stage performance``."""
    ran = {check.stage for check in report.checks}
    missing = [stage for stage in config.gate.stages if stage not in ran]
    if missing:
        raise InputError(
            f"the report's gate did not run the {', '.join(missing)} stage{'s' if len(missing) > 1 else ''} of [gate] stages "
            f"({', '.join(config.gate.stages)}): a release needs the whole gate; run it without --stage"
        )
    golden = report.data.get("golden")
    read = golden.max_rows if golden is not None else None
    if read != config.run.max_rows:  # a prefix's pass says nothing of the rows after it
        configured = f"[run] max_rows is {config.run.max_rows:,}" if config.run.max_rows else "[run] reads every row"
        raise InputError(
            f"the report's gate read {'the first ' + format(read, ',') + ' golden rows' if read else 'every golden row'}, where "
            f"{configured}: a release needs the gate [run] configures; run it without --max-rows"
        )
    if report.policy_sha256 != config.policy_sha256(project_dir, config.data.dataset or config.data.golden, data_contents):
        raise InputError(
            "the report's gate read another golden set or decided by other settings than this config's (--data, a "
            f"tolerance, a budget, a suite: {'the report predates schema 1.3, which records them' if report.policy_sha256 is None else 'their digests differ'}): "
            "a release needs the gate this config sets; re-run the check with it"
        )


def _require_same_golden(config: Config, report: Report) -> None:
    """The golden set the config names holds what the report's gate read: a report checked on other contents
    at the same path (a branch that dropped the rows the candidate gets wrong) is no decision about these.
    Files and Parquet sets are hashed as the gate hashed them; a SQL table or a dataset factory has no file
    to hash, so its rows are read again as the gate read them (the rows' hash is what the gate recorded)."""
    from .data import file_fingerprint, is_sql, load_golden

    golden, source, dataset = report.data.get("golden"), config.data.golden, config.data.dataset
    if golden is None or not golden.sha256 or (source is None and dataset is None):
        return
    if dataset is not None or is_sql(source):
        current = load_golden(source, config.model, metadata=config.data.metadata, dataset=dataset, max_rows=config.run.max_rows).sha256
    else:
        current = file_fingerprint(source, streamed=report.environment.get("golden_read") in ("local", "ray"))
    if current != golden.sha256:
        what = f"[data] dataset {dataset}" if dataset is not None else f"[data] golden {source}"
        raise InputError(f"{what} is not the golden set the report's gate read (sha256 {current[:12]}… now, "
                         f"{golden.sha256[:12]}… then): its contents changed since the check; re-run the check on them")


def verify_report(config: Config, report: Report, uri: str):
    """A saved report is released only when it is genuine and its decision follows from its checks.

    Genuine: a FINISHED gate run of this model in this config's store records the report's digest (so a
    report edited after the run, or made up, is refused). Consistent: the verdict, the bump and the next
    version are derived again from the report's checks, waivers and contract with this config's policy and
    the versions released now; any disagreement is refused.
    """
    import semver
    from mlflow.exceptions import MlflowException

    from .tags import GateRunTags
    from .tracking import call_store, connect

    run_id = report.mlflow.run_id if report.mlflow else None
    if not run_id:
        raise InputError("the report names no logged gate run (was it checked with --no-mlflow?); release without --report to run the gate")
    try:
        run = call_store(uri, connect(uri).get_run, str(run_id))
    except MlflowException:
        raise InputError(f"the report's gate run {run_id} is not in the MLflow store at {uri}; release without --report to run the gate") from None
    logged = GateRunTags.from_tags(run.data.tags)
    if logged is None or logged.model != config.model.name or run.info.status != "FINISHED":
        raise InputError(f"MLflow run {run_id} is not a finished gate run of {config.model.name}")
    if logged.report_sha256 != report.digest():
        raise InputError(f"the report does not match what gate run {run_id} logged (its content was changed): refusing to release from it")
    for role, section in (("candidate", report.candidate), ("baseline", report.baseline)):
        if section is not None and not isinstance(section.get("sha256"), str):
            raise InputError(f"the report's {role} has no sha256")
    if report.current_version is not None and not semver.Version.is_valid(report.current_version):
        raise InputError(f"the report's current version {report.current_version!r} is not a semantic version")
    return _rederive(config, report, uri)


def _rederive(config: Config, report: Report, uri: str):
    """The decision the report's checks give under this config and the registry as it is now; a verdict
    that differs is refused here, a bump or version that differs by the caller (after its conflict checks)."""
    from .config import Waiver
    from .report import Bump
    from .tracking import released_versions
    from .versioning import decide

    waivers = [Waiver(check=w.check, reason=w.reason, by=w.by) for w in report.waivers]
    policy = config.model_copy(update={"waivers": waivers})
    decided = decide(
        policy, report.checks, has_baseline=report.baseline is not None,
        identical_predictions=report.bump is Bump.NONE, baseline_version=report.current_version,
        contract=_contract_change(report), released=released_versions(uri, report.model, except_file=report.candidate.sha256),
    )
    if decided.verdict is not report.verdict:
        raise InputError(f"the report says {report.verdict.value} but its checks decide {decided.verdict.value}: refusing to release from it")
    return decided


def _contract_change(report: Report):
    from .signature import ContractChange

    if report.contract is None or not report.contract.compared:
        return None
    return ContractChange(breaking=list(report.contract.breaking), additive=list(report.contract.additive))


def _model_file(report: Report, config: Config, project_dir: Path) -> Path:
    """The model file the report checked, verified by its hash (a registry candidate is fetched again).

    A file must lie inside the project and load as a model with the safe loaders: a report cannot make
    a release register an arbitrary file.
    """
    from .files import file_sha256

    expected = report.candidate.sha256
    source = report.candidate.source
    root = project_dir.resolve()
    for option in (report.candidate.file, source):
        if option and "://" not in option and not option.startswith(("models:/", "runs:/")):
            path = (Path(option) if Path(option).is_absolute() else project_dir / option).resolve()
            if not path.is_relative_to(root):
                raise InputError(f"candidate model file {path} is outside the project {root}: refusing to release it")
            if path.is_file():
                if file_sha256(path) != expected:
                    raise InputError(f"model file {path} changed since the check (sha256 differs from the report's); re-run the check")
                _require_model(path, config)
                return path
    if source.startswith(("models:/", "runs:/")):
        from .registry import fetch_model
        from .tracking import tracking_uri

        fetched = fetch_model(source, tracking_uri=tracking_uri(config, project_dir))
        if file_sha256(fetched.path) != expected:
            raise InputError(f"model {source} is not the file the check saw (sha256 differs); re-run the check")
        _require_model(fetched.path, config)
        return fetched.path
    raise InputError(f"candidate model file not found: {source}")


def _require_model(path: Path, config: Config) -> None:
    """The file loads as a model with the safe loaders (no pickle), as the gate loaded it."""
    from .github import workflow_commands_stopped
    from .models import load_model

    with workflow_commands_stopped():  # loading runs the program's __setstate__, and a factory: their output is no command
        load_model("candidate", str(path), config.model, factory=config.candidate.factory)


def _registered_under(uri: str, model: str, version: str, rid: str) -> list:
    """This release's versions already registered (by an earlier, interrupted run); another model file
    under the same semver is a conflict."""
    from .registry import find_versions
    from .tracking import connect

    client = connect(uri)
    same_version = find_versions(client, uri, model, VERSION_TAG, version)
    others = [v for v in same_version if v.tags.get(RELEASE_ID_TAG) != rid]
    if others:
        raise ReleaseConflict(
            f"{model} {version} is already registered (version {others[0].version}) with another model file; "
            "a version is released once"
        )
    return same_version


def _check_alias(report: Report, model: str, alias: str, under_alias, existing: list) -> None:
    """The alias must still point at the baseline the check compared against. A baseline from a file (or none,
    a first release) must be the file the alias's version holds: compared with an older or weaker model, a
    candidate the released one would block passed, and the release moved the alias to it."""
    checked = report.baseline.registry if report.baseline else None
    ours = {str(v.version) for v in existing}
    alias_now = None if under_alias is None else str(under_alias.version)
    if alias_now in ours:
        return  # this release's own version: a re-run after the alias step
    if checked and checked.name == model and checked.version:
        if alias_now != checked.version:
            raise ReleaseConflict(
                f"@{alias} of {model} now points to version {alias_now or '(unset)'}, but the check compared against "
                f"version {checked.version}; re-run the check against the current @{alias}"
            )
        return
    if under_alias is None:
        return
    from .tags import ReleaseTags

    record = ReleaseTags.from_tags(dict(under_alias.tags))
    released = record.model_sha256 if record is not None else None
    compared = report.baseline.sha256 if report.baseline else None
    if compared is None or compared != released:
        what = "no baseline (a first release)" if report.baseline is None else f"{report.baseline.source} (sha256 {compared[:12]}…)"
        raise InputError(
            f"@{alias} of {model} is version {alias_now}"
            f"{f' (sha256 {released[:12]}…)' if released else ''}, but the check compared against {what}: a release "
            f"replaces the version under @{alias}; re-run the check against it (no --baseline, or --baseline models:/{model}@{alias})"
        )


def _check_not_rolled_back(uri: str, experiment: str, model: str, version: str, alias: str, alias_now: str | None, existing: list) -> None:
    """A version already released and then rolled back from the alias stays rolled back: re-running its
    release (a CI job re-run, a gate run of the same file) would otherwise undo the rollback silently.
    Putting it back is a decision, ``rollback --to``, with its reason recorded."""
    if not existing or alias_now in {str(v.version) for v in existing}:
        return
    from .ledger import rollback_events
    from .tracking import connect

    for event in rollback_events(connect(uri), uri, model, experiment):  # newest first
        if event["alias"] != alias or version not in (event["from"], event["to"]):
            continue
        if event["from"] == version:
            raise ReleaseConflict(
                f"{model} {version} was rolled back from @{alias} at {event['at']} by {event['by']} ({event['reason']}); "
                f"a release does not undo that: to point @{alias} at it again, run release-kit rollback --to {version} --reason ..."
            )
        return


def _previous_manifest(report: Report, uri: str) -> dict[str, Any] | None:
    """The manifest released with the baseline, when the baseline came from the registry and has one."""
    registry = report.baseline.registry if report.baseline else None
    run_id = registry.run_id if registry else None
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/manifest.json", dst_path=folder, tracking_uri=uri
            )
            return json.loads(Path(path).read_text(encoding="utf-8"))
    except (MlflowException, OSError, ValueError):
        return None  # released before release-kit recorded manifests, or by hand


def _version_tags(report: Report, manifest: dict[str, Any], rid: str, commit: str | None, dirty: list[str]) -> ReleaseTags:
    signature = json.dumps(report.contract.candidate, sort_keys=True) if report.contract and report.contract.candidate else None
    return ReleaseTags(
        version=report.next_version, release_id=rid, model_sha256=report.candidate.sha256, git_sha=commit or "none",
        git_dirty=bool(dirty), verdict=report.verdict.value, bump=report.bump.value if report.bump else None,
        bump_reason=report.bump_reason, signature=signature,
        waivers=json.dumps([asdict(w) for w in report.waivers]) if report.waivers else None,
        data={role: data["sha256"] for role, data in manifest["data"].items()},
        # Every figure measured of the candidate, a first release's too (its quality has no baseline, and the
        # ledger showed none for it); a figure JSON could not hold (None) is left out.
        metrics={f"{check.stage}.{diff.name}": f"{diff.candidate:.6g}" for check in report.checks for diff in check.metrics
                 if diff.candidate is not None and math.isfinite(diff.candidate)},
    )
