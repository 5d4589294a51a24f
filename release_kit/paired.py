"""Paired per-sample analysis and slice statistics: the numeric core of the outlier stage.

Everything here works on the per-sample loss delta ``d = loss_candidate − loss_baseline`` (absolute error
for regression, log loss for classification) and is linear in the number of rows after at most one
partial sort: a slice's mean and variance come from per-bin sums (``np.bincount``), so the tails
``x ≤ e`` and ``x > e`` of every quantile edge cost prefix sums, not passes over the data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from collections.abc import Iterator

import numpy as np

if TYPE_CHECKING:
    from .config import Tolerance

MAD_TO_SIGMA = 1.4826
CATEGORICAL_MAX_LEVELS = 12
EDGE_SAMPLE_ROWS = 200_000
SCALE_SAMPLE_ROWS = 1_000_000


def per_sample_loss(task: str, target: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Absolute error (averaged over a multi-output regressor's outputs), or log loss of the true class."""
    if task == "regression":
        error = np.abs(predictions - target)
        return error if error.ndim == 1 else error.mean(axis=1)
    picked = predictions[np.arange(len(target)), target]
    return -np.log(np.clip(picked, 1e-15, 1.0))


@dataclass(frozen=True)
class RobustChange:
    broke: np.ndarray  # bool mask
    fixed: np.ndarray
    threshold: float  # a change beyond centre ± threshold counts
    centre: float = 0.0  # the median change of the rows that changed


def _moved_sample(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """The finite, non-zero values (rows that moved), from at most SCALE_SAMPLE_ROWS sampled rows: the
    scale is a threshold, not a test, and sampling first avoids full-size copies of large arrays."""
    if len(values) > SCALE_SAMPLE_ROWS:
        values = values[np.random.default_rng(seed).integers(0, len(values), SCALE_SAMPLE_ROWS)]
    return values[(values != 0) & np.isfinite(values)]


def _robust_scale(values: np.ndarray, counts: np.ndarray | None = None) -> tuple[float, float]:
    """Median and MAD·1.4826 (of ``values`` each repeated ``counts`` times: a sketch's buckets)."""
    if counts is None:
        centre = float(np.median(values))
        return centre, MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))
    centre = _weighted_median(values, counts)
    return centre, MAD_TO_SIGMA * _weighted_median(np.abs(values - centre), counts)


def _weighted_median(values: np.ndarray, counts: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(counts[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


MEAN_AD_TO_SIGMA = 1.2533  # mean absolute deviation → σ for a normal distribution


def change_threshold(changed: np.ndarray, k_mad: float, min_increase: float, resolution: float = 0.0,
                     counts: np.ndarray | None = None) -> tuple[float, float]:
    """(centre, threshold): a change beyond centre ± threshold is a break (a fix), from the changes of the
    rows that moved (or a sketch's bucket values and ``counts``).

    The MAD is taken over changed rows only: when most rows are untouched (night-time zeros, identical
    sub-networks) the plain MAD is 0 and every rounding difference would count as a break. When most
    changes are equal (a constant shift), the MAD of the changes is ~0 too: the mean absolute deviation
    stands in, and no change below ``resolution`` (the predictions' rounding) ever counts.
    """
    centre, spread = _robust_scale(changed, counts)
    if spread <= max(resolution, 1e-9 * float(np.average(np.abs(changed), weights=counts))):
        spread = MEAN_AD_TO_SIGMA * float(np.average(np.abs(changed - centre), weights=counts))
    return centre, max(k_mad * spread, min_increase, resolution, 1e-12)


def newly_broken(delta: np.ndarray, k_mad: float, min_increase: float, resolution: float = 0.0) -> RobustChange:
    """Rows whose loss grew (fell) beyond k × MAD of the deltas of the rows that changed at all (see
    :func:`change_threshold`)."""
    changed = _moved_sample(delta)
    if len(changed) == 0:
        empty = np.zeros(len(delta), dtype=bool)
        return RobustChange(empty, empty, math.inf, 0.0)
    centre, threshold = change_threshold(changed, k_mad, min_increase, resolution)
    return RobustChange(delta > centre + threshold, delta < centre - threshold, threshold, centre)


def largest_finite(values: np.ndarray) -> float:
    """The largest finite magnitude in ``values`` (0 when none is): two reductions, no copy of a large array,
    unless an infinity makes a masked pass necessary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every value NaN
        largest = max(abs(float(np.nanmax(values))), abs(float(np.nanmin(values)))) if values.size else 0.0
    if math.isfinite(largest):
        return largest
    finite = values[np.isfinite(values)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def robust_threshold(values: np.ndarray, k_mad: float, resolution: float = 0.0) -> float:
    """The value beyond which ``values`` (≥ 0, e.g. a shift) is extreme: median + k × MAD of the non-zero
    values (0 when none moved: any move is then extreme).

    Like :func:`newly_broken`, the scale comes from rows that moved at all, and a constant move (every row
    of a region shifted by 1.5) is no spread: a row beyond it by the predictions' rounding (``resolution``)
    is not extreme (see :func:`change_threshold`).
    """
    finite = _moved_sample(values)
    if len(finite) == 0:
        return 0.0
    centre, threshold = change_threshold(finite, k_mad, 0.0, resolution)
    return centre + threshold


@dataclass(frozen=True)
class SliceStat:
    """One subgroup's paired loss delta, tested against ``H0: mean delta ≤ tolerance``."""

    description: str
    n: int
    delta: float
    ci_low: float
    ci_high: float
    baseline_loss: float
    tolerance: float
    p_value: float
    p_adjusted: float = math.nan

    @property
    def excess(self) -> float:
        """Loss beyond tolerance summed over the slice: largest for the subgroup that explains the
        regression (a subset loses rows; a superset dilutes the mean and pays tolerance on more rows)."""
        return self.n * (self.delta - self.tolerance)

    def words(self, loss_label: str) -> str:
        return f"{self.description} (n={self.n}): {loss_label} {self.delta:+.3g} [{self.ci_low:+.3g}, {self.ci_high:+.3g}]"


@dataclass(frozen=True)
class SliceSums:
    description: str
    n: float
    sum_delta: float
    sum_delta_sq: float
    sum_baseline: float


def slice_stat(sums: SliceSums, tolerance: Tolerance, confidence: float = 0.95) -> SliceStat | None:
    """Mean, interval and one-sided p-value from a slice's sums; None when the slice has < 2 rows."""
    from scipy.stats import t

    n = int(round(sums.n))
    if n < 2:
        return None
    mean = sums.sum_delta / n
    variance = max((sums.sum_delta_sq - n * mean * mean) / (n - 1), 0.0)
    se = math.sqrt(variance / n)
    baseline = sums.sum_baseline / n
    allowed = tolerance.of(baseline)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0:
        p = 0.0 if mean > allowed else 1.0
    else:
        p = float(t.sf((mean - allowed) / se, n - 1))
    return SliceStat(sums.description, n, mean, mean - half, mean + half, baseline, allowed, p)


def holm(stats: list[SliceStat]) -> list[SliceStat]:
    """The slices with Holm-adjusted p-values."""
    from .multiple_testing import holm_adjust

    adjusted = holm_adjust([stat.p_value for stat in stats])
    return [replace(stat, p_adjusted=value) for stat, value in zip(stats, adjusted)]


@dataclass(frozen=True)
class Binning:
    """A feature cut into bins: ``labels[k]`` describes bin k; tails exist for ordered (numeric) bins."""

    feature: str
    codes: np.ndarray  # uint8 bin per row
    labels: list[str]
    edges: list[float] | None  # inner edges for numeric bins; None for integer categories


@dataclass(frozen=True)
class SliceBins:
    """A numeric feature's bins, fixed from a sample of its values: one bin per value for integers with few
    values (``levels``; values outside them share a last bin), else quantile ``edges``. Fixed before the
    rows are seen, a streamed golden set's per-bin sums over every row add up batch by batch."""

    feature: str
    edges: tuple[float, ...] | None = None
    low: float | None = None  # integer levels low, low + 1, …, high
    high: float | None = None

    @classmethod
    def of(cls, name: str, sample: np.ndarray, bins: int) -> SliceBins:
        if len(sample) and np.array_equal(sample, np.round(sample)):
            low, high = float(sample.min()), float(sample.max())
            if high - low < CATEGORICAL_MAX_LEVELS:
                return cls(name, low=low, high=high)
        edges = np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1)[1:-1])) if len(sample) else np.zeros(0)
        return cls(name, edges=tuple(edges.astype(sample.dtype).tolist()))

    @property
    def labels(self) -> list[str]:
        if self.edges is None:
            levels = [f"{self.feature} = {_fmt(self.low + k)}" for k in range(int(self.high - self.low) + 1)]
            return [*levels, f"{self.feature} other"]
        bounds = [-math.inf, *self.edges, math.inf]
        return [_range_label(self.feature, bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]

    def binning(self, column: np.ndarray) -> Binning:
        """The column's bin codes. Codes come from comparisons, not a binary search: with a handful of edges
        that is ~6× faster."""
        column = np.ascontiguousarray(column)  # a feature matrix's column is strided: every pass pays for it
        if self.edges is None:
            levels = int(self.high - self.low) + 1
            offset = column - self.low
            known = (offset >= 0) & (offset < levels) & (offset == np.round(offset))
            codes = np.where(known, offset, levels).astype(np.uint8)
            return Binning(self.feature, codes, self.labels, None)
        codes = np.zeros(len(column), dtype=np.uint8)
        for edge in np.asarray(self.edges, dtype=column.dtype):  # bin k: edges[k-1] < x ≤ edges[k]
            codes += column > edge
        return Binning(self.feature, codes, self.labels, list(self.edges))


def bin_feature(name: str, column: np.ndarray, bins: int, rng: np.random.Generator) -> Binning:
    """Categories (text): one bin per value. Numeric features: :class:`SliceBins` from a sample of the column."""
    if column.dtype.kind in "OUS":
        values, codes = np.unique(column, return_inverse=True)
        return Binning(name, codes.astype(np.uint8), [f"{name} = {value}" for value in values], None)
    sample = column if len(column) <= EDGE_SAMPLE_ROWS else column[rng.integers(0, len(column), EDGE_SAMPLE_ROWS)]
    return SliceBins.of(name, sample, bins).binning(column)


def _range_label(name: str, low: float, high: float) -> str:
    if math.isinf(low):
        return f"{name} ≤ {_fmt(high)}"
    if math.isinf(high):
        return f"{name} > {_fmt(low)}"
    return f"{_fmt(low)} < {name} ≤ {_fmt(high)}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


TABLE_MAX_CELLS = 4096  # a group's table: the cells of its features' bins (4 × 4096 float64 stay in cache)


def joint_sums(first: Binning, second: Binning, weights: tuple[np.ndarray, ...]) -> np.ndarray:
    """Row count and weighted sums per cell of two features' bins: shape (1 + len(weights), B1, B2)."""
    return _cell_sums([first, second], weights)


def bin_sums(codes: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``np.bincount(codes, weights, size)``: the same numbers (added in row order), but the GIL is released
    while it runs. ``np.bincount`` holds it throughout, and a streamed scan summarizes one batch on a second
    thread while the models score the next on the main thread: each model call waited for the GIL behind
    the tables' bincounts (measured: scoring ~20 % slower beside every stage's summaries, none beside them
    in another process). torch's ``scatter_add_`` and ``bincount`` run without the GIL, one loop in row
    order, and beat ``np.add.at`` (also GIL-free): 131,072 codes ~95 µs against ~155 with weights, ~115
    against ~150 for counts. Counts (no weights) are int64, sums float64."""
    import torch

    index = torch.from_numpy(codes.astype(np.int64, copy=False))
    if weights is None:
        return torch.bincount(index, minlength=size).numpy()
    table = torch.zeros(size, dtype=torch.float64)
    table.scatter_add_(0, index, torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64)))
    return table.numpy()


def _cell_sums(group: list[Binning], weights: tuple[np.ndarray, ...]) -> np.ndarray:
    """Row count and weighted sums per cell of the group's bins: shape (1 + len(weights), B1, B2, …)."""
    sizes = [len(b.labels) for b in group]
    cells = math.prod(sizes)
    # The cell code in the narrowest type that holds it (a pass over uint16 is 4× cheaper than over intp),
    # then int64 once (bin_sums takes int64 codes; there are 1 + len(weights) calls).
    codes = group[0].codes.astype(np.uint8 if cells <= 256 else np.uint16 if cells <= 65536 else np.int64)
    for binning, size in zip(group[1:], sizes[1:]):
        codes *= size
        codes += binning.codes
    codes = codes.astype(np.int64)
    tables = [bin_sums(codes, cells).astype(float)]
    tables += [bin_sums(codes, cells, w) for w in weights]
    return np.stack(tables).reshape(len(tables), *sizes)


class SliceTables:
    """Row count and weighted sums per bin of every feature, and per cell of pairs of features, from few
    passes over the rows: features are tabulated together in groups of up to ``TABLE_MAX_CELLS`` cells
    (five features of five bins in one table), and each feature's sums, or a pair's table, are sums of its
    group's table over the other features. The pairs named in ``together`` are grouped first, so their
    tables come from the groups too; another pair is tabulated on its own when asked for."""

    def __init__(self, binnings: list[Binning], weights: tuple[np.ndarray, ...], together: tuple[tuple[str, str], ...] = ()) -> None:
        self.binnings = {b.feature: b for b in binnings}
        self.weights = weights
        ordered = [name for pair in together for name in pair if name in self.binnings]
        ordered = list(dict.fromkeys([*ordered, *self.binnings]))
        groups: list[list[Binning]] = []
        for name in ordered:  # first fit, in order: the paired features land together while they fit
            binning = self.binnings[name]
            size = len(binning.labels)
            fits = [g for g in groups if math.prod(len(b.labels) for b in g) * size <= TABLE_MAX_CELLS]
            if fits:
                fits[0].append(binning)
            else:
                groups.append([binning])
        self.group_of: dict[str, tuple[int, int]] = {}
        self.tables = []
        for index, group in enumerate(groups):
            self.tables.append(_cell_sums(group, weights))
            for axis, binning in enumerate(group):
                self.group_of[binning.feature] = (index, axis)

    def marginal(self, name: str) -> np.ndarray:
        """The feature's (1 + len(weights), bins) sums."""
        index, axis = self.group_of[name]
        table = self.tables[index]
        others = tuple(a + 1 for a in range(table.ndim - 1) if a != axis)
        return table.sum(axis=others) if others else table

    def pair(self, first: str, second: str) -> np.ndarray:
        """The pair's (1 + len(weights), B1, B2) cell sums."""
        (i, a), (j, b) = self.group_of[first], self.group_of[second]
        if i != j:
            return joint_sums(self.binnings[first], self.binnings[second], self.weights)
        table = self.tables[i]
        others = tuple(k + 1 for k in range(table.ndim - 1) if k not in (a, b))
        summed = table.sum(axis=others) if others else table
        return summed if a < b else summed.transpose(0, 2, 1)


def feature_slices(binning: Binning, sums: np.ndarray) -> Iterator[SliceSums]:
    """Each bin, and for numeric features each tail ``x ≤ e`` / ``x > e`` of every inner edge.

    ``sums`` is (4, B): row count, Σdelta, Σdelta², Σbaseline loss per bin.
    """
    for k, label in enumerate(binning.labels):
        yield SliceSums(label, *sums[:, k])
    if binning.edges is None or len(binning.labels) <= 2:
        return
    below = np.cumsum(sums, axis=1)
    total = below[:, -1]
    for k, edge in enumerate(binning.edges[:-1]):  # the last edge's tails are the first and last bins
        if k == 0:
            continue  # x ≤ first edge is bin 0 itself
        yield SliceSums(f"{binning.feature} ≤ {_fmt(edge)}", *below[:, k])
        yield SliceSums(f"{binning.feature} > {_fmt(edge)}", *(total - below[:, k]))


def pair_slices(first: Binning, second: Binning, joint: np.ndarray) -> Iterator[SliceSums]:
    """Cells of two features' bins: ``a-range and b-range``."""
    for i, label_a in enumerate(first.labels):
        for j, label_b in enumerate(second.labels):
            yield SliceSums(f"{label_a} and {label_b}", *joint[:, i, j])


def discover_slices(
    columns: list[tuple[str, np.ndarray]],
    delta: np.ndarray,
    baseline_loss: np.ndarray,
    *,
    tolerance: Tolerance,
    bins: int = 5,
    pairs: int = 3,
    min_size: int = 30,
    seed: int = 0,
    fixed: dict[str, tuple[SliceBins, np.ndarray]] | None = None,
    fixed_pairs: dict[tuple[str, str], np.ndarray] | None = None,
) -> list[SliceStat]:
    """Every single-column slice, then cells of pairs among the ``pairs`` most suspicious columns;
    Holm-adjusted over all slices searched (of at least ``min_size`` rows). ``columns``: (name, values)
    per row; numeric, or text categories (at most 255). A streamed golden set gives ``fixed``: each
    column's bins and per-bin sums over every row, and ``fixed_pairs``: the joint tables, over every row,
    of the pairs it chose up front; ``columns`` and the losses are then its sample (for the pairs without
    a fixed table)."""
    rng = np.random.default_rng(seed)
    weights = (delta, delta * delta, baseline_loss)
    tables: SliceTables | None = None
    if fixed is not None:  # a streamed golden set: each feature's own slices from its sums over every row
        binnings = [fixed[name][0].binning(column) for name, column in columns]
        marginals = {name: sums for name, (_, sums) in fixed.items()}
    else:
        binnings = [bin_feature(name, column, bins, rng) for name, column in columns]
        tables = SliceTables(binnings, weights)
        marginals = {b.feature: tables.marginal(b.feature) for b in binnings}
    stats, strongest = _feature_slice_stats(binnings, marginals, tolerance, min_size)
    if fixed_pairs is not None:
        by_name = {b.feature: b for b in binnings}
        chosen_pairs = [(by_name[a], by_name[b]) for a, b in fixed_pairs]
    else:
        chosen_pairs = _top_pairs(binnings, strongest, pairs)
    for first, second in chosen_pairs:
        if fixed_pairs is not None:
            joint = fixed_pairs[first.feature, second.feature]
        elif tables is not None:
            joint = tables.pair(first.feature, second.feature)
        else:
            joint = joint_sums(first, second, weights)
        for sums in pair_slices(first, second, joint):
            stat = slice_stat(sums, tolerance) if sums.n >= min_size else None
            if stat is not None:
                stats.append(stat)
    return holm(stats)


def _feature_slice_stats(binnings: list[Binning], marginals: dict[str, np.ndarray], tolerance: Tolerance,
                         min_size: int) -> tuple[list[SliceStat], dict[str, float]]:
    """Every single-feature slice of at least ``min_size`` rows, and each feature's smallest p-value."""
    stats: list[SliceStat] = []
    strongest: dict[str, float] = {}
    for binning in binnings:
        for sums in feature_slices(binning, marginals[binning.feature]):
            stat = slice_stat(sums, tolerance) if sums.n >= min_size else None
            if stat is not None:
                stats.append(stat)
                strongest[binning.feature] = min(strongest.get(binning.feature, 1.0), stat.p_value)
    return stats, strongest


def suspicious_pairs(fixed: dict[str, tuple[SliceBins, np.ndarray]], tolerance: Tolerance, min_size: int,
                     pairs: int) -> tuple[tuple[str, str], ...]:
    """From features' bins and per-bin sums: the pairs among the ``pairs`` features whose own slices look
    worst (in feature order), the pairs :func:`discover_slices` would tabulate."""
    binnings = [bins.binning(np.zeros(0)) for bins, _ in fixed.values()]  # labels and edges only
    _, strongest = _feature_slice_stats(binnings, {name: sums for name, (_, sums) in fixed.items()}, tolerance, min_size)
    return tuple((first.feature, second.feature) for first, second in _top_pairs(binnings, strongest, pairs))


def _top_pairs(binnings: list[Binning], strongest: dict[str, float], pairs: int) -> list[tuple[Binning, Binning]]:
    """Every pair among the ``pairs`` features with the smallest p-values, in feature order."""
    top = set(sorted(strongest, key=strongest.get)[:pairs])
    chosen = [b for b in binnings if b.feature in top]
    return [(chosen[a], chosen[c]) for a in range(len(chosen)) for c in range(a + 1, len(chosen))]


@dataclass(frozen=True)
class Region:
    """A one-feature rule that holds every moved row: ``feature > low`` / ``feature < high`` / ``low ≤ feature ≤ high``."""

    feature: str
    low: float | None
    high: float | None
    inside: int  # golden rows the rule holds for
    share_moved: float  # of those, the share that moved

    def words(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:.4g} ≤ {self.feature} ≤ {self.high:.4g}"
        if self.low is not None:
            return f"{self.feature} ≥ {self.low:.4g}"
        return f"{self.feature} ≤ {self.high:.4g}"


def confined_region(columns: list[tuple[str, np.ndarray]], moved: np.ndarray, max_share: float = 0.5) -> Region | None:
    """The tightest single-feature interval holding every moved row, when it holds at most ``max_share`` of
    all rows (else the change is not confined); among features, the one whose interval holds fewest rows.

    One pass per feature (a min, a max and a count): linear in rows × features.
    """
    if not moved.any():
        return None
    best: Region | None = None
    n = len(moved)
    for name, column in columns:
        if column.dtype.kind not in "iufb":
            continue  # categories have no interval
        low, high = float(column[moved].min()), float(column[moved].max())
        inside = int(((column >= low) & (column <= high)).sum())
        if inside > max_share * n or (best is not None and inside >= best.inside):
            continue
        full_low, full_high = float(column.min()), float(column.max())
        best = Region(name, None if low <= full_low else low, None if high >= full_high else high, inside, int(moved.sum()) / inside)
    return best


@dataclass(frozen=True)
class ClassStat:
    """Recall (rows of this true class) or precision (rows predicted as this class) of one class, candidate
    vs baseline, with a paired interval and a one-sided test of ``H0: the drop ≤ tolerance``."""

    measure: str  # "recall" | "precision"
    class_id: int
    n: int  # rows of the class (recall) or predicted as it by either model (precision)
    baseline: float
    candidate: float
    ci_low: float
    ci_high: float
    tolerance: float
    p_value: float
    p_adjusted: float = math.nan

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline


def class_changes(target: np.ndarray, predicted_c: np.ndarray, predicted_b: np.ndarray, classes: int,
                  tolerance: Tolerance, min_size: int, confidence: float = 0.95) -> list[ClassStat]:
    """Per-class recall and precision of both models, each difference with an influence-function interval.

    Recall of class c is a mean over its rows, so its paired influence is the per-row change of
    correctness there; precision is the ratio TP/predicted, linearised like F1. Each row enters at most
    two classes' sums, so every class costs a few ``np.bincount`` passes: linear in rows, not rows × classes.
    """
    from scipy.stats import norm

    n = len(target)
    right_c = (predicted_c == target).astype(float)
    right_b = (predicted_b == target).astype(float)
    stats: list[ClassStat] = []

    size = np.bincount(target, minlength=classes).astype(float)
    recall_c = np.bincount(target, right_c, classes) / np.maximum(size, 1)
    recall_b = np.bincount(target, right_b, classes) / np.maximum(size, 1)
    change = (right_c - recall_c[target]) - (right_b - recall_b[target])
    share = size / n
    spread = np.bincount(target, change * change, classes) / n / np.maximum(share, 1e-300) ** 2
    for c in np.flatnonzero(size >= min_size):
        stats.append(_class_stat("recall", int(c), int(size[c]), recall_b[c], recall_c[c], spread[c], n, tolerance, confidence, norm))

    called_c = np.bincount(predicted_c, minlength=classes).astype(float)
    called_b = np.bincount(predicted_b, minlength=classes).astype(float)
    precision_c = np.bincount(predicted_c, right_c, classes) / np.maximum(called_c, 1)
    precision_b = np.bincount(predicted_b, right_b, classes) / np.maximum(called_b, 1)
    # ψ of precision P = mean(a)/mean(b), a = TP, b = predicted as c: (a − P·b)/mean(b), per model.
    psi_c = (right_c - precision_c[predicted_c]) / np.maximum(called_c[predicted_c] / n, 1e-300)
    psi_b = (right_b - precision_b[predicted_b]) / np.maximum(called_b[predicted_b] / n, 1e-300)
    same = predicted_c == predicted_b
    squares = np.bincount(predicted_c[same], (psi_c[same] - psi_b[same]) ** 2, classes)
    squares += np.bincount(predicted_c[~same], psi_c[~same] ** 2, classes)
    squares += np.bincount(predicted_b[~same], psi_b[~same] ** 2, classes)
    either = called_c + called_b - np.bincount(predicted_c[same], minlength=classes)
    for c in np.flatnonzero((called_c >= min_size) & (called_b >= min_size)):
        stats.append(_class_stat("precision", int(c), int(either[c]), precision_b[c], precision_c[c], squares[c] / n, n, tolerance, confidence, norm))
    return stats


def _class_stat(measure, class_id, size, baseline, candidate, variance, n, tolerance, confidence, norm) -> ClassStat:
    se = math.sqrt(max(float(variance), 0.0) / n)
    delta = float(candidate - baseline)
    half = float(norm.ppf(0.5 + confidence / 2)) * se
    allowed = tolerance.of(float(baseline))
    drop = -delta
    if se == 0:
        p = 0.0 if drop > allowed else 1.0
    else:
        p = float(norm.sf((drop - allowed) / se))
    return ClassStat(measure, class_id, size, float(baseline), float(candidate), delta - half, delta + half, allowed, p)
