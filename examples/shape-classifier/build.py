"""Build the shape-classifier example: golden and reference tensors, metadata, a baseline and three candidates.

    python build.py       # writes data/ and models/ (about 20 s on a laptop CPU)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import shapes

HERE = Path(__file__).resolve().parent


def build(directory: Path) -> dict[str, Path]:
    data, models = directory / "data", directory / "models"
    data.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    train_x, train_y, _ = shapes.make_images(3_000, seed=1)
    golden_x, golden_y, golden_meta = shapes.make_images(1_500, seed=2)
    reference_x, reference_y, _ = shapes.make_images(1_500, seed=3)
    np.savez(data / "golden.npz", inputs=golden_x, target=golden_y)
    golden_meta.to_csv(data / "golden-meta.csv", index=False)
    np.savez(data / "reference.npz", inputs=reference_x, target=reference_y)

    paths = {name: models / f"{name}.pt" for name in ("v1", "candidate-better", "candidate-triangle", "candidate-unstable")}
    shapes.save_torchscript(shapes.train(train_x, train_y, width=8, epochs=3, seed=0), paths["v1"])
    # The same network trained longer: better, and as fast.
    better = shapes.train(train_x, train_y, width=8, epochs=8, seed=0)
    shapes.save_torchscript(better, paths["candidate-better"])
    # Retrained on labels where most triangles were written as squares: triangle recall collapses.
    mislabelled = shapes.relabel(train_y, source=2, target=1, share=0.7, seed=0)
    shapes.save_torchscript(shapes.train(train_x, mislabelled, width=8, epochs=8, seed=0), paths["candidate-triangle"])
    shapes.save_torchscript(shapes.GreyLevelShortcut(better), paths["candidate-unstable"])
    return paths


if __name__ == "__main__":
    started = time.perf_counter()
    built = build(HERE)
    for name, path in built.items():
        print(f"{name:20s} {path.relative_to(HERE)}")
    print(f"built in {time.perf_counter() - started:.1f} s")
