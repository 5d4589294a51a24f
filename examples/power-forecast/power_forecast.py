"""The worked example's data and model: a synthetic rooftop solar plant (5 kW peak).

Deterministic for a seed, so the demo and the tests see the same numbers on every machine.
Features: hour, day_of_year, cloud_cover, temperature, irradiance → power_kw (never negative).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
TARGET = "power_kw"
CAPACITY_KW = 5.0


def make_dataset(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, rows)
    day = rng.integers(1, 366, rows)
    cloud = rng.beta(1.2, 2.0, rows)
    season = np.cos(2 * math.pi * (day - 172) / 365)
    temperature = 12 + 10 * season + 8 * np.sin(math.pi * (hour - 8) / 12) + rng.normal(0, 2, rows)
    # Sun elevation proxy: zero at night, peaking at noon; days are longer in summer.
    daylight = 12 + 3.5 * season
    elevation = np.clip(np.sin(math.pi * (hour + 0.5 - (12 - daylight / 2)) / daylight), 0, None)
    clear_sky = 1000 * elevation * (0.75 + 0.25 * season)
    irradiance = np.clip(clear_sky * (1 - 0.75 * cloud**2) + rng.normal(0, 15, rows) * (elevation > 0), 0, None)
    efficiency = 1 - 0.004 * (temperature - 25)
    power = np.clip(CAPACITY_KW * irradiance / 1000 * efficiency + rng.normal(0, 0.05, rows) * (elevation > 0), 0, None)
    return pd.DataFrame(
        {
            "hour": hour.astype(np.int64),
            "day_of_year": day.astype(np.int64),
            "cloud_cover": cloud.round(4),
            "temperature": temperature.round(2),
            "irradiance": irradiance.round(2),
            TARGET: power.round(4),
        }
    )


class PowerMLP(nn.Module):
    """Standardises its inputs (statistics baked in as buffers), then a small MLP.

    ``non_negative`` ends the network with a ReLU: the output contract says power is never negative.
    """

    def __init__(self, hidden: int = 32, non_negative: bool = True) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(FEATURES)))
        self.register_buffer("scale", torch.ones(len(FEATURES)))
        self.net = nn.Sequential(
            nn.Linear(len(FEATURES), hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        self.head = nn.ReLU() if non_negative else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net((x - self.mean) / self.scale)).squeeze(-1)


def baseline_factory() -> PowerMLP:
    """Factory for loading v1's safetensors weights (``module:factory`` in config)."""
    return PowerMLP(hidden=16)


def train(frame: pd.DataFrame, *, hidden: int, epochs: int, seed: int, non_negative: bool = True, target_offset_at_night: float = 0.0) -> PowerMLP:
    """Full-batch Adam on MAE; seconds on a CPU. ``target_offset_at_night`` simulates a data bug."""
    torch.manual_seed(seed)
    x = torch.tensor(frame[FEATURES].to_numpy(np.float32))
    target = frame[TARGET].to_numpy(np.float32).copy()
    target[frame["irradiance"].to_numpy() == 0] += target_offset_at_night
    y = torch.tensor(target)
    model = PowerMLP(hidden, non_negative)
    model.mean.copy_(x.mean(0))
    model.scale.copy_(x.std(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = (model(x) - y).abs().mean()
        loss.backward()
        optimiser.step()
    return model.eval()


def save_torchscript(model: nn.Module, path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def save_export(model: nn.Module, path) -> None:
    example = torch.zeros(8, len(FEATURES))
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path))


def save_safetensors(model: nn.Module, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
