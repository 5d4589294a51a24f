"""The reproducibility manifest: what a released version was built from and checked with.

One JSON document per release (logged to the registry with the version): the code (git sha and whether
the tree was dirty), the config, the gate's parameters, content hashes of the golden, reference and
training data, the model file's hash, and the environment down to every installed package. Comparing it
with the previous release's manifest tells a reader what changed between the two.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .git import GitRepo
    from .report import Report

MANIFEST_VERSION = "1"


def packages() -> dict[str, str]:
    """Every installed distribution and its version (what ``pip freeze`` lists), from package metadata."""
    from importlib.metadata import distributions

    found = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return dict(sorted(found.items()))


def data_fingerprints(config: Config, report: Report, contents: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Content hashes of the datasets named in ``[data]``; the golden set's is the one the gate checked, a
    file's the release took already (``contents``: :func:`release_kit.data.content_hashes`)."""
    from .data import fingerprint, is_sql, read_table

    fingerprints = {"golden": {"source": report.data["golden"].path, "sha256": report.data["golden"].sha256}}
    for role in ("reference", "training"):
        source = getattr(config.data, role)
        if source:
            known = contents.get(role)
            if known is None or known == "unreadable":
                # A table the release could not read: reading it again says why, here.
                known = fingerprint(source, read_table(source) if is_sql(source) else None)
            fingerprints[role] = {"source": source, "sha256": known}
    return fingerprints


def build(config: Config, report: Report, *, model_file: Path, git: GitRepo | None, dirty: list[str], created_at: str,
          data_contents: dict[str, str]) -> dict[str, Any]:
    from .environment import software

    return {
        "manifest_version": MANIFEST_VERSION,
        "model": report.model,
        "version": report.next_version,
        "created_at": created_at,
        "code": {
            "git_sha": git.head() if git else None,
            "dirty": bool(dirty),
            "changed_files": dirty,
        },
        "config": config.model_dump(mode="json"),
        "params": {
            "task": report.task,
            "bump": report.bump.value,
            "bump_reason": report.bump_reason,
            "stages": sorted({check.stage for check in report.checks}),
            "baseline": None if report.baseline is None else {
                "source": report.baseline.source, "version": report.baseline.version, "sha256": report.baseline.sha256,
            },
        },
        "data": data_fingerprints(config, report, data_contents),
        "model_file": {"name": model_file.name, "sha256": report.candidate.sha256, "kind": report.candidate.kind},
        "environment": {
            **software(),
            "implementation": platform.python_implementation(),
            "packages": packages(),
        },
    }


def changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, str]]:
    """What differs between two manifests, as rows of (what, before, after) for the release note."""
    if previous is None:
        return []
    rows: list[dict[str, str]] = []

    def row(what: str, before: Any, after: Any) -> None:
        if before != after:
            rows.append({"what": what, "before": _short(before), "after": _short(after)})

    row("code (git sha)", previous.get("code", {}).get("git_sha"), current["code"]["git_sha"])
    row("model file", previous.get("model_file", {}).get("sha256"), current["model_file"]["sha256"])
    for role in sorted(set(previous.get("data", {})) | set(current["data"])):
        row(f"{role} data", previous.get("data", {}).get(role, {}).get("sha256"), current["data"].get(role, {}).get("sha256"))
    for key in ("python", "torch", "cuda", "platform"):
        row(key, previous.get("environment", {}).get(key), current["environment"].get(key))
    before_pkgs, after_pkgs = previous.get("environment", {}).get("packages", {}), current["environment"]["packages"]
    for name in sorted(set(before_pkgs) | set(after_pkgs)):
        row(f"package {name}", before_pkgs.get(name), after_pkgs.get(name))
    for key, before, after in _config_changes(previous.get("config", {}), current["config"]):
        row(f"config {key}", before, after)
    return rows


def _config_changes(before: Any, after: Any, prefix: str = ""):
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _config_changes(before.get(key), after.get(key), f"{prefix}.{key}" if prefix else key)
    elif before != after:
        yield prefix, before, after


def _short(value: Any) -> str:
    if value is None:
        return "—"
    text = str(value)
    # Hashes read best as their first 12 characters, as git shows them.
    if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text if len(text) <= 80 else text[:77] + "…"
