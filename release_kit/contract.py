"""The output contract: which predictions are non-finite or outside ``[model.bounds]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import Bounds, ModelSpec

EXAMPLES = 5  # offending rows a report shows


def violations(predictions: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Per kind of violation, a boolean mask over rows; only kinds that occur are returned.

    Bounds apply to regression outputs: one range to every output, or ``[[model.bounds]]`` one per output
    of a multi-output regressor. Class probabilities are bounded by construction.
    """
    finite = np.isfinite(predictions) if predictions.ndim == 1 else np.isfinite(predictions).all(axis=1)
    kinds = {"non-finite": ~finite}
    if spec.bounds is not None and spec.task == "regression":
        columns = predictions[:, None] if predictions.ndim == 1 else predictions
        per_output = spec.bounds if isinstance(spec.bounds, list) else [spec.bounds] * columns.shape[1]
        several = columns.shape[1] > 1
        with np.errstate(invalid="ignore"):
            for k, bounds in enumerate(per_output[: columns.shape[1]]):
                which = f"output {k} " if several else ""
                if bounds.min is not None:
                    _merge(kinds, f"{which}below min {bounds.min:g}", columns[:, k] < bounds.min)
                if bounds.max is not None:
                    _merge(kinds, f"{which}above max {bounds.max:g}", columns[:, k] > bounds.max)
    return {kind: mask for kind, mask in kinds.items() if mask.any()}


def broken_rows(predictions: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """A boolean mask over rows: the predictions that break the contract in any way."""
    return np.logical_or.reduce([np.zeros(len(predictions), dtype=bool), *violations(predictions, spec).values()])


def _merge(kinds: dict[str, np.ndarray], kind: str, mask: np.ndarray) -> None:
    kinds[kind] = kinds[kind] | mask if kind in kinds else mask


def describe(spec: ModelSpec) -> str:
    text = "finite"
    bounds = spec.bounds
    if bounds is None or spec.task != "regression":
        return text
    if isinstance(bounds, list):
        return text + ", within " + ", ".join(f"{_range(b)} (output {k})" for k, b in enumerate(bounds))
    return text + f", within {_range(bounds)}"


def _range(bounds: Bounds) -> str:
    low = "−∞" if bounds.min is None else f"{bounds.min:g}"
    high = "+∞" if bounds.max is None else f"{bounds.max:g}"
    return f"[{low}, {high}]"
