"""The output contract: which predictions are non-finite or outside ``[model.bounds]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import ModelSpec


def violations(predictions: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Per kind of violation, a boolean mask over rows; only kinds that occur are returned.

    Bounds apply to regression outputs; class probabilities are bounded by construction.
    """
    finite = np.isfinite(predictions) if predictions.ndim == 1 else np.isfinite(predictions).all(axis=1)
    kinds = {"non-finite": ~finite}
    bounds = spec.bounds
    if bounds is not None and spec.task == "regression":
        with np.errstate(invalid="ignore"):
            if bounds.min is not None:
                kinds[f"below min {bounds.min:g}"] = predictions < bounds.min
            if bounds.max is not None:
                kinds[f"above max {bounds.max:g}"] = predictions > bounds.max
    return {kind: mask for kind, mask in kinds.items() if mask.any()}


def describe(spec: ModelSpec) -> str:
    text = "finite"
    bounds = spec.bounds
    if bounds is not None and spec.task == "regression":
        low = "−∞" if bounds.min is None else f"{bounds.min:g}"
        high = "+∞" if bounds.max is None else f"{bounds.max:g}"
        text += f", within [{low}, {high}]"
    return text
