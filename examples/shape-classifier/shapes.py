"""The shape-classifier example: deterministic synthetic 32×32 grey images of four shapes, and a small CNN.

Images are rendered in code from a seed: a shape (the class) at a position and size, on a background of
some brightness, with sensor noise. Pixel values are 4-bit grey levels (multiples of 1/16), as from a
cheap sensor. Position, size, brightness, contrast and noise are the metadata release-kit slices by.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

CLASSES = ["circle", "square", "triangle", "cross"]
SIDE = 32
LEVELS = 16  # grey levels: pixels are multiples of 1/16


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(images float32 (N, 1, 32, 32) in [0, 1], labels int64 (N,), metadata with one row per image)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    size = rng.uniform(5, 11, n)
    x = rng.uniform(size + 1, SIDE - size - 1)
    y = rng.uniform(size + 1, SIDE - size - 1)
    brightness = rng.uniform(0.0, 0.4, n)
    contrast = rng.uniform(0.35, 0.6, n)
    noise = rng.uniform(0.0, 0.06, n)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    images = np.empty((n, 1, SIDE, SIDE), dtype=np.float32)
    for i in range(n):
        dx, dy = xx - x[i], yy - y[i]
        r = size[i]
        if labels[i] == 0:
            mask = dx * dx + dy * dy <= r * r
        elif labels[i] == 1:
            mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        elif labels[i] == 2:
            mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
        else:
            mask = ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
        image = brightness[i] + contrast[i] * mask + rng.normal(0, noise[i], (SIDE, SIDE))
        images[i, 0] = np.clip(np.round(image * LEVELS) / LEVELS, 0, 1)
    metadata = pd.DataFrame({
        "x": x.round(2), "y": y.round(2), "size": size.round(2),
        "brightness": brightness.round(3), "contrast": contrast.round(3), "noise": noise.round(4),
    })
    return images, labels.astype(np.int64), metadata


class ShapeCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(8 * width, len(CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def train(images: np.ndarray, labels: np.ndarray, *, width: int = 8, epochs: int = 6, seed: int = 0) -> ShapeCNN:
    """Adam on mini-batches; a few seconds on a laptop CPU."""
    torch.manual_seed(seed)
    model = ShapeCNN(width)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    return model.eval()


class GreyLevelShortcut(nn.Module):
    """A model that learned an artifact of the renderer: its class-3 logit jumps when pixels leave the
    4-bit grey levels. On the golden set (all on the levels) it is the wrapped model exactly; under
    imperceptible noise it calls everything a cross. The robustness search's story."""

    def __init__(self, model: nn.Module, gain: float = 400.0) -> None:
        super().__init__()
        self.model, self.gain, self.levels = model, gain, float(LEVELS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images * self.levels
        off_level = (scaled - torch.round(scaled)).abs().flatten(1).mean(dim=1)
        logits = self.model(images)
        boost = torch.zeros_like(logits)
        boost[:, 3] = self.gain * off_level
        return logits + boost


def relabel(labels: np.ndarray, source: int, target: int, share: float, seed: int) -> np.ndarray:
    """A labelling mistake: ``share`` of class ``source``'s training labels written as ``target``."""
    rng = np.random.default_rng(seed)
    wrong = labels.copy()
    rows = np.flatnonzero(labels == source)
    wrong[rng.choice(rows, int(share * len(rows)), replace=False)] = target
    return wrong


def save_torchscript(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(model.eval()), str(path))
