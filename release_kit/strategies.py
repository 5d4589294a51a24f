"""Hypothesis strategies for a model's input domain, composed from small pieces.

The outlier stage's differential search uses them, and so can user checks::

    from hypothesis import given, strategies as st
    from release_kit import strategies as rks

    def test_never_negative(candidate, input_domain):
        @given(rks.rows(input_domain))
        def prop(row):
            assert candidate.raw_outputs(row[None])[0] >= 0
        prop()

``input_domain`` is a fixture: the golden set's feature ranges with ``[outliers.domain]`` applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import strategies as st

from .errors import InputError

if TYPE_CHECKING:
    from .config import FeatureDomain


@dataclass(frozen=True)
class FeatureRange:
    name: str
    low: float
    high: float
    integer: bool = False
    values: tuple[float, ...] | None = None

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.name} ∈ {{{', '.join(f'{v:g}' for v in self.values)}}}"
        kind = "integer" if self.integer else "real"
        return f"{self.name} ∈ [{self.low:g}, {self.high:g}] ({kind})"


Domain = tuple[FeatureRange, ...]


def domain_from_data(names: list[str], features: np.ndarray, overrides: dict[str, FeatureDomain] | None = None) -> Domain:
    """Each feature's observed range (integers where every value is whole), with declared overrides."""
    overrides = overrides or {}
    ranges = []
    for j, name in enumerate(names):
        column = features[:, j]
        declared = overrides.get(name)
        if declared is not None and declared.values is not None:
            ranges.append(FeatureRange(name, min(declared.values), max(declared.values), values=tuple(declared.values)))
            continue
        low = declared.min if declared is not None and declared.min is not None else float(column.min())
        high = declared.max if declared is not None and declared.max is not None else float(column.max())
        whole = bool(np.all(column == np.round(column)))
        integer = declared.integer if declared is not None and declared.integer is not None else whole
        if low > high:
            raise InputError(f"[outliers.domain] {name}: the range [{low:g}, {high:g}] is inverted")
        if integer and np.floor(high) < np.ceil(low):
            raise InputError(f"[outliers.domain] {name}: no integer lies in [{low:g}, {high:g}]")
        ranges.append(FeatureRange(name, low, high, integer))
    return tuple(ranges)


def feature_values(feature: FeatureRange) -> st.SearchStrategy[float]:
    if feature.values is not None:
        return st.sampled_from(feature.values)
    if feature.integer:
        return st.integers(int(np.ceil(feature.low)), int(np.floor(feature.high))).map(float)
    if feature.low == feature.high:
        return st.just(feature.low)
    return st.floats(feature.low, feature.high, allow_nan=False, allow_infinity=False, width=32)


def rows(domain: Domain) -> st.SearchStrategy[np.ndarray]:
    """One input row, float32 (F,), in feature order."""
    return st.tuples(*map(feature_values, domain)).map(lambda values: np.asarray(values, dtype=np.float32))


def batches(domain: Domain, max_rows: int = 16) -> st.SearchStrategy[np.ndarray]:
    """A batch of rows, float32 (N, F) with 1 ≤ N ≤ ``max_rows``."""
    return st.lists(rows(domain), min_size=1, max_size=max_rows).map(np.stack)
