"""Quality metrics and paired intervals for candidate − baseline.

Every metric returns its value and a per-sample *influence* vector ψ whose variance gives the metric's
sampling variance (Var ≈ var(ψ)/n). For decomposable metrics (MAE, accuracy, log loss) ψ is the per-sample
loss itself; for the others it is the delta-method linearisation (RMSE, R², F1) or the DeLong placement
values (ROC AUC). The paired interval of the difference then comes from ψ_candidate − ψ_baseline on the
same rows, in O(n log n) at most.

Why not always bootstrap: on 1,000,000 rows a 1,000-resample paired bootstrap is ~10⁹ element operations
per metric, far beyond the gate's budget; the influence intervals are asymptotically the same and
deterministic (see ``benchmarks/quality_stage.py``, and ``tests/test_metrics.py`` which checks they agree
with the bootstrap). ``[quality] interval = "bootstrap"`` is there for small golden sets where a user
prefers resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Callable

if TYPE_CHECKING:
    import numpy as np

Estimator = Callable[["np.ndarray", "np.ndarray"], "tuple[float, np.ndarray]"]


@dataclass(frozen=True)
class Metric:
    """One entry of the metric registry: everything release-kit knows about a metric, in one place."""

    name: str
    label: str
    task: str  # "regression" | "classification"
    higher_is_better: bool
    # How much worse than the baseline the gate tolerates by default: "5%" relative to the baseline's value
    # (metrics in the target's units), or an absolute amount (bounded scores).
    default_tolerance: float | str
    estimate: Estimator  # (target, predictions) -> (value, influence per sample)


@dataclass(frozen=True)
class PairedDiff:
    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float


def _mae(y, p):
    import numpy as np

    loss = np.abs(p - y)
    return float(loss.mean()), loss


def _rmse(y, p):
    import numpy as np

    squared = (p - y) ** 2
    mse = float(squared.mean())
    rmse = math.sqrt(mse)
    # d sqrt(m) = dm / (2 sqrt(m)); a perfect model has no spread to linearise.
    influence = squared / (2.0 * rmse) if rmse > 0 else np.zeros_like(squared)
    return rmse, influence


def _r2(y, p):
    import numpy as np

    variance = float(y.var())
    if variance == 0.0:
        return math.nan, np.full_like(y, math.nan, dtype=float)
    squared = (p - y) ** 2
    return 1.0 - float(squared.mean()) / variance, -squared / variance


def _averaged_over_outputs(estimate: Estimator) -> Estimator:
    """A regression metric of an (N, K) target: the uniform average of the K per-output values (and of
    their influence vectors, so the paired interval of the average follows). (N,) targets pass through."""

    def averaged(y, p):
        import numpy as np

        if y.ndim == 1:
            return estimate(y, p)
        parts = [estimate(y[:, k], p[:, k]) for k in range(y.shape[1])]
        return float(np.mean([value for value, _ in parts])), np.mean([psi for _, psi in parts], axis=0)

    return averaged


def _accuracy(y, p):
    correct = (p.argmax(axis=1) == y).astype(float)
    return float(correct.mean()), correct


def _log_loss(y, p):
    import numpy as np

    eps = 1e-15
    picked = p[np.arange(len(y)), y]
    loss = -np.log(np.clip(picked, eps, 1.0))
    return float(loss.mean()), loss


def _binary_f1(actual, predicted):
    """F1 = mean(a)/mean(b) with a = 2·TP, b = 2·TP + FP + FN per row; ψ by the ratio's delta method."""
    import numpy as np

    true_positive = (actual & predicted).astype(float)
    a = 2.0 * true_positive
    b = a + (predicted & ~actual) + (actual & ~predicted)
    mean_b = b.mean()
    if mean_b == 0:
        return 0.0, np.zeros_like(a)
    f1 = a.mean() / mean_b
    return float(f1), (a - f1 * b) / mean_b


def _f1(y, p):
    """Binary: F1 of class 1. Multiclass: macro average over the classes the rows hold or the model predicts,
    as scikit-learn's and torchmetrics' macro F1: a class neither in the golden set nor ever predicted has no
    F1 (0/0), and counting it as 0 pulled a model of 50 classes, 45 of them seen, from 0.98 to 0.88."""
    import numpy as np

    predicted = p.argmax(axis=1)
    if p.shape[1] == 2:
        return _binary_f1(y == 1, predicted == 1)
    parts = [_binary_f1(y == c, predicted == c) for c in range(p.shape[1]) if ((y == c) | (predicted == c)).any()]
    return float(np.mean([v for v, _ in parts])), np.mean([psi for _, psi in parts], axis=0)


def _binary_auc(positive, scores):
    """AUC with DeLong placement values as the influence; ties count one half.

    One stable sort, then per group of tied scores the counts of negatives (positives) below and tied:
    V10 of a positive = share of negatives it outranks, V01 of a negative = share of positives above it.
    """
    import numpy as np

    n = len(scores)
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(scores).all():
        return math.nan, np.full(n, math.nan)
    order = np.argsort(scores, kind="stable")
    ordered, is_pos = scores[order], positive[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    neg_cum = np.r_[0, np.cumsum(~is_pos)]
    pos_cum = np.r_[0, np.cumsum(is_pos)]
    neg_below, pos_below = neg_cum[starts], pos_cum[starts]
    v10 = (neg_below + 0.5 * (neg_cum[ends] - neg_below))[group][is_pos] / n_neg
    v01 = 1.0 - (pos_below + 0.5 * (pos_cum[ends] - pos_below))[group][~is_pos] / n_pos
    auc = float(v10.mean())
    share = n_pos / n
    influence = np.empty(n)
    influence[order[is_pos]] = (v10 - auc) / share
    influence[order[~is_pos]] = (v01 - auc) / (1.0 - share)
    return auc, influence


def auc_classes(y, classes: int) -> list[int]:
    """The classes ROC AUC averages over: class 1 of a binary model; else, one-vs-rest, each class the rows
    ``y`` hold some but not all of. A class the golden set lacks has no AUC: left out of the macro mean, as
    the golden set of a model of 1,000 classes seldom holds every one, rather than leaving the metric
    undefined (it is undefined when no class is left)."""
    import numpy as np

    if classes == 2:
        return [1]
    counts = np.bincount(y[(y >= 0) & (y < classes)], minlength=classes)
    return [int(c) for c in np.flatnonzero((counts > 0) & (counts < len(y)))]


def _roc_auc(y, p):
    """Binary: AUC of class 1's probability. Multiclass: macro one-vs-rest over the classes ``y`` holds."""
    import numpy as np

    classes = auc_classes(y, p.shape[1])
    if not classes:
        return math.nan, np.full(len(y), math.nan)
    parts = [_binary_auc(y == c, p[:, c]) for c in classes]
    return float(np.mean([v for v, _ in parts])), np.mean([psi for _, psi in parts], axis=0)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("mae", "MAE", "regression", False, "5%", _averaged_over_outputs(_mae)),
        Metric("rmse", "RMSE", "regression", False, "5%", _averaged_over_outputs(_rmse)),
        Metric("r2", "R²", "regression", True, 0.02, _averaged_over_outputs(_r2)),
        Metric("accuracy", "accuracy", "classification", True, 0.01, _accuracy),
        Metric("f1", "F1", "classification", True, 0.02, _f1),
        Metric("roc_auc", "ROC AUC", "classification", True, 0.01, _roc_auc),
        Metric("log_loss", "log loss", "classification", False, "5%", _log_loss),
    )
}
# The metric that decides a minor bump when [quality] primary is not set.
PRIMARY = {"regression": "mae", "classification": "log_loss"}


def metrics_for(task: str) -> tuple[str, ...]:
    """The metrics the quality stage computes for ``task``, in report order."""
    return tuple(name for name, metric in METRICS.items() if metric.task == task)


def single(metric: Metric, target, predictions) -> float:
    return metric.estimate(target, predictions)[0]


def paired_interval(metric: Metric, target, candidate, baseline, confidence: float = 0.95) -> PairedDiff:
    """Candidate − baseline with a confidence interval from the paired influence values (t-interval)."""
    import numpy as np
    from scipy.stats import t

    value_c, psi_c = metric.estimate(target, candidate)
    value_b, psi_b = metric.estimate(target, baseline)
    delta = value_c - value_b
    n = len(target)
    if not (math.isfinite(delta) and n > 1):
        return PairedDiff(value_c, value_b, delta, math.nan, math.nan)
    spread = float(np.std(psi_c - psi_b, ddof=1))
    half_width = float(t.ppf(0.5 + confidence / 2.0, n - 1)) * spread / math.sqrt(n)
    return PairedDiff(value_c, value_b, delta, delta - half_width, delta + half_width)


def paired_bootstrap(
    metric: Metric, target, candidate, baseline, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> PairedDiff:
    """Candidate − baseline with a percentile interval from resampling rows (the same rows for both)."""
    import numpy as np

    value_c = single(metric, target, candidate)
    value_b = single(metric, target, baseline)
    rng = np.random.default_rng(seed)
    n = len(target)
    deltas = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, n, n)
        deltas[i] = single(metric, target[rows], candidate[rows]) - single(metric, target[rows], baseline[rows])
    finite = deltas[np.isfinite(deltas)]
    if len(finite) < resamples // 2:
        return PairedDiff(value_c, value_b, value_c - value_b, math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return PairedDiff(value_c, value_b, value_c - value_b, float(low), float(high))
