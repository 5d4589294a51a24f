"""Quality stage: candidate vs baseline metrics on the golden set, and the output contract.

A metric check fails only when the whole interval of the paired difference lies beyond the tolerance
(the candidate is worse than allowed, with the configured confidence); it warns when the interval reaches
past the tolerance but does not lie beyond it (the golden set cannot tell).
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from ..config import metrics_for, parse_tolerance
from ..report import CheckResult, MetricDiff, Status
from . import StageCheck

if TYPE_CHECKING:
    from ..gate import GateContext

NAME = "quality"

# How much worse than the baseline each metric may get by default: relative ("%") for metrics in the
# target's units, absolute for bounded scores.
DEFAULT_TOLERANCE: dict[str, float | str] = {
    "mae": "5%",
    "rmse": "5%",
    "r2": 0.02,
    "accuracy": 0.01,
    "f1": 0.02,
    "roc_auc": 0.01,
    "log_loss": "5%",
}
CONTRACT_EXAMPLES = 5


def checks(gate: GateContext) -> list[StageCheck]:
    metric_checks = [
        StageCheck(name, partial(metric_check, gate, name)) for name in metrics_for(gate.config.model.task)
    ]
    return [StageCheck("output_contract", partial(output_contract, gate)), *metric_checks]


def tolerance_for(gate: GateContext, metric: str, baseline_value: float) -> float:
    raw = gate.config.quality.tolerance.get(metric, DEFAULT_TOLERANCE[metric])
    amount, relative = parse_tolerance(raw)
    return amount * abs(baseline_value) if relative else amount


def metric_check(gate: GateContext, name: str) -> CheckResult:
    from .. import metrics

    metric = metrics.METRICS[name]
    target = gate.golden.target
    predictions = gate.predictions
    quality = gate.config.quality

    if predictions.baseline is None:
        value = metrics.single(metric, target, predictions.candidate)
        return CheckResult(
            NAME,
            name,
            Status.SKIP,
            f"{metric.label} {_fmt(value)}; no baseline to compare against (first release)",
            metrics=(MetricDiff(name, value, higher_is_better=metric.higher_is_better),),
        )

    if quality.interval == "bootstrap":
        diff = metrics.paired_bootstrap(
            metric, target, predictions.candidate, predictions.baseline,
            quality.confidence, quality.bootstrap_resamples, quality.seed,
        )
    else:
        diff = metrics.paired_interval(metric, target, predictions.candidate, predictions.baseline, quality.confidence)

    if not (math.isfinite(diff.candidate) and math.isfinite(diff.baseline)):
        which = "candidate" if not math.isfinite(diff.candidate) else "baseline"
        reason = _undefined_reason(gate, name, which)
        return CheckResult(
            NAME, name, Status.SKIP, f"{metric.label} undefined: {reason}",
            metrics=(MetricDiff(name, diff.candidate, diff.baseline, higher_is_better=metric.higher_is_better),),
        )

    tolerance = tolerance_for(gate, name, diff.baseline)
    result = MetricDiff(
        name, diff.candidate, diff.baseline, diff.delta, diff.ci_low, diff.ci_high,
        higher_is_better=metric.higher_is_better, tolerance=tolerance,
    )
    low, high = result.worsening_interval or (math.nan, math.nan)
    change = (
        f"{metric.label} {_fmt(diff.baseline)} → {_fmt(diff.candidate)} "
        f"({_signed(diff.delta)} [{_signed(diff.ci_low)}, {_signed(diff.ci_high)}])"
    )
    if low > tolerance:
        status, verdict = Status.FAIL, f"worse than baseline beyond the tolerance of {_fmt(tolerance)}"
    elif high > tolerance:
        status, verdict = Status.WARN, f"may be worse than the tolerance of {_fmt(tolerance)}; the golden set cannot tell"
    elif low > 0:
        status, verdict = Status.PASS, f"worse, within the tolerance of {_fmt(tolerance)}"
    elif high < 0:
        status, verdict = Status.PASS, "better than baseline"
    else:
        status, verdict = Status.PASS, f"no significant change (tolerance {_fmt(tolerance)})"
    return CheckResult(NAME, name, status, f"{change}: {verdict}", metrics=(result,))


def _undefined_reason(gate: GateContext, name: str, which: str) -> str:
    import numpy as np

    predictions = getattr(gate.predictions, which)
    if not np.isfinite(predictions).all():
        return f"the {which} produced non-finite predictions (see output_contract)"
    if name == "r2":
        return "the target is constant on the golden set"
    if name == "roc_auc":
        return "the golden set lacks positive or negative examples of a class"
    return f"the {which}'s {name} is not a finite number"


def output_contract(gate: GateContext) -> CheckResult:
    """Every candidate prediction is finite and, for regression, inside ``[model.bounds]``."""
    import numpy as np

    spec = gate.config.model
    bounds = spec.bounds
    findings = {}
    for role in ("candidate", "baseline"):
        values = getattr(gate.predictions, role)
        if values is None:
            continue
        finite = np.isfinite(values) if values.ndim == 1 else np.isfinite(values).all(axis=1)
        kinds = {"non-finite": ~finite}
        if bounds is not None and spec.task == "regression":
            with np.errstate(invalid="ignore"):
                if bounds.min is not None:
                    kinds[f"below min {bounds.min:g}"] = values < bounds.min
                if bounds.max is not None:
                    kinds[f"above max {bounds.max:g}"] = values > bounds.max
        findings[role] = {kind: mask for kind, mask in kinds.items() if mask.any()}

    candidate = findings["candidate"]
    baseline_counts = {k: int(m.sum()) for k, m in findings.get("baseline", {}).items()}
    described = "finite"
    if bounds is not None and spec.task == "regression":
        described += f", within [{_bound(bounds.min, '−∞')}, {_bound(bounds.max, '+∞')}]"
    if not candidate:
        summary = f"all {len(gate.golden)} candidate predictions {described}"
        return CheckResult(NAME, "output_contract", Status.PASS, summary, details={"baseline_violations": baseline_counts})

    counts = {kind: int(mask.sum()) for kind, mask in candidate.items()}
    any_bad = np.logical_or.reduce(list(candidate.values()))
    rows = np.flatnonzero(any_bad)[:CONTRACT_EXAMPLES]
    examples = [_example_row(gate, int(row)) for row in rows]
    parts = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    summary = f"{int(any_bad.sum())} of {len(gate.golden)} candidate predictions break the contract ({parts})"
    if baseline_counts:
        summary += "; baseline had " + ", ".join(f"{c} {k}" for k, c in baseline_counts.items())
    return CheckResult(
        NAME, "output_contract", Status.FAIL, summary,
        details={"violations": counts, "baseline_violations": baseline_counts, "examples": examples},
    )


def _example_row(gate: GateContext, row: int) -> dict:
    features = dict(zip(gate.config.model.features, map(float, gate.golden.features[row])))
    prediction = gate.predictions.candidate[row]
    value = float(prediction) if prediction.ndim == 0 else [float(v) for v in prediction]
    return {"row": row, "features": features, "prediction": value}


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _signed(value: float) -> str:
    return f"{value:+.3g}"
