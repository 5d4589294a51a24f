"""Data-validation stage: the golden set (and the training data, when configured) against Great
Expectations suites, and drift of the golden set from the reference.

Suites are GX JSON files under ``[data] suites``; with none there, the reference is profiled into one.
Each expectation is a check: met → pass, not met → fail (with unexpected and missing counts, and
examples), not evaluable (a missing column) → error. Never a silent pass.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report import CheckResult, Status
from . import Once, StageCheck

if TYPE_CHECKING:
    import pandas as pd

    from ..context import GateContext
    from ..validation import ExpectationOutcome, Suite

NAME = "data"
# Expectations a streamed golden set answers from its counts over every row (the row count, a counted
# column's finite minimum and maximum, its nulls, its values outside a range or set, its mean, standard
# deviation and sum) rather than from its sample, where they would miss rows.
WHOLE_SET_TYPES = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal",
                   "expect_column_min_to_be_between", "expect_column_max_to_be_between",
                   "expect_column_values_to_not_be_null", "expect_column_values_to_be_between",
                   "expect_column_values_to_be_in_set", "expect_column_mean_to_be_between",
                   "expect_column_stdev_to_be_between", "expect_column_sum_to_be_between")
# Those decided from a column's values outside a range or set (counted when the scan was planned with it).
COUNTED_TYPES = ("expect_column_values_to_be_between", "expect_column_values_to_be_in_set")
# Uniqueness a streamed set's sample cannot show: a value repeated in the set is repeated in the sample only
# when every copy of it is drawn (a pair (k/N)² of the time). A repeat found in the sample is one in the set.
UNIQUE_TYPES = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique",
                "expect_multicolumn_values_to_be_unique")


def checks(gate: GateContext) -> list[StageCheck]:
    from ..data import is_tensor_source, read_table
    from ..errors import InputError
    from ..validation import golden_suites, validate

    spec = gate.config.data
    golden = gate.golden
    tensor_reference = spec.reference is not None and is_tensor_source(spec.reference)
    if spec.reference and tensor_reference == golden.tabular:
        raise InputError(f"[data] reference {spec.reference}: a table golden set is compared with a table, a tensor golden set "
                         "with a tensor file of the same layout (.npz or .safetensors)")
    reference = None
    if spec.reference and not tensor_reference:  # prepare may have read it already (a streamed set's drift bins)
        reference = gate.reference if gate.reference is not None else read_table(spec.reference)
    suites = list(gate.suites) if gate.suites is not None else golden_suites(spec, reference, len(golden.read))
    for suite in suites:
        suite.gx_suite()  # a configuration GX refuses is bad input: exit 2 before anything runs

    datasets: list[tuple[str, Any, pd.DataFrame]] = [("golden", gate.golden.path, gate.golden.read)]
    if spec.training:
        datasets.append(("training", spec.training, read_table(spec.training)))
    found: list[StageCheck] = [StageCheck("golden_rows", partial(golden_rows, gate))]
    if not suites and golden.tabular:
        reason = (f"no expectation suite under {spec.suites} and no [data] reference to profile: nothing to validate "
                  "the golden set against. Enable it with [data] reference = \"<training data>\" (profiled into a suite) "
                  "or suites from `release-kit data profile`")
    elif not suites:  # a tensor reference is no table to profile: it feeds the tensor checks
        reason = (f"no expectation suite under {spec.suites}: GX suites validate a tensor golden set's metadata table "
                  "([data] metadata); the tensors themselves are checked against [data] reference "
                  + ("by tensor:layout, tensor:range and drift" if tensor_reference else "(none is set)"))
    if not suites:
        found.append(StageCheck("suite", lambda: CheckResult(NAME, "suite", Status.SKIP, reason)))
    for dataset, source, frame in datasets:
        for suite in suites:
            run = Once(partial(validate, source, frame, suite))
            names = _check_names(dataset, suite, several=len(suites) > 1)
            note = golden.note if dataset == "golden" and golden.sampled_from is not None else ""
            for index, (name, expectation) in enumerate(zip(names, suite.expectations)):
                if dataset == "golden" and gate.scan is not None and _answered_by_counts(gate, expectation):
                    found.append(StageCheck(name, partial(whole_set_expectation, gate, expectation, name)))
                else:
                    sampled = dataset == "golden" and golden.sampled_from is not None and golden.sampled_from > len(golden)
                    found.append(StageCheck(name, partial(expectation_check, run, index, name, note, sampled)))
    if reference is not None:
        found.append(StageCheck("drift", partial(drift_check, gate, reference)))
    if tensor_reference:
        found += _tensor_checks(gate, spec.reference)
    return found


def _answered_by_counts(gate: GateContext, expectation: dict) -> bool:
    from ..validation import MOMENT_TYPES, counted_condition, on_every_row

    kind, column = expectation["type"], expectation.get("kwargs", {}).get("column")
    counts = gate.scan.counts
    if kind not in WHOLE_SET_TYPES or not on_every_row(expectation):
        return False
    if kind in COUNTED_TYPES:
        return (column, counted_condition(expectation)) in counts.outside
    if kind == "expect_column_values_to_not_be_null":
        return column in counts.nulls
    if kind in MOMENT_TYPES:
        return column in counts.moments
    return column is None or column in counts.low


def whole_set_expectation(gate: GateContext, expectation: dict, name: str) -> CheckResult:
    """A row-count, column-minimum, -maximum, -mean, -standard deviation or -sum expectation on a streamed
    golden set, decided over every row from the scan's counts, with GX's meaning of its bounds
    (``strict_min``/``strict_max``; a mean or deviation that is none, of a column with no value or an
    infinite one, meets no bound); a range, set or not-null one by :func:`counted_values`."""
    from ..validation import MOMENT_TYPES, is_number

    kind, kwargs = expectation["type"], expectation.get("kwargs", {})
    if kind in (*COUNTED_TYPES, "expect_column_values_to_not_be_null"):
        return counted_values(gate, expectation, name)
    counts, rows, column = gate.scan.counts, gate.scan.rows, kwargs.get("column")
    bounds = [kwargs.get(key) for key in ("value", "min_value", "max_value")]
    unusable = next((b for b in bounds if b is not None and not is_number(b)), None)
    if unusable is not None:  # e.g. a suite parameter ({"$PARAMETER": ...}): GX would not evaluate it either
        return CheckResult(NAME, name, Status.ERROR, f"{column or 'table'}: {kind.removeprefix('expect_')}: cannot evaluate: "
                           f"bound {unusable!r} is not a number")
    if kind == "expect_table_row_count_to_equal":
        observed: float = rows
        low = high = kwargs.get("value")
        described = f"rows = {low}"
    elif kind in MOMENT_TYPES:
        moments, what = counts.moments[column], MOMENT_TYPES[kind]
        observed = {"mean": moments.mean, "stdev": moments.stdev, "sum": moments.total}[what]
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        described = f"{column} {'standard deviation' if what == 'stdev' else what} within [{_num(low)}, {_num(high, '+∞')}]"
    else:
        observed = rows if column is None else counts.low[column] if kind == "expect_column_min_to_be_between" else counts.high[column]
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        what = "rows" if column is None else f"{column} {'minimum' if kind == 'expect_column_min_to_be_between' else 'maximum'}"
        described = f"{what} within [{_num(low)}, {_num(high, '+∞')}]"
    strict_low, strict_high = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))
    met = not math.isnan(observed) and (low is None or (observed > low if strict_low else observed >= low)) and \
          (high is None or (observed < high if strict_high else observed <= high))
    seen = "none (no value, or an infinite one)" if math.isnan(observed) else f"{observed:.6g}"
    summary = f"{described} (over all {rows:,} rows, streamed): {'met' if met else 'not met'}, observed {seen}"
    return CheckResult(NAME, name, Status.PASS if met else Status.FAIL, summary,
                       details={"observed_value": None if math.isnan(observed) else observed})


def counted_values(gate: GateContext, expectation: dict, name: str) -> CheckResult:
    """A range, set or not-null expectation on a streamed golden set, decided over every row from the scan's
    counts with GX's rule: it holds when the share of rows (for a range or set, of non-null values) that
    meet it is at least ``mostly`` (1 by default), and vacuously when there are none."""
    from ..validation import ExpectationOutcome, counted_condition

    kind, kwargs = expectation["type"], expectation.get("kwargs", {})
    counts, rows, column = gate.scan.counts, gate.scan.rows, kwargs["column"]
    nulls = counts.nulls[column]
    result: dict[str, Any] = {"element_count": rows}
    if kind in COUNTED_TYPES:
        unexpected, considered = counts.outside[(column, counted_condition(expectation))], rows - nulls
        result["missing_count"] = nulls
        if considered and column in counts.low:
            result["observed_value"] = {"min": counts.low[column], "max": counts.high[column]}
    else:
        unexpected, considered = nulls, rows
    result["unexpected_count"] = unexpected
    result["unexpected_percent"] = 100.0 * unexpected / considered if considered else None
    met = considered == 0 or (considered - unexpected) / considered >= float(kwargs.get("mostly", 1.0))
    outcome = ExpectationOutcome(kind, kwargs, met, result, None)
    return outcome_check(outcome, name, f" (over all {rows:,} rows, streamed)")


def _tensor_checks(gate: GateContext, source: str) -> list[StageCheck]:
    """Layout, value range and per-channel drift of the golden tensors against the reference tensors."""
    from ..data import as_model_input, input_arrays, read_tensors

    names, arrays = input_arrays(read_tensors(Path(source)), source)
    reference = tuple(as_model_input(array, name, source) for name, array in zip(names, arrays))
    return [
        StageCheck("tensor:layout", partial(tensor_layout, gate, names, reference)),
        StageCheck("tensor:range", partial(tensor_range, gate, names, reference)),
        StageCheck("drift", partial(tensor_drift, gate, names, reference)),
    ]


def _layout(name: str, array) -> str:
    return f"{name} (N, {', '.join(map(str, array.shape[1:]))}) {array.dtype}"


def tensor_layout(gate: GateContext, names: tuple[str, ...], reference: tuple) -> CheckResult:
    golden = gate.golden
    mine = [_layout(n, a) for n, a in zip(golden.input_names, golden.inputs)]
    theirs = [_layout(n, a) for n, a in zip(names, reference)]
    if mine == theirs:
        return CheckResult(NAME, "tensor:layout", Status.PASS, f"golden inputs have the reference's layout: {'; '.join(mine)}")
    return CheckResult(NAME, "tensor:layout", Status.FAIL,
                       f"golden inputs {'; '.join(mine)} differ from the reference's {'; '.join(theirs)}",
                       details={"golden": mine, "reference": theirs})


def tensor_range(gate: GateContext, names: tuple[str, ...], reference: tuple) -> CheckResult:
    """Each golden input's values within the reference's range, widened by [data.profile] range_margin, or
    as far as the reference's tails say the golden values would reach (as a profiled column's range)."""
    import numpy as np

    from ..validation import tail_reach

    profile = gate.config.data.profile
    rows, outside = [], []
    for name, golden, ref in zip(gate.golden.input_names, gate.golden.inputs, reference):
        low, high = float(ref.min()), float(ref.max())
        margin = profile.range_margin * ((high - low) or 1.0)
        reach_low, reach_high = (tail_reach(ref, golden.size, upper=upper) for upper in (False, True))
        allowed = (min(low - margin, math.inf if reach_low is None else reach_low),
                   max(high + margin, -math.inf if reach_high is None else reach_high))
        count = int(np.count_nonzero((golden < allowed[0]) | (golden > allowed[1])))
        share = count / golden.size if golden.size else 0.0
        rows.append([name, float(golden.min()), float(golden.max()), f"[{allowed[0]:.4g}, {allowed[1]:.4g}]", share])
        if share > 1.0 - profile.mostly + 1e-12:
            outside.append(f"{name}: {count:,} of {golden.size:,} values ({share * 100:.3g}%) outside [{allowed[0]:.4g}, {allowed[1]:.4g}]")
    table = {"title": "golden value range vs reference", "columns": ["input", "min", "max", "allowed", "share outside"], "rows": rows}
    if outside:
        return CheckResult(NAME, "tensor:range", Status.FAIL, "; ".join(outside), details={"table": table})
    return CheckResult(NAME, "tensor:range", Status.PASS,
                       f"every golden input value lies in the reference's range (± {profile.range_margin:g} of it, or as far as its tails "
                       "reach)", details={"table": table})


def tensor_drift(gate: GateContext, names: tuple[str, ...], reference: tuple) -> CheckResult:
    """Per-channel drift: the distributions of each sample's channel means and standard deviations, golden
    vs reference, by PSI and a two-sample test (integer inputs such as token ids: their values' distribution)."""
    from ..drift import default_channel_axis, sample_summaries

    axis_setting = gate.config.data.channel_axis
    current, before = {}, {}
    for name, golden, ref in zip(gate.golden.input_names, gate.golden.inputs, reference):
        if golden.shape[1:] != ref.shape[1:]:
            return CheckResult(NAME, "drift", Status.ERROR, f"cannot compare {name}: golden samples {golden.shape[1:]} vs reference {ref.shape[1:]} (see tensor:layout)")
        axis = axis_setting if axis_setting is not None else default_channel_axis(golden.shape[1:])
        if axis is not None and axis >= golden.ndim - 1:
            from ..errors import InputError

            raise InputError(f"[data] channel_axis = {axis}: {name}'s samples have only {golden.ndim - 1} axes")
        current.update(sample_summaries(name, golden, axis))
        before.update(sample_summaries(name, ref, axis))
    return _drift_result(gate, before, current, what="channel statistics")


GOLDEN_ROW_EXAMPLES = 10


def golden_rows(gate: GateContext) -> CheckResult:
    """Every golden row has finite features and a valid target; rows that do not are named, and block."""
    excluded = gate.golden.excluded
    total = gate.golden.rows_read
    if excluded is None or not len(excluded):
        what = "features" if gate.golden.tabular else "inputs"
        return CheckResult(NAME, "golden_rows", Status.PASS, f"all {total:,} golden rows have finite {what} and a valid target")
    columns = ", ".join(f"{column} ({count})" for column, count in sorted(excluded.columns.items(), key=lambda item: -item[1]))
    shown = ", ".join(str(int(row)) for row in excluded.rows[:GOLDEN_ROW_EXAMPLES])
    more = f" and {len(excluded) - GOLDEN_ROW_EXAMPLES} more" if len(excluded) > GOLDEN_ROW_EXAMPLES else ""
    frame = gate.golden.read
    spec = gate.config.model
    used = gate.golden.sampled_from if gate.golden.sampled_from is not None else len(gate.golden)
    if not len(excluded.rows):  # streamed: counted over every row, row numbers not kept
        return CheckResult(
            NAME, "golden_rows", Status.FAIL,
            f"{len(excluded):,} of {total:,} golden rows have NaN/inf or impossible values (by column: {columns}), "
            f"counted over every row while streaming. The other stages ran on the remaining {used:,} rows",
            details={"columns": excluded.columns, "count": len(excluded)},
        )
    if gate.golden.tabular:
        table = {
            "title": f"first {min(len(excluded), GOLDEN_ROW_EXAMPLES)} unusable golden rows",
            "columns": ["row", *spec.features, spec.target],
            "rows": [[int(row), *(_plain_cell(frame[c].iloc[int(row)]) for c in [*spec.features, spec.target])]
                     for row in excluded.rows[:GOLDEN_ROW_EXAMPLES]],
        }
    else:  # a tensor set: which arrays are bad is in the summary; the rows' metadata says which samples
        shown_columns = [str(c) for c in frame.columns[:6]]
        table = {
            "title": f"first {min(len(excluded), GOLDEN_ROW_EXAMPLES)} unusable golden samples",
            "columns": ["sample", *shown_columns],
            "rows": [[int(row), *(_plain_cell(frame[c].iloc[int(row)]) for c in frame.columns[:6])]
                     for row in excluded.rows[:GOLDEN_ROW_EXAMPLES]],
        }
    return CheckResult(
        NAME, "golden_rows", Status.FAIL,
        f"{len(excluded):,} of {total:,} golden rows have NaN/inf or impossible values (by column: {columns}); "
        f"rows {shown}{more}. The other stages ran on the remaining {len(gate.golden):,} rows",
        details={"rows": [int(r) for r in excluded.rows], "columns": excluded.columns, "table": table},
    )


def _plain_cell(value):
    """A golden cell or a GX example as the report's JSON holds it: a number, text or None as it is; NaN,
    ±inf, pandas' missing values (NA, NaT) and any other object (a timestamp) as its text, which also says
    why a row is unusable."""
    import math

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return _plain_cell(value.item())
    return str(value)


def _check_names(dataset: str, suite: Suite, several: bool) -> list[str]:
    prefix = f"{dataset}:{suite.name}" if several else dataset
    names, seen = [], {}
    for expectation in suite.expectations:
        target = expectation.get("kwargs", {}).get("column", "table")
        name = f"{prefix}/{target}:{expectation['type'].removeprefix('expect_')}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def expectation_check(run: Once, index: int, name: str, note: str = "", sampled: bool = False) -> CheckResult:
    """One expectation's outcome; ``note`` says when it ran on a streamed golden set's sample (``sampled``),
    where :func:`on_a_sample` reads it."""
    outcome = run()[index]
    check = outcome_check(outcome, name, note)
    return on_a_sample(outcome, check) if sampled and not outcome.error else check


def on_a_sample(outcome: ExpectationOutcome, check: CheckResult) -> CheckResult:
    """A check GX decided on a streamed set's sample, as far as the sample can decide it for every row. A
    uniqueness met on the sample is a warn (it cannot show the set's values unique), a repeat found there a
    fail. A count of distinct values is the set's at least: above its maximum, a fail; at or above its minimum
    with no maximum, a pass; else a warn. A share of distinct values is the sample's, not the set's: a warn.
    Distinct values the sample lacks may be in the set: a warn, where a value beyond an equal set is a fail."""
    from dataclasses import replace

    kind, kwargs = outcome.type, outcome.kwargs
    if kind in UNIQUE_TYPES and check.status is Status.PASS:
        return replace(check, status=Status.WARN, summary=f"{check.summary}, which cannot show every row's unique: a value "
                       "repeated in the set shows twice in the sample only when both copies are drawn")
    if kind == "expect_column_unique_value_count_to_be_between":
        observed, high = outcome.result.get("observed_value"), kwargs.get("max_value")
        if check.status is Status.FAIL and high is not None and observed is not None and observed > high:
            return check  # the set holds at least the sample's distinct values
        if check.status is Status.PASS and high is None:
            return check
        return replace(check, status=Status.WARN, summary=f"{check.summary}, not decided for every row: the set holds at "
                       "least the sample's distinct values, and perhaps more")
    if kind == "expect_column_proportion_of_unique_values_to_be_between":
        return replace(check, status=Status.WARN, summary=f"{check.summary}, not decided for every row: a sample's share of "
                       "distinct values is not the set's")
    if kind in ("expect_column_distinct_values_to_contain_set", "expect_column_distinct_values_to_equal_set") and check.status is Status.FAIL:
        if kind.endswith("equal_set") and outcome.result.get("unexpected_count"):
            return check  # a value beyond the set (GX counts those apart from the missing ones), in the golden set too
        return replace(check, status=Status.WARN, summary=f"{check.summary}, not decided for every row: the values the sample "
                       "lacks may be in rows it did not draw")
    return check


def outcome_check(outcome: ExpectationOutcome, name: str, note: str = "") -> CheckResult:
    """An expectation's outcome as a check; ``note`` says which rows it was decided on."""
    described = describe(outcome) + note
    if outcome.error:
        return CheckResult(NAME, name, Status.ERROR, f"{described}: cannot evaluate: {outcome.error.splitlines()[0]}")
    details = {k: outcome.result[k] for k in ("element_count", "unexpected_count", "unexpected_percent", "missing_count", "observed_value") if k in outcome.result}
    if outcome.success:
        unexpected = outcome.result.get("unexpected_count") or 0
        allowed = f"; {_failure(outcome)}, as mostly = {outcome.kwargs['mostly']:g} allows" if unexpected and "mostly" in outcome.kwargs else ""
        return CheckResult(NAME, name, Status.PASS, f"{described}: met{allowed}", details=details)
    details["examples"] = [_plain_cell(value) for value in outcome.result.get("partial_unexpected_list", [])]
    return CheckResult(NAME, name, Status.FAIL, f"{described}: {_failure(outcome)}", details=details)


def describe(outcome: ExpectationOutcome) -> str:
    kwargs, column = outcome.kwargs, outcome.column
    short = outcome.type.removeprefix("expect_")
    if short == "table_row_count_to_be_between":
        return f"rows ≥ {kwargs.get('min_value')}" + (f" and ≤ {kwargs['max_value']}" if kwargs.get("max_value") is not None else "")
    if short == "table_columns_to_match_ordered_list":
        return f"columns are {', '.join(kwargs.get('column_list', []))} in this order"
    if short == "column_values_to_be_between":
        return f"{column} within [{_num(kwargs.get('min_value'))}, {_num(kwargs.get('max_value'), '+∞')}]"
    if short == "column_values_to_not_be_null":
        mostly = kwargs.get("mostly")
        return f"{column} not null" + (f" in at least {mostly:.2%} of rows" if mostly is not None else "")
    if short == "column_values_to_be_in_set":
        values = kwargs.get("value_set", [])
        shown = ", ".join(map(str, values[:8])) + (", …" if len(values) > 8 else "")
        return f"{column} in {{{shown}}}"
    if short == "column_values_to_be_in_type_list":
        types = kwargs.get("type_list", [])
        kind = "numeric" if "float64" in types else "text" if "object" in types else "/".join(types)
        return f"{column} is {kind}"
    return f"{column or 'table'}: {short}"


def _failure(outcome: ExpectationOutcome) -> str:
    result = outcome.result
    if "unexpected_count" in result:
        unexpected, total = result.get("unexpected_count") or 0, result.get("element_count") or 0
        missing = result.get("missing_count")
        if outcome.type == "expect_column_values_to_not_be_null":
            return f"{unexpected:,} of {total:,} values are null ({100 * unexpected / max(total, 1):.3g}%)"
        examples = ", ".join(map(_example, result.get("partial_unexpected_list", [])[:5]))
        if "element_count" not in result:  # counted over the column's distinct values, not its rows
            return f"{unexpected} unexpected distinct value(s)" + (f": {examples}" if examples else "")
        text = f"{unexpected:,} of {total:,} values unexpected ({(result.get('unexpected_percent') or 0):.3g}% of non-null)"
        text += f", e.g. {examples}" if examples else ""
        return text + (f"; {missing} missing (not counted as unexpected)" if missing else "")
    observed = result.get("observed_value")
    return f"observed {_example(observed) if isinstance(observed, float) else repr(observed)}"


def _example(value) -> str:
    """A value as a reader takes it in: a float to 10 significant digits (1847.82, where its binary value
    prints 1847.8200000000002), anything else as it prints."""
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _num(value, unbounded: str = "−∞") -> str:
    """A bound as people read it: whole numbers with thousands separators, others to 4 digits, a bound that
    is no number (a date, in a user's suite) as written."""
    from ..validation import is_number

    if value is None:
        return unbounded
    if not is_number(value):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def drift_check(gate: GateContext, reference: pd.DataFrame) -> CheckResult:
    from ..data import is_feature_column

    features = gate.config.model.features
    missing = [f for f in features if f not in reference.columns]
    if missing:
        return CheckResult(NAME, "drift", Status.ERROR, f"the reference lacks feature column(s) {', '.join(missing)}")
    numeric = [f for f in features if is_feature_column(reference[f])]
    if len(numeric) < len(features):
        skipped = sorted(set(features) - set(numeric))
        return CheckResult(NAME, "drift", Status.ERROR, f"reference feature column(s) {', '.join(skipped)} are not numeric")
    counts = gate.scan.drift if gate.scan is not None and gate.scan.drift else None
    return _drift_result(
        gate,
        {f: reference[f].dropna().to_numpy(dtype=float) for f in features},
        {f: gate.golden.features[:, i].astype(float) for i, f in enumerate(features)},
        what="features",
        current_counts=counts,
    )


# A chart of every channel statistic of a vector input (two per position) is a row of unreadable bars: the
# largest PSIs are drawn, and the table lists them all.
DRIFT_CHART_BARS = 16


def drift_chart(results, what: str) -> dict:
    """The PSI chart of a drift check: every feature's, or the DRIFT_CHART_BARS largest (an undecided, NaN,
    PSI last), its title saying so."""
    charted = list(results)
    if len(charted) > DRIFT_CHART_BARS:
        charted = sorted(charted, key=lambda r: r.psi if r.psi == r.psi else -1.0, reverse=True)[:DRIFT_CHART_BARS]
    which = f", the {DRIFT_CHART_BARS} largest of {len(results)}" if len(charted) < len(results) else ""
    return {"title": f"PSI per {'feature' if what == 'features' else 'channel statistic'} (golden vs reference{which})",
            "labels": [r.feature for r in charted], "values": [round(r.psi, 4) for r in charted], "y_label": "PSI"}


def _drift_result(gate: GateContext, before: dict, current: dict, what: str, current_counts: dict | None = None) -> CheckResult:
    """``current_counts``: a streamed golden set's counts in the reference's bins (PSI over every row); the
    KS tests then compare the uniform sample in ``current``."""
    from ..drift import drift

    spec = gate.config.data.drift
    results = drift(before, current, psi_threshold=spec.psi, alpha=spec.alpha, bins=spec.bins, test_rows=spec.test_rows,
                    seed=gate.config.quality.seed, current_counts=current_counts)
    note = ""
    # The golden rows PSI covers: every row of a streamed set, else the rows (tensor samples) compared.
    rows = int(next(iter(current_counts.values())).sum()) if current_counts is not None else len(next(iter(current.values())))
    if current_counts is not None:
        sampled = len(next(iter(current.values())))
        note = (f" (PSI and chi-square over all {rows:,} golden rows, streamed; "
                + ("KS over every row too)" if sampled >= rows else f"KS on a uniform sample of {sampled:,} rows)"))
    drifted = [r for r in results if r.drifted]
    table = {
        "title": f"drift per {'feature' if what == 'features' else 'channel statistic'}",
        "columns": ["feature" if what == "features" else "statistic", "test", "PSI", "statistic", "p (Holm)", "drifted"],
        "rows": [[r.feature, r.test, r.psi, r.statistic, r.p_adjusted, "yes" if r.drifted else "undecided" if r.undecided else "no"] for r in results],
    }
    details = {"table": table, "chart": drift_chart(results, what), "drifted": [r.feature for r in drifted]}
    if drifted:
        names = ", ".join(f"{r.feature} (PSI {r.psi:.2f})" for r in drifted)
        status = Status.FAIL if spec.action == "fail" else Status.WARN
        return CheckResult(NAME, "drift", status, f"{len(drifted)} of {len(results)} {what} drifted from the reference: {names}{note}", details=details)
    undecided = [r for r in results if r.undecided]
    if undecided:
        reference_rows = max(len(values) for values in before.values())
        names = ", ".join(f"{r.feature} (PSI {r.psi:.2f}, p {r.p_adjusted:.2g})" for r in undecided)
        return CheckResult(NAME, "drift", Status.WARN, (
            f"not decided: PSI at or above {spec.psi:g} but no significant test at α={spec.alpha:g} for {names}: "
            f"too few rows ({rows:,} golden, {reference_rows:,} reference) to tell drift from sampling noise{note}"), details=details)
    worst = max(results, key=lambda r: r.psi)
    return CheckResult(
        NAME, "drift", Status.PASS,
        f"no {'feature' if what == 'features' else 'channel statistic'} drifted (every PSI < {spec.psi:g}); largest PSI {worst.psi:.3f} ({worst.feature}){note}",
        details=details,
    )
