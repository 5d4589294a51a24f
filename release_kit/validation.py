"""Great Expectations (1.x) for the data-validation stage: profile a reference into a suite, load suites
from GX's own JSON, and validate a dataset (pandas or a SQL table) against them.

GX is imported only here, and only when the data stage runs: its import alone takes seconds.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, first_line
from .expressions import check_row_expression
from .files import parse_document, read_document

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .config import DataSpec, ProfileSpec
    from .scale.stats import ValueCondition

UNEXPECTED_EXAMPLES = 5
NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "Float64"]
TEXT_TYPES = ["object", "str", "string", "category"]


@dataclass(frozen=True)
class Suite:
    """An expectation suite as GX JSON (``{"name": ..., "expectations": [{"type", "kwargs"}, ...]}``)."""

    name: str
    expectations: list[dict[str, Any]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "expectations": self.expectations, "meta": self.meta}, indent=2) + "\n"

    def gx_suite(self):
        """The real GX object; a configuration GX refuses is an InputError naming the suite."""
        import logging

        gx = _import_gx()
        # GX logs an expectation it drops with a traceback: the one line below says which it was.
        gx_logger = logging.getLogger("great_expectations")
        level = gx_logger.level
        gx_logger.setLevel(logging.CRITICAL)
        try:
            suite = gx.ExpectationSuite(name=self.name, expectations=[dict(e) for e in self.expectations])
        except Exception as error:  # GX raises pydantic and its own errors for a bad configuration
            raise InputError(f"{self.source}: invalid expectation suite: {first_line(error)}") from None
        finally:
            gx_logger.setLevel(level)
        # GX logs an unknown expectation type and drops it rather than raising: a silently smaller suite.
        kept = {e.expectation_type for e in suite.expectations}
        dropped = [e["type"] for e in self.expectations if e["type"] not in kept]
        if dropped:
            raise InputError(f"{self.source}: invalid expectation suite: unknown expectation type {dropped[0]!r}")
        return suite


def gx_compatible(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as plain ``object`` columns. pandas 3 reads text as its ``str`` dtype, which GX 1.x's
    type check does not recognise (it reports "str is not in [object, str, string]"): every text column
    would fail its type expectation. So do text categories (a Parquet dictionary column, pandas'
    ``category``): GX reports their type as "CategoricalDtypeType", which no type list names, and the
    profile of a reference stored so typed its own column as text."""
    import pandas as pd

    def text(dtype) -> bool:
        if isinstance(dtype, pd.CategoricalDtype):
            return text(dtype.categories.dtype) or pd.api.types.is_object_dtype(dtype.categories.dtype)
        return pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype)

    columns = [c for c in frame.columns if text(frame[c].dtype)]
    return frame.astype({c: object for c in columns}) if columns else frame


def _import_gx():
    # GX sends usage statistics by default; a release gate in CI must not phone home. Set before the
    # import, here rather than at this module's import, which should change nothing.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations

    return great_expectations


def golden_suites(spec: DataSpec, reference: pd.DataFrame | None, golden_rows: int) -> list[Suite]:
    """The suites the golden set (of ``golden_rows`` rows) is validated against: every suite under ``[data]
    suites``, else a profile of the ``[data] reference`` table (none without one)."""
    suites = load_suites(Path(spec.suites))
    if not suites and reference is not None:
        suites = [profile(reference, spec.profile, name=f"profile of {source_name(spec.reference)}", source=spec.reference,
                          compared_rows=golden_rows)]
    return suites


def source_name(source: str) -> str:
    """A data source as a suite's name shows it: a SQL source's table, a file's name."""
    return source.rpartition("#")[2] if "://" in source else Path(source).name


def on_every_row(expectation: dict[str, Any]) -> bool:
    """An expectation on every row: one with a ``row_condition`` holds on some rows, which counts over every
    row cannot tell apart."""
    return expectation.get("kwargs", {}).get("row_condition") in (None, "")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def counted_condition(expectation: dict[str, Any]) -> ValueCondition | None:
    """The range or set whose exceptions a streamed golden set counts over every row for this expectation:
    an ``expect_column_values_to_be_between`` with bounds that are numbers, or an
    ``expect_column_values_to_be_in_set`` of plain values (text, numbers, booleans), on every row; None for
    any other (GX decides it on the sample)."""
    from .scale.stats import ValueRange, ValueSet

    kwargs = expectation.get("kwargs", {})
    if not on_every_row(expectation) or not isinstance(kwargs.get("column"), str):
        return None
    if expectation.get("type") == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if (low is None and high is None) or not all(is_number(bound) for bound in (low, high) if bound is not None):
            return None
        return ValueRange(low, high, bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max")))
    if expectation.get("type") == "expect_column_values_to_be_in_set":
        values = kwargs.get("value_set")
        if not isinstance(values, list) or not all(isinstance(v, (str, int, float, bool)) for v in values):
            return None
        return ValueSet(tuple(values))
    return None


# Expectations a streamed golden set decides from a column's ValueMoments over every row, and what each observes.
MOMENT_TYPES = {"expect_column_mean_to_be_between": "mean", "expect_column_stdev_to_be_between": "stdev",
                "expect_column_sum_to_be_between": "sum"}


def moment_columns(suites: list[Suite]) -> frozenset[str]:
    """The columns with an expectation of :data:`MOMENT_TYPES` on every row, over every suite."""
    return frozenset(expectation["kwargs"]["column"] for suite in suites for expectation in suite.expectations
                     if expectation.get("type") in MOMENT_TYPES and on_every_row(expectation)
                     and isinstance(expectation.get("kwargs", {}).get("column"), str))


def counted_conditions(suites: list[Suite]) -> dict[str, tuple[ValueCondition, ...]]:
    """Column → the distinct conditions of :func:`counted_condition` over every suite."""
    found: dict[str, dict[ValueCondition, None]] = {}
    for suite in suites:
        for expectation in suite.expectations:
            condition = counted_condition(expectation)
            if condition is not None:
                found.setdefault(expectation["kwargs"]["column"], {})[condition] = None
    return {column: tuple(conditions) for column, conditions in found.items()}


def load_suites(location: Path) -> list[Suite]:
    """Every ``*.json`` suite in a directory (sorted), or the one file named."""
    files = sorted(location.glob("*.json")) if location.is_dir() else [location] if location.exists() else []
    return [_load_suite(path) for path in files]


def _load_suite(path: Path) -> Suite:
    def no_constant(name: str):
        # Python's json reads NaN and Infinity, which JSON has not: a NaN bound compares false with every
        # value, so GX fails every row read whole while counts over a streamed set's rows found none outside.
        raise InputError(f"{path}: cannot read expectation suite: {name} is no JSON number (write a finite bound, or none)")

    try:
        data = parse_document(partial(json.loads, parse_constant=no_constant), read_document(path, "expectation suite"),
                              f"expectation suite {path}")
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read expectation suite: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise InputError(f"{path}: not a GX expectation suite (needs an 'expectations' list)")
    for index, expectation in enumerate(data["expectations"]):
        if not isinstance(expectation, dict) or "type" not in expectation:
            raise InputError(f"{path}: expectation {index} has no 'type'")
        _check_row_condition(path, index, expectation.get("kwargs"))
    return Suite(str(data.get("name") or path.stem), data["expectations"], str(path), data.get("meta") or {})


def _check_row_condition(path: Path, index: int, kwargs) -> None:
    """A suite file is data a pull request may change, but GX runs a ``row_condition`` through pandas'
    ``query``: only a pandas expression of columns and constants is taken (GX's other forms, a pass-through
    filter or a condition tree, are refused: they too end in ``query``)."""
    if not isinstance(kwargs, dict) or kwargs.get("row_condition") in (None, ""):
        return
    condition = kwargs["row_condition"]
    if not isinstance(condition, str) or kwargs.get("condition_parser") != "pandas":
        raise InputError(f"{path}: expectation {index}: row_condition must be a pandas expression (a string, with "
                         'condition_parser "pandas")')
    try:
        check_row_expression(condition, "row_condition")
    except ValueError as error:
        raise InputError(f"{path}: expectation {index}: {error}") from None


# A column with nulls in the reference has them in later data at a share that varies by sampling alone
# (measured: a column a third null in an 8,000-row reference was 34.1 % null in 30,000 golden rows drawn
# alike, and failed a profile that allowed 33.1 %). The profile allows the reference's share plus this many
# standard errors of the difference of two samples' shares, the reference's and the data's, taking the
# bound of a confidence interval as Deequ's completeness rule does: data drawn alike fails it about once in
# 2,000 (one-sided). A column with no null in the reference allows none.
NULL_SHARE_Z = 3.29


def null_sampling_margin(share: float, rows: int, compared_rows: int) -> float:
    """The null share's sampling allowance (see ``NULL_SHARE_Z``) of a reference column of ``rows`` rows
    ``share`` null, against data of ``compared_rows`` rows."""
    if not 0 < share < 1 or rows < 1 or compared_rows < 1:
        return 0.0
    return NULL_SHARE_Z * math.sqrt(share * (1 - share) * (1 / rows + 1 / compared_rows))


# A profiled range reaches as far as data drawn like the reference would reach by chance: a bound beyond
# which fewer than RANGE_TAIL_ALPHA values are expected in the compared rows, extrapolated from the
# reference's tail (see ``tail_reach``). The reference's extremes plus a 10 % margin alone failed data drawn
# alike (simulated, 2,000 rows against 2,000: a normal column about one time in 10, an exponential one in 3; in 100
# times as many rows nearly always), and more so the larger the golden set.
RANGE_TAIL_ALPHA = 0.001
TAIL_MIN_ROWS = 100  # fewer finite values than this: no extrapolation, the margin alone
# A tail whose top k values' mean excess is below this share of the top 4k's ends (see ``tail_reach``).
BOUNDED_TAIL_RATIO = 0.55


def tail_reach(values: np.ndarray, compared: int, *, upper: bool = True) -> float | None:
    """How far data of ``compared`` values drawn as ``values`` (any shape) reaches, up (``upper``) or down:
    the level it passes less than ``RANGE_TAIL_ALPHA`` times in expectation. None for too few values, or no
    tail (ties at the extreme: a bounded or discrete column); ±inf for a heavy tail that reaches past float64's
    range, where data drawn alike has no bound on that side.

    Peaks over threshold. For a generalized Pareto tail of shape ξ the top k = √n values' mean excess over
    the next one is 4^ξ times the top 4k's over theirs (1 for an exponential tail, about 0.85 for a normal
    one, 0.5 for ξ = −½, 0.25 for a uniform one), and that ratio picks the tail's model:

    - below ``BOUNDED_TAIL_RATIO``: a tail that ends (a share, a bounded reading: uniform-like, or a density
      that falls to its endpoint), with no reach beyond the margin; an exponential fit would overshoot it (a
      cloud cover in [0, 1] allowed 1.27);
    - above :func:`heavy_tail_ratio`: a heavy tail (log-normal, Student's t, Pareto), which an exponential fit
      cuts short (simulated, a 2,000-row reference against 200,000 rows drawn alike: a log-normal of σ 1.5
      failed 97 % of such sets, a t of 2 degrees 99 %, a Pareto of index 1.5 99 %). Its level is Weissman's
      estimator on the distances d from the median: d₍ₖ₊₁₎·(compared·k / (n·RANGE_TAIL_ALPHA))^ξ, ξ Hill's
      mean of ln(d₍ᵢ₎ / d₍ₖ₊₁₎) over the top k. The ratio must clear its sampling noise first: a generalized
      Pareto shape fitted to every column (Pickands') now and then allowed a light one 1,000 times its range;
    - else an exponential tail, the light tails' model (normal, exponential, gamma): P(X > u + t) =
      (k/n)·e^(−t/β) with β the top k's mean excess over u, the next value; the level is
      u + β·ln(compared·k / (n·RANGE_TAIL_ALPHA))."""
    import numpy as np

    n = values.size
    if n < TAIL_MIN_ROWS or compared < 1:
        return None
    k = int(min(max(10, round(math.sqrt(n))), 1000))
    wide = 4 * k < n  # room for the top 4k's mean excess too
    extreme = _extremes(values, 4 * k + 1 if wide else k + 1, upper)
    beyond = extreme if upper else -extreme  # distances into the tail grow along it
    threshold = float(beyond[k])
    excess = float(np.mean(beyond[:k] - threshold))
    if not excess > 0:
        return None
    expected_beyond = compared * k / (n * RANGE_TAIL_ALPHA)  # the tail's share at u over the share allowed
    reach = None
    if wide:
        deeper = float(np.mean(beyond[: 4 * k] - beyond[4 * k]))
        if excess < BOUNDED_TAIL_RATIO * deeper:
            return None
        if excess > heavy_tail_ratio(k) * deeper:
            centre = _median(values) * (1.0 if upper else -1.0)
            distances = beyond[: k + 1] - centre
            if distances[k] > 0:
                shape = float(np.mean(np.log(distances[:k] / distances[k])))  # Hill's estimator
                # In logarithms: a tail of values spread over hundreds of decades reaches past float64,
                # which has no bound to give on this side (``**`` raised OverflowError there).
                log_reach = math.log(float(distances[k])) + shape * math.log(expected_beyond)
                if log_reach >= math.log(sys.float_info.max / 2):
                    return math.inf if upper else -math.inf
                reach = centre + math.exp(log_reach)
    if reach is None:
        reach = threshold + excess * math.log(expected_beyond)
    return (reach if upper else -reach) if math.isfinite(reach) else None


# How far the mean-excess ratio of a tail must exceed an exponential tail's 1 to be read as heavy: 1.3 (a
# shape of about 0.19), and at least two standard errors of its logarithm, √(1/k + 1/4k), where k is small.
# Simulated (400 draws each), exponential, gamma and χ² columns passed it in at most 0.3 % of 2,000-row
# references and none of 20,000-row ones; log-normal (σ 1) ones in about half and 80 %, Pareto ones (index
# 3) in 78 % and 99 %.
HEAVY_TAIL_MIN_RATIO = 1.3
HEAVY_TAIL_NOISE_Z = 2.0


def heavy_tail_ratio(k: int) -> float:
    """The mean-excess ratio (top k over top 4k) above which ``tail_reach`` reads a tail as heavy."""
    return max(HEAVY_TAIL_MIN_RATIO, math.exp(HEAVY_TAIL_NOISE_Z * math.sqrt(1.25 / k)))


MEDIAN_SAMPLE = 1_000_000  # values a median is taken from at most: evenly spaced, so a tensor is not copied


def _median(values: np.ndarray) -> float:
    import numpy as np

    flat = values.reshape(-1)
    step = max(1, flat.size // MEDIAN_SAMPLE)
    return float(np.median(flat[::step].astype(np.float64)))


EXTREMES_CHUNK = 1 << 22  # values partitioned at a time (np.partition copies what it is given)


def _extremes(values: np.ndarray, count: int, upper: bool) -> np.ndarray:
    """The ``count`` largest (``upper``) or smallest of the values as float64, the most extreme first, found
    a chunk at a time: a tensor reference may be gigabytes."""
    import numpy as np

    flat = values.reshape(-1)
    best = None
    for start in range(0, flat.size, EXTREMES_CHUNK):
        chunk = flat[start : start + EXTREMES_CHUNK]
        candidates = chunk if best is None else np.concatenate([best, chunk])
        if len(candidates) > count:
            candidates = np.partition(candidates, len(candidates) - count)[-count:] if upper else np.partition(candidates, count - 1)[:count]
        best = candidates.copy() if candidates.base is not None else candidates
    ordered = np.sort(best.astype(np.float64))
    return ordered[::-1] if upper else ordered


def profile(frame: pd.DataFrame, spec: ProfileSpec, *, name: str, source: str, compared_rows: int | None = None) -> Suite:
    """A suite describing ``frame``: columns and order, types, null share, ranges, category sets, rows.

    Numeric columns get a range (widened by ``range_margin``); category sets are for non-numeric columns
    and the numeric ones named in ``categorical``; ``mostly`` < 1 tolerates that share of exceptions. A
    column's null share may exceed the reference's by its sampling noise against data of ``compared_rows``
    rows (as many as the reference's when not given) and by ``null_margin``.
    """
    import numpy as np
    import pandas as pd

    tolerated = {"mostly": spec.mostly} if spec.mostly < 1 else {}

    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": spec.min_rows}},
        {"type": "expect_table_columns_to_match_ordered_list", "kwargs": {"column_list": list(map(str, frame.columns))}},
    ]
    for column in frame.columns:
        values = frame[column]
        column = str(column)
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        # Times and durations: their own type, and no set or range, which later golden data (newer times)
        # would break by design. A time zone's type has no name GX matches: only its nulls are expected.
        temporal = pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values)
        if temporal:
            types = None if isinstance(values.dtype, pd.DatetimeTZDtype) else [str(values.dtype)]
        else:
            types = NUMERIC_TYPES if numeric else ["bool"] if pd.api.types.is_bool_dtype(values) else TEXT_TYPES
        if types is not None:
            expectations.append({"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": column, "type_list": types}})
        share = float(values.isna().mean())
        allowed_nulls = share + null_sampling_margin(share, len(frame), compared_rows or len(frame)) + spec.null_margin
        not_null = {"column": column}
        if allowed_nulls > 0:
            not_null["mostly"] = max(0.0, round(1.0 - allowed_nulls, 6))
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": not_null})
        present = values.dropna()
        if present.empty or temporal:
            continue
        distinct = present.unique()
        categorical = column in spec.categorical or not numeric
        if categorical and len(distinct) <= spec.max_categories:
            value_set = sorted(_plain(v) for v in distinct)
            expectations.append({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": column, "value_set": value_set, **tolerated}})
        elif numeric:
            # Over the finite values: an infinity would make the range's margin NaN, a bound every value
            # fails (and ±inf is never within a range: GX counts it outside, as a NaN/inf golden row fails).
            finite = present[np.isfinite(present.to_numpy(dtype=float))]
            if finite.empty:
                continue
            low, high = float(finite.min()), float(finite.max())
            margin = spec.range_margin * (high - low)
            numbers = finite.to_numpy(dtype=float)
            reach_low, reach_high = (tail_reach(numbers, compared_rows or len(frame), upper=upper) for upper in (False, True))
            bounds = (min(low - margin, math.inf if reach_low is None else reach_low),
                      max(high + margin, -math.inf if reach_high is None else reach_high))
            min_value, max_value = (bound if math.isfinite(bound) else None for bound in bounds)  # None: no bound that side
            if min_value is not None or max_value is not None:
                expectations.append({
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": column, "min_value": min_value, "max_value": max_value, **tolerated},
                })
    return Suite(name, expectations, source, {"profiled_from": source, "rows": len(frame)})


def _plain(value):
    """numpy scalars → Python values GX can serialise."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class ExpectationOutcome:
    type: str
    kwargs: dict[str, Any]
    success: bool
    result: dict[str, Any]
    error: str | None  # GX could not evaluate it (a missing column, say)

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


def validate(source: str | Path, frame: pd.DataFrame | None, suite: Suite) -> list[ExpectationOutcome]:
    """Run ``suite`` on a pandas frame, or (for ``URL#table`` sources) through GX's SQL datasource.

    Outcomes come back in the suite's order, one per expectation.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from .data import is_sql, split_sql

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if is_sql(source):
        url, table = split_sql(str(source))
        datasource = (
            context.data_sources.add_sqlite("release-kit", connection_string=url)
            if url.startswith("sqlite")
            else context.data_sources.add_sql("release-kit", connection_string=url)
        )
        batch = datasource.add_table_asset("data", table_name=table).add_batch_definition_whole_table("all").get_batch()
    else:
        asset = context.data_sources.add_pandas("release-kit").add_dataframe_asset("data")
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": gx_compatible(frame)})
    gx_suite = suite.gx_suite()
    result = batch.validate(
        gx_suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": UNEXPECTED_EXAMPLES}
    )
    # Results come back in GX's own order, and expectations of a suite outside a GX context carry no id:
    # match each expectation to its result by type and arguments (GX adds the batch id to the latter).
    pending = list(result.results)
    outcomes = []
    for expectation in gx_suite.expectations:
        config = expectation.configuration
        found = next(r for r in pending if r.expectation_config.type == config.type and _same_kwargs(r.expectation_config.kwargs, config.kwargs))
        pending.remove(found)
        outcomes.append(
            ExpectationOutcome(config.type, dict(config.kwargs), bool(found.success), dict(found.result or {}), _exception(found.exception_info))
        )
    return outcomes


def _same_kwargs(returned: dict, configured: dict) -> bool:
    return {k: v for k, v in returned.items() if k != "batch_id"} == dict(configured)


def _exception(info: Any) -> str | None:
    """GX 1.x reports a failure to evaluate in two shapes: flat ``{"raised_exception": True,
    "exception_message": ...}``, or nested per metric ``{metric_id: {"raised_exception": ...}}``."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "GX raised an exception") if info.get("raised_exception") else None
    for nested in info.values():
        message = _exception(nested)
        if message:
            return message
    return None
