"""Perturbations of golden tensor samples for the differential robustness search, as Hypothesis strategies
composed from small pieces: which sample, then noise, brightness, contrast and shift, each within its budget.

A perturbation is a short vector of numbers (so :func:`release_kit.search.search` shrinks it towards the
smallest change) and is applied deterministically: the noise comes from its seed. Amounts are in units of
each input's standard deviation over the golden set, so one budget fits pixels in [0, 1] and in [0, 255].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import strategies as st

if TYPE_CHECKING:
    from .config import RobustnessSpec

# The vector's fields, in order.
FIELDS = ("sample", "seed", "noise", "brightness", "contrast", "shift_y", "shift_x")


@dataclass(frozen=True)
class Budget:
    noise: float
    brightness: float
    contrast: float
    shift: int

    def words(self) -> str:
        parts = [f"noise ±{self.noise:g}σ" if self.noise else "", f"brightness ±{self.brightness:g}σ" if self.brightness else "",
                 f"contrast ×(1 ± {self.contrast:g})" if self.contrast else "", f"shift ≤ {self.shift} px" if self.shift else ""]
        return ", ".join(p for p in parts if p) or "nothing"

    @property
    def empty(self) -> bool:
        return not (self.noise or self.brightness or self.contrast or self.shift)


def budget_for(sample_shape: tuple[int, ...], spec: RobustnessSpec) -> Budget:
    """The declared budget, with defaults by the sample's rank: vectors and sequences of values get noise
    only; images ((H, W) or (C, H, W)) also brightness, contrast and shifts of up to 2 pixels."""
    image = len(sample_shape) >= 2
    return Budget(
        noise=spec.noise if spec.noise is not None else 0.05,
        brightness=spec.brightness if spec.brightness is not None else (0.1 if image else 0.0),
        contrast=spec.contrast if spec.contrast is not None else (0.1 if image else 0.0),
        shift=spec.shift if spec.shift is not None else (2 if image and min(sample_shape[-2:]) >= 8 else 0),
    )


def _amount(limit: float) -> st.SearchStrategy[float]:
    return st.just(0.0) if limit == 0 else st.floats(-limit, limit, allow_nan=False)


def perturbations(budget: Budget, samples: int) -> st.SearchStrategy[np.ndarray]:
    """One perturbation as a float64 vector in :data:`FIELDS` order; shrinks towards sample 0, no change."""
    offsets = st.just(0) if budget.shift == 0 else st.integers(-budget.shift, budget.shift)
    return st.tuples(
        st.integers(0, samples - 1),
        st.integers(0, 2**31 - 1),
        st.just(0.0) if budget.noise == 0 else st.floats(0.0, budget.noise, allow_nan=False),
        _amount(budget.brightness),
        _amount(budget.contrast),
        offsets,
        offsets,
    ).map(lambda values: np.asarray(values, dtype=np.float64))


def random_draws(budget: Budget, samples: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` perturbations of each of ``samples`` samples, uniform within the budget: (samples × draws, 7)."""
    count = samples * draws
    return np.column_stack([
        np.repeat(np.arange(samples), draws),
        rng.integers(0, 2**31 - 1, count),
        rng.uniform(0, budget.noise, count),
        rng.uniform(-budget.brightness, budget.brightness, count),
        rng.uniform(-budget.contrast, budget.contrast, count),
        rng.integers(-budget.shift, budget.shift + 1, count),
        rng.integers(-budget.shift, budget.shift + 1, count),
    ]).astype(np.float64)


def apply(vector: np.ndarray, sample: tuple[np.ndarray, ...], scales: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """The perturbed sample (each input with its batch axis of 1). Integer inputs (token ids) are kept."""
    _, seed, noise, brightness, contrast, shift_y, shift_x = vector
    rng = np.random.default_rng(int(seed))
    out = []
    for array, scale in zip(sample, scales):
        if array.dtype.kind != "f":
            out.append(array)
            continue
        x = array.astype(np.float32, copy=True)
        if contrast:
            mean = x.mean()
            x = mean + (x - mean) * np.float32(1.0 + contrast)
        if brightness:
            x += np.float32(brightness * scale)
        if noise:
            x += (rng.uniform(-1.0, 1.0, x.shape) * noise * scale).astype(np.float32)
        if (shift_y or shift_x) and x.ndim >= 3:
            x = _shifted(x, int(shift_y), int(shift_x))
        out.append(x)
    return tuple(out)


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the last two axes by (dy, dx); what moves in is the sample's median (its background)."""
    out = np.full_like(x, np.median(x))
    height, width = x.shape[-2:]
    src_y, dst_y = (slice(0, height - dy), slice(dy, height)) if dy >= 0 else (slice(-dy, height), slice(0, height + dy))
    src_x, dst_x = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def words(vector: np.ndarray, budget: Budget) -> str:
    """``noise 0.031σ (seed 7), brightness +0.08σ, shift (1, 0)`` — only the parts that change anything."""
    _, seed, noise, brightness, contrast, shift_y, shift_x = vector
    parts = []
    if noise:
        parts.append(f"noise ±{noise:.3g}σ (seed {int(seed)})")
    if brightness:
        parts.append(f"brightness {brightness:+.3g}σ")
    if contrast:
        parts.append(f"contrast ×{1 + contrast:.3g}")
    if shift_y or shift_x:
        parts.append(f"shift ({int(shift_y)}, {int(shift_x)})")
    return ", ".join(parts) or "no change"
