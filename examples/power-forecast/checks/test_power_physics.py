"""User checks: ordinary pytest tests with fixtures from release-kit."""

import numpy as np


def test_night_output_is_zero(golden, predictions, record_metric):
    """At night (no irradiance) the candidate forecasts no power."""
    night = golden.frame["irradiance"].to_numpy() == 0
    worst = float(np.abs(predictions.candidate[night]).max())
    record_metric("night_max_abs_kw", worst)
    assert worst < 0.05, f"forecasts {worst:.3f} kW at night"


def test_peak_hours_not_worse(golden, baseline, predictions, record_metric):
    """Around noon the candidate's MAE is within 10% of the baseline's (skipped on a first release)."""
    noon = golden.frame["hour"].between(10, 14).to_numpy()
    truth = golden.target[noon]
    candidate = float(np.abs(predictions.candidate[noon] - truth).mean())
    baseline = float(np.abs(predictions.baseline[noon] - truth).mean())
    record_metric("noon_mae", candidate, baseline)
    assert candidate <= 1.10 * baseline, f"noon MAE {candidate:.3f} vs baseline {baseline:.3f}"
