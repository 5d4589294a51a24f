"""Outlier-regression stage: what aggregate metrics hide.

Per-sample paired analysis (rows that newly broke or were fixed, prediction-shift outliers), slices that
regressed (declared in config, and discovered over quantile bins and feature pairs, Holm-controlled),
monotonic constraints, and a Hypothesis search for inputs where the candidate breaks the output contract
or diverges from the baseline. Checks that need a baseline skip on a first release.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING
from collections.abc import Callable

import numpy as np

from ..config import parse_tolerance
from ..errors import InputError
from ..report import Chart, CheckResult, Status
from . import Once, StageCheck, example_rows, no_baseline

if TYPE_CHECKING:
    from ..config import MonotonicSpec, SliceSpec, Tolerance
    from ..search import SearchResult
    from ..context import GateContext
    from ..strategies import Domain

NAME = "outliers"
HISTOGRAM_BINS = 12
MONOTONIC_ROWS = 2_000
SLICE_TABLE_ROWS = 10


def checks(gate: GateContext) -> list[StageCheck]:
    """Validates the stage's config against the data up front (bad input is exit 2, not a failed check)."""
    from ..strategies import domain_from_data

    spec = gate.config.outliers
    for declared in spec.slices:
        _slice_masks(gate, declared)  # raises InputError for a missing column, NaN, a bad expression
    classification = gate.config.model.task == "classification"
    if classification and spec.monotonic and gate.predictions.candidate.shape[1] > 2:
        raise InputError("[outliers] monotonic constraints need a regression or binary classification model")
    losses = Once(partial(per_sample_losses, gate))  # both models' per-sample losses, shared by the checks below
    found = [
        StageCheck("newly_broken", partial(newly_broken, gate, losses)),
        StageCheck("prediction_shift", partial(prediction_shift, gate)),
        StageCheck("moved_region", partial(moved_region, gate)),
        StageCheck("slices", partial(discovered_slices, gate, losses)),
        *([StageCheck("classes", partial(class_slices, gate))] if classification else []),
        *[StageCheck(f"slice:{_slice_name(s)}", partial(declared_slice, gate, losses, s)) for s in spec.slices],
    ]
    if gate.golden.sampled_from is not None:
        # Newly broken and slices count every streamed row and say so themselves.
        counted = {"newly_broken"} if gate.scan is not None and gate.scan.changes is not None else set()
        counted |= {"slices"} if gate.scan is not None and gate.scan.slices else set()
        found = [check if check.name in counted else _noting_sample(gate, check) for check in found]
    if not gate.golden.tabular:
        # Tensor inputs have no per-feature domain to draw from: the search perturbs golden samples instead.
        if spec.monotonic or spec.domain or spec.search.divergence is not None:
            raise InputError("[outliers] monotonic, domain and search.divergence need a table golden set "
                             "(tensor inputs are searched by [outliers.robustness])")
        return [*found, StageCheck("search:robustness", partial(search_robustness, gate))]
    domain = domain_from_data(gate.config.model.features, gate.golden.features, spec.domain)
    found += [
        *[StageCheck(f"monotonic:{m.feature}", partial(monotonic, gate, m, domain)) for m in spec.monotonic],
        StageCheck("search:contract", partial(search_contract, gate, domain)),
    ]
    if spec.search.divergence is not None:
        found.append(StageCheck("search:divergence", partial(search_divergence, gate, domain)))
    return found


def _noting_sample(gate: GateContext, check: StageCheck) -> StageCheck:
    """A streamed golden set's per-row analyses run on its uniform sample: their summaries say so."""
    from dataclasses import replace

    def run() -> CheckResult:
        result = check.run()
        return replace(result, summary=result.summary + gate.golden.note)

    return StageCheck(check.name, run)


# -- per-sample analysis -------------------------------------------------------------------------------


def per_sample_losses(gate: GateContext) -> tuple[np.ndarray, np.ndarray]:
    from ..paired import per_sample_loss

    task, target, predictions = gate.config.model.task, gate.golden.target, gate.predictions
    return per_sample_loss(task, target, predictions.candidate), per_sample_loss(task, target, predictions.baseline)


def newly_broken(gate: GateContext, losses: Once) -> CheckResult:
    if gate.predictions.baseline is None:
        return no_baseline(NAME, "newly_broken")
    from ..paired import newly_broken as robust_change

    spec = gate.config.outliers
    loss_c, loss_b = losses()
    delta = loss_c - loss_b
    centre = threshold = 0.0
    if gate.config.model.task == "classification":
        right_c = gate.predictions.candidate.argmax(axis=1) == gate.golden.target
        right_b = gate.predictions.baseline.argmax(axis=1) == gate.golden.target
        broke, fixed = right_b & ~right_c, ~right_b & right_c
        rule = "decision flipped from right to wrong"
    else:
        # Below this a change is float32 rounding of the predictions, not a break (a constant tiny shift
        # must not make half the rows "newly broken").
        resolution = 1e-5 * float(np.median(np.abs(gate.golden.target)) + np.median(loss_b))
        change = robust_change(delta, spec.k_mad, spec.min_error_increase, resolution)
        broke, fixed, centre, threshold = change.broke, change.fixed, change.centre, change.threshold
        rule = f"absolute error grew by more than {change.threshold:.3g} ({spec.k_mad:g} × MAD of the changes)"
    details: dict = {"rule": rule, "chart": _histogram(delta, "paired loss change per row (candidate − baseline)")}

    changes = gate.scan.changes if gate.scan is not None else None
    if changes is None:
        n, n_broke, n_fixed = len(delta), (int(broke.sum()),) * 2, (int(fixed.sum()),) * 2
        worst = np.flatnonzero(broke)[np.argsort(-delta[broke], kind="stable")][: spec.top_n]
        table = example_rows(gate, worst, f"top {len(worst)} newly broken rows") if len(worst) else None
        counted = ""
    else:
        if changes.flips is None:  # regression: the threshold from every row's change, as the sketch holds them
            from ..paired import change_threshold

            values, counts = changes.sketch.points()
            centre, threshold = (change_threshold(values, spec.k_mad, spec.min_error_increase, resolution, counts)
                                 if len(values) else (0.0, math.inf))
            rule = f"absolute error grew by more than {threshold:.3g} ({spec.k_mad:g} × MAD of the changes)"
            details |= {"rule": rule}
        n, n_broke, n_fixed, table = _streamed_changes(gate, changes, centre, threshold)
        counted = (" over every row" if n_broke[0] == n_broke[1] and n_fixed[0] == n_fixed[1] else
                   " over every row, from a sketch of the changes under 1% wide (the range is the rows of the bucket "
                   "the threshold falls in)")
        counted += "; chart of every row" if len(delta) >= n else f"; chart from a uniform sample of {len(delta):,} rows"
    details |= {"broke": n_broke[0] if n_broke[0] == n_broke[1] else list(n_broke),
                "fixed": n_fixed[0] if n_fixed[0] == n_fixed[1] else list(n_fixed)}
    if table is not None:
        details["table"] = table
    if gate.config.model.task == "regression" and math.isfinite(threshold):
        details |= {"centre": centre, "threshold": threshold}  # a change beyond centre ± threshold counts
    summary = f"{_count(n_broke)} of {n:,} row(s) newly broke, {_count(n_fixed)} newly fixed ({rule}{counted})"
    limit = spec.max_newly_broken * n
    share = f"more than {spec.max_newly_broken:.1%} of rows broke"
    # Fewest broken against most fixed, then the reverse (a streamed regression's counts are ranges).
    p_surely, p_possibly = sign_test(n_broke[0], n_fixed[1]), sign_test(n_broke[1], n_fixed[0])
    details["sign_test_p"] = p_surely if p_surely == p_possibly else [p_surely, p_possibly]
    if n_broke[0] > limit and p_surely < spec.alpha:
        return CheckResult(NAME, "newly_broken", Status.FAIL, f"{summary}; {share}, significantly more than were fixed (sign test p={p_surely:.2g})",
                           details=details)
    if n_broke[1] > limit and p_possibly < spec.alpha:
        return CheckResult(NAME, "newly_broken", Status.WARN, f"{summary}; possibly {share}, more than were fixed: the count's range cannot tell",
                           details=details)
    if n_broke[1] > limit:
        return CheckResult(NAME, "newly_broken", Status.WARN, f"{summary}; {share}, but not significantly more than were fixed "
                           f"(sign test p={p_possibly:.2g} ≥ α={spec.alpha:g}): churn rather than a regression", details=details)
    return CheckResult(NAME, "newly_broken", Status.WARN if n_broke[1] else Status.PASS, summary, details=details)


def sign_test(broke: int, fixed: int) -> float:
    """One-sided exact sign test over the rows that changed: were more broken than fixed beyond chance? With
    no systematic change each such row is as likely to have broken as to have been fixed. A retrained
    classifier flips rows near its boundary both ways (43 broke and 39 were fixed of 3,000, measured): that
    alone is churn, not a regression, and a share of broken rows above the limit blocked it. The p is the
    test's own even when fewer broke than were fixed (33 against 49: 0.97, not 1)."""
    if broke == 0:
        return 1.0  # no row broke: nothing to test (binomtest also wants n ≥ 1)
    from scipy.stats import binomtest

    return float(binomtest(broke, broke + fixed, 0.5, alternative="greater").pvalue)


def _count(bounds: tuple[int, int]) -> str:
    low, high = bounds
    return f"{low:,}" if low == high else f"≈{(low + high) // 2:,} ({low:,}–{high:,})"


def _streamed_changes(gate: GateContext, changes, centre: float, threshold: float):
    """A streamed golden set: rows that broke and were fixed over every row (exact flips for classification;
    for regression the sample's threshold applied to the sketch of every row's change), and the worst rows."""
    from . import streamed_rows

    n = gate.scan.used_rows
    worst = changes.worst
    if changes.flips is not None:
        n_broke, n_fixed = (int(changes.flips[0]),) * 2, (int(changes.flips[1]),) * 2
        target = worst.arrays["target"]
        is_broken = (worst.arrays["baseline"].argmax(axis=1) == target) & (worst.arrays["candidate"].argmax(axis=1) != target)
    elif math.isinf(threshold):  # no row of the sample changed at all
        n_broke = n_fixed = (0, 0)
        is_broken = np.zeros(len(worst.delta), dtype=bool)
    else:
        n_broke, n_fixed = changes.sketch.count_above(centre + threshold), changes.sketch.count_below(centre - threshold)
        is_broken = worst.delta > centre + threshold
    rows = np.flatnonzero(is_broken)
    table = None
    if len(rows):
        table = streamed_rows(gate, {**worst.arrays, "delta": worst.delta}, rows, f"top {len(rows)} newly broken rows of all {n:,}")
    return n, n_broke, n_fixed, table


def prediction_shift(gate: GateContext) -> CheckResult:
    """Rows where the candidate moved far from the baseline relative to how far it moves elsewhere."""
    if gate.predictions.baseline is None:
        return no_baseline(NAME, "prediction_shift")
    from ..paired import largest_finite, robust_threshold

    spec = gate.config.outliers
    candidate, baseline = gate.predictions.candidate, gate.predictions.baseline
    if gate.config.model.task == "classification":
        rows = np.arange(len(gate.golden))
        shift = np.abs(candidate[rows, gate.golden.target] - baseline[rows, gate.golden.target])
        what = "confidence in the true class"
        resolution = 1e-5  # of a probability
    else:
        shift = np.abs(candidate - baseline)
        shift = shift if shift.ndim == 1 else shift.mean(axis=1)
        what = "prediction"
        # float32 rounds a prediction of 500 to ~3e-5: a shift differs from another by that much for nothing.
        resolution = 1e-5 * largest_finite(baseline)
    with np.errstate(invalid="ignore"):
        shift = np.where(np.isfinite(shift), shift, np.inf)
    threshold = robust_threshold(shift, spec.k_mad, resolution)
    outliers = shift > threshold
    count = int(outliers.sum())
    rule = f"by more than {threshold:.3g} (median + {spec.k_mad:g} × MAD of the rows that moved)"
    if not count:
        return CheckResult(NAME, "prediction_shift", Status.PASS, f"no row's {what} shifted {rule}")
    top = np.flatnonzero(outliers)[np.argsort(-shift[outliers], kind="stable")][: spec.top_n]
    return CheckResult(
        NAME, "prediction_shift", Status.WARN,
        f"{count:,} of {len(shift):,} rows' {what} shifted {rule}; largest {float(shift[top[0]]):.3g}",
        details={"shifted": count, "threshold": threshold, "table": example_rows(gate, top, f"top {len(top)} shifted rows")},
    )


def moved_region(gate: GateContext) -> CheckResult:
    """Where the candidate's predictions (classification: decisions) changed, as one rule over a feature —
    "all 31 rows whose prediction moved have age > 60" — so that a change confined to a region is named even
    when the golden set is too small to prove it worse. A warning when the change is confined; never a fail."""
    if gate.predictions.baseline is None:
        return no_baseline(NAME, "moved_region")
    from ..paired import confined_region

    candidate, baseline = gate.predictions.candidate, gate.predictions.baseline
    if gate.config.model.task == "classification":
        moved = candidate.argmax(axis=1) != baseline.argmax(axis=1)
        what = "decision"
    else:
        scale = float(np.median(np.abs(gate.golden.target))) + float(np.median(np.abs(baseline)))
        with np.errstate(invalid="ignore"):
            moved = ~(np.abs(candidate - baseline) <= 1e-5 * max(scale, 1e-12))
        moved = moved if moved.ndim == 1 else moved.any(axis=1)
        what = "prediction"
    n, count = len(moved), int(moved.sum())
    if count == 0:
        return CheckResult(NAME, "moved_region", Status.PASS, f"no row's {what} changed")
    columns = gate.golden.slice_columns()
    if not columns:
        return CheckResult(NAME, "moved_region", Status.SKIP,
                           f"{count:,} of {n:,} samples' {what}s changed; no metadata columns to say where (set [data] metadata)")
    region = confined_region(columns, moved)
    if region is None or count == n:
        return CheckResult(NAME, "moved_region", Status.PASS,
                           f"{count:,} of {n:,} rows' {what}s changed, spread over the golden set (no single region holds them)")
    rows = np.flatnonzero(moved)[: gate.config.outliers.top_n]
    return CheckResult(
        NAME, "moved_region", Status.WARN,
        f"all {count:,} row(s) whose {what} changed have {region.words()} ({region.inside:,} of {n:,} rows have it; "
        f"{region.share_moved:.0%} of those changed): a behaviour change confined to this region",
        details={"region": region.words(), "moved": count, "inside": region.inside,
                 "table": example_rows(gate, rows, f"first {len(rows)} rows whose {what} changed")},
    )


def _histogram(values: np.ndarray, title: str) -> Chart:
    finite = values[np.isfinite(values) & (values != 0)]
    if len(finite) == 0:
        return Chart(title, ["0"], [int(np.isfinite(values).sum())], "rows")
    low, high = np.quantile(finite, [0.005, 0.995])
    if low == high:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(np.clip(finite, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    return Chart(title, [f"{c:+.2g}" for c in centres], [int(c) for c in counts], "rows")


# -- slices --------------------------------------------------------------------------------------------


def _loss_label(gate: GateContext) -> str:
    return "MAE" if gate.config.model.task == "regression" else "log loss"


def _slice_tolerance(gate: GateContext) -> Tolerance:
    return parse_tolerance(gate.config.outliers.slice_tolerance)


def discovered_slices(gate: GateContext, losses: Once) -> CheckResult:
    if gate.predictions.baseline is None:
        return no_baseline(NAME, "slices")
    from ..paired import discover_slices

    spec = gate.config.outliers
    columns = gate.golden.slice_columns()
    if not columns:
        return CheckResult(NAME, "slices", Status.SKIP, "no metadata columns to slice the golden samples by (set [data] metadata)")
    loss_c, loss_b = losses()
    fixed = gate.scan.slices if gate.scan is not None and gate.scan.slices else None
    stats = discover_slices(
        columns, loss_c - loss_b, loss_b,
        tolerance=_slice_tolerance(gate), bins=spec.quantile_bins, pairs=spec.feature_pairs,
        min_size=spec.min_slice_size, seed=gate.config.quality.seed, fixed=fixed,
        fixed_pairs=gate.scan.slice_pairs if fixed is not None else None,
    )
    searched = f"{len(stats)} slices searched"
    if fixed is not None:
        searched += (f"; each feature's slices, and the pairs of the {spec.feature_pairs} features whose slices looked worst "
                     f"in the first rows, over all {gate.scan.used_rows:,} rows, streamed, on bins fixed by the first rows")
    return slice_verdict(gate, "slices", stats, searched=searched)


def class_slices(gate: GateContext) -> CheckResult:
    """Recall of every true class and precision of every predicted class, candidate vs baseline, Holm over
    all of them: a class the candidate broke is named even when overall accuracy hides it."""
    if gate.predictions.baseline is None:
        return no_baseline(NAME, "classes")
    from ..multiple_testing import holm_adjust
    from ..paired import class_changes

    spec = gate.config.outliers
    model = gate.config.model
    candidate, baseline = gate.predictions.candidate, gate.predictions.baseline
    stats = class_changes(gate.golden.target, candidate.argmax(axis=1), baseline.argmax(axis=1), candidate.shape[1],
                          _slice_tolerance(gate), spec.min_slice_size)
    if not stats:
        return CheckResult(NAME, "classes", Status.WARN, f"no class has the minimum {spec.min_slice_size} rows: per-class changes not tested")
    from dataclasses import replace

    stats = [replace(s, p_adjusted=p) for s, p in zip(stats, holm_adjust([s.p_value for s in stats]))]
    failing = sorted((s for s in stats if s.p_adjusted < spec.alpha), key=lambda s: s.delta)

    def words(s) -> str:
        return (f"{s.measure} of class {model.class_name(s.class_id)} {'dropped' if s.delta < 0 else 'rose'} from "
                f"{s.baseline:.2f} to {s.candidate:.2f} (n={s.n}, Δ {s.delta:+.3f} [{s.ci_low:+.3f}, {s.ci_high:+.3f}])")

    shown = failing or sorted(stats, key=lambda s: s.delta)
    table = {
        "title": "classes that regressed" if failing else "classes that moved most",
        "columns": ["class", "measure", "n", "baseline", "candidate", "Δ", "95% interval", "tolerance", "p (Holm)"],
        "rows": [[model.class_name(s.class_id), s.measure, s.n, s.baseline, s.candidate, s.delta,
                  f"[{s.ci_low:+.3g}, {s.ci_high:+.3g}]", s.tolerance, s.p_adjusted] for s in shown[:SLICE_TABLE_ROWS]],
    }
    details = {"table": table, "tested": len(stats), "failing": len(failing)}
    searched = f"{len(stats)} class recalls and precisions, Holm α={spec.alpha:g}"
    if failing:
        more = f"; and {len(failing) - 1} more" if len(failing) > 1 else ""
        return CheckResult(NAME, "classes", Status.FAIL, f"{words(failing[0])}, beyond the tolerance of {failing[0].tolerance:.3g}{more} ({searched})", details=details)
    if any(not math.isfinite(s.p_adjusted) for s in stats):
        return CheckResult(NAME, "classes", Status.WARN, f"some class statistics are undefined (NaN) ({searched})", details=details)
    least = "largest drop" if shown[0].delta < 0 else "none dropped; the least rise"
    return CheckResult(NAME, "classes", Status.PASS, f"no class regressed beyond tolerance ({searched}); {least}: {words(shown[0])}", details=details)


def declared_slice(gate: GateContext, losses: Once, declared: SliceSpec) -> CheckResult:
    name = f"slice:{_slice_name(declared)}"
    if gate.predictions.baseline is None:
        return no_baseline(NAME, name)
    from ..paired import SliceSums, holm, slice_stat

    loss_c, loss_b = losses()
    delta = loss_c - loss_b
    stats = []
    for description, mask in _slice_masks(gate, declared):
        n = int(mask.sum())
        if n < gate.config.outliers.min_slice_size:
            continue
        d = delta[mask]
        sums = SliceSums(description, n, float(d.sum()), float((d * d).sum()), float(loss_b[mask].sum()))
        stats.append(slice_stat(sums, _slice_tolerance(gate)))
    if not stats:
        return CheckResult(
            NAME, name, Status.SKIP,
            f"no part of the slice has the minimum {gate.config.outliers.min_slice_size} rows",
        )
    return slice_verdict(gate, name, holm([s for s in stats if s is not None]), searched=f"{len(stats)} part(s)")


def slice_verdict(gate: GateContext, name: str, stats, searched: str) -> CheckResult:
    """The slices' check from their statistics: fail on a regression beyond tolerance (Holm-adjusted), warn
    where a slice's statistics are undefined (NaN) or no slice could be tested, pass only otherwise."""
    alpha = gate.config.outliers.alpha
    label = _loss_label(gate)
    undefined = [s for s in stats if not all(map(math.isfinite, (s.delta, s.ci_low, s.ci_high, s.p_adjusted)))]
    stats = [s for s in stats if s not in undefined]
    if undefined and not stats:
        # Statistics that are NaN decide nothing: never "no slice regressed".
        return CheckResult(NAME, name, Status.WARN,
                           f"could not test {len(undefined)} slice(s): their statistics are undefined (NaN), e.g. {undefined[0].description}")
    failing = sorted((s for s in stats if s.p_adjusted < alpha), key=lambda s: -s.excess)
    worst = max(stats, key=lambda s: s.delta, default=None)
    columns = ["slice", "n", f"{label} baseline", "Δ", "95% interval", "tolerance", "p (Holm)"]
    shown = failing or sorted(stats, key=lambda s: -s.delta)
    table = {
        "title": "regressed slices" if failing else "slices that moved most",
        "columns": columns,
        "rows": [
            [s.description, s.n, s.baseline_loss, s.delta, f"[{s.ci_low:+.3g}, {s.ci_high:+.3g}]", s.tolerance, s.p_adjusted]
            for s in shown[:SLICE_TABLE_ROWS]
        ],
    }
    details = {"table": table, "searched": len(stats), "failing": len(failing)}
    if failing:
        more = f"; and {len(failing) - 1} more" if len(failing) > 1 else ""
        summary = f"{failing[0].words(label)}, worse than the tolerance of {failing[0].tolerance:.3g}{more} ({searched}, Holm α={alpha:g})"
        return CheckResult(NAME, name, Status.FAIL, summary, details=details)
    summary = f"no slice regressed beyond tolerance ({searched}, Holm α={alpha:g})"
    if worst is not None:
        summary += f"; largest change {worst.words(label)}"
    if undefined:
        return CheckResult(NAME, name, Status.WARN, summary + f"; {len(undefined)} slice(s) could not be tested (NaN statistics)", details=details)
    if not stats:
        return CheckResult(NAME, name, Status.WARN, f"no slice could be tested ({searched}): too few rows per slice", details=details)
    return CheckResult(NAME, name, Status.PASS, summary, details=details)


def _slice_name(declared: SliceSpec) -> str:
    return declared.name or declared.column or declared.expr


def _slice_masks(gate: GateContext, declared: SliceSpec) -> list[tuple[str, np.ndarray]]:
    import pandas as pd

    frame = gate.golden.frame
    label = _slice_name(declared)
    if declared.expr is not None:
        try:
            # Checked when the config was read (check_row_expression); no variable of this process is in reach.
            mask = frame.eval(declared.expr, local_dict={}, global_dict={})
        except Exception as error:  # pandas raises many types for a bad expression
            raise InputError(f"[outliers.slices] {label!r}: cannot evaluate expr: {error}") from None
        if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask):
            raise InputError(f"[outliers.slices] {label!r}: expr does not give true/false per row")
        return [(declared.expr, mask.to_numpy())]
    if declared.column not in frame.columns:
        raise InputError(f"[outliers.slices] {label!r}: column '{declared.column}' is not in the golden set")
    column = frame[declared.column]
    if column.isna().any():
        raise InputError(
            f"[outliers.slices] {label!r}: column '{declared.column}' has {int(column.isna().sum())} NaN value(s)"
        )
    if declared.categories is not None:
        return [(f"{declared.column} = {value}", (column == value).to_numpy()) for value in declared.categories]
    if not pd.api.types.is_numeric_dtype(column):
        raise InputError(f"[outliers.slices] {label!r}: bins need a numeric column, '{declared.column}' is not")
    values = column.to_numpy(dtype=float)
    edges = declared.bins
    return [
        (f"{edges[k]:g} ≤ {declared.column} < {edges[k + 1]:g}", (values >= edges[k]) & (values < edges[k + 1]))
        for k in range(len(edges) - 1)
    ]


# -- model outputs on new inputs -----------------------------------------------------------------------


def _outputs(gate: GateContext, role: str, rows: np.ndarray) -> np.ndarray:
    """Predictions for arbitrary input rows (the search's and the perturbation's), normalised per task."""
    from ..models import to_predictions

    model = getattr(gate, role)
    inputs = gate.inputs_for(role, rows.astype(np.float32))
    return to_predictions(model.raw_outputs(inputs), gate.config.model, role, outputs=gate.golden.outputs)


def _scalar_outputs(gate: GateContext, role: str, rows: np.ndarray) -> np.ndarray:
    out = _outputs(gate, role, rows)
    return out if out.ndim == 1 else out[:, 1]  # binary: the positive class's probability


def _step(gate: GateContext, feature: str) -> float:
    column = gate.golden.features[:, gate.config.model.features.index(feature)]
    low, high = np.quantile(column, [0.25, 0.75])
    spread = float(high - low) or float(column.max() - column.min()) or 1.0
    return 0.1 * spread


def _monotonic_breaks(gate: GateContext, role: str, rows: np.ndarray, constraint: MonotonicSpec) -> np.ndarray:
    index = gate.config.model.features.index(constraint.feature)
    moved = rows.copy()
    moved[:, index] += _step(gate, constraint.feature)
    change = _scalar_outputs(gate, role, moved) - _scalar_outputs(gate, role, rows)
    if constraint.direction == "decreasing":
        change = -change
    with np.errstate(invalid="ignore"):
        return ~(change >= -constraint.tolerance)


def monotonic(gate: GateContext, constraint: MonotonicSpec, domain: Domain) -> CheckResult:
    """On golden rows, and then by search: raising the feature must not move predictions the wrong way."""
    name = f"monotonic:{constraint.feature}"
    rows = gate.golden.features[:MONOTONIC_ROWS]
    broken = _monotonic_breaks(gate, "candidate", rows, constraint)
    had = _monotonic_breaks(gate, "baseline", rows, constraint) if gate.baseline else np.zeros(len(rows), bool)
    introduced = int((broken & ~had).sum())
    phrase = f"{'non-decreasing' if constraint.direction == 'increasing' else 'non-increasing'} in {constraint.feature}"

    def violates(row: np.ndarray) -> bool:
        return bool(_monotonic_breaks(gate, "candidate", row[None], constraint)[0])

    found = _search(gate, domain, violates)
    details = {"golden_rows": len(rows), "golden_violations": int(broken.sum()), "introduced": introduced, "search": found.describe()}
    if broken.any():
        details["table"] = example_rows(gate, np.flatnonzero(broken)[: gate.config.outliers.top_n], "golden rows that break it")
    if introduced:
        return CheckResult(NAME, name, Status.FAIL, f"{introduced:,} of {len(rows):,} golden rows break '{phrase}' (the baseline did not)", details=details)
    if found.example is not None:
        baseline_too = gate.baseline is not None and bool(_monotonic_breaks(gate, "baseline", found.example[None], constraint)[0])
        status = Status.WARN if baseline_too else Status.FAIL
        whose = "the baseline breaks it there too" if baseline_too else "the baseline does not"
        return CheckResult(NAME, name, status, f"search found an input breaking '{phrase}' ({whose}): {found.words()}", details=details)
    if broken.any():
        return CheckResult(NAME, name, Status.WARN, f"{int(broken.sum())} golden rows break '{phrase}', all of them already broken in the baseline", details=details)
    return CheckResult(NAME, name, Status.PASS, f"predictions are {phrase} on {len(rows)} golden rows and {found.tried} searched inputs", details=details)


# -- Hypothesis search ---------------------------------------------------------------------------------


def _search(gate: GateContext, domain: Domain, violates: Callable[[np.ndarray], bool]) -> SearchResult:
    """One of the stage's searches, with its share of ``[outliers.search] seconds``."""
    from ..search import SearchResult, search
    from ..strategies import rows

    spec = gate.config.outliers.search
    features = gate.config.model.features
    if not spec.enabled:
        return SearchResult(None, 0, 0.0, False, tuple(features))
    searches = 1 + len(gate.config.outliers.monotonic) + (spec.divergence is not None)
    return search(rows(domain), violates, seconds=spec.seconds / searches, max_examples=spec.max_examples, features=features)


def _search_result(
    gate: GateContext, name: str, found: SearchResult, what: str, baseline_too: Callable[[np.ndarray], bool] | None
) -> CheckResult:
    """Pass when nothing was found; fail on a counterexample, or warn when the baseline breaks there too."""
    details = {"search": found.describe()}
    if not gate.config.outliers.search.enabled:
        return CheckResult(NAME, name, Status.SKIP, "search disabled in [outliers.search]")
    if found.example is None:
        budget = " (stopped by the time budget)" if found.timed_out else ""
        return CheckResult(NAME, name, Status.PASS, f"no input {what} in {found.tried} searched{budget}", details=details)
    candidate = _outputs(gate, "candidate", found.example[None])[0]
    details["candidate_output"] = np.asarray(candidate, dtype=float).tolist()
    if gate.baseline is not None:
        details["baseline_output"] = np.asarray(_outputs(gate, "baseline", found.example[None])[0], dtype=float).tolist()
    if baseline_too is None or gate.baseline is None:
        return CheckResult(NAME, name, Status.FAIL, f"found an input where the candidate {what}: {found.words()}", details=details)
    shared = baseline_too(found.example)
    whose = "the baseline does too" if shared else "the baseline does not"
    status = Status.WARN if shared else Status.FAIL
    return CheckResult(NAME, name, status, f"found an input where the candidate {what} ({whose}): {found.words()}", details=details)


def search_contract(gate: GateContext, domain: Domain) -> CheckResult:
    from .. import contract

    spec = gate.config.model

    def breaks(role: str, row: np.ndarray) -> bool:
        return bool(contract.violations(_outputs(gate, role, row[None]), spec))

    found = _search(gate, domain, partial(breaks, "candidate"))
    return _search_result(gate, "search:contract", found, f"breaks the output contract ({contract.describe(spec)})", partial(breaks, "baseline"))


def search_divergence(gate: GateContext, domain: Domain) -> CheckResult:
    if gate.baseline is None:
        return no_baseline(NAME, "search:divergence")
    tolerance = gate.config.outliers.search.divergence

    def diverges(row: np.ndarray) -> bool:
        gap = np.abs(_outputs(gate, "candidate", row[None]) - _outputs(gate, "baseline", row[None]))
        return not bool(np.all(gap <= tolerance))

    found = _search(gate, domain, diverges)
    return _search_result(gate, "search:divergence", found, f"differs from the baseline by more than {tolerance:g}", None)


# -- differential robustness search (tensor inputs) ----------------------------------------------------


def _decisions(gate: GateContext, role: str, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(decision per sample, contract broken per sample): the class for classification, the prediction
    for regression."""
    from .. import contract
    from ..models import to_predictions

    model = getattr(gate, role)
    outputs = to_predictions(model.raw_outputs(gate.inputs_for(role, inputs)), gate.config.model, role, outputs=gate.golden.outputs)
    broken = contract.broken_rows(outputs, gate.config.model)
    decision = outputs.argmax(axis=1) if gate.config.model.task == "classification" else outputs
    return decision, broken


def _search_samples(gate: GateContext, count: int) -> np.ndarray:
    """Golden samples to perturb, drawn at random (seeded) among those whose outputs keep the contract for
    both models, and for classification that both models get right: a flip is then a new mistake, not a
    changed one, and a broken output one the perturbation caused (a sample already NaN was "broken under
    no change", and its prediction "moved from [nan, nan] to [nan, nan]"). Golden outputs that break the
    contract are output_contract's to report."""
    from .. import contract

    n = len(gate.golden)
    pool = np.arange(n)
    kept = np.ones(n, dtype=bool)
    for predictions in (gate.predictions.candidate, gate.predictions.baseline):
        if predictions is not None:
            kept &= ~contract.broken_rows(predictions, gate.config.model)
    if gate.config.model.task == "classification":
        kept &= gate.predictions.candidate.argmax(axis=1) == gate.golden.target
        if gate.predictions.baseline is not None:
            kept &= gate.predictions.baseline.argmax(axis=1) == gate.golden.target
    pool = np.flatnonzero(kept) if kept.sum() >= 2 else pool
    rng = np.random.default_rng(gate.config.quality.seed)
    return np.sort(rng.choice(pool, min(count, len(pool)), replace=False))


def _perturbed_batch(golden, rows: np.ndarray, vectors: np.ndarray, scales) -> tuple[np.ndarray, ...]:
    from .. import perturbations

    parts = [perturbations.apply(v, golden.take(rows[int(v[0]) : int(v[0]) + 1]), scales) for v in vectors]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(golden.inputs)))


def search_robustness(gate: GateContext) -> CheckResult:
    """How often small perturbations of golden samples flip each model's decision (or break the output
    contract), candidate vs baseline; then a Hypothesis search for one perturbation that flips the candidate
    and not the baseline, shrunk to the smallest, to show. A model near its decision boundary flips
    somewhere; the candidate blocks when it flips more often than the baseline by more than
    ``max_flip_increase`` (the paired interval's lower bound), or breaks the contract where the baseline does not."""
    from scipy.stats import t

    from .. import perturbations
    from ..search import search

    name = "search:robustness"
    spec = gate.config.outliers.robustness
    golden = gate.golden
    if not spec.enabled or not gate.config.outliers.search.enabled:
        return CheckResult(NAME, name, Status.SKIP, "robustness search disabled in [outliers.robustness] or [outliers.search]")
    floating = [a for a in golden.inputs if a.dtype.kind == "f"]
    if not floating:
        return CheckResult(NAME, name, Status.SKIP, "every input is integer (e.g. token ids): no perturbation budget applies to them")
    budget = perturbations.budget_for(floating[0].shape[1:], spec)
    if budget.empty:
        return CheckResult(NAME, name, Status.SKIP, "the [outliers.robustness] budget is zero: nothing to search")
    rows = _search_samples(gate, spec.samples)
    scales = tuple((float(a.std()) or 1.0) if a.dtype.kind == "f" else 1.0 for a in golden.inputs)
    roles = [role for role in ("candidate", "baseline") if getattr(gate, role) is not None]
    originals = {role: _decisions(gate, role, golden.take(rows))[0] for role in roles}
    regression_change = spec.regression_change * (float(np.std(golden.target)) or 1.0)

    def changed(role: str, indices: np.ndarray, perturbed: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        decision, broken = _decisions(gate, role, perturbed)
        before = originals[role][indices]
        if gate.config.model.task == "classification":
            return decision != before, broken
        moved = np.abs(decision - before) > regression_change
        return (moved if moved.ndim == 1 else moved.any(axis=1)), broken

    # 1. Flip rates under random draws within the budget, paired by sample.
    vectors = perturbations.random_draws(budget, len(rows), spec.draws, np.random.default_rng(gate.config.quality.seed))
    batch = _perturbed_batch(golden, rows, vectors, scales)
    indices = vectors[:, 0].astype(int)
    flips = {role: changed(role, indices, batch) for role in roles}
    rate = {role: flips[role][0].reshape(len(rows), spec.draws).mean(axis=1) for role in roles}
    breaks = {role: flips[role][1] for role in roles}
    details = {"budget": budget.words(), "samples": len(rows), "draws": spec.draws,
               "flip_rate_candidate": float(rate["candidate"].mean())}
    # For regression a "flip" is a prediction moved by more than regression_change target deviations: say so.
    classifying = gate.config.model.task == "classification"
    label = "flip rate" if classifying else f"rate of predictions moved > {regression_change:.3g} ({spec.regression_change:g} target std)"
    rates = f"{label} {rate['candidate'].mean():.1%}"
    failing, text = False, ""
    if gate.baseline is not None:
        d = rate["candidate"] - rate["baseline"]
        half = float(t.ppf(0.975, len(d) - 1)) * float(d.std(ddof=1)) / np.sqrt(len(d))
        low, high = float(d.mean()) - half, float(d.mean()) + half
        details.update({"flip_rate_baseline": float(rate["baseline"].mean()), "flip_rate_increase": [low, high]})
        rates = (f"{label} {rate['baseline'].mean():.1%} → {rate['candidate'].mean():.1%} "
                 f"(Δ {d.mean():+.1%} [{low:+.1%}, {high:+.1%}])")
        failing = low > spec.max_flip_increase
        new_breaks = int((breaks["candidate"] & ~breaks["baseline"]).sum())
    else:
        new_breaks = int(breaks["candidate"].sum())
    details["contract_breaks"] = new_breaks

    # 2. One perturbation that flips the candidate and not the baseline, found and shrunk by Hypothesis.
    def flips_only_candidate(vector: np.ndarray) -> bool:
        perturbed = _perturbed_batch(golden, rows, vector[None], scales)
        index = np.array([int(vector[0])])
        flipped, broken = changed("candidate", index, perturbed)
        if not (flipped[0] or broken[0]):
            return False
        return gate.baseline is None or not any(x[0] for x in changed("baseline", index, perturbed))

    settings = gate.config.outliers.search
    found = search(perturbations.perturbations(budget, len(rows)), flips_only_candidate, seconds=settings.seconds,
                   max_examples=settings.max_examples, features=perturbations.FIELDS)
    details["search"] = found.describe()
    drawn = f"{len(vectors)} random perturbations of {len(rows)} golden samples within {budget.words()}"
    if found.example is not None:
        vector = found.example
        row = int(rows[int(vector[0])])
        perturbed = _perturbed_batch(golden, rows, vector[None], scales)
        before = originals["candidate"][int(vector[0])]
        decided, broke = _decisions(gate, "candidate", perturbed)
        after = decided[0]
        model = gate.config.model
        if broke[0]:
            what = "the candidate's output breaks the contract"
        elif model.task == "classification":
            what = f"the candidate's decision flips from {model.class_name(int(before))} to {model.class_name(int(after))}"
        else:
            what = f"the candidate's prediction moves from {np.round(before, 4).tolist()} to {np.round(after, 4).tolist()}"
        whose = "" if gate.baseline is None else "; the baseline's does not"
        text = f"; e.g. golden sample {row} under {perturbations.words(vector, budget)}: {what}{whose}"
        details.update({"sample": row, "perturbation": perturbations.words(vector, budget), "metadata": _metadata_row(gate, row)})
        thumbnails = _thumbnails(golden.take([row]), perturbed)
        if thumbnails:
            details["images"] = thumbnails
    if new_breaks:
        whose = "" if gate.baseline is None else " where the baseline's did not"
        return CheckResult(NAME, name, Status.FAIL, f"{new_breaks} perturbed sample(s) broke the candidate's output contract{whose} ({drawn}){text}", details=details)
    if gate.baseline is None:
        status = Status.WARN if rate["candidate"].mean() > spec.max_flip_increase else Status.PASS
        return CheckResult(NAME, name, status, f"{rates} (first release: no baseline to compare) ({drawn}){text}", details=details)
    if failing:
        return CheckResult(NAME, name, Status.FAIL, f"less robust than the baseline: {rates}, beyond +{spec.max_flip_increase:.0%} ({drawn}){text}", details=details)
    if found.tried == 0:
        return CheckResult(NAME, name, Status.WARN, f"{rates}; the search tried no perturbation ({drawn})", details=details)
    if found.example is not None and rate["candidate"].mean() > rate["baseline"].mean():
        return CheckResult(NAME, name, Status.WARN, f"{rates}: not significantly less robust ({drawn}){text}", details=details)
    unmatched = ("flips the candidate and not the baseline" if classifying
                 else "moves the candidate's prediction that far and not the baseline's")
    verdict = "as robust as the baseline or more" if found.example is not None else f"no perturbation {unmatched}"
    return CheckResult(NAME, name, Status.PASS, f"{rates}: {verdict} ({drawn}, {found.tried} searched){text}", details=details)


def _metadata_row(gate: GateContext, row: int) -> dict:
    frame = gate.golden.frame
    if not len(frame.columns):
        return {}
    return {str(k): (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[row].items()}


THUMBNAIL_MAX_SIDE = 64


def _thumbnails(original: tuple[np.ndarray, ...], perturbed: tuple[np.ndarray, ...]) -> list[dict]:
    """Grey-level pixels (0–255) of a 2-D image input before and after, for the HTML note; [] otherwise."""
    first = next((i for i, a in enumerate(original) if a.dtype.kind == "f"), None)
    if first is None:
        return []
    images = []
    for title, array in (("golden", original[first][0]), ("perturbed", perturbed[first][0])):
        image = array[0] if array.ndim == 3 and array.shape[0] in (1, 3) else array
        if image.ndim != 2 or max(image.shape) > THUMBNAIL_MAX_SIDE:
            return []
        images.append((title, image.astype(np.float64)))
    low = min(float(image.min()) for _, image in images)
    high = max(float(image.max()) for _, image in images)
    span = (high - low) or 1.0
    return [{"title": title, "pixels": np.round((image - low) / span * 255).astype(int).tolist()} for title, image in images]
