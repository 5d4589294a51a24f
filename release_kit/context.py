"""What a gate run knows once its inputs are loaded: the run context every stage, the engine and user checks
read. It sits below the API (:mod:`release_kit.gate`) so that nothing imports upward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .config import Config
    from .data import GoldenSet
    from .models import LoadedModel
    from .scale.stats import ScanSummary
    from .validation import Suite


@dataclass(frozen=True)
class Predictions:
    """Both models' predictions on the golden rows: regression (N,), classification (N, C) probabilities."""

    candidate: np.ndarray
    baseline: np.ndarray | None

    @property
    def identical(self) -> bool:
        import numpy as np

        return self.baseline is not None and np.array_equal(self.candidate, self.baseline, equal_nan=True)


@dataclass(frozen=True)
class BatchProbe:
    """The candidate's outputs for some golden rows called in one batch against the same rows called in parts
    of ``part``: a row's prediction must not depend on the rows that share its batch (a BatchNorm left in
    training mode normalizes by its batch's statistics, and repeats itself on the same batch)."""

    rows: int
    part: int
    largest_change: float  # the largest absolute difference of an output between the two ways
    scale: float  # the largest absolute output: what the tolerance is relative to
    error: str | None = None  # the model failed on the parts: nothing decided

    # Another kernel for another batch size (a GPU's TF32 convolution among them) moves outputs by far less.
    TOLERANCE = 1e-3

    @property
    def independent(self) -> bool:
        return self.error is None and self.largest_change <= self.TOLERANCE * max(self.scale, 1e-6)


@dataclass(frozen=True)
class GateContext:
    config: Config
    project_dir: Path
    candidate: LoadedModel
    baseline: LoadedModel | None
    golden: GoldenSet
    predictions: Predictions
    # Semantic versions of this model already released in the registry (empty without one): the next
    # version is counted from the highest of the bumped line, so a rollback never leads to a reused version.
    released: tuple[str, ...] = ()
    # A streamed golden set's mergeable statistics over every row (golden and predictions are then its
    # uniform sample); None when the golden set was read whole.
    scan: ScanSummary | None = None
    # The [data] reference table when preparing already read it (a streamed set's drift bins come from it),
    # so the data stage does not read it again; None: the data stage reads it itself.
    reference: pd.DataFrame | None = None
    # The data stage's suites when preparing already loaded them (a streamed set counts the values outside
    # their ranges over every row), so the stage validates against the very suites counted; None: it loads them.
    suites: tuple[Suite, ...] | None = None
    # A baseline released with other input features (recorded in its signature): the positions of its
    # features among the candidate's [model] features, in its order. None: it reads the candidate's inputs.
    baseline_columns: tuple[int, ...] | None = None
    # The candidate's outputs called in one batch and in small parts (quality::batch_independence); None
    # where the golden set has too few rows to tell.
    batch_probe: BatchProbe | None = None

    def inputs_for(self, role: str, inputs):
        """Inputs in the candidate's features (golden rows, a search's, a benchmark batch: a matrix or a
        tuple of one) as ``role`` reads them: the baseline's own columns of the same rows."""
        return baseline_inputs(inputs, self.baseline_columns) if role == "baseline" else inputs


def baseline_inputs(inputs, columns: tuple[int, ...] | None):
    """``inputs`` (a feature matrix, or a tuple holding one) with only ``columns``, in their order."""
    if columns is None:
        return inputs
    if isinstance(inputs, tuple):
        return (inputs[0][:, list(columns)],)
    return inputs[:, list(columns)]
