"""The bump planner: from the checks' evidence to a verdict, a semver bump and the next version.

Rules, first match wins (the report records which one fired):

1. any check failed or could not run → **block** (no release);
2. no baseline → **first release** at ``[release] initial_version``;
3. bit-identical predictions → **none** (nothing to release);
4. the primary metric improved and its interval clears ``[quality] min_effect`` → **minor**;
5. anything else that passes → **patch**.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import parse_tolerance
from .report import Bump, CheckResult, Verdict

if TYPE_CHECKING:
    from .config import Config
    from .report import MetricDiff


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    bump: Bump
    reason: str
    current_version: str | None
    next_version: str | None
    first_release: bool = False


def decide(
    config: Config,
    checks: list[CheckResult],
    *,
    has_baseline: bool,
    identical_predictions: bool,
    baseline_version: str | None,
) -> Decision:
    blocking = [check for check in checks if check.status.blocks]
    if blocking:
        names = ", ".join(f"{c.stage}::{c.name}" for c in blocking)
        return Decision(Verdict.BLOCK, Bump.NONE, f"blocked by {len(blocking)} check(s): {names}", baseline_version, None)
    if not has_baseline:
        initial = config.release.initial_version
        return Decision(Verdict.PASS, Bump.MAJOR, f"first release: no baseline, version {initial}", None, initial, True)
    if identical_predictions:
        return Decision(Verdict.PASS, Bump.NONE, "predictions are bit-identical to the baseline's", baseline_version, baseline_version)

    primary = _find_metric(checks, config.primary_metric)
    bump, reason = Bump.PATCH, "passes with no significant improvement of the primary metric"
    if primary is not None and primary.improvement_interval is not None and primary.baseline is not None:
        amount, relative = parse_tolerance(config.quality.min_effect)
        min_effect = amount * abs(primary.baseline) if relative else amount
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
    return Decision(Verdict.PASS, bump, reason, baseline_version, bump_version(baseline_version, bump))


def bump_version(version: str | None, bump: Bump) -> str | None:
    if version is None:
        return None
    import semver

    current = semver.Version.parse(version)
    if bump is Bump.NONE:
        return str(current)
    return str(current.next_version(part=bump.value))


def _find_metric(checks: list[CheckResult], name: str) -> MetricDiff | None:
    for check in checks:
        for diff in check.metrics:
            if diff.name == name and check.stage == "quality":
                return diff
    return None
