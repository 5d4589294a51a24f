"""Quality stage: candidate vs baseline metrics on the golden set, and the output contract.

A metric check fails only when the whole interval of the paired difference lies beyond the tolerance
(the candidate is worse than allowed, with the configured confidence); it warns when the interval reaches
past the tolerance but does not lie beyond it (the golden set cannot tell).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from ..config import metrics_for
from ..report import CheckResult, MetricDiff, Status
from . import StageCheck, example_rows, no_baseline

if TYPE_CHECKING:
    from ..context import GateContext

NAME = "quality"


def checks(gate: GateContext) -> list[StageCheck]:
    """The output contract and every metric of the task; a multi-output regressor's metrics are averaged
    over its outputs, and its primary metric is also checked output by output."""
    metric_checks = [
        StageCheck(name, partial(metric_check, gate, name)) for name in metrics_for(gate.config.model.task)
    ]
    target = gate.golden.target
    if target.ndim == 2:
        primary = gate.config.primary_metric
        metric_checks += [
            StageCheck(f"{primary}:output_{k}", partial(metric_check, gate, primary, output=k)) for k in range(target.shape[1])
        ]
    return [StageCheck("output_contract", partial(output_contract, gate)), StageCheck("batch_independence", partial(batch_independence, gate)),
            *metric_checks]


def batch_independence(gate: GateContext) -> CheckResult:
    """The candidate's prediction for a row must not depend on the rows that share its batch: the gate
    measures it in batches of thousands, a served request holds a few. A BatchNorm left in training mode
    (``torch.export`` keeps the mode a model was exported in) repeats itself on the same batch, so only
    another batch shows it. A failure blocks whether or not the baseline had it too."""
    probe = gate.batch_probe
    name = "batch_independence"
    if probe is None:
        return CheckResult(NAME, name, Status.SKIP, "fewer than 4 golden rows: no smaller batch to compare")
    unit = "rows" if gate.golden.tabular else "samples"
    how = f"{probe.rows} golden {unit} called in one batch and in batches of {probe.part}"
    if probe.error is not None:
        return CheckResult(NAME, name, Status.ERROR, f"{how}: cannot decide, the candidate failed on the smaller batches: {probe.error}")
    # Details, not a metric: the change is rounding for a sound model, no figure to compare or record.
    details = {"rows": probe.rows, "part": probe.part, "largest_change": probe.largest_change, "output_scale": probe.scale,
               "tolerance": probe.TOLERANCE * max(probe.scale, 1e-6)}
    if probe.independent:
        return CheckResult(NAME, name, Status.PASS, f"{how}: the same outputs (largest change {probe.largest_change:.3g}, "
                           f"outputs up to {probe.scale:.3g})", details=details)
    return CheckResult(NAME, name, Status.FAIL,
                       f"{how}: other outputs (largest change {probe.largest_change:.3g}, outputs up to {probe.scale:.3g}): a "
                       f"{unit[:-1]}'s prediction depends on the other {unit} in its batch, so the gate's numbers are not what it "
                       "serves (a BatchNorm left in training mode? torch.export keeps the mode the model was in: call model.eval() "
                       "before exporting; or dynamic quantization, which scales each batch's activations by that batch's range: "
                       "waive this check to ship it knowingly)", details=details)


def metric_check(gate: GateContext, metric_name: str, output: int | None = None) -> CheckResult:
    """One metric, candidate vs baseline (``output``: of that output of a multi-output regressor only)."""
    from .. import metrics
    from ..context import Predictions

    metric = metrics.METRICS[metric_name]
    target = gate.golden.target
    predictions = gate.predictions
    name = metric_name
    if output is not None:
        name = f"{metric_name}:output_{output}"
        target = target[:, output]
        predictions = Predictions(predictions.candidate[:, output],
                                  None if predictions.baseline is None else predictions.baseline[:, output])
    quality = gate.config.quality
    label = metric.label if output is None else f"{metric.label} of output {output}"

    if predictions.baseline is None:
        value = metrics.single(metric, target, predictions.candidate)
        skip = no_baseline(NAME, name, f"{label} {_fmt(value)}")
        return replace(skip, metrics=(MetricDiff(name, value, higher_is_better=metric.higher_is_better),))

    streamed = gate.scan.quality.get(metric_name) if gate.scan is not None and output is None else None
    # ROC AUC from the binned counts only when the scores do not fit: a sample holding every row is the
    # golden set itself, and its AUC exact.
    histogram = (gate.scan.scores if gate.scan is not None and metric_name == "roc_auc" and len(target) < gate.scan.used_rows
                 else None)
    rows = streamed.n if streamed is not None else gate.scan.used_rows if histogram is not None else len(target)
    if rows < quality.min_rows:
        value_c, value_b = metrics.single(metric, target, predictions.candidate), metrics.single(metric, target, predictions.baseline)
        return CheckResult(
            NAME, name, Status.WARN,
            f"{label} {_change(value_b, value_c)}: not decided: the golden set has {rows} usable "
            f"row(s), fewer than [quality] min_rows = {quality.min_rows}{gate.golden.note}",
            metrics=(MetricDiff(name, value_c, value_b, value_c - value_b, higher_is_better=metric.higher_is_better),),
        )
    note = gate.golden.note
    if streamed is not None:
        # Exact over every streamed row, from the mergeable sums (the analytic interval; no bootstrap here).
        from ..scale.stats import paired_diff

        diff = paired_diff(metric_name, streamed, quality.confidence)
        note = gate.golden.excluded.note() if gate.golden.excluded is not None else ""
        note += f" (exact over all {rows:,} rows, streamed)"
    elif histogram is not None:
        # Binned over every streamed row, each AUC within its stated bound; the interval's width from the
        # sample's DeLong variance, widened by the bounds (see release_kit.scale.stats).
        from ..scale.stats import paired_auc

        sample = metrics.paired_interval(metric, target, predictions.candidate, predictions.baseline, quality.confidence)
        diff, bound = paired_auc(histogram, sample, len(target), rows)
        note = gate.golden.excluded.note() if gate.golden.excluded is not None else ""
        note += (f" (binned over all {rows:,} rows, streamed: each AUC within ±{bound:.1e} of the exact value; "
                 f"interval from the DeLong variance of a uniform sample of {len(target):,} rows, widened by both bounds)")
    elif quality.interval == "bootstrap":
        diff = metrics.paired_bootstrap(
            metric, target, predictions.candidate, predictions.baseline,
            quality.confidence, quality.bootstrap_resamples, quality.seed,
        )
    else:
        diff = metrics.paired_interval(metric, target, predictions.candidate, predictions.baseline, quality.confidence)

    if metric_name == "roc_auc":
        note += _auc_classes_note(target, predictions.candidate.shape[1], histogram)
    if not (math.isfinite(diff.candidate) and math.isfinite(diff.baseline)):
        which = "candidate" if not math.isfinite(diff.candidate) else "baseline"
        reason = _undefined_reason(gate, metric_name, which)
        # Could not decide: a warning (never a pass); a gate where no metric decides is blocked.
        return CheckResult(
            NAME, name, Status.WARN, f"{label} could not be compared: {reason}{note}",
            metrics=(MetricDiff(name, diff.candidate, diff.baseline, higher_is_better=metric.higher_is_better),),
        )
    if not (math.isfinite(diff.ci_low) and math.isfinite(diff.ci_high)):
        return CheckResult(
            NAME, name, Status.WARN,
            f"{label} {_change(diff.baseline, diff.candidate)}: no interval, so no decision: "
            f"the golden set ({rows} usable rows) is too small or its changes are degenerate{note}",
            metrics=(MetricDiff(name, diff.candidate, diff.baseline, diff.delta, higher_is_better=metric.higher_is_better),),
        )

    tolerance = gate.config.tolerance(metric_name).of(diff.baseline)
    result = MetricDiff(
        name, diff.candidate, diff.baseline, diff.delta, diff.ci_low, diff.ci_high,
        higher_is_better=metric.higher_is_better, tolerance=tolerance,
    )
    low, high = result.worsening_interval or (math.nan, math.nan)
    change = (
        f"{label} {_change(diff.baseline, diff.candidate)} "
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
    return CheckResult(NAME, name, status, f"{change}: {verdict}{note}", metrics=(result,))


def _auc_classes_note(target, classes: int, histogram) -> str:
    """What a multiclass ROC AUC says when its macro mean leaves out classes the golden set lacks."""
    from ..metrics import auc_classes

    if classes <= 2:
        return ""
    averaged = histogram.classes() if histogram is not None else len(auc_classes(target, classes))
    if averaged == classes:
        return ""
    return (f" (macro over the {averaged} of {classes} classes the golden set holds rows of; a class it lacks "
            "has no AUC)")


def _undefined_reason(gate: GateContext, name: str, which: str) -> str:
    import numpy as np

    predictions = getattr(gate.predictions, which)
    if not np.isfinite(predictions).all():
        return f"the {which} produced non-finite predictions (see output_contract)"
    if name == "r2":
        return "the target is constant on the golden set"
    if name == "roc_auc":
        return "the golden set holds rows of one class only"
    return f"the {which}'s {name} is not a finite number"


def output_contract(gate: GateContext) -> CheckResult:
    """Every candidate prediction is finite and, for regression, inside ``[model.bounds]``.

    A violation fails whether or not the baseline had it too; the report tells the two apart.
    """
    import numpy as np

    from .. import contract

    spec = gate.config.model
    if gate.scan is not None and gate.scan.contract is not None:
        return _streamed_contract(gate, gate.scan.contract)
    candidate = contract.violations(gate.predictions.candidate, spec)
    baseline = contract.violations(gate.predictions.baseline, spec) if gate.predictions.baseline is not None else {}
    baseline_counts = {kind: int(mask.sum()) for kind, mask in baseline.items()}
    rows = len(gate.golden)
    if not candidate:
        return CheckResult(
            NAME, "output_contract", Status.PASS, f"all {rows:,} candidate predictions {contract.describe(spec)}{gate.golden.note}",
            details={"baseline_violations": baseline_counts},
        )
    bad = np.logical_or.reduce(list(candidate.values()))
    baseline_bad = np.logical_or.reduce(list(baseline.values())) if baseline else np.zeros(rows, dtype=bool)
    introduced = int((bad & ~baseline_bad).sum())
    counts = {kind: int(mask.sum()) for kind, mask in candidate.items()}
    summary = (
        f"{int(bad.sum()):,} of {rows:,} candidate predictions break the contract "
        f"({', '.join(f'{count:,} {kind}' for kind, count in counts.items())}); "
        f"{introduced:,} introduced by the candidate, {int(bad.sum()) - introduced:,} the baseline already had"
        f"{gate.golden.note}"
    )
    return CheckResult(
        NAME, "output_contract", Status.FAIL, summary,
        details={
            "violations": counts,
            "introduced": introduced,
            "baseline_violations": baseline_counts,
            "table": example_rows(gate, np.flatnonzero(bad)[: contract.EXAMPLES], "first offending rows"),
        },
    )


def _streamed_contract(gate: GateContext, counts) -> CheckResult:
    """A streamed golden set: the contract over every row, from the counts each batch summed."""
    from .. import contract
    from . import streamed_rows

    spec, rows = gate.config.model, gate.scan.used_rows
    note = (gate.golden.excluded.note() if gate.golden.excluded is not None else "") + " (over every streamed row)"
    if not counts.bad:
        return CheckResult(NAME, "output_contract", Status.PASS, f"all {rows:,} candidate predictions {contract.describe(spec)}{note}",
                           details={"baseline_violations": counts.baseline})
    summary = (
        f"{counts.bad:,} of {rows:,} candidate predictions break the contract "
        f"({', '.join(f'{count:,} {kind}' for kind, count in counts.candidate.items())}); "
        f"{counts.introduced:,} introduced by the candidate, {counts.bad - counts.introduced:,} the baseline already had{note}"
    )
    examples = counts.examples.ordered()
    table = streamed_rows(gate, examples, range(len(examples["target"])), "offending rows (those with the smallest row keys)")
    return CheckResult(NAME, "output_contract", Status.FAIL, summary, details={
        "violations": counts.candidate, "introduced": counts.introduced, "baseline_violations": counts.baseline, "table": table,
    })


def _fmt(value: float) -> str:
    """4 significant digits, more where they would show a value as the whole number it is not."""
    from ..render import significant

    return significant(value)


def _change(before: float, after: float) -> str:
    """"before → after" with the digits that tell them apart (see :func:`release_kit.render.significant`)."""
    from ..render import significant

    return " → ".join(significant(before, after))


def _signed(value: float) -> str:
    return f"{value:+.3g}"
