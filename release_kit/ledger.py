"""The release ledger in the registry: ``history`` reads it, ``rollback`` moves an alias back and records why.

A release is a registered version with release-kit's tags; a rollback is an MLflow run tagged
``release_kit.event = rollback`` (from, to, alias, reason, who), so the record survives the alias moving again.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError
from .tags import VERSION_TAG, ReleaseTags, RollbackTags
from .tracking import call_store, connect, ensure_experiment, quote_filter


@dataclass(frozen=True)
class LedgerEntry:
    version: str  # the semantic version
    registry_version: str  # the registry's number
    released_at: str
    bump: str | None
    git_sha: str | None
    metrics: dict[str, float | None]  # "stage.metric" → the candidate's value (None: not a finite number)
    data: dict[str, str]
    aliases: list[str]
    release_id: str | None
    rollbacks: list[dict[str, str]] = field(default_factory=list)  # rollbacks that moved an alias here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(text: str) -> float | None:
    """A metric as its tag stores it (text), as a number for the ledger's readers (``history --format json``
    gives numbers, not strings); a value that is no finite number is None (JSON has no NaN)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def history(uri: str, model: str, experiment: str = "release-kit") -> list[LedgerEntry]:
    """Every released version of ``model``, newest first."""
    client = connect(uri)
    versions = [v for v in call_store(uri, client.search_model_versions, f"name = '{quote_filter(model)}'") if VERSION_TAG in v.tags]
    if not versions:
        raise InputError(f"no released versions of {model!r} in the registry at {uri}")
    rollbacks = rollback_events(client, uri, model, experiment)
    # Searched versions carry no aliases in every store; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, number in call_store(uri, client.get_registered_model, model).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    entries = []
    for version in versions:
        tags = ReleaseTags.from_tags(version.tags)
        entries.append(LedgerEntry(
            version=tags.version,
            registry_version=str(version.version),
            released_at=dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC).isoformat(timespec="seconds"),
            bump=tags.bump,
            git_sha=tags.git_sha,
            metrics={name: _number(value) for name, value in tags.metrics.items()},
            data=tags.data,
            aliases=sorted(aliases.get(str(version.version), [])),
            release_id=tags.release_id,
            rollbacks=[event for event in rollbacks if event["to"] == tags.version],
        ))
    return sorted(entries, key=_version_order, reverse=True)


def _version_order(entry: LedgerEntry):
    """Semantic order; a tag that is no semantic version (written by another tool) sorts last, never crashes."""
    import semver

    try:
        return (1, semver.Version.parse(entry.version), "")
    except ValueError:
        return (0, semver.Version(0), entry.version)


def rollback_events(client, uri: str, model: str, experiment: str) -> list[dict[str, str]]:
    """``model``'s rollbacks, newest first: from, to, alias, reason, by, at."""
    found = call_store(uri, client.get_experiment_by_name, experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], filter_string=RollbackTags.search_filter(quote_filter(model)), order_by=["attributes.start_time DESC"],
    )
    events = []
    for run in runs:
        event = RollbackTags.from_tags(run.data.tags)
        events.append({"from": event.from_version, "to": event.to_version, "alias": event.alias, "reason": event.reason,
                       "by": event.by, "at": dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC).isoformat(timespec="seconds")})
    return events


def rollback(uri: str, model: str, alias: str, target: str, *, reason: str, by: str, experiment: str = "release-kit") -> str:
    """Point ``alias`` at released version ``target`` again; the why is recorded before the alias moves."""
    from mlflow.exceptions import MlflowException

    from .registry import find_versions

    if not reason.strip():
        raise InputError("--reason must say why")
    client = connect(uri)
    found = find_versions(client, uri, model, VERSION_TAG, target)
    if not found:
        released = ", ".join(entry.version for entry in history(uri, model, experiment))
        raise InputError(f"{model} has no released version {target!r} (released: {released})")
    number = str(found[0].version)
    try:
        current = call_store(uri, client.get_model_version_by_alias, model, alias)
    except MlflowException:
        current = None
    if current is not None and str(current.version) == number:
        return f"@{alias} of {model} already points to {target} (version {number}); nothing to do"
    current_semver = current.tags.get(VERSION_TAG, f"version {current.version}") if current is not None else "(unset)"

    run = client.create_run(
        ensure_experiment(client, experiment, uri),
        run_name=f"rollback {model} {current_semver} → {target}",
        tags=RollbackTags(model, current_semver, target, alias, reason, by).to_tags(),
    )
    try:
        client.set_registered_model_alias(model, alias, number)
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")  # the record says it did not happen
        raise
    client.set_terminated(run.info.run_id)
    return f"moved @{alias} of {model} from {current_semver} to {target} (version {number}): {reason}"
