"""Mergeable statistics of a streamed golden set. Every one merges by addition (or, for the sample, by keeping
the k smallest keys), so the order and grouping of batches — one process or many Ray workers — changes
nothing but floating-point rounding.

Per quality metric (``STREAMED``): row-level vectors u whose sums Σu and Σuuᵀ (:class:`Moments`) give the
metric of each model *and* the paired influence variance exactly: ψ_candidate − ψ_baseline = wᵀu with w a
function of the means, so Var = wᵀ·Cov(u)·w. Σuuᵀ is kept over the components w weighs; the others are only
summed (R²'s y and y²: the target's variance is held fixed, as in memory). Exact, as the in-memory path:

=============  ==========================================  =====================================
metric         u per row                                    w
=============  ==========================================  =====================================
MAE            (|c−y|, |b−y|)                               (1, −1)
RMSE           ((c−y)², (b−y)²)                             (1/2R_c, −1/2R_b)
R²             ((c−y)², (b−y)², y, y²)                      (−1/v, 1/v), v = E[y²] − E[y]²
accuracy       (right_c, right_b)                           (1, −1)
log loss       (ℓ_c, ℓ_b)                                   (1, −1)
F1             per class (2TP, 2TP+FP+FN) of both models    (1/B_c, −F_c/B_c, −1/B_b, F_b/B_b) / K
=============  ==========================================  =====================================

F1 is exact up to ``F1_MAX_CLASSES`` classes (Σuuᵀ grows with the square of 4·classes); beyond, it is
computed on the uniform sample (:class:`BottomK`) and the report says so.

ROC AUC needs every score's rank, so it is *approximate with a stated bound*: :class:`ScoreHistogram`
counts, per model and class, the rows of the class and the others in ``AUC_BINS`` fixed bins on the logit
scale. A pair of rows in different bins is ordered exactly; a pair in one bin counts one half, as a tie
does, so each AUC is within ± (½ · the share of positive–negative pairs that share a bin) of the exact
value, a bound computed from the counts and reported. The paired interval takes the DeLong variance of
the uniform sample (scaled to the whole set's size) and is widened by both models' bounds.

Newly broken rows (:class:`PairedChanges`): classification flips are *exact* sums; for regression
:class:`ChangeSketch` keeps every row's paired loss change in log buckets under 1 % wide (DDSketch's
mapping), the threshold (centre ± k × MAD) is taken from the buckets, and the rows beyond it are counted
from them: *approximate with a stated bound*, the rows of the one bucket the threshold falls in.
The worst rows are kept by :class:`WorstRows`, an exact top-N over every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..paired import SliceBins, bin_sums

F1_MAX_CLASSES = 16
AUC_BINS = 8192  # on the logit scale over ±AUC_LOGIT_LIMIT: bins 0.005 logits wide
AUC_LOGIT_LIMIT = 20.0  # probabilities beyond 1 ∓ 2·10⁻⁹ share the two end bins
KEY_COLUMNS = 3  # feature columns (with the target) that make a row's sampling key


@dataclass
class Moments:
    """n, Σu and Σuuᵀ over row vectors u: exact and mergeable. Σuuᵀ covers the first components only, those
    the metric's influence weights w involve; the rest are only summed."""

    n: int
    total: np.ndarray  # (components,)
    outer: np.ndarray  # (weighed, weighed)

    @classmethod
    def of(cls, u: list[np.ndarray], weighed: int | None = None) -> Moments:
        """From the vectors' components, each (n,): one sum each and one dot product per pair of the first
        ``weighed`` (default: all), no stacked copy."""
        m = len(u) if weighed is None else weighed
        outer = np.empty((m, m))
        for i in range(m):
            for j in range(i, m):
                # einsum's own loop, not BLAS: OpenBLAS threads spin after each call and slow the models'
                # next batch (measured: the streamed scan ran ~40 % longer with np.dot here).
                outer[i, j] = outer[j, i] = float(np.einsum("i,i->", u[i], u[j]))
        return cls(len(u[0]), np.array([float(v.sum()) for v in u]), outer)

    def merge(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def leading(self, k: int) -> Moments:
        """The sums of the first ``k`` components alone (``k`` at most the weighed ones)."""
        return Moments(self.n, self.total[:k].copy(), self.outer[:k, :k].copy())


def _log_loss(y, p):
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))


def _f1_rows(y, p):
    classes = [1] if p.shape[1] == 2 else range(p.shape[1])
    predicted = p.argmax(axis=1)
    parts = []
    for k in classes:
        actual, called = y == k, predicted == k
        a = 2.0 * (actual & called)
        parts.append((a, a + (called & ~actual) + (actual & ~called)))
    return parts


class RowVectors:
    """The metrics' u per row (see the module table), as lists of (n,) float64 components; what several
    metrics share (the errors, the decisions) is computed once per batch."""

    def __init__(self, y: np.ndarray, c: np.ndarray, b: np.ndarray) -> None:
        self.y, self.c, self.b = y, c, b
        self._cache: dict[str, list[np.ndarray]] = {}

    def _errors(self) -> list[np.ndarray]:
        if "errors" not in self._cache:
            self._cache["errors"] = [self.c - self.y, self.b - self.y]
        return self._cache["errors"]

    def __call__(self, metric: str) -> list[np.ndarray]:
        y, c, b = self.y, self.c, self.b
        if metric == "mae":
            return [np.abs(e) for e in self._errors()]
        if metric == "r2":  # RMSE's u is its first two components (see streamed_moments)
            return [*(e * e for e in self._errors()), y, y * y]
        if metric == "accuracy":
            return [(c.argmax(axis=1) == y).astype(np.float64), (b.argmax(axis=1) == y).astype(np.float64)]
        if metric == "log_loss":
            return [_log_loss(y, c), _log_loss(y, b)]
        if metric == "f1":
            columns = []
            for (a_c, b_c), (a_b, b_b) in zip(_f1_rows(y, c), _f1_rows(y, b)):
                columns += [a_c, b_c, a_b, b_b]
            return [np.asarray(v, dtype=np.float64) for v in columns]
        raise KeyError(metric)


def streamed_metrics(task: str, classes: int) -> tuple[str, ...]:
    if task == "regression":
        return ("mae", "rmse", "r2")
    return ("accuracy", "log_loss") + (("f1",) if classes == 2 or classes <= F1_MAX_CLASSES else ())


WEIGHED = {"r2": 2}  # metric → its components with a nonzero weight in w, when not all (see the module table)


def streamed_moments(task: str, classes: int, vectors: RowVectors) -> dict[str, Moments]:
    """Every streamed metric's :class:`Moments` of these rows. RMSE's u is the first two components of R²'s,
    so its sums are that block of R²'s (the same numbers, without a second pass over the rows)."""
    metrics = streamed_metrics(task, classes)
    moments = {metric: Moments.of(vectors(metric), WEIGHED.get(metric)) for metric in metrics if metric != "rmse"}
    if "rmse" in metrics:
        moments["rmse"] = moments["r2"].leading(2)
    return {metric: moments[metric] for metric in metrics}


def _solve(metric: str, mean: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(candidate value, baseline value, w over the weighed components) from the means of u."""
    if metric in ("mae", "accuracy", "log_loss"):
        return float(mean[0]), float(mean[1]), np.array([1.0, -1.0])
    if metric == "rmse":
        r_c, r_b = math.sqrt(mean[0]), math.sqrt(mean[1])
        return r_c, r_b, np.array([0.5 / r_c if r_c > 0 else 0.0, -0.5 / r_b if r_b > 0 else 0.0])
    if metric == "r2":
        v = float(mean[3] - mean[2] ** 2)
        if v <= 0:
            return math.nan, math.nan, np.full(2, math.nan)
        return 1 - mean[0] / v, 1 - mean[1] / v, np.array([-1 / v, 1 / v])
    if metric == "f1":
        # Binary: class 1's F1 (0 when it is neither in the rows nor predicted). Multiclass: each model's mean
        # over the classes the rows hold or it predicts (b > 0), as in memory.
        k = len(mean) // 4
        b_c, b_b = mean[1::4], mean[3::4]
        used_c, used_b = (b_c > 0, b_b > 0) if k > 1 else (np.ones(1, bool), np.ones(1, bool))
        f_c = np.divide(mean[0::4], b_c, out=np.zeros(k), where=b_c > 0)
        f_b = np.divide(mean[2::4], b_b, out=np.zeros(k), where=b_b > 0)
        w = np.zeros(len(mean))
        w[0::4] = np.divide(1.0, b_c, out=np.zeros(k), where=b_c > 0) * used_c / max(used_c.sum(), 1)
        w[1::4] = -f_c * w[0::4]
        w[2::4] = -np.divide(1.0, b_b, out=np.zeros(k), where=b_b > 0) * used_b / max(used_b.sum(), 1)
        w[3::4] = -f_b * w[2::4]
        return float(f_c[used_c].mean()), float(f_b[used_b].mean()), w
    raise KeyError(metric)


def paired_diff(metric: str, moments: Moments, confidence: float):
    """Candidate − baseline with its t-interval, from the sums alone (the in-memory path's numbers)."""
    from scipy.stats import t

    from ..metrics import PairedDiff

    n = moments.n
    mean = moments.total / n
    value_c, value_b, w = _solve(metric, mean)
    delta = value_c - value_b
    if not (math.isfinite(delta) and n > 1):
        return PairedDiff(value_c, value_b, delta, math.nan, math.nan)
    weighed = mean[: len(moments.outer)]
    covariance = (moments.outer - n * np.outer(weighed, weighed)) / (n - 1)
    variance = max(float(w @ covariance @ w), 0.0)
    half = float(t.ppf(0.5 + confidence / 2.0, n - 1)) * math.sqrt(variance / n)
    return PairedDiff(value_c, value_b, delta, delta - half, delta + half)


@dataclass
class ScoreHistogram:
    """ROC AUC's mergeable statistic (see the module notes). ``counts[m, j, t, bin]``: model m (candidate,
    baseline), class j (class 1 of a binary model, else each class one-vs-rest), t = whether the row is of
    that class; bins 0 and ``AUC_BINS + 1`` take the scores beyond ±``AUC_LOGIT_LIMIT``. Rows with a
    non-finite score are counted in ``nonfinite`` (the AUC is then undefined, as in memory)."""

    counts: np.ndarray
    nonfinite: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, candidate: np.ndarray, baseline: np.ndarray) -> ScoreHistogram:
        classes = [1] if candidate.shape[1] == 2 else list(range(candidate.shape[1]))
        width = AUC_BINS + 2
        counts = np.zeros((2, len(classes), 2, width), dtype=np.int64)
        nonfinite = np.zeros(2, dtype=np.int64)
        for m, probabilities in enumerate((candidate, baseline)):
            scores = probabilities[:, classes]
            finite = np.isfinite(scores).all(axis=1)
            nonfinite[m] = int(len(finite) - finite.sum())
            scores, truth = (scores, y) if nonfinite[m] == 0 else (scores[finite], y[finite])
            with np.errstate(divide="ignore", invalid="ignore"):
                logits = np.log(scores) - np.log1p(-scores)
            bins = np.clip(np.floor((logits + AUC_LOGIT_LIMIT) * (AUC_BINS / (2 * AUC_LOGIT_LIMIT))) + 1, 0, AUC_BINS + 1)
            bins = bins.astype(np.int64)
            for j, k in enumerate(classes):
                keyed = bins[:, j] + width * (truth == k)
                counts[m, j] = bin_sums(keyed, 2 * width).reshape(2, width)
        return cls(counts, nonfinite)

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        return ScoreHistogram(self.counts + other.counts, self.nonfinite + other.nonfinite)

    def classes(self) -> int:
        """How many classes the AUC averages over: those with positive and negative rows (the candidate's
        counts; the baseline's count the same rows), as :func:`release_kit.metrics.auc_classes` picks them."""
        return int(((self.counts[0, :, 0].sum(axis=1) > 0) & (self.counts[0, :, 1].sum(axis=1) > 0)).sum())

    def auc(self, model: int) -> tuple[float, float]:
        """(AUC, its bound): binary, class 1's; multiclass, the macro one-vs-rest mean (and mean bound) over
        the classes with positive and negative rows, as in memory."""
        if self.nonfinite[model]:
            return math.nan, math.nan
        values, bounds = [], []
        for negatives, positives in self.counts[model].astype(np.float64):
            pairs = positives.sum() * negatives.sum()
            if pairs == 0:
                continue  # binary: no AUC (none is left); multiclass: a class the golden set lacks
            below = np.cumsum(negatives) - negatives
            values.append(float(positives @ (below + 0.5 * negatives)) / pairs)
            bounds.append(0.5 * float(positives @ negatives) / pairs)
        if not values:
            return math.nan, math.nan
        return float(np.mean(values)), float(np.mean(bounds))


def paired_auc(histogram: ScoreHistogram, sample_diff, sample_rows: int, rows: int):
    """ROC AUC over every row from the histogram, with the sample's paired DeLong interval scaled to
    ``rows`` and widened by both models' bounds. Returns (PairedDiff, the larger of the two bounds)."""
    from ..metrics import PairedDiff

    (value_c, bound_c), (value_b, bound_b) = histogram.auc(0), histogram.auc(1)
    delta = value_c - value_b
    half = (sample_diff.ci_high - sample_diff.ci_low) / 2 * math.sqrt(sample_rows / rows)
    widened = half + bound_c + bound_b
    return PairedDiff(value_c, value_b, delta, delta - widened, delta + widened), max(bound_c, bound_b)


SKETCH_SMALLEST = 2.0**-30  # ~1e-9: smaller changes count as none (rounding); a power of two, so a bucket edge
SKETCH_LARGEST = 1e12  # larger changes share the top bucket
# A change's bucket is the top bits of its float64 (exponent and 7 mantissa bits): 128 buckets per power of
# two, each at most 1/128 ≈ 0.8 % of its values wide (DDSketch's linearly interpolated mapping), found by
# one shift instead of a logarithm.
_SHIFT = 52 - 7
_FIRST = int(np.float64(SKETCH_SMALLEST).view(np.int64) >> _SHIFT)
SKETCH_BUCKETS = int(np.float64(SKETCH_LARGEST).view(np.int64) >> _SHIFT) - _FIRST + 1


@dataclass
class ChangeSketch:
    """Counts of the paired loss changes in log buckets (DDSketch's linearly interpolated mapping), one array per sign,
    and the changes too small to count: merged by addition, so every engine and batching agrees."""

    positive: np.ndarray
    negative: np.ndarray
    small: int

    @classmethod
    def of(cls, delta: np.ndarray) -> ChangeSketch:
        delta = np.asarray(delta, dtype=np.float64)
        if not np.isfinite(delta.sum()):  # rare: a non-finite change is the output contract's to report
            delta = delta[np.isfinite(delta)]
        # One count over (sign, bucket), bucket 0 of each sign for the changes too small to count.
        width = SKETCH_BUCKETS + 1
        buckets = np.clip((np.abs(delta).view(np.int64) >> _SHIFT) - (_FIRST - 1), 0, width - 1)
        buckets += width * (delta < 0)
        counts = bin_sums(buckets, 2 * width)
        return cls(counts[1:width], counts[width + 1 :], int(counts[0] + counts[width]))

    def merge(self, other: ChangeSketch) -> ChangeSketch:
        return ChangeSketch(self.positive + other.positive, self.negative + other.negative, self.small + other.small)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The counted changes as (each non-empty bucket's middle value, its count), ascending: what the
        newly-broken threshold is taken from (each value within half a bucket, < 0.4 %, of its rows')."""
        def middles(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            occupied = np.flatnonzero(counts)
            low = ((occupied + _FIRST).astype(np.int64) << _SHIFT).view(np.float64)
            high = ((occupied + _FIRST + 1).astype(np.int64) << _SHIFT).view(np.float64)
            return (low + high) / 2, counts[occupied]

        (up, up_counts), (down, down_counts) = middles(self.positive), middles(self.negative)
        return np.concatenate([-down[::-1], up]), np.concatenate([down_counts[::-1], up_counts])

    def count_above(self, threshold: float) -> tuple[int, int]:
        """Rows whose change exceeds ``threshold``: (fewest, most). Only the bucket holding the threshold
        is undecided (the changes too small to count, when the threshold is that small)."""
        return _count_greater(self.positive, self.negative, self.small, threshold)

    def count_below(self, threshold: float) -> tuple[int, int]:
        """Rows whose change is below ``threshold``: (fewest, most)."""
        return _count_greater(self.negative, self.positive, self.small, -threshold)


def _bucket(size: float) -> int:
    return min(int(np.float64(size).view(np.int64) >> _SHIFT) - _FIRST, SKETCH_BUCKETS - 1)


def _count_greater(same: np.ndarray, other: np.ndarray, small: int, threshold: float) -> tuple[int, int]:
    """Changes > ``threshold`` from the buckets of that sign (``same``) and of the other sign."""
    if threshold >= SKETCH_SMALLEST:
        bucket = _bucket(threshold)
        above = int(same[bucket + 1 :].sum())
        return above, above + int(same[bucket])
    every = int(same.sum())
    if threshold > -SKETCH_SMALLEST:
        return every, every + small
    bucket = _bucket(-threshold)  # the other sign's changes smaller than |threshold| are above it too
    above = every + small + int(other[:bucket].sum())
    return above, above + int(other[bucket])


TOP_BLOCK_ROWS = 1024


def _top_block_rows(values: np.ndarray, n: int) -> np.ndarray:
    """The rows of the blocks (``TOP_BLOCK_ROWS`` each) whose maximum is at least the n-th largest block
    maximum, and the last partial block: they hold every value ≥ the n-th largest (n blocks hold a value ≥
    that maximum M, so the n-th largest value is ≥ M, and a block holding such a value has a maximum ≥ M).
    One pass of block maxima instead of a partition of every row."""
    blocks = len(values) // TOP_BLOCK_ROWS
    if blocks <= 2 * n:
        return np.arange(len(values))
    maxima = values[: blocks * TOP_BLOCK_ROWS].reshape(blocks, TOP_BLOCK_ROWS).max(axis=1)
    chosen = np.flatnonzero(maxima >= -np.partition(-maxima, n - 1)[n - 1])
    if len(chosen) > blocks // 2:  # many tied blocks (e.g. identical models): every row
        return np.arange(len(values))
    inside = (chosen[:, None] * TOP_BLOCK_ROWS + np.arange(TOP_BLOCK_ROWS)).ravel()
    return np.concatenate([inside, np.arange(blocks * TOP_BLOCK_ROWS, len(values))])


@dataclass
class WorstRows:
    """The ``n`` rows whose loss grew most over every row (ties by row key, so every engine keeps the same
    rows): merged by keeping the top ``n`` of both."""

    n: int
    delta: np.ndarray
    keys: np.ndarray
    arrays: dict[str, np.ndarray]

    @classmethod
    def of(cls, n: int, delta: np.ndarray, keys: np.ndarray, arrays: dict[str, np.ndarray]) -> WorstRows:
        if np.isfinite(delta.sum()):  # every change finite: only the blocks that can hold the top n
            rows = _top_block_rows(delta, n)
        else:  # a non-finite change is the output contract's to report
            rows = np.flatnonzero(np.isfinite(delta))
        if len(rows) > n:
            # The n-th largest change; of the rows tied with it, those with the smallest keys (O(rows), even
            # when most changes are equal, as for identical models).
            kth = -np.partition(-delta[rows], n - 1)[n - 1]
            above, tied = rows[delta[rows] > kth], rows[delta[rows] == kth]
            wanted = n - len(above)
            if len(tied) > wanted:
                tied = tied[np.argpartition(keys[tied], wanted - 1)[:wanted]]
            rows = np.concatenate([above, tied])
        order = rows[np.lexsort((keys[rows], -delta[rows]))]
        return cls(n, delta[order], keys[order], {name: a[order] for name, a in arrays.items()})

    def merge(self, other: WorstRows) -> WorstRows:
        arrays = {name: np.concatenate([a, other.arrays[name]]) for name, a in self.arrays.items()}
        delta, keys = np.concatenate([self.delta, other.delta]), np.concatenate([self.keys, other.keys])
        order = np.lexsort((keys, -delta))[: self.n]
        return WorstRows(self.n, delta[order], keys[order], {name: a[order] for name, a in arrays.items()})


@dataclass
class PairedChanges:
    """What the newly-broken check needs from every row: the changes' sketch, the worst rows, and for
    classification the exact counts of decisions that went right → wrong and wrong → right."""

    sketch: ChangeSketch
    worst: WorstRows
    flips: np.ndarray | None = None  # (broke, fixed), classification

    def merge(self, other: PairedChanges) -> PairedChanges:
        flips = None if self.flips is None else self.flips + other.flips
        return PairedChanges(self.sketch.merge(other.sketch), self.worst.merge(other.worst), flips)


@dataclass
class ContractCounts:
    """The output contract over every row: rows per kind of violation (candidate and baseline), rows that
    break it and how many of those the baseline did not, and a few offending rows."""

    candidate: dict[str, int]
    baseline: dict[str, int]
    bad: int
    introduced: int
    examples: BottomK

    @classmethod
    def of(cls, spec, keys: np.ndarray, arrays: dict[str, np.ndarray]) -> ContractCounts:
        from ..contract import EXAMPLES, violations

        candidate = violations(arrays["candidate"], spec)
        baseline = violations(arrays["baseline"], spec) if "baseline" in arrays else {}
        rows = len(keys)
        bad = np.logical_or.reduce(list(candidate.values())) if candidate else np.zeros(rows, dtype=bool)
        baseline_bad = np.logical_or.reduce(list(baseline.values())) if baseline else np.zeros(rows, dtype=bool)
        offending = np.flatnonzero(bad)
        # The offending rows with the smallest row keys: the same ones in any engine and batching.
        examples = BottomK.of(EXAMPLES, keys[offending], {name: a[offending] for name, a in arrays.items()})
        return cls({k: int(m.sum()) for k, m in candidate.items()}, {k: int(m.sum()) for k, m in baseline.items()},
                   len(offending), int((bad & ~baseline_bad).sum()), examples)

    def merge(self, other: ContractCounts) -> ContractCounts:
        return ContractCounts(_summed(self.candidate, other.candidate), _summed(self.baseline, other.baseline),
                              self.bad + other.bad, self.introduced + other.introduced, self.examples.merge(other.examples))


def _summed(first: dict, second: dict) -> dict:
    return {key: first.get(key, 0) + second.get(key, 0) for key in {**first, **second}}


@dataclass(frozen=True)
class ValueRange:
    """A range expectation's bounds (GX's ``expect_column_values_to_be_between``), whose exceptions a streamed
    golden set counts over every row: with GX's ``mostly``, a range may hold with a few values outside, and
    the column's minimum and maximum alone cannot tell how many."""

    low: float | None
    high: float | None
    strict_low: bool = False
    strict_high: bool = False

    def outside(self, values: np.ndarray) -> int:
        """The values outside, as GX counts them: NaN is missing (never outside), ±inf is a value."""
        # Compared as pandas compares a column with a Python number (numpy's rules): GX's own comparison.
        below = None if self.low is None else (values <= self.low if self.strict_low else values < self.low)
        above = None if self.high is None else (values >= self.high if self.strict_high else values > self.high)
        if below is None or above is None:
            return int(np.count_nonzero(above if below is None else below))
        return int(np.count_nonzero(below | above))


@dataclass(frozen=True)
class ValueSet:
    """A set expectation's values (GX's ``expect_column_values_to_be_in_set``), whose exceptions a streamed
    golden set counts over every row, as :class:`ValueRange`'s."""

    values: tuple

    def outside(self, values: np.ndarray) -> int:
        """The values not in the set, as GX counts them (pandas' ``isin``): a null or NaN is missing."""
        import pandas as pd

        column = pd.Series(values, copy=False)
        return int((~column.isin(self.values) & column.notna()).sum())

    def outside_text(self, column) -> int:
        """:meth:`outside` of a text column as Arrow holds it (plain or dictionary-encoded text): a lookup in
        Arrow's hash table, ~4× faster than pandas' ``isin`` over Python strings (13 against 50 ms for a
        1,000,000-row batch: benchmarks/data_stage.py). Only the set's text can equal a text value, as in
        pandas."""
        import pyarrow as pa
        import pyarrow.compute as pc

        text = column if pa.types.is_string(column.type) else column.cast(pa.string())
        found = pc.is_in(text, value_set=pa.array([v for v in self.values if isinstance(v, str)], pa.string()))
        return int(pc.sum(pc.and_(pc.invert(found), pc.is_valid(text))).as_py() or 0)


ValueCondition = ValueRange | ValueSet


@dataclass(frozen=True)
class ValueMoments:
    """A numeric column's non-null values (NaN is null, ±inf a value, as pandas counts them): how many, their
    sum, and their squared deviations from their mean, merged by Chan's rule. What GX's column mean, standard
    deviation (n − 1) and sum expectations observe, over every row of a streamed set."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0  # Σ (x − mean)²

    @classmethod
    def of(cls, values: np.ndarray) -> ValueMoments:
        if not len(values):
            return cls()
        total = float(values.sum(dtype=np.float64))
        if not math.isfinite(total):  # an infinite value has no deviation: GX's stdev is none then
            return cls(len(values), total, math.nan)
        deviations = values.astype(np.float64, copy=False) - total / len(values)
        return cls(len(values), total, float(np.einsum("i,i->", deviations, deviations)))  # einsum: see Moments.of

    def merge(self, other: ValueMoments) -> ValueMoments:
        if not other.count or not self.count:
            return other if not self.count else self
        count = self.count + other.count
        shift = other.total / other.count - self.total / self.count
        return ValueMoments(count, self.total + other.total, self.squares + other.squares + shift * shift * self.count * other.count / count)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def stdev(self) -> float:
        return math.sqrt(self.squares / (self.count - 1)) if self.count > 1 and self.squares >= 0 else math.nan


@dataclass
class ColumnCounts:
    """Per column over every row: values that are NaN/inf (or null), the nulls (NaN or null) among them, the
    finite minimum and maximum, the values outside each counted :data:`ValueCondition`, and for the columns
    asked for, the :class:`ValueMoments` of their non-null values."""

    bad: dict[str, int] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    outside: dict[tuple[str, ValueCondition], int] = field(default_factory=dict)
    moments: dict[str, ValueMoments] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray, limit: float | None = None, conditions: tuple[ValueCondition, ...] = (),
            moments: bool = False) -> np.ndarray | None:
        """Count one numeric column's values; returns its mask of bad (NaN/inf) values, None when there are
        none. ``limit``: finite values beyond ±limit are bad too (in the mask, counted in the range, not as
        NaN/inf): a float64 feature beyond float32's range is infinite as the models read it. ``moments``:
        sum the column's :class:`ValueMoments` too."""
        for condition in conditions:
            self.outside.setdefault((name, condition), 0)
        self.nulls.setdefault(name, 0)
        if not len(values):
            return None
        low, high = _range(values)
        # A NaN makes min NaN and an infinity shows as the min or max: when both are finite, so is every value.
        bad = None
        if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
            bad = ~np.isfinite(values)
            kept = values[~bad]
            low, high = (kept.min(), kept.max()) if len(kept) else (math.inf, -math.inf)
            self.nulls[name] += int(np.count_nonzero(np.isnan(values)))
        self.bad[name] = self.bad.get(name, 0) + (int(bad.sum()) if bad is not None else 0)
        self.low[name] = min(self.low.get(name, math.inf), float(low))
        self.high[name] = max(self.high.get(name, -math.inf), float(high))
        # The batch's range tells when none of its values can be outside a range: most batches skip its pass.
        extremes = np.array([low, high], dtype=values.dtype) if bad is None else None
        for condition in conditions:
            if extremes is None or not isinstance(condition, ValueRange) or condition.outside(extremes):
                self.outside[(name, condition)] += condition.outside(values)
        if moments:
            present = values if bad is None else values[~np.isnan(values)]
            self.moments[name] = self.moments.get(name, ValueMoments()).merge(ValueMoments.of(present))
        if limit is not None and (low < -limit or high > limit):  # the range tells: most batches skip this pass
            beyond = np.abs(values) > limit
            bad = beyond if bad is None else bad | beyond
        return bad

    def add_other(self, name: str, column, sets: tuple[ValueSet, ...] = ()) -> None:
        """Count a non-numeric column (Arrow's): its nulls (it has no range) and its values outside each set
        (a text column's in Arrow, any other's as pandas compares them)."""
        from .source import arrow_kind

        self.bad[name] = self.bad.get(name, 0) + column.null_count
        self.nulls[name] = self.nulls.get(name, 0) + column.null_count
        text = arrow_kind(column.type) in ("text", "categories of text")
        for value_set in sets:
            key = (name, value_set)
            counted = 0 if not len(column) else value_set.outside_text(column) if text else value_set.outside(column.to_numpy(zero_copy_only=False))
            self.outside[key] = self.outside.get(key, 0) + counted

    def merge(self, other: ColumnCounts) -> ColumnCounts:
        moments = {name: self.moments.get(name, ValueMoments()).merge(other.moments.get(name, ValueMoments()))
                   for name in {**self.moments, **other.moments}}
        merged = ColumnCounts(_summed(self.bad, other.bad), dict(self.low), dict(self.high),
                              _summed(self.nulls, other.nulls), _summed(self.outside, other.outside), moments)
        for name, value in other.low.items():
            merged.low[name] = min(merged.low.get(name, math.inf), value)
        for name, value in other.high.items():
            merged.high[name] = max(merged.high.get(name, -math.inf), value)
        return merged


RANGE_PART_ROWS = 131_072  # values per minimum and maximum pass (see _range)


def _range(values: np.ndarray):
    """(min, max) a part at a time: the maximum's pass reads the part from cache, not the column again from
    memory (measured: 11 columns of 1,000,000 float32 values 1.7 ms instead of 2.6)."""
    if len(values) <= RANGE_PART_ROWS:
        return values.min(), values.max()
    parts = [(part.min(), part.max()) for part in (values[start : start + RANGE_PART_ROWS] for start in range(0, len(values), RANGE_PART_ROWS))]
    lows, highs = zip(*parts)
    return np.min(lows), np.max(highs)


def row_keys(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's content (its first feature columns, as float32, and its target): the same
    row gets the same key in any engine and any batch, so the sample does not depend on how rows were split."""
    keys, term = np.zeros(len(target), dtype=np.uint64), np.empty(len(target), dtype=np.uint64)
    with np.errstate(over="ignore"):
        # A few columns identify a row well enough for sampling; hashing every column would cost as much as
        # running a small model. Each step writes into one of two buffers: no array allocated per step.
        for j, values in enumerate(columns[:KEY_COLUMNS]):
            np.copyto(term, np.ascontiguousarray(values, dtype=np.float32).view(np.uint32))
            term *= np.uint64((0x9E3779B97F4A7C15 * (j + 1)) % 2**64 | 1)
            keys += term
        np.multiply(np.ascontiguousarray(target, dtype=np.float64).view(np.uint64), np.uint64(0xBF58476D1CE4E5B9), out=term)
        keys ^= term
        keys ^= np.right_shift(keys, np.uint64(31), out=term)
        keys *= np.uint64(0x94D049BB133111EB)
        keys ^= np.right_shift(keys, np.uint64(29), out=term)
    return keys


def key_threshold(sample_rows: int, total_rows: int) -> np.uint64:
    """Keys below this are kept by a batch: about ``sample_rows`` of ``total_rows`` (twice that, to be sure of
    k after the final trim), so a batch ships its small share of the sample, not every row."""
    share = min(1.0, 2.0 * sample_rows / max(total_rows, 1))
    return np.uint64(np.iinfo(np.uint64).max) if share >= 1.0 else np.uint64(int(share * float(2**64 - 1)))


@dataclass
class BottomK:
    """A uniform sample of at most k rows: the rows with the k smallest content keys. Merging keeps the k
    smallest of both, so every engine and batching keeps the same rows. Merges only collect parts; the
    parts are combined and cut to k once they hold more than 2k rows, so a merge costs its batch's share,
    not a copy of the whole sample."""

    k: int
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]
    size: int

    @classmethod
    def of(cls, k: int, keys: np.ndarray, arrays: dict[str, np.ndarray], below: np.uint64 | None = None) -> BottomK:
        # The rows kept are taken once, by index (few rows: that beats a boolean mask); an array that is
        # not one yet (a matrix kept as its columns) becomes one. Every row kept is a copy, also when a
        # part keeps all its rows: a view of a part would keep its whole batch alive in the merged sample.
        rows = None
        if below is not None:
            kept = np.flatnonzero(keys < below)
            if len(kept) < len(keys):
                rows, keys = kept, keys[kept]
        if len(keys) > k:
            keep = np.argpartition(keys, k - 1)[:k]
            rows, keys = (keep if rows is None else rows[keep]), keys[keep]
        taken = {name: np.array(a) if rows is None else a[rows] for name, a in arrays.items()}
        return cls(k, [(keys, taken)], len(keys))

    def merge(self, other: BottomK) -> BottomK:
        merged = BottomK(self.k, self.parts + other.parts, self.size + other.size)
        return merged.compacted() if merged.size > 2 * self.k else merged

    def compacted(self) -> BottomK:
        """One part of at most k rows."""
        keys, kept = self._kept()
        return BottomK(self.k, [(keys[kept], self._taken(kept))], len(kept))

    def ordered(self) -> dict[str, np.ndarray]:
        """The sample's rows by key: a deterministic order whatever the merge order."""
        if not self.parts:
            return {}
        keys, kept = self._kept()
        return self._taken(kept[np.argsort(keys[kept], kind="stable")])

    def _kept(self) -> tuple[np.ndarray, np.ndarray]:
        """Every part's keys, joined, and the positions of the k smallest among them."""
        keys = np.concatenate([keys for keys, _ in self.parts])
        return keys, np.argpartition(keys, self.k - 1)[: self.k] if len(keys) > self.k else np.arange(len(keys))

    def _taken(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The parts' ``rows`` (positions in their joined rows), a column at a time: the rows kept are held once
        beside the parts, where joining every column first held them twice more (a sample of 1,000,000 wide
        rows is gigabytes: its compaction was a scan's peak)."""
        return {name: np.concatenate([arrays[name] for _, arrays in self.parts])[rows] for name in self.parts[0][1]}


@dataclass
class ScanSummary:
    """Everything the gate keeps of a streamed golden set."""

    rows: int  # rows read
    excluded: dict[str, int]  # column → rows with a NaN/inf or impossible value there
    excluded_rows: int
    quality: dict[str, Moments]
    counts: ColumnCounts
    sample: BottomK
    classes: int = 0  # classification: the models' output width
    scores: ScoreHistogram | None = None  # classification with a baseline: ROC AUC over every row
    drift: dict[str, np.ndarray] = field(default_factory=dict)  # feature → counts in its drift bins, every row
    changes: PairedChanges | None = None  # with a baseline, when the outlier stage runs
    # Feature → its slice bins and per-bin (rows, Σd, Σd², Σbaseline loss) over every row.
    slices: dict[str, tuple[SliceBins, np.ndarray]] = field(default_factory=dict)
    slice_pairs: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (a, b) → its joint table
    contract: ContractCounts | None = None  # the output contract over every row

    def merge(self, other: ScanSummary) -> ScanSummary:
        excluded = dict(self.excluded)
        for name, count in other.excluded.items():
            excluded[name] = excluded.get(name, 0) + count
        quality = {name: _merged(self.quality.get(name), other.quality.get(name)) for name in {**self.quality, **other.quality}}
        return ScanSummary(self.rows + other.rows, excluded, self.excluded_rows + other.excluded_rows, quality,
                           self.counts.merge(other.counts), self.sample.merge(other.sample), max(self.classes, other.classes),
                           _merged(self.scores, other.scores), {name: self.drift[name] + other.drift[name] for name in self.drift},
                           _merged(self.changes, other.changes),
                           _added_slices(self.slices, other.slices), _added(self.slice_pairs, other.slice_pairs),
                           _merged(self.contract, other.contract))

    @property
    def used_rows(self) -> int:
        return self.rows - self.excluded_rows


def _merged(first, second):
    """Two batches' optional statistic: one may lack it (a batch with no usable row)."""
    if first is None or second is None:
        return first if second is None else second
    return first.merge(second)


def _added_slices(first: dict, second: dict) -> dict:
    if not first or not second:
        return first or second
    return {name: (bins, sums + second[name][1]) for name, (bins, sums) in first.items()}


def _added(first: dict, second: dict) -> dict:
    if not first or not second:
        return first or second
    return {key: table + second[key] for key, table in first.items()}
