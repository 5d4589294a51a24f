"""Drift of a dataset from a reference, per feature.

PSI (population stability index) measures how far the distribution moved, over the reference's quantile
bins (categories for integer features with few values), on every row. A two-sample test says whether the
move is more than sampling noise: Kolmogorov–Smirnov for numeric features, chi-square for categorical ones,
on at most ``test_rows`` sampled rows per side (with millions of rows any difference is "significant", so
the effect size decides), Holm-adjusted over the features. A feature drifts when both say so.
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


def psi(reference_share: np.ndarray, current_share: np.ndarray) -> float:
    ref = np.clip(reference_share, PSI_FLOOR, None)
    cur = np.clip(current_share, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def feature_drift(name: str, reference: np.ndarray, current: np.ndarray, *, bins: int, test_rows: int, rng) -> FeatureDrift:
    from scipy.stats import chi2_contingency, ks_2samp

    levels = np.unique(reference[: min(len(reference), 100_000)])
    categorical = len(levels) <= CATEGORICAL_MAX_LEVELS and np.array_equal(levels, np.round(levels))
    if categorical:
        levels = np.union1d(np.unique(reference), np.unique(current))
        ref_counts = np.array([(reference == v).sum() for v in levels], dtype=float)
        cur_counts = np.array([(current == v).sum() for v in levels], dtype=float)
        statistic, p_value, _, _ = chi2_contingency(np.stack([ref_counts, cur_counts]) + 0.5)
        return FeatureDrift(name, "chi2", psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()), float(statistic), float(p_value))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, reference), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, current), minlength=len(edges) + 1)
    result = ks_2samp(_sample(reference, test_rows, rng), _sample(current, test_rows, rng))
    return FeatureDrift(name, "ks", psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()), float(result.statistic), float(result.pvalue))


def _sample(values: np.ndarray, rows: int, rng) -> np.ndarray:
    return values if len(values) <= rows else values[rng.choice(len(values), rows, replace=False)]


def drift(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray], *, psi_threshold: float, alpha: float,
    bins: int = 10, test_rows: int = 200_000, seed: int = 0,
) -> list[FeatureDrift]:
    rng = np.random.default_rng(seed)
    from .multiple_testing import holm_adjust

    found = [feature_drift(name, reference[name], current[name], bins=bins, test_rows=test_rows, rng=rng) for name in reference]
    adjusted = holm_adjust([f.p_value for f in found])
    return [
        replace(f, p_adjusted=p, drifted=p < alpha and f.psi >= psi_threshold) for f, p in zip(found, adjusted)
    ]


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
