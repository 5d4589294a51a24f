"""The bump planner: from the checks' evidence to a verdict, a semver bump and the next version.

Rules, first match wins (the report records which one fired):

0. nothing was decided — no check passed or failed, or (with a baseline) no quality metric could be
   compared — → **block**: a gate that decided nothing does not pass;
1. any check failed or could not run, and is not waived → **block** (no release, bump null);
2. no baseline → **first release** at ``[release] initial_version``;
3. the contract broke (features, task, output width, prediction kind, bounds other than widened) →
   **major**;
4. bit-identical predictions and an unchanged contract → **none** (nothing to release);
5. the primary metric improved and its interval clears ``[quality] min_effect``, or the contract only
   gained (widened bounds) → **minor**;
6. anything else that passes → **patch**.

Waivers (``[[waivers]]`` or ``--waive``) let a named failing check through; every one is recorded.
``[release] prerelease`` / ``build`` shape the version: ``1.4.0-rc.1``, ``1.4.0+abc123``. The next version
counts from the highest version already released in the bumped line (a rollback moves the alias back, but
the versions released after it stay taken).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import parse_tolerance
from .report import Bump, CheckResult, Status, Verdict, WaiverRecord

if TYPE_CHECKING:
    from .config import Config
    from .report import MetricDiff
    from .signature import ContractChange


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    bump: Bump | None
    reason: str
    current_version: str | None
    next_version: str | None
    first_release: bool = False
    waivers: list[WaiverRecord] = field(default_factory=list)


def decide(
    config: Config,
    checks: list[CheckResult],
    *,
    has_baseline: bool,
    identical_predictions: bool,
    baseline_version: str | None,
    contract: ContractChange | None = None,
    released: tuple[str, ...] | list[str] = (),
) -> Decision:
    waived = {w.check: w for w in config.waivers}
    failing = {f"{c.stage}::{c.name}" for c in checks if c.status.blocks}
    waivers = [WaiverRecord(w.check, w.reason, w.by, applied=w.check in failing) for w in config.waivers]
    blocking = sorted(failing - set(waived))
    release = config.release

    def decision(bump: Bump, reason: str, current: str | None, first: bool = False) -> Decision:
        if first:
            version = _first(release)
        else:
            version = next_version(highest_in_line(current, bump, released), bump, release.prerelease, release.build)
        return Decision(Verdict.PASS, bump, reason, current, version, first, waivers)

    def blocked(reason: str) -> Decision:
        return Decision(Verdict.BLOCK, None, reason, baseline_version, None, False, waivers)

    if blocking:
        applied = [w.check for w in waivers if w.applied]
        waived_note = f" ({len(applied)} waived: {', '.join(applied)})" if applied else ""
        return blocked(f"blocked by {len(blocking)} check(s): {', '.join(blocking)}{waived_note}")
    undecided = _undecided(checks, has_baseline)
    if undecided:
        return blocked(undecided)
    if not has_baseline:
        return decision(Bump.MAJOR, f"first release: no baseline, version {_first(release)}", None, first=True)
    if contract is not None and contract.breaking:
        return decision(Bump.MAJOR, "the contract changed: " + "; ".join(contract.breaking), baseline_version)
    if identical_predictions and not (contract and contract.additive):
        return decision(Bump.NONE, "predictions are bit-identical to the baseline's", baseline_version)
    if contract is not None and contract.additive:
        return decision(Bump.MINOR, "new capability: " + "; ".join(contract.additive), baseline_version)

    primary = _find_metric(checks, config.primary_metric)
    if primary is None:  # e.g. `--stage data`: no evidence of an improvement, so a patch at most, and said so
        ran = any(c.stage == "quality" for c in checks)
        why = "no quality check compared it" if ran else "the quality stage did not run"
        return decision(Bump.PATCH, f"passes; {config.primary_metric}, the primary metric, was not measured ({why}): "
                                    "a patch at most", baseline_version)
    bump, reason = Bump.PATCH, "passes with no significant improvement of the primary metric"
    if primary.improvement_interval is not None and primary.baseline is not None:
        min_effect = parse_tolerance(config.quality.min_effect).of(primary.baseline)
        low = primary.improvement_interval[0]
        if low >= min_effect and low > 0:
            bump = Bump.MINOR
            reason = (
                f"{config.primary_metric} improved by at least {low:.4g} (interval's lower bound), "
                f"clearing the minimum effect {min_effect:.4g}"
            )
        else:
            reason = (
                f"passes; {config.primary_metric} improvement's lower bound {low:.4g} does not clear "
                f"the minimum effect {min_effect:.4g}"
            )
    return decision(bump, reason, baseline_version)


def _undecided(checks: list[CheckResult], has_baseline: bool) -> str | None:
    """Why the checks decided nothing (None when they decided): no check passed or failed, or with a
    baseline no quality metric could be compared (too few rows, undefined metrics, no intervals)."""
    decisive = (Status.PASS, Status.FAIL, Status.ERROR)
    if not any(check.status in decisive for check in checks):
        return f"nothing was decided: none of the {len(checks)} check(s) passed or failed (all skipped or inconclusive)"
    # The quality stage's checks of the models' outputs themselves decide no metric.
    quality = [c for c in checks if c.stage == "quality" and c.name not in ("output_contract", "batch_independence")]
    if has_baseline and quality and not any(c.status in decisive for c in quality):
        return "no quality metric could be decided: " + "; ".join(f"{c.name}: {c.summary}" for c in quality[:3])
    return None


def highest_in_line(current: str | None, bump: Bump | None, released: tuple[str, ...] | list[str]) -> str | None:
    """The version to bump from: ``current``, or a higher released version in the line the bump moves in
    (same major for a minor bump, same major.minor for a patch, any for a major), so that the result is
    never a version already released."""
    if current is None or bump in (None, Bump.NONE) or not released:
        return current
    import semver

    base = semver.Version.parse(current)
    same_line = {
        Bump.MAJOR: lambda v: True,
        Bump.MINOR: lambda v: v.major == base.major,
        Bump.PATCH: lambda v: (v.major, v.minor) == (base.major, base.minor),
    }[bump]
    candidates = [base] + [v for v in map(_parsed, released) if v is not None and same_line(v)]
    return str(max(candidates))


def _parsed(text: str):
    import semver

    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def _first(release) -> str:
    return next_version(release.initial_version, None, release.prerelease, release.build)


def next_version(current: str | None, bump: Bump | None, prerelease: str | None = None, build: str | None = None) -> str | None:
    """The version after ``current`` for ``bump`` (None: ``current`` itself, e.g. a first release's
    initial version), then as a pre-release (``-rc.N``) and with build metadata when asked.

    ``none`` means no new release: the current version is returned as it is.
    """
    if current is None:
        return None
    import semver

    version = semver.Version.parse(current)
    if bump is Bump.NONE:
        return str(version)
    target = version if bump is None else version.next_version(part=bump.value)
    if prerelease:
        # A pre-release of the version already being pre-released continues its count (rc.1 → rc.2).
        same_line = version.prerelease and version.finalize_version() == target.finalize_version()
        target = (version if same_line else target.finalize_version()).bump_prerelease(prerelease)
    if build:
        target = target.replace(build=build)
    return str(target)


def _find_metric(checks: list[CheckResult], name: str) -> MetricDiff | None:
    for check in checks:
        for diff in check.metrics:
            if diff.name == name and check.stage == "quality":
                return diff
    return None
