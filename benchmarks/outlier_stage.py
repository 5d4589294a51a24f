"""Outlier stage's numeric core on 10,000,000 rows × 10 features (predictions given, inference excluded):
per-sample losses, newly broken/fixed (MAD), prediction-shift outliers, and slice discovery (quantile bins,
tails, feature pairs, Holm).

Targets (issue #3): ≤ 2 s; peak memory ≤ 3 × the prediction arrays (candidate + baseline). Beside it, the
numpy floor: the same losses and one bincount-sum per feature, nothing else.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from _results import write_section
from release_kit import paired
from release_kit.config import Tolerance

ROWS = 10_000_000
FEATURES = 10


def data(rng: np.random.Generator):
    features = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    features[:, 0] = rng.integers(0, 24, ROWS)  # one integer feature, binned as categories
    target = rng.normal(size=ROWS)
    baseline = target + rng.normal(0, 0.5, ROWS)
    candidate = target + rng.normal(0, 0.5, ROWS)
    candidate[features[:, 3] > 0.84] += 0.3  # a regression confined to a fifth of the rows
    return features, target, candidate, baseline


def analysis(features, target, candidate, baseline):
    loss_c = paired.per_sample_loss("regression", target, candidate)
    loss_b = paired.per_sample_loss("regression", target, baseline)
    delta = loss_c - loss_b
    del loss_c
    change = paired.newly_broken(delta, 5.0, 0.0)
    shift = np.abs(candidate - baseline)  # prediction_shift's rule, as the stage runs it
    shifted = shift > paired.robust_threshold(shift, 5.0, 1e-5 * paired.largest_finite(baseline))
    del shift
    stats = paired.discover_slices([(f"x{j}", features[:, j]) for j in range(FEATURES)], delta, loss_b, tolerance=Tolerance(0.05, True))
    return change, shifted, stats


def floor(features, target, candidate, baseline):
    """The least numpy can do: the loss delta and, per feature, 4-edge codes and one bincount-sum."""
    delta = np.abs(candidate - target) - np.abs(baseline - target)
    edges = np.array([-0.84, -0.25, 0.25, 0.84], dtype=np.float32)
    for j in range(FEATURES):
        column = np.ascontiguousarray(features[:, j])
        codes = np.zeros(ROWS, dtype=np.uint8)
        for edge in edges:
            codes += column > edge
        np.bincount(codes, weights=delta, minlength=5)


def measured(function, *args):
    """Median wall time of 3 runs, then peak traced memory of another: tracemalloc's hooks slow code down."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[1]
    tracemalloc.start()
    function(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    arrays = data(np.random.default_rng(0))
    prediction_bytes = arrays[2].nbytes + arrays[3].nbytes
    analysis(*(a[:100_000] for a in arrays))  # warm imports (scipy) out of the figure
    (change, _, stats), seconds, peak = measured(analysis, *arrays)
    _, floor_seconds, floor_peak = measured(floor, *arrays)
    worst = max((s for s in stats if s.p_adjusted < 0.05), key=lambda s: s.excess)
    ratio = peak / prediction_bytes
    write_section(
        "outlier_stage",
        "Outlier stage core, 10,000,000 rows × 10 features (inference excluded)",
        "| | wall time (median of 3) | peak memory (traced) |\n|---|---:|---:|\n"
        f"| paired analysis + slice discovery ({len(stats)} slices, Holm) | {seconds:.2f} s | {peak / 2**20:.0f} MiB = {ratio:.2f} × predictions |\n"
        f"| numpy floor (loss delta; per feature: codes + one bincount-sum) | {floor_seconds:.2f} s | {floor_peak / 2**20:.0f} MiB |\n\n"
        f"Prediction arrays (candidate + baseline): {prediction_bytes / 2**20:.0f} MiB. "
        f"Targets ≤ 2 s: {'met' if seconds <= 2 else 'NOT met'}; peak ≤ 3 ×: {'met' if ratio <= 3 else 'NOT met'}.  \n"
        f"Injected regression found: `{worst.words('MAE')}`; {int(change.broke.sum())} rows newly broken.",
    )


if __name__ == "__main__":
    main()
