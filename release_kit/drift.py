"""Drift of a dataset from a reference, per feature.

PSI (population stability index) measures how far the distribution moved, over the reference's quantile
bins (categories for integer features with few values), on every row. A two-sample test says whether the
move is more than sampling noise: Kolmogorov–Smirnov for numeric features, chi-square for categorical ones,
on at most ``test_rows`` sampled rows per side (with millions of rows any difference is "significant", so
the effect size decides), Holm-adjusted over the features. A feature drifts when both say so; when PSI says
so and the test cannot (too few rows), its drift is undecided, not absent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

CATEGORICAL_MAX_LEVELS = 20
PSI_FLOOR = 1e-4  # keeps log(0) out of PSI for bins one side never visits


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    test: str  # "ks" | "chi2"
    psi: float
    statistic: float
    p_value: float
    p_adjusted: float = 1.0
    drifted: bool = False
    # Neither drifted nor stable: PSI at or beyond the threshold, yet the test cannot tell the move from
    # sampling noise (too few rows: a handful always shows a large PSI), or a PSI or p-value that is no number.
    undecided: bool = False


def psi(reference_share: np.ndarray, current_share: np.ndarray) -> float:
    ref = np.clip(reference_share, PSI_FLOOR, None)
    cur = np.clip(current_share, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True)
class Bins:
    """A feature's PSI bins, fixed by the reference: its levels (a categorical feature, integers with few
    values; other values share one extra bin) or its quantile edges. Counting values into them is all a
    streamed golden set needs to give PSI over every row: counts of batches add up."""

    categorical: bool
    cuts: np.ndarray  # the levels, or the inner edges

    @classmethod
    def of(cls, reference: np.ndarray, bins: int) -> Bins:
        levels = np.unique(reference[: min(len(reference), 100_000)])
        if len(levels) <= CATEGORICAL_MAX_LEVELS and np.array_equal(levels, np.round(levels)):
            return cls(True, np.unique(reference))
        return cls(False, np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])))

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Values per bin: ``len(cuts) + 1`` counts (the last a categorical feature's unseen values)."""
        # One comparison and one count per cut: no per-value bin index, no binary search (a searchsorted
        # over an unsorted column is ~10× slower), the counts are differences of counts above each edge.
        cuts = _cuts_for(self.cuts, values.dtype, self.categorical)
        if self.categorical:
            counts = np.array([np.count_nonzero(values == level) for level in cuts] + [0])
            counts[-1] = len(values) - counts.sum()
            return counts
        above = np.array([len(values), *(np.count_nonzero(values > cut) for cut in cuts), 0])
        return above[:-1] - above[1:]


def _cuts_for(cuts: np.ndarray, dtype: np.dtype, levels: bool) -> np.ndarray:
    """The cuts in a float32 column's own type, giving the float64 comparisons' results: for float32 x,
    x > c ⟺ x > the largest float32 ≤ c, and a level no float32 equals becomes NaN (equal to nothing). So
    a float32 column is compared as it is, never widened (no copy, half the memory traffic)."""
    if dtype != np.float32:
        return cuts
    with np.errstate(over="ignore"):  # a cut beyond float32's range becomes ±inf, which compares the same
        narrow = cuts.astype(np.float32)
        inexact = narrow.astype(np.float64) != cuts
        if levels:
            return np.where(inexact, np.float32(np.nan), narrow)
        return np.where(inexact & (narrow.astype(np.float64) > cuts), np.nextafter(narrow, np.float32(-np.inf)), narrow)


def feature_drift(name: str, reference: np.ndarray, current: np.ndarray, *, bins: int, test_rows: int, rng,
                  current_counts: np.ndarray | None = None) -> FeatureDrift:
    """PSI and the test of one feature. ``current_counts``: the current data's counts in the reference's
    bins when ``current`` is only a sample of it (a streamed golden set): PSI and chi-square then cover every
    row, and KS compares the sample."""
    from scipy.stats import chi2_contingency, ks_2samp

    fixed = Bins.of(reference, bins)
    ref_counts = fixed.counts(reference)
    cur_counts = fixed.counts(current) if current_counts is None else current_counts
    size = psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    if fixed.categorical:
        visited = (ref_counts + cur_counts) > 0
        statistic, p_value, _, _ = chi2_contingency(np.stack([ref_counts[visited], cur_counts[visited]]) + 0.5)
        return FeatureDrift(name, "chi2", size, float(statistic), float(p_value))
    result = ks_2samp(_sample(reference, test_rows, rng), _sample(current, test_rows, rng))
    return FeatureDrift(name, "ks", size, float(result.statistic), float(result.pvalue))


def _sample(values: np.ndarray, rows: int, rng) -> np.ndarray:
    return values if len(values) <= rows else values[rng.choice(len(values), rows, replace=False)]


def drift(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray], *, psi_threshold: float, alpha: float,
    bins: int = 10, test_rows: int = 200_000, seed: int = 0, current_counts: dict[str, np.ndarray] | None = None,
) -> list[FeatureDrift]:
    rng = np.random.default_rng(seed)
    from .multiple_testing import holm_adjust

    found = [
        feature_drift(name, reference[name], current[name], bins=bins, test_rows=test_rows, rng=rng,
                      current_counts=None if current_counts is None else current_counts[name])
        for name in reference
    ]
    adjusted = holm_adjust([f.p_value for f in found])
    decided = []
    for f, p in zip(found, adjusted):
        drifted = bool(p < alpha and f.psi >= psi_threshold)
        stable = bool(f.psi < psi_threshold)  # a NaN PSI or p-value decides neither
        decided.append(replace(f, p_adjusted=p, drifted=drifted, undecided=not (drifted or stable)))
    return decided


# Beyond this many channels the per-channel statistics would swamp the report: the whole sample is summarised.
MAX_CHANNELS = 64


def default_channel_axis(sample_shape: tuple[int, ...]) -> int | None:
    """(C, H, W) → 0; (F,) → 0 (each value its own channel); (H, W), (T, F) and others → the whole sample."""
    if len(sample_shape) in (1, 3) and sample_shape[0] <= MAX_CHANNELS:
        return 0
    return None


def sample_summaries(name: str, array: np.ndarray, channel_axis: int | None) -> dict[str, np.ndarray]:
    """Per-sample mean and standard deviation of each channel of a tensor input (N, ...): the per-row
    "features" whose distributions the drift check compares. A channel of one value contributes its value."""
    n = len(array)
    if channel_axis is None or array.ndim < 2:
        flat = array.reshape(n, -1).astype(np.float64)
        channels = {name: flat}
    else:
        moved = np.moveaxis(array, channel_axis + 1, 1).reshape(n, array.shape[channel_axis + 1], -1).astype(np.float64)
        channels = {f"{name}[{c}]": moved[:, c, :] for c in range(moved.shape[1])}
    summaries: dict[str, np.ndarray] = {}
    for label, values in channels.items():
        if values.shape[1] == 1:
            summaries[label] = values[:, 0]
            continue
        summaries[f"{label} mean"] = values.mean(axis=1)
        summaries[f"{label} std"] = values.std(axis=1)
    return summaries
