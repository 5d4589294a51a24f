"""End-to-end `release-kit check` on the example vs the floor: a minimal hand-written script doing the same
work with the same libraries (load both models, read the golden CSV, predict, MAE/RMSE/R² with paired
intervals, the bounds contract, log params/metrics/report to the same kind of MLflow SQLite store).

Both run as fresh processes, interleaved A B A B, after one warm-up each (the SQLite schema creation is
not what is measured). Target (issue #2): release-kit ≤ 1.2 × the floor.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _results import median, write_section

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5

FLOOR = textwrap.dedent(
    """
    import json, math, sys, tempfile, pathlib
    import numpy as np, pandas as pd, torch
    from scipy.stats import t
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root = pathlib.Path(sys.argv[1])
    features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
    frame = pd.read_csv(root / "data/golden.csv")
    x = torch.from_numpy(frame[features].to_numpy(np.float32))
    y = frame["power_kw"].to_numpy(np.float64)
    with torch.inference_mode():
        cand = torch.export.load(str(root / "models/candidate-better.pt2")).module()(x).double().numpy()
        base = torch.jit.load(str(root / "models/v1.pt")).eval()(x).double().numpy()
    results = {}
    for name, fn in {
        "mae": lambda p: (np.abs(p - y).mean(), np.abs(p - y)),
        "rmse": lambda p: (math.sqrt(((p - y) ** 2).mean()), (p - y) ** 2 / (2 * math.sqrt(((p - y) ** 2).mean()))),
        "r2": lambda p: (1 - ((p - y) ** 2).mean() / y.var(), -((p - y) ** 2) / y.var()),
    }.items():
        (vc, pc), (vb, pb) = fn(cand), fn(base)
        half = t.ppf(0.975, len(y) - 1) * np.std(pc - pb, ddof=1) / math.sqrt(len(y))
        results[name] = (vc, vb, vc - vb, vc - vb - half, vc - vb + half)
    contract_ok = bool(np.isfinite(cand).all() and (cand >= 0).all() and (cand <= 6).all())
    uri = f"sqlite:///{root / 'floor/mlflow.db'}"
    (root / "floor").mkdir(exist_ok=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("floor")
    exp_id = exp.experiment_id if exp else client.create_experiment("floor", artifact_location=(root / "floor/artifacts").as_uri())
    run = client.create_run(exp_id)
    client.log_batch(run.info.run_id, params=[Param("model", "power-forecast")],
                     metrics=[Metric(f"{k}.{i}", float(v), 0, 0) for k, vals in results.items() for i, v in zip(("c", "b", "d"), vals)])
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "report.json"
        path.write_text(json.dumps({"contract": contract_ok, "metrics": results}))
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    """
)

CONFIG = """
[model]
name = "power-forecast"
task = "regression"
target = "power_kw"
features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
bounds = { min = 0.0, max = 6.0 }

[candidate]
path = "models/candidate-better.pt2"

[baseline]
path = "models/v1.pt"
version = "1.0.0"

[data]
golden = "data/golden.csv"

[checks]
paths = []
"""


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{command} failed: {result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    sys.path.insert(0, str(ROOT / "examples" / "power-forecast"))
    import build

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        build.build(work, register=False)
        (work / "release-kit.toml").write_text(CONFIG)
        (work / "floor.py").write_text(FLOOR)
        release_kit = [str(Path(sys.executable).with_name("release-kit")), "check", "--report", "report.json"]
        floor = [sys.executable, "floor.py", str(work)]
        timed(release_kit, work), timed(floor, work)  # warm-up: SQLite schema creation, file cache
        pairs = [(timed(release_kit, work), timed(floor, work)) for _ in range(ROUNDS)]
    ours, base = median([p[0] for p in pairs]), median([p[1] for p in pairs])
    ratio = ours / base
    write_section(
        "end_to_end",
        "End-to-end `release-kit check` vs a hand-written floor (power-forecast example)",
        f"| | median of {ROUNDS} interleaved runs |\n|---|---:|\n"
        f"| `release-kit check` (3,000 rows, quality stage, MLflow SQLite logging, JSON report) | {ours:.2f} s |\n"
        f"| floor script, same work and libraries | {base:.2f} s |\n| ratio | **{ratio:.2f}×** |\n\n"
        f"Target ≤ 1.2×: {'met' if ratio <= 1.2 else 'NOT met'}. Both are dominated by importing torch and mlflow.",
    )


if __name__ == "__main__":
    main()
