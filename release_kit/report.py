"""The report: the one data model every stage returns and every renderer reads.

A :class:`Report` holds :class:`CheckResult` items; a check that compares numbers carries
:class:`MetricDiff` values. The JSON form is versioned by :data:`SCHEMA_VERSION` (documented in the README);
add fields freely, but bump the major part when a field changes meaning or disappears.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

# 1.1: a blocked report's bump is null ("none" means bit-identical predictions: nothing to release);
# golden.used_rows/excluded_rows; released (versions already in the registry).
SCHEMA_VERSION = "1.1"


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"
    ERROR = "error"

    @property
    def blocks(self) -> bool:
        """A check that failed or could not run blocks the release: it proved nothing."""
        return self in (Status.FAIL, Status.ERROR)


class Verdict(StrEnum):
    PASS = "pass"
    BLOCK = "block"


class Bump(StrEnum):
    MAJOR = "major"
    MINOR = "minor"
    PATCH = "patch"
    NONE = "none"


@dataclass(frozen=True)
class MetricDiff:
    """Candidate vs baseline on one metric, with the interval of the paired difference."""

    name: str
    candidate: float
    baseline: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool = False
    # How much worse than the baseline (in the metric's units) the gate tolerates.
    tolerance: float | None = None

    @property
    def worsening_interval(self) -> tuple[float, float] | None:
        """The interval of the change oriented so that positive means worse."""
        if self.ci_low is None or self.ci_high is None:
            return None
        if self.higher_is_better:
            return -self.ci_high, -self.ci_low
        return self.ci_low, self.ci_high

    @property
    def improvement_interval(self) -> tuple[float, float] | None:
        """The interval of the change oriented so that positive means better."""
        worse = self.worsening_interval
        return None if worse is None else (-worse[1], -worse[0])


@dataclass(frozen=True)
class CheckResult:
    stage: str
    name: str
    status: Status
    summary: str
    metrics: tuple[MetricDiff, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass
class Report:
    model: str
    task: str
    verdict: Verdict
    bump: Bump | None  # None when blocked: no release, so no bump
    bump_reason: str
    checks: list[CheckResult]
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None
    data: dict[str, Any]
    current_version: str | None = None
    next_version: str | None = None
    first_release: bool = False
    created_at: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    mlflow: dict[str, Any] | None = None
    # The candidate's contract compared with the baseline's recorded one (None: nothing recorded).
    contract: dict[str, Any] | None = None
    waivers: list[dict[str, Any]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    @property
    def blocking(self) -> list[CheckResult]:
        return [check for check in self.checks if check.status.blocks]

    def metric(self, name: str) -> MetricDiff | None:
        for check in self.checks:
            for diff in check.metrics:
                if diff.name == name:
                    return diff
        return None

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def digest(self) -> str:
        """sha256 of the report's content, its ``mlflow`` section aside (written after the run is logged):
        the gate run records it, and ``release --report`` accepts only a report with a logged digest."""
        import hashlib

        content = {key: value for key, value in self.to_dict().items() if key != "mlflow"}
        return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=False).encode()).hexdigest()

    def write(self, path: Path) -> None:
        from .outputs import write_atomic

        write_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        fields = dict(data)
        fields["verdict"] = Verdict(fields["verdict"])
        fields["bump"] = None if fields["bump"] is None else Bump(fields["bump"])
        fields["checks"] = [
            CheckResult(
                **{
                    **check,
                    "status": Status(check["status"]),
                    "metrics": tuple(MetricDiff(**m) for m in check.get("metrics", ())),
                }
            )
            for check in fields["checks"]
        ]
        return cls(**fields)


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite numbers become null (the summary says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def load_report(path: Path) -> Report:
    """Read a report written by ``check --report``; a missing, unreadable or foreign file is an InputError."""
    from .errors import InputError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read report {path}: {error}") from None
    version = str(data.get("schema_version", "")) if isinstance(data, dict) else ""
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(f"{path}: not a release-kit report of schema {SCHEMA_VERSION} (found {version or 'none'})")
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: malformed report: {error}") from None
