"""Paired per-sample analysis and slice statistics: the numeric core of the outlier stage.

Everything here works on the per-sample loss delta ``d = loss_candidate − loss_baseline`` (absolute error
for regression, log loss for classification) and is linear in the number of rows after at most one
partial sort: a slice's mean and variance come from per-bin sums (``np.bincount``), so the tails
``x ≤ e`` and ``x > e`` of every quantile edge cost prefix sums, not passes over the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

MAD_TO_SIGMA = 1.4826
CATEGORICAL_MAX_LEVELS = 12
EDGE_SAMPLE_ROWS = 200_000


def per_sample_loss(task: str, target: np.ndarray, predictions: np.ndarray) -> np.ndarray:

    if task == "regression":
        return np.abs(predictions - target)
    picked = predictions[np.arange(len(target)), target]
    return -np.log(np.clip(picked, 1e-15, 1.0))


@dataclass(frozen=True)
class RobustChange:
    broke: np.ndarray  # bool mask
    fixed: np.ndarray
    threshold: float  # a change beyond median ± threshold counts


def newly_broken(delta: np.ndarray, k_mad: float, min_increase: float) -> RobustChange:
    """Rows whose loss grew (fell) beyond k × MAD of the deltas of the rows that changed at all.

    The MAD is taken over changed rows only: when most rows are untouched (night-time zeros, identical
    sub-networks) the plain MAD is 0 and every rounding difference would count as a break.
    """

    changed = delta[delta != 0]
    if len(changed) == 0:
        empty = np.zeros(len(delta), dtype=bool)
        return RobustChange(empty, empty, math.inf)
    centre = float(np.median(changed))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(changed - centre)))
    threshold = max(k_mad * spread, min_increase, 1e-12)
    return RobustChange(delta - centre > threshold, centre - delta > threshold, threshold)


def robust_outliers(values: np.ndarray, k_mad: float) -> np.ndarray:
    """Rows where ``values`` (≥ 0, e.g. a shift) is extreme: beyond median + k × MAD of the non-zero values.

    Like :func:`newly_broken`, the scale comes from rows that moved at all.
    """
    moved = values[values != 0]
    if len(moved) == 0:
        return np.zeros(len(values), dtype=bool)
    finite = moved[np.isfinite(moved)]
    if len(finite) == 0:
        return values != 0
    centre = float(np.median(finite))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(finite - centre)))
    return values - centre > max(k_mad * spread, 1e-12)


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


def slice_stat(sums: SliceSums, tolerance: tuple[float, bool], confidence: float = 0.95) -> SliceStat | None:
    """Mean, interval and one-sided p-value from a slice's sums; None when the slice has < 2 rows."""
    from scipy.stats import t

    n = int(round(sums.n))
    if n < 2:
        return None
    mean = sums.sum_delta / n
    variance = max((sums.sum_delta_sq - n * mean * mean) / (n - 1), 0.0)
    se = math.sqrt(variance / n)
    baseline = sums.sum_baseline / n
    amount, relative = tolerance
    allowed = amount * baseline if relative else amount
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0:
        p = 0.0 if mean > allowed else 1.0
    else:
        p = float(t.sf((mean - allowed) / se, n - 1))
    return SliceStat(sums.description, n, mean, mean - half, mean + half, baseline, allowed, p)


def holm(stats: list[SliceStat]) -> list[SliceStat]:
    """Holm–Bonferroni adjusted p-values (valid under any dependence between overlapping slices)."""
    order = sorted(range(len(stats)), key=lambda i: stats[i].p_value)
    adjusted = [1.0] * len(stats)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(stats) - rank) * stats[index].p_value))
        adjusted[index] = running
    return [replace(stat, p_adjusted=value) for stat, value in zip(stats, adjusted)]


@dataclass(frozen=True)
class Binning:
    """A feature cut into bins: ``labels[k]`` describes bin k; tails exist for ordered (numeric) bins."""

    feature: str
    codes: np.ndarray  # uint8 bin per row
    labels: list[str]
    edges: list[float] | None  # inner edges for numeric bins; None for categories


def bin_feature(name: str, column: np.ndarray, bins: int, rng: np.random.Generator) -> Binning:

    sample = column if len(column) <= EDGE_SAMPLE_ROWS else column[rng.integers(0, len(column), EDGE_SAMPLE_ROWS)]
    levels = np.unique(sample)
    if len(levels) <= CATEGORICAL_MAX_LEVELS and np.all(levels == np.round(levels)):
        levels = np.unique(column) if len(column) > len(sample) else levels
        if len(levels) <= CATEGORICAL_MAX_LEVELS:
            codes = np.searchsorted(levels, column).astype(np.uint8)
            return Binning(name, codes, [f"{name} = {_fmt(v)}" for v in levels], None)
    edges = np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1)[1:-1]))
    codes = np.searchsorted(edges, column, side="left").astype(np.uint8)  # bin k: edges[k-1] < x ≤ edges[k]
    bounds = [-math.inf, *edges.tolist(), math.inf]
    labels = [_range_label(name, bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
    return Binning(name, codes, labels, edges.tolist())


def _range_label(name: str, low: float, high: float) -> str:
    if math.isinf(low):
        return f"{name} ≤ {_fmt(high)}"
    if math.isinf(high):
        return f"{name} > {_fmt(low)}"
    return f"{_fmt(low)} < {name} ≤ {_fmt(high)}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def binned_sums(codes: np.ndarray, size: int, delta, delta_sq, baseline) -> tuple[np.ndarray, ...]:

    return (
        np.bincount(codes, minlength=size).astype(float),
        np.bincount(codes, weights=delta, minlength=size),
        np.bincount(codes, weights=delta_sq, minlength=size),
        np.bincount(codes, weights=baseline, minlength=size),
    )


def feature_slices(binning: Binning, delta, delta_sq, baseline) -> Iterator[SliceSums]:
    """Each bin, and for numeric features each tail ``x ≤ e`` / ``x > e`` of every inner edge."""
    size = len(binning.labels)
    count, s, q, b = binned_sums(binning.codes, size, delta, delta_sq, baseline)
    for k, label in enumerate(binning.labels):
        yield SliceSums(label, count[k], s[k], q[k], b[k])
    if binning.edges is None or size <= 2:
        return
    totals = count.sum(), s.sum(), q.sum(), b.sum()
    running = [0.0, 0.0, 0.0, 0.0]
    for k, edge in enumerate(binning.edges[:-1]):  # the last edge's tails are the first and last bins
        running = [r + part[k] for r, part in zip(running, (count, s, q, b))]
        if k == 0:
            continue  # x ≤ first edge is bin 0 itself
        yield SliceSums(f"{binning.feature} ≤ {_fmt(edge)}", *running)
        yield SliceSums(f"{binning.feature} > {_fmt(edge)}", *(t - r for t, r in zip(totals, running)))


def pair_slices(first: Binning, second: Binning, delta, delta_sq, baseline) -> Iterator[SliceSums]:
    """Cells of two features' bins: ``a-range and b-range``."""
    width = len(second.labels)
    codes = first.codes.astype(np.int32) * width + second.codes
    count, s, q, b = binned_sums(codes, len(first.labels) * width, delta, delta_sq, baseline)
    for i, label_a in enumerate(first.labels):
        for j, label_b in enumerate(second.labels):
            cell = i * width + j
            yield SliceSums(f"{label_a} and {label_b}", count[cell], s[cell], q[cell], b[cell])


def discover_slices(
    features: np.ndarray,
    names: list[str],
    delta: np.ndarray,
    baseline_loss: np.ndarray,
    *,
    tolerance: tuple[float, bool],
    bins: int = 5,
    pairs: int = 4,
    min_size: int = 30,
    seed: int = 0,
) -> list[SliceStat]:
    """Every single-feature slice, then cells of pairs among the ``pairs`` most suspicious features;
    Holm-adjusted over all slices searched (of at least ``min_size`` rows)."""

    rng = np.random.default_rng(seed)
    delta_sq = delta * delta
    binnings = [bin_feature(name, features[:, j], bins, rng) for j, name in enumerate(names)]
    stats: list[SliceStat] = []
    strongest: dict[str, float] = {}
    for binning in binnings:
        for sums in feature_slices(binning, delta, delta_sq, baseline_loss):
            stat = slice_stat(sums, tolerance) if sums.n >= min_size else None
            if stat is not None:
                stats.append(stat)
                strongest[binning.feature] = min(strongest.get(binning.feature, 1.0), stat.p_value)
    top = sorted(strongest, key=strongest.get)[:pairs]
    chosen = [b for b in binnings if b.feature in top]
    for a in range(len(chosen)):
        for c in range(a + 1, len(chosen)):
            for sums in pair_slices(chosen[a], chosen[c], delta, delta_sq, baseline_loss):
                stat = slice_stat(sums, tolerance) if sums.n >= min_size else None
                if stat is not None:
                    stats.append(stat)
    return holm(stats)

