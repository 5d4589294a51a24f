"""Build the example: data, a v1.0.0 baseline registered in the embedded registry, and two candidates.

    python build.py            # writes data/ and models/, registers models:/power-forecast@champion
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import power_forecast as pf

HERE = Path(__file__).resolve().parent


def build(directory: Path, *, register: bool = True) -> dict[str, Path]:
    data, models = directory / "data", directory / "models"
    data.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    train = pf.make_dataset(8_000, seed=1)
    pf.make_dataset(3_000, seed=2).to_csv(data / "golden.csv", index=False)
    train.to_csv(data / "train.csv", index=False)

    paths = {
        "v1": models / "v1.pt",
        "better": models / "candidate-better.pt",
        "better_export": models / "candidate-better.pt2",
        "night": models / "candidate-night.pt",
    }
    v1 = pf.train(train, hidden=16, epochs=60, seed=0)
    pf.save_torchscript(v1, paths["v1"])
    # v1's network retrained with more steps: genuinely better, and as fast (same size, same format). The same
    # network as a torch.export program runs through the FX interpreter, several times slower on tiny
    # batches: the performance stage blocks that file (see the README).
    better = pf.train(train, hidden=16, epochs=400, seed=0)
    pf.save_torchscript(better, paths["better"])
    pf.save_export(better, paths["better_export"])
    # Retrained on an export whose night-time sensor offset was not zeroed, without the ReLU head.
    pf.save_torchscript(
        pf.train(train, hidden=48, epochs=400, seed=0, non_negative=False, target_offset_at_night=-0.3),
        paths["night"],
    )
    if register:
        from release_kit.registry import publish
        from release_kit.signature import Signature
        from release_kit.tracking import embedded_uri

        # v1's contract, recorded with it so that later candidates are compared against it.
        contract = Signature("regression", tuple(pf.FEATURES), "float32", 1, None, (0.0, 6.0))
        publish(paths["v1"], "power-forecast", "1.0.0", tracking_uri=embedded_uri(directory), alias="champion", signature=contract)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-register", action="store_true", help="do not register v1.0.0 in MLflow")
    args = parser.parse_args()
    started = time.perf_counter()
    built = build(HERE, register=not args.no_register)
    print(f"built {', '.join(p.name for p in built.values())} in {time.perf_counter() - started:.1f}s")
