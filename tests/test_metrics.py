"""Metric values against their definitions; paired intervals against the bootstrap and true coverage."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from release_kit import metrics
from release_kit.metrics import METRICS, paired_bootstrap, paired_interval


def brute_auc(labels, scores) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_f1(labels, predicted, positive) -> float:
    tp = np.sum((predicted == positive) & (labels == positive))
    fp = np.sum((predicted == positive) & (labels != positive))
    fn = np.sum((predicted != positive) & (labels == positive))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.fixture
def regression():
    rng = np.random.default_rng(3)
    y = rng.normal(size=400)
    return y, y + rng.normal(scale=0.5, size=400), y + rng.normal(scale=0.6, size=400)


@pytest.fixture
def binary():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    score = np.round(0.5 + (labels - 0.5) * 0.4 + rng.normal(scale=0.3, size=300), 1)  # ties for midranks
    score = np.clip(score, 0.05, 0.95)
    return labels, np.stack([1 - score, score], axis=1)


def test_regression_values(regression):
    y, p, _ = regression
    assert metrics.single(METRICS["mae"], y, p) == pytest.approx(np.mean(np.abs(p - y)))
    assert metrics.single(METRICS["rmse"], y, p) == pytest.approx(math.sqrt(np.mean((p - y) ** 2)))
    r2 = 1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert metrics.single(METRICS["r2"], y, p) == pytest.approx(r2)


def test_binary_values(binary):
    labels, probs = binary
    assert metrics.single(METRICS["roc_auc"], labels, probs) == pytest.approx(brute_auc(labels, probs[:, 1]))
    predicted = probs.argmax(axis=1)
    assert metrics.single(METRICS["f1"], labels, probs) == pytest.approx(brute_f1(labels, predicted, 1))
    assert metrics.single(METRICS["accuracy"], labels, probs) == pytest.approx(np.mean(predicted == labels))
    expected = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert metrics.single(METRICS["log_loss"], labels, probs) == pytest.approx(expected)


def test_multiclass_macro_values():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 240)
    logits = rng.normal(size=(240, 3)) + np.eye(3)[labels] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    macro_f1 = np.mean([brute_f1(labels, predicted, c) for c in range(3)])
    macro_auc = np.mean([brute_auc((labels == c).astype(int), probs[:, c]) for c in range(3)])
    assert metrics.single(METRICS["f1"], labels, probs) == pytest.approx(macro_f1)
    assert metrics.single(METRICS["roc_auc"], labels, probs) == pytest.approx(macro_auc)


def test_multiclass_auc_averages_over_the_classes_the_rows_hold():
    """A class the golden set lacks has no one-vs-rest AUC: the macro mean is over the others (a model of many
    classes seldom sees each in its golden set), with its paired interval; rows of one class only: none."""
    rng = np.random.default_rng(6)
    labels = rng.choice([0, 2, 3], 300)  # classes 1 and 4 absent
    logits = rng.normal(size=(300, 5)) + np.eye(5)[labels] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    macro = np.mean([brute_auc((labels == c).astype(int), probs[:, c]) for c in (0, 2, 3)])
    assert metrics.auc_classes(labels, 5) == [0, 2, 3]
    assert metrics.single(METRICS["roc_auc"], labels, probs) == pytest.approx(macro)
    other = probs[:, ::-1].copy()
    diff = metrics.paired_interval(METRICS["roc_auc"], labels, probs, other, 0.95)
    assert diff.ci_low < diff.delta < diff.ci_high and math.isfinite(diff.ci_low)
    assert math.isnan(metrics.single(METRICS["roc_auc"], np.full(300, 2), probs))


def test_multiclass_f1_averages_over_the_classes_held_or_predicted():
    """Macro F1 as scikit-learn and torchmetrics take it: over the classes the rows hold or the model predicts;
    a class that is neither has no F1 (0/0), where counting it 0 pulled the mean down for both models."""
    rng = np.random.default_rng(7)
    labels = rng.choice([0, 1, 3], 400)  # classes 2 and 4 absent
    logits = rng.normal(size=(400, 5)) + np.eye(5)[labels] * 2.0
    logits[:, 4] = -10.0  # never predicted
    logits[:5, 2] = 10.0  # five rows predicted as class 2, which the rows never hold
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    assert 2 in predicted and 4 not in predicted
    expected = np.mean([brute_f1(labels, predicted, c) for c in (0, 1, 2, 3)])  # 2: predicted, F1 0
    assert metrics.single(METRICS["f1"], labels, probs) == pytest.approx(expected)


def test_undefined_metrics_are_nan_not_numbers():
    assert math.isnan(metrics.single(METRICS["r2"], np.ones(5), np.arange(5.0)))
    probs = np.tile([0.3, 0.7], (4, 1))
    assert math.isnan(metrics.single(METRICS["roc_auc"], np.ones(4, dtype=int), probs))


def test_identical_predictions_give_a_zero_width_interval(regression):
    y, p, _ = regression
    for name in ("mae", "rmse", "r2"):
        diff = paired_interval(METRICS[name], y, p, p)
        assert (diff.delta, diff.ci_low, diff.ci_high) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", ["mae", "rmse", "r2"])
def test_regression_intervals_agree_with_the_paired_bootstrap(regression, name):
    y, c, b = regression
    analytic = paired_interval(METRICS[name], y, c, b)
    boot = paired_bootstrap(METRICS[name], y, c, b, resamples=2000, seed=1)
    width = analytic.ci_high - analytic.ci_low
    assert analytic.delta == pytest.approx(boot.delta)
    assert abs(analytic.ci_low - boot.ci_low) < 0.15 * width
    assert abs(analytic.ci_high - boot.ci_high) < 0.15 * width


@pytest.mark.parametrize("name", ["accuracy", "f1", "roc_auc", "log_loss"])
def test_classification_intervals_agree_with_the_paired_bootstrap(binary, name):
    labels, probs = binary
    rng = np.random.default_rng(9)
    other = np.clip(probs[:, 1] + rng.normal(scale=0.15, size=len(labels)), 0.01, 0.99)
    other = np.stack([1 - other, other], axis=1)
    analytic = paired_interval(METRICS[name], labels, probs, other)
    boot = paired_bootstrap(METRICS[name], labels, probs, other, resamples=2000, seed=1)
    width = analytic.ci_high - analytic.ci_low
    assert abs(analytic.ci_low - boot.ci_low) < 0.2 * width
    assert abs(analytic.ci_high - boot.ci_high) < 0.2 * width


@pytest.mark.parametrize("name", ["mae", "rmse", "roc_auc"])
def test_interval_coverage_is_near_nominal(name):
    """Over 300 simulated golden sets, the 95% interval holds the true difference ~95% of the time."""
    rng = np.random.default_rng(11)
    n, trials, hits = 400, 300, 0
    if name == "roc_auc":
        big_labels = rng.integers(0, 2, 200_000)
        def draw(size, labels=None):
            labels = rng.integers(0, 2, size) if labels is None else labels
            a = labels + rng.normal(scale=1.0, size=size)
            b = labels + rng.normal(scale=1.2, size=size)
            return labels, np.stack([-a, a], 1), np.stack([-b, b], 1)
        truth_y, truth_c, truth_b = draw(200_000, big_labels)
    else:
        def draw(size):
            y = rng.normal(size=size)
            return y, y + rng.standard_t(5, size=size) * 0.5, y + rng.normal(scale=0.55, size=size)
        truth_y, truth_c, truth_b = draw(400_000)
    metric = METRICS[name]
    true_delta = metrics.single(metric, truth_y, truth_c) - metrics.single(metric, truth_y, truth_b)
    for _ in range(trials):
        diff = paired_interval(metric, *draw(n))
        hits += diff.ci_low <= true_delta <= diff.ci_high
    assert 0.91 <= hits / trials <= 0.99, hits / trials
