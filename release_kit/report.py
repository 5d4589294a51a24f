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

from typing_extensions import TypedDict  # pydantic validates a TypedDict only from here before Python 3.12

# 1.1: a blocked report's bump is null ("none" means bit-identical predictions: nothing to release);
# golden.used_rows/excluded_rows; released (versions already in the registry).
# 1.2: environment.golden_read (how the golden set was read: "whole", or streamed by the "local" or "ray"
# engine; in the environment, not in data.golden, so that both engines' data sections stay equal).
# 1.3: data.golden.max_rows (the gate read only that prefix of the golden set: --max-rows or [run] max_rows);
# policy_sha256 (the digest of the settings its checks decided by: Config.policy_sha256).
SCHEMA_VERSION = "1.3"


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
    candidate: float | None  # None in a saved report: the value was not a finite number (JSON has no NaN)
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


class Record:
    """A typed section of the report that still reads like the JSON it is written as: ``ref.sha256`` in code,
    and ``ref["sha256"]`` or ``ref.get("version")`` for templates and scripts written against the JSON (the
    templates ``release-kit init`` copies into a repository among them)."""

    __dataclass_fields__: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__dataclass_fields__ else default

    def keys(self):
        return self.__dataclass_fields__.keys()

    @classmethod
    def from_dict(cls, data: Any):
        """The section from its JSON form (keys a newer 1.x schema added are ignored); a value already
        typed passes through."""
        if data is None or isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RegistryRef(Record):
    """Where a registry model came from."""

    uri: str | None = None
    name: str | None = None
    version: str | None = None  # the registry's number
    run_id: str | None = None


@dataclass(frozen=True)
class ModelRef(Record):
    """A model the gate loaded: its source, format, file and hash, and (from the registry) its release."""

    source: str
    sha256: str
    kind: str | None = None
    file: str | None = None
    version: str | None = None  # the semantic version it was released as
    registry: RegistryRef | None = None
    signature: dict[str, Any] | None = None  # the contract recorded with it

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", RegistryRef.from_dict(self.registry))


@dataclass(frozen=True)
class DatasetRef(Record):
    path: str
    rows: int
    sha256: str
    used_rows: int | None = None  # rows the stages used (the others had NaN/inf or impossible values)
    excluded_rows: int = 0
    max_rows: int | None = None  # the prefix the gate read (--max-rows, [run] max_rows); None: every row


@dataclass(frozen=True)
class ContractSection(Record):
    """The candidate's contract compared with the baseline's recorded one."""

    candidate: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    compared: bool = False
    breaking: list[str] = field(default_factory=list)
    additive: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WaiverRecord(Record):
    check: str
    reason: str
    by: str
    applied: bool = False  # the check did fail, so the waiver was needed


@dataclass(frozen=True)
class MlflowRef(Record):
    tracking_uri: str
    experiment_id: str
    run_id: str


@dataclass(frozen=True)
class Table(Record):
    """A details table a check shows under its summary (rows of cells: numbers, text or None)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Chart(Record):
    """A bar chart a check shows: one value per label, the y axis named."""

    title: str
    labels: list[str]
    values: list[float | None]
    y_label: str = ""


class Thumbnail(TypedDict):
    """An image a check shows (the HTML note draws it): grey levels 0–255, row by row."""

    title: str
    pixels: list[list[int]]


class Details(TypedDict, total=False):
    """A check's details: free-form facts, but for the keys the templates render, whose types are checked
    when a report is read back (a saved report is untrusted input)."""

    table: Table
    chart: Chart
    images: list[Thumbnail]
    perturbation: str


_DETAIL_TYPES = {"table": Table, "chart": Chart}


@dataclass(frozen=True)
class CheckResult:
    stage: str
    name: str
    status: Status
    summary: str
    metrics: tuple[MetricDiff, ...] = ()
    details: Details = field(default_factory=dict)
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if any(key in self.details and isinstance(self.details[key], dict) for key in _DETAIL_TYPES):
            typed = {key: _DETAIL_TYPES[key].from_dict(value) if key in _DETAIL_TYPES else value for key, value in self.details.items()}
            object.__setattr__(self, "details", typed)


@dataclass
class Report:
    model: str
    task: str
    verdict: Verdict
    bump: Bump | None  # None when blocked: no release, so no bump
    bump_reason: str
    checks: list[CheckResult]
    candidate: ModelRef
    baseline: ModelRef | None
    data: dict[str, DatasetRef]  # "golden" (and any other dataset the gate read)
    current_version: str | None = None
    next_version: str | None = None
    first_release: bool = False
    created_at: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    mlflow: MlflowRef | None = None
    contract: ContractSection | None = None
    waivers: list[WaiverRecord] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    policy_sha256: str | None = None  # the settings its checks decided by (Config.policy_sha256); None before 1.3
    schema_version: str = SCHEMA_VERSION

    def __setattr__(self, name: str, value: Any) -> None:
        # Sections given (or set later) in their JSON form become their typed values.
        coerce = _SECTIONS.get(name)
        super().__setattr__(name, value if coerce is None or value is None else coerce(value))

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
        # Fields schema 1.3 added count only when set: a report written before them digests as it did, so
        # release says what it lacks instead of calling it changed.
        if content.get("policy_sha256") is None:
            content.pop("policy_sha256", None)
        for dataset in content.get("data", {}).values():
            if dataset.get("max_rows") is None:
                dataset.pop("max_rows", None)
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


_SECTIONS = {
    "candidate": ModelRef.from_dict,
    "baseline": ModelRef.from_dict,
    "data": lambda data: {name: DatasetRef.from_dict(ref) for name, ref in data.items()},
    "mlflow": MlflowRef.from_dict,
    "contract": ContractSection.from_dict,
    "waivers": lambda waivers: [WaiverRecord.from_dict(waiver) for waiver in waivers],
}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite numbers become null (the summary says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    if type(value).__module__ == "numpy":  # a numpy scalar or array a check put in its details (float32 is no float)
        return _finite_or_none(value.tolist())
    return value


def load_report(path: Path) -> Report:
    """Read a report written by ``check --report``; a missing, unreadable or foreign file is an InputError."""
    from .errors import InputError
    from .files import parse_document, read_document

    path = Path(path)
    try:
        text = read_document(path, "report")
        data = parse_document(json.loads, text, f"report {path}")
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"cannot read report {path}: {error}") from None
    version = str(data.get("schema_version", "")) if isinstance(data, dict) else ""
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(f"{path}: not a release-kit report of schema {SCHEMA_VERSION} (found {version or 'none'})")
    problem = _schema_problem(text)
    if problem:
        raise InputError(f"{path}: malformed report: {problem}")
    return Report.from_dict(data)


def _schema_problem(text: str) -> str | None:
    """The first value of a report read back that does not have its field's type ("checks.3.metrics.0.candidate:
    Input should be a valid number"), None when every one does. The report is then built from the JSON as
    it is: the digest a gate run logged is of those values (an int stays an int), and validation only reads."""
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(Report).validate_json(text, strict=True)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the report"
        return f"{where}: {first['msg']}"
    return None
