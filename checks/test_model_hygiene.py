"""Reusable check suite: properties any model should keep, whatever it predicts.

Add this directory to ``[checks] paths`` (the power-forecast example does) or copy the file into your own
``checks/``. Each test is an ordinary pytest test using the gate's fixtures.
"""

import numpy as np

ROWS = 64


def test_predictions_are_deterministic(candidate, golden):
    """Predicting the same rows twice gives bit-identical outputs."""
    rows = golden.features[:ROWS]
    first, second = candidate.raw_outputs(rows), candidate.raw_outputs(rows)
    assert np.array_equal(first, second, equal_nan=True), "two runs on the same rows disagree"


def test_predictions_do_not_depend_on_the_batch(candidate, golden, record_metric):
    """Each row's prediction is the same alone as in a batch (no leakage across rows, e.g. batch statistics)."""
    rows = golden.features[:ROWS]
    batched = candidate.raw_outputs(rows)
    alone = np.concatenate([candidate.raw_outputs(rows[i : i + 1]) for i in range(len(rows))])
    gap = float(np.nanmax(np.abs(batched - alone))) if len(rows) else 0.0
    record_metric("batch_invariance_max_abs_gap", gap)
    assert np.allclose(batched, alone, rtol=1e-4, atol=1e-5, equal_nan=True), f"batched vs single rows differ by up to {gap:.3g}"
