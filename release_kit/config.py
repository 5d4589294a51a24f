"""The gate's configuration: ``release-kit.toml`` or ``[tool.release-kit]`` in ``pyproject.toml``.

Validated with pydantic; unknown keys are refused with the dotted key named, because a misspelt
tolerance that silently falls back to a default is how a gate ends up passing what it should block.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import InputError
from .expressions import check_row_expression
from .files import parse_document, read_document

Task = Literal["regression", "classification"]
MAX_BATCH = (1 << 31) - 1  # samples per model call or batch: numpy, torch and pyarrow take sizes as C integers


class _Strict(BaseModel):
    # NaN compares false with everything, so a NaN bound or budget would let anything through: refused.
    # Strict: TOML types its values, so "4000" or true where a count belongs is a typo to name, not to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _check_range(low: float | None, high: float | None) -> None:
    """A range given as min/max: both ends optional, never inverted."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"min ({low:g}) is greater than max ({high:g})")


class Bounds(_Strict):
    """The output contract: every prediction must lie in ``[min, max]``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        _check_range(self.min, self.max)
        return self


# What an error says when class labels are stored as text and [model] classes does not name them.
CLASS_LABELS_HINT = "class labels stored as text: list them in [model] classes, in class-id order"


def names_an_output(value: object) -> bool:
    """Whether ``value`` names one of a model's several outputs: a tuple's index, or a dict's key."""
    return (type(value) is int and value >= 0) or (type(value) is str and value != "")


class ModelSpec(_Strict):
    """The model under gate. ``features`` and ``target`` name a table golden set's columns; a tensor golden
    set (.npz, .safetensors, a dataset factory) has neither: its arrays are the inputs and the target."""

    name: str = Field(min_length=1)
    task: Task
    features: list[str] | None = Field(default=None, min_length=1)
    target: str | None = Field(default=None, min_length=1, validate_default=True)
    prediction: Literal["logits", "probabilities"] | None = None
    # One range for every output, or one per output of a multi-output regressor.
    bounds: Bounds | list[Bounds] | None = None
    # Class names by class id, for reports ("recall of class 'triangle'"); ids are used without them.
    classes: list[str] | None = Field(default=None, min_length=2)
    # "package.module:function" returning an nn.Module; needed for safetensors state dicts.
    factory: str | None = None
    # The prediction among the outputs of a model that returns several: a tuple's index, or a dict's key
    # ("logits" of a Hugging Face-style output). Unset, a model returns one tensor (or a tuple or dict of one).
    output: int | str | None = None

    @field_validator("target")
    @classmethod
    def _target_with_features(cls, target: str | None, info: ValidationInfo) -> str | None:
        if target is None and info.data.get("features") is not None:
            raise PydanticCustomError("missing", "Field required")  # reported as a missing config key
        return target

    @field_validator("output", mode="before")
    @classmethod
    def _output_index_or_key(cls, output: object) -> object:
        if output is None or names_an_output(output):
            return output
        raise ValueError(f"must be a tuple's index (0, 1, …) or a dict's key (\"logits\"), not {output!r}")

    @field_validator("features")
    @classmethod
    def _unique(cls, features: list[str] | None) -> list[str] | None:
        seen: set[str] = set()
        dupes = [f for f in features or () if f in seen or seen.add(f)]
        if dupes:
            raise ValueError(f"duplicate feature(s): {', '.join(dupes)}")
        return features

    @model_validator(mode="after")
    def _prediction_for_classification(self) -> ModelSpec:
        if self.task == "classification" and self.prediction is None:
            raise ValueError('classification needs prediction = "logits" or "probabilities"')
        if self.task == "regression" and self.prediction is not None:
            raise ValueError("prediction applies to classification only")
        if self.features is None and self.target is not None:
            raise ValueError("target needs features: a table golden set names both, a tensor one neither")
        if self.features is not None and self.target in self.features:
            raise ValueError(f"target {self.target!r} is also listed in features")
        if self.classes is not None and self.task != "classification":
            raise ValueError("classes applies to classification only")
        if isinstance(self.bounds, list) and self.task != "regression":
            raise ValueError("per-output bounds apply to regression only")
        return self

    @property
    def tabular(self) -> bool:
        """The golden set is a table whose columns are named here (else a tensor file or dataset)."""
        return self.features is not None

    def class_name(self, class_id: int) -> str:
        if self.classes is not None and 0 <= class_id < len(self.classes):
            return f"{class_id} ({self.classes[class_id]})"
        return str(class_id)


class ModelSource(_Strict):
    """Where a model comes from: a file or an MLflow URI, and the version it was released as."""

    path: str | None = None
    version: str | None = None
    factory: str | None = None
    # [baseline] only: a model file in the repository, used when the registry cannot be (a fork's PR has
    # no registry credentials), with the version it was released as.
    fallback: str | None = None
    fallback_version: str | None = None

    @field_validator("version", "fallback_version")
    @classmethod
    def _semver(cls, version: str | None) -> str | None:
        if version is not None:
            _parse_version(version)
        return version


class ProfileSpec(_Strict):
    """How a reference dataset becomes an expectation suite."""

    # Numeric ranges widen by this share of the observed range on each side.
    range_margin: float = Field(default=0.1, ge=0)
    # A column may have this much more null share than the reference had (absolute).
    null_margin: float = Field(default=0.0, ge=0, le=1)
    # Non-numeric columns with at most this many distinct values get a category-set expectation; numeric
    # columns only when named in ``categorical`` (whole-valued numbers such as pixel counts are not categories).
    max_categories: int = Field(default=20, ge=1)
    categorical: list[str] = Field(default_factory=list)
    # The share of rows each profiled expectation must hold for (GX ``mostly``): 1.0 allows no exception.
    mostly: float = Field(default=1.0, gt=0, le=1)
    min_rows: int = Field(default=1, ge=1)


class DriftSpec(_Strict):
    """Per-feature drift of the golden set from the reference: PSI for size, KS / chi-square for evidence."""

    psi: float = Field(default=0.1, gt=0)  # a feature drifts when PSI ≥ this and its test is significant
    alpha: float = Field(default=0.01, gt=0, lt=1)  # Holm over the features tested
    action: Literal["warn", "fail"] = "warn"
    bins: int = Field(default=10, ge=2, le=50)
    # Two-sample tests compare at most this many rows per side (sampled); PSI always uses every row.
    test_rows: int = Field(default=200_000, ge=1_000)


class DataSpec(_Strict):
    """Data sources are tables (.csv, .parquet, SQL tables written ``URL#table``) or tensor files (.npz,
    .safetensors: arrays ``inputs`` or ``inputs.0``, ``inputs.1``, … and ``target``)."""

    golden: str | None = None
    # Tensor golden sets: a table of N rows in the golden order (slices, reports, GX suites).
    metadata: str | None = None
    # Instead of ``golden``: "package.module:function" returning a torch Dataset of (inputs, target[, meta]).
    # It runs the user's code, like a model factory.
    dataset: str | None = None
    reference: str | None = None
    # The candidate's training data: validated against the same suites when set.
    training: str | None = None
    # A directory of GX expectation-suite JSON files, or one file.
    suites: str = "checks/expectations"
    profile: ProfileSpec = ProfileSpec()
    drift: DriftSpec = DriftSpec()
    # Tensor inputs: the sample axis (batch axis excluded) whose entries are channels for the per-channel
    # statistics; None: the default by rank ((C, H, W) → 0, (F,) → 0, (H, W) or (T, F) → the whole sample).
    channel_axis: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_golden(self) -> DataSpec:
        if self.golden is not None and self.dataset is not None:
            raise ValueError("set golden or dataset, not both")
        return self


class RunSpec(_Strict):
    """How a large golden set is read: a directory or glob of Parquet files (or one larger than a batch) is
    streamed in batches of ``chunk_rows`` and reduced into mergeable statistics, in this process
    (``local``) or on Ray (``ray``, ``pip install 'release-kit[ray]'``)."""

    engine: Literal["local", "ray"] = "local"
    chunk_rows: int = Field(default=1_000_000, ge=1, le=MAX_BATCH)
    ray_address: str = ""  # empty: start a local Ray; else an existing cluster ("ray://head:10001", "auto")
    ray_workers: int | None = Field(default=None, ge=1)  # actors, each holding both models; None: one per core (on a cluster, two thirds of its CPUs: the rest read)
    # The quality metrics are exact over every row; the other stages run on a uniform sample of this many rows.
    sample_rows: int = Field(default=1_000_000, ge=100)
    max_rows: int | None = Field(default=None, ge=1)  # gate on the first rows only (also --max-rows)


class InferenceSpec(_Strict):
    """How golden-set inference runs (the performance stage times on its own ``[performance] device``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Samples per model call; None: models.default_call_rows (a table's by the model's widths, 256 for tensors).
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)


ToleranceField = Annotated[float | str, Field(union_mode="left_to_right")]  # parsed by parse_tolerance


class QualitySpec(_Strict):
    """How the quality stage decides.

    ``tolerance`` maps a metric to how much worse than the baseline the candidate may be: a number in the
    metric's own units, or a string such as ``"5%"`` relative to the baseline's value.
    """

    primary: str | None = None
    tolerance: dict[str, ToleranceField] = Field(default_factory=dict)
    # Smallest improvement of the primary metric (same units as tolerance) that earns a minor bump.
    min_effect: ToleranceField = "1%"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    interval: Literal["analytic", "bootstrap"] = "analytic"
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = Field(default=0, ge=0)  # numpy and torch take no negative seed
    # Fewer usable golden rows than this and no metric is decided (an interval from 2 rows says nothing).
    min_rows: int = Field(default=20, ge=2)

    @field_validator("tolerance")
    @classmethod
    def _tolerances_parse(cls, tolerance: dict[str, float | str]) -> dict[str, float | str]:
        from .metrics import METRICS

        known = set(METRICS)
        for metric, value in tolerance.items():
            if metric not in known:
                raise ValueError(f"unknown metric {metric!r} (known: {', '.join(sorted(known))})")
            parse_tolerance(value)
        return tolerance

    @field_validator("min_effect")
    @classmethod
    def _min_effect_parses(cls, value: float | str) -> float | str:
        parse_tolerance(value)
        return value


class SliceSpec(_Strict):
    """A declared slice: ``column`` with ``bins`` (edges) or ``categories``, or a boolean ``expr``."""

    name: str | None = None
    column: str | None = None
    bins: list[float] | None = None
    categories: list[str | int | float] | None = None
    expr: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> SliceSpec:
        forms = [self.bins is not None, self.categories is not None, self.expr is not None]
        if sum(forms) != 1:
            raise ValueError("a slice needs exactly one of bins, categories or expr")
        if (self.bins is not None or self.categories is not None) and not self.column:
            raise ValueError("a slice with bins or categories needs a column")
        if self.expr is not None:
            check_row_expression(self.expr, "expr")
        if self.bins is not None:
            if len(self.bins) < 2:
                raise ValueError("bins needs at least two edges")
            if any(b >= a for a, b in zip(self.bins[1:], self.bins)):
                raise ValueError(f"bins must increase strictly: {self.bins}")
        return self


class FeatureDomain(_Strict):
    """The search's range for one feature; ``integer`` draws whole numbers, ``values`` a fixed set."""

    min: float | None = None
    max: float | None = None
    integer: bool | None = None
    values: list[float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FeatureDomain:
        if self.values is not None and not self.values:
            raise ValueError("values is empty")
        _check_range(self.min, self.max)
        return self


class RobustnessSpec(_Strict):
    """The differential robustness search for tensor inputs: perturbations of golden samples within this
    budget where the candidate's decision flips (or its output breaks the contract) and the baseline's does
    not. Amounts are in units of the input's standard deviation over the golden set; None: the default
    for the input's rank (noise only for vectors; noise, brightness, contrast and shifts for images)."""

    enabled: bool = True
    noise: float | None = Field(default=None, ge=0)  # additive noise, each value in ±noise·σ
    brightness: float | None = Field(default=None, ge=0)  # an offset in ±brightness·σ
    contrast: float | None = Field(default=None, ge=0, lt=1)  # scale around the sample's mean by 1 ± contrast
    shift: int | None = Field(default=None, ge=0)  # move the last two axes by up to this many positions
    samples: int = Field(default=200, ge=2)  # golden samples perturbed (drawn among those both models get right)
    draws: int = Field(default=8, ge=1)  # random perturbations per sample for the flip rates
    # Block when the candidate's flip rate exceeds the baseline's by more than this (interval's lower bound).
    max_flip_increase: float = Field(default=0.02, ge=0, le=1)
    # Regression: a prediction moving by more than this (in target standard deviations) is a flip.
    regression_change: float = Field(default=0.5, gt=0)


class MonotonicSpec(_Strict):
    feature: str
    direction: Literal["increasing", "decreasing"] = "increasing"
    # Predictions may move against the direction by this much before it counts (numerical noise).
    tolerance: float = Field(default=1e-6, ge=0)


class SearchSpec(_Strict):
    enabled: bool = True
    max_examples: int = Field(default=300, ge=1)
    seconds: float = Field(default=10.0, gt=0)
    # |candidate − baseline| beyond this is a divergence; None: the search looks for contract breaks only.
    divergence: float | None = Field(default=None, gt=0)


class OutliersSpec(_Strict):
    """The outlier-regression stage."""

    k_mad: float = Field(default=5.0, gt=0)
    # A sample "newly broke" when its error grew by more than k × MAD of the paired deltas and by more
    # than this absolute amount.
    min_error_increase: float = Field(default=0.0, ge=0)
    # More than this share of newly broken rows (and more broken than fixed) fails the check.
    max_newly_broken: float = Field(default=0.01, ge=0, le=1)
    top_n: int = Field(default=10, ge=1)
    min_slice_size: int = Field(default=30, ge=2)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # How much worse a slice's mean loss may get: "5%" of the slice's baseline loss, or absolute.
    slice_tolerance: ToleranceField = "5%"
    quantile_bins: int = Field(default=5, ge=2, le=20)
    feature_pairs: int = Field(default=3, ge=0, le=10)
    slices: list[SliceSpec] = Field(default_factory=list)
    monotonic: list[MonotonicSpec] = Field(default_factory=list)
    domain: dict[str, FeatureDomain] = Field(default_factory=dict)
    search: SearchSpec = SearchSpec()
    robustness: RobustnessSpec = RobustnessSpec()

    @field_validator("slice_tolerance")
    @classmethod
    def _tolerance_parses(cls, value: float | str) -> float | str:
        parse_tolerance(value)
        return value


class PerformanceSpec(_Strict):
    """The performance stage: candidate and baseline timed in one process, interleaved, decided on intervals."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Samples per timed call (the memory a batch's inputs need is checked against the machine's before the run).
    batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = Field(default_factory=lambda: [1, 64], min_length=1)
    # torch.set_num_threads on CPU while measuring (recorded); torch crashes the process on ~100,000.
    threads: int = Field(default=1, ge=1, le=1024)
    rounds: int = Field(default=16, ge=4)  # A/B rounds, alternating which model goes first
    round_seconds: float = Field(default=0.04, gt=0, le=60)  # time per model per round; sets the calls per round
    warmup_seconds: float = Field(default=0.3, gt=0)
    latency_budget: float = Field(default=0.10, ge=0)  # block when the ratio's lower bound > 1 + budget
    memory_budget: float = Field(default=0.10, ge=0)
    memory_slack_bytes: int = Field(default=1 << 20, ge=0)  # RSS moves in pages: ignore smaller changes
    max_spread: float = Field(default=0.25, gt=0)  # IQR/median of round ratios above which it reruns
    time_budget_seconds: float = Field(default=20.0, gt=0)  # per model pair, reruns included
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    resamples: int = Field(default=2000, ge=200, le=100_000)  # each a draw of every round: bounded, as its memory
    seed: int = Field(default=0, ge=0)  # numpy and torch take no negative seed
    # The device's peak (e.g. 67 for an H100's FP32 TFLOP/s): reports achieved throughput as a share of it.
    peak_tflops: float | None = Field(default=None, gt=0)
    # Write the candidate's measurements here (with the machine's fingerprint), for a later stored comparison.
    save_candidate: str | None = None
    # Compare against measurements stored by an earlier run instead of timing the baseline live. Refused
    # (an error check) unless the fingerprint and the baseline file's hash match. Live A/B is more robust.
    stored_baseline: str | None = None


class ChecksSpec(_Strict):
    """Where user checks live. The default ``checks`` (next to the config) may be absent; a path set
    explicitly must exist."""

    paths: list[str] = Field(default_factory=lambda: ["checks"])


STAGES = ("quality", "outliers", "performance", "data")


class GateSpec(_Strict):
    """What the gate runs. Every built-in stage by default: a gate that skips a stage silently passes what
    that stage would block."""

    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    # A single model call (one batch) that runs longer than this ends the run as an input error.
    model_timeout_seconds: float = Field(default=300.0, gt=0, le=366 * 86_400)  # at most a year: the watchdog's clock overflows

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        if not stages:
            raise ValueError(f"is empty, so the gate would decide nothing (use any of: {', '.join(STAGES)})")
        unknown = [stage for stage in stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
        if len(set(stages)) != len(stages):
            raise ValueError("names a stage twice")
        return stages


class MlflowSpec(_Strict):
    enabled: bool = True
    # None: the embedded SQLite store under .release-kit/ (or $MLFLOW_TRACKING_URI when set).
    tracking_uri: str | None = None
    experiment: str = "release-kit"


class ReleaseSpec(_Strict):
    initial_version: str = "1.0.0"
    templates: str | None = None
    changelog: str = "CHANGELOG.md"  # relative to the config's directory; "" for none
    git_tag: bool = True
    tag_format: str = "{model}-v{version}"
    alias: str = Field(default="champion", pattern=r"^([A-Za-z_][A-Za-z0-9_-]*)?$")  # "" leaves aliases alone
    prerelease: str | None = Field(default=None, pattern=r"^[0-9A-Za-z-]+$")  # "rc" → 1.4.0-rc.1
    build: str | None = Field(default=None, pattern=r"^[0-9A-Za-z.-]+$")  # build metadata → 1.4.0+abc123

    @field_validator("initial_version")
    @classmethod
    def _semver(cls, version: str) -> str:
        _parse_version(version)
        return version

    @field_validator("tag_format")
    @classmethod
    def _tag_fields(cls, template: str) -> str:
        import string

        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
        except ValueError as error:
            raise ValueError(f"{template!r} may use only {{model}} and {{version}} ({error})") from None
        # Plain fields only: "{model.upper}" or "{version:>9}" is a format string's reach, not a tag's name.
        if any(name not in ("model", "version") or spec or conversion for name, spec, conversion in fields):
            raise ValueError(f"{template!r} may use only {{model}} and {{version}}, as they are")
        if "version" not in (name for name, _, _ in fields):  # without it, every release would want one tag
            raise ValueError(f"{template!r} has no {{version}}: every release would be given the same tag")
        return template


class Waiver(_Strict):
    """An audited exception: the named check may fail without blocking, and the report says who and why."""

    check: str = Field(pattern=r"^[^:]+::.+$")  # "stage::name", as in the report
    reason: str = Field(min_length=1)
    by: str = Field(min_length=1)


class Config(_Strict):
    model: ModelSpec
    candidate: ModelSource = ModelSource()
    baseline: ModelSource = ModelSource()
    data: DataSpec = DataSpec()
    inference: InferenceSpec = InferenceSpec()
    run: RunSpec = RunSpec()
    quality: QualitySpec = QualitySpec()
    checks: ChecksSpec = ChecksSpec()
    gate: GateSpec = GateSpec()
    outliers: OutliersSpec = OutliersSpec()
    performance: PerformanceSpec = PerformanceSpec()
    mlflow: MlflowSpec = MlflowSpec()
    release: ReleaseSpec = ReleaseSpec()
    waivers: list[Waiver] = Field(default_factory=list)

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> Config:
        allowed = metrics_for(self.model.task)
        wrong = [m for m in self.quality.tolerance if m not in allowed]
        if self.quality.primary is not None and self.quality.primary not in allowed:
            wrong.append(self.quality.primary)
        if wrong:
            raise ValueError(
                f"metric(s) {', '.join(wrong)} do not apply to {self.model.task} "
                f"(use: {', '.join(allowed)})"
            )
        features = set(self.model.features or ())
        unknown = [f"outliers.domain.{name}" for name in self.outliers.domain if name not in features]
        unknown += [f"outliers.monotonic feature {m.feature!r}" for m in self.outliers.monotonic if m.feature not in features]
        if unknown:
            raise ValueError(f"{unknown[0]} is not one of [model] features")
        return self

    def policy_sha256(self, project_dir: Path, golden: str | None, data_contents: dict[str, str]) -> str:
        """A digest of the settings the gate's checks decide by. A release from a saved report needs the report's
        gate to have decided by the release's (a check run with a laxer tolerance passed what this config
        blocks). Left out: the models and the golden set (checked on their own), how the scan ran (engine,
        batches, Ray: the same numbers), [gate] stages and [run] max_rows (checked on their own), the waivers
        (the report records those it applied) and what a release writes ([mlflow], [release]). The contents of
        the user checks (``[checks] paths``) and the suites (``[data] suites``) count, and ``data_contents``,
        the hashes of the reference, training and metadata tables (:func:`release_kit.data.content_hashes`):
        a reference drawn from the golden rows makes every drift check pass. ``golden`` is the golden source
        the gate read (``--data`` overrides [data] golden): a local path relative to the working directory, a
        SQL URL or a dataset factory as written. Paths inside ``project_dir`` count relative to it: two
        runners' checkouts of one commit decide alike."""
        import hashlib
        import json

        settings = self.model_dump(mode="json", exclude={
            "candidate": True, "baseline": True, "mlflow": True, "release": True, "waivers": True,
            "data": {"golden", "dataset"}, "gate": {"stages"},
            "run": {"engine", "chunk_rows", "ray_address", "ray_workers", "max_rows"},
        })
        local = golden is not None and "://" not in golden and not _names_a_factory(golden)
        settings["golden"] = str(Path(golden).resolve()) if local else golden
        # The user checks and the expectation suites decide too: their files' contents, not only where they are.
        settings["files"] = _contents([project_dir / path for path in self.checks.paths] + [Path(self.data.suites)], project_dir)
        if data_contents:  # absent when there is none: a config without those tables digests as before
            settings["data_contents"] = data_contents
        root = str(project_dir.resolve())

        def relative(value):
            if isinstance(value, dict):
                return {key: relative(item) for key, item in value.items()}
            if isinstance(value, list):
                return [relative(item) for item in value]
            if isinstance(value, str) and (value == root or value.startswith(root + "/")):
                return "." + value[len(root):]
            return value

        return hashlib.sha256(json.dumps(relative(settings), sort_keys=True).encode()).hexdigest()

    @property
    def primary_metric(self) -> str:
        from .metrics import PRIMARY

        return self.quality.primary or PRIMARY[self.model.task]

    def tolerance(self, metric: str) -> Tolerance:
        """How much worse than the baseline ``metric`` may get: [quality] tolerance, else its default."""
        from .metrics import METRICS

        return parse_tolerance(self.quality.tolerance.get(metric, METRICS[metric].default_tolerance))


def metrics_for(task: Task) -> tuple[str, ...]:
    from .metrics import metrics_for as registered

    return registered(task)


class Tolerance(NamedTuple):
    """A tolerance as parsed once: an amount in the metric's units, or a share of a reference value."""

    amount: float
    relative: bool

    def of(self, reference: float) -> float:
        """The tolerance in the metric's units, for a reference (baseline) value."""
        return self.amount * abs(reference) if self.relative else self.amount


def parse_tolerance(value: float | str) -> Tolerance:
    """``0.02`` → (0.02, absolute); ``"5%"`` → (0.05, relative). Negative and non-finite ones are refused."""
    if isinstance(value, str):
        text = value.strip()
        relative = text.endswith("%")
        try:
            number = float(text[:-1] if relative else text)
        except ValueError:
            raise ValueError(f"tolerance {value!r} is not a number or a percentage like '5%'") from None
        if relative:
            number /= 100.0
    else:
        number, relative = float(value), False
    if not math.isfinite(number):
        raise ValueError(f"tolerance {value!r} is not a finite number")
    if number < 0:
        raise ValueError(f"tolerance {value!r} is negative")
    return Tolerance(number, relative)


def _parse_version(version: str) -> None:
    import semver

    try:
        semver.Version.parse(version)
    except ValueError:
        raise ValueError(f"{version!r} is not a semantic version like 1.2.3") from None


# The files whose contents the settings digest covers: user checks and their configuration, GX suites.
POLICY_FILE_SUFFIXES = (".py", ".json", ".toml", ".ini", ".cfg", ".yml", ".yaml")


def _contents(paths: list[Path], project_dir: Path) -> dict[str, str]:
    """sha256 of each policy file under ``paths`` (files or directories; absent ones add nothing), keyed by its
    path relative to ``project_dir`` where it lies inside it. Caches and hidden directories are left out."""
    import hashlib

    root = project_dir.resolve()
    found: dict[str, str] = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for file in files:
            parts = file.relative_to(path).parts if file != path else ()
            if not file.is_file() or file.suffix not in POLICY_FILE_SUFFIXES or any(
                    part.startswith(".") or part == "__pycache__" for part in parts):
                continue
            resolved = file.resolve()
            key = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
            try:
                found[key] = hashlib.sha256(resolved.read_bytes()).hexdigest()
            except OSError:  # a file the run cannot read is recorded so, not a crash after the gate ran
                found[key] = "unreadable"
    return found


def _names_a_factory(source: str) -> bool:
    """``package.module:function`` (a dataset factory), not a path."""
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", source) is not None


def format_validation_error(error: ValidationError, source: Path) -> str:
    errors = error.errors()
    # A key that takes one of several forms (bounds: a table or a list of tables) reports each form's
    # error under a tag such as "list[…]": the first error of the form the input has is the one to show.
    first = next((e for e in errors if "list[" in "".join(map(str, e["loc"])) and isinstance(e.get("input"), list)), errors[0])
    key = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or _plain_key(part)) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{key}'"
    if first["type"] == "missing":
        return f"{source}: missing required config key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: config key '{key}': {message}"


def _plain_key(part: str) -> bool:
    """A config key, not a pydantic union tag such as ``function-after[_ordered(), Bounds]``."""
    return "[" not in part and "(" not in part


def find_config(directory: Path) -> Path | None:
    """``release-kit.toml`` first, then a ``pyproject.toml`` that has ``[tool.release-kit]``."""
    candidate = directory / "release-kit.toml"
    if candidate.is_file():
        return candidate
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file() and "release-kit" in _read_toml(pyproject).get("tool", {}):
        return pyproject
    return None


def load_config(path: Path) -> Config:
    """Read and validate a config file; relative paths inside it are resolved against its directory."""
    raw = _read_toml(path)
    if path.name == "pyproject.toml":
        raw = raw.get("tool", {}).get("release-kit")
        if raw is None:
            raise InputError(f"{path}: no [tool.release-kit] table")
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise InputError(format_validation_error(error, path)) from None
    resolved = _resolve_paths(config, path.parent)
    templates = resolved.release.templates
    if templates is not None and not Path(templates).is_dir():
        # Found now, before a gate runs for minutes and then cannot render its report.
        raise InputError(f"{path}: config key 'release.templates': templates directory not found: {templates}")
    return resolved


def _read_toml(path: Path) -> dict:
    try:
        return parse_document(tomllib.loads, read_document(path, "config file"), f"config file {path}")
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: invalid TOML: {error}") from None


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(value: str | None) -> str | None:
        if value is not None and value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            return "sqlite:///" + str((base / value.removeprefix("sqlite:///")).resolve())
        if value is None or "://" in value or value.startswith(("models:/", "runs:/")):
            return value
        return str((base / value).resolve()) if not Path(value).is_absolute() else value

    return config.model_copy(
        update={
            "candidate": config.candidate.model_copy(update={"path": resolve(config.candidate.path)}),
            "baseline": config.baseline.model_copy(
                update={"path": resolve(config.baseline.path), "fallback": resolve(config.baseline.fallback)}
            ),
            "data": config.data.model_copy(
                update={
                    "golden": resolve(config.data.golden),
                    "metadata": resolve(config.data.metadata),
                    "reference": resolve(config.data.reference),
                    "training": resolve(config.data.training),
                    "suites": resolve(config.data.suites),
                }
            ),
            "performance": config.performance.model_copy(
                update={
                    "save_candidate": resolve(config.performance.save_candidate),
                    "stored_baseline": resolve(config.performance.stored_baseline),
                }
            ),
            "checks": (
                ChecksSpec(paths=[resolve(p) for p in config.checks.paths])
                if "paths" in config.checks.model_fields_set
                else ChecksSpec()
            ),
            "release": config.release.model_copy(update={"templates": resolve(config.release.templates)}),
        }
    )
