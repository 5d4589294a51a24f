"""Your own release checks: plain pytest tests that release-kit runs with the gate.

Fixtures: candidate, baseline (skipped on a first release), golden, predictions, gate, record_metric,
input_domain. A failing test blocks the release; see the release-kit README.
"""

import numpy as np


def test_predictions_are_finite(predictions):
    """Every golden row gets a finite prediction."""
    assert np.isfinite(predictions.candidate).all()


def test_predictions_are_deterministic(candidate, golden):
    """Predicting the same rows twice gives the same outputs."""
    rows = tuple(inputs[:256] for inputs in golden.inputs)  # a table's feature matrix, or a tensor set's arrays
    np.testing.assert_array_equal(candidate.raw_outputs(rows), candidate.raw_outputs(rows))
