"""The full pipeline on the example, as users run it, against a floor script doing the same work.

`release-kit check` with the example's own config: every stage (quality, outliers, performance, data), MLflow
tracking on (embedded SQLite), the default search and timing budgets, the example's user checks. The floor is
a hand-written script doing the same work with the same libraries and the same budgets: both models on the
golden CSV, paired metric intervals and the bounds contract; per-row loss changes and quantile-bin slices;
a Hypothesis search for a contract break and one for the monotonic constraint, each for the same seconds;
interleaved timing rounds of both models at batch 1 and 64; a GX suite of the same expectations on the golden
set and PSI/KS drift against the training data; one MLflow run with params, metrics and the report.

Both run as fresh processes, interleaved A B A B, after one warm-up each. The breakdown comes from the
report's per-check durations and a separate measurement of the imports.
Targets (issue: Trust II): ≤ 10 s, ≤ 1.3× the floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

from _results import median, write_section

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "power-forecast"
ROUNDS = 3

FLOOR = textwrap.dedent(
    """
    import json, math, sys, tempfile, pathlib, time
    import numpy as np, pandas as pd, torch
    from scipy import stats
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    import great_expectations as gx
    from hypothesis import find, settings, strategies as st, HealthCheck
    from hypothesis.errors import NoSuchExample

    root = pathlib.Path(sys.argv[1])
    features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
    golden, train = pd.read_csv(root / "data/golden.csv"), pd.read_csv(root / "data/train.csv")
    x = torch.from_numpy(golden[features].to_numpy(np.float32))
    y = golden["power_kw"].to_numpy(np.float64)
    cand_m = torch.jit.load(str(root / "models/candidate-better.pt")).eval()
    base_m = torch.jit.load(str(root / "models/v1.pt")).eval()
    predict = lambda m, a: m(a).double().numpy().ravel()
    with torch.inference_mode():
        cand, base = predict(cand_m, x), predict(base_m, x)
    # quality
    results = {}
    for name, fn in {
        "mae": lambda p: (np.abs(p - y).mean(), np.abs(p - y)),
        "rmse": lambda p: (math.sqrt(((p - y) ** 2).mean()), (p - y) ** 2 / (2 * math.sqrt(((p - y) ** 2).mean()))),
        "r2": lambda p: (1 - ((p - y) ** 2).mean() / y.var(), -((p - y) ** 2) / y.var()),
    }.items():
        (vc, pc), (vb, pb) = fn(cand), fn(base)
        half = stats.t.ppf(0.975, len(y) - 1) * np.std(pc - pb, ddof=1) / math.sqrt(len(y))
        results[name] = (vc, vb, vc - vb, vc - vb - half, vc - vb + half)
    contract_ok = bool(np.isfinite(cand).all() and (cand >= 0).all() and (cand <= 6).all())
    # outliers: per-row changes, quantile-bin slices with t-tests
    delta = np.abs(cand - y) - np.abs(base - y)
    moved = delta[delta != 0]
    mad = 1.4826 * np.median(np.abs(moved - np.median(moved)))
    broke = int((delta > np.median(moved) + 5 * mad).sum())
    slices = []
    for i, f in enumerate(features):
        edges = np.quantile(golden[f], np.linspace(0, 1, 6))
        codes = np.clip(np.searchsorted(edges, golden[f], side="right") - 1, 0, 4)
        for c in range(5):
            d = delta[codes == c]
            if len(d) >= 30:
                slices.append(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
    # the two searches, with the example's budget (6 s shared)
    lows, highs = golden[features].min().to_numpy(), golden[features].max().to_numpy()
    rows = st.tuples(*[st.floats(float(lo), float(hi)) for lo, hi in zip(lows, highs)])
    def search(violates, seconds):
        started = time.monotonic()
        def condition(row):
            if time.monotonic() - started > seconds:
                return False
            return violates(np.array(row, dtype=np.float32))
        try:
            return find(rows, condition, settings=settings(max_examples=200, database=None, derandomize=True, deadline=None,
                                                             suppress_health_check=list(HealthCheck)))
        except NoSuchExample:
            return None
    with torch.inference_mode():
        out = lambda r: float(cand_m(torch.from_numpy(r[None]))[0])
        search(lambda r: not (0 <= out(r) <= 6), 3.0)
        def not_monotonic(r):
            up = r.copy(); up[4] += 0.05
            return out(up) < out(r) - 0.01
        search(not_monotonic, 3.0)
    # performance: interleaved rounds at batch 1 and 64, the stage's default counts
    torch.set_num_threads(1)
    timings = {}
    with torch.inference_mode():
        for n in (1, 64):
            batch = x[:n]
            for m in (cand_m, base_m):
                end = time.perf_counter() + 0.3
                while time.perf_counter() < end:
                    m(batch)
            per = {id(cand_m): [], id(base_m): []}
            for r in range(16):
                order = (cand_m, base_m) if r % 2 == 0 else (base_m, cand_m)
                for m in order:
                    end = time.perf_counter() + 0.04
                    while time.perf_counter() < end:
                        t0 = time.perf_counter_ns(); m(batch); per[id(m)].append(time.perf_counter_ns() - t0)
            timings[n] = np.median(per[id(cand_m)]) / np.median(per[id(base_m)])
    # data: a GX suite of the same kinds of expectation, drift per feature
    context = gx.get_context(mode="ephemeral")
    batch = context.data_sources.add_pandas("p").add_dataframe_asset("golden").add_batch_definition_whole_dataframe("b")
    suite = gx.ExpectationSuite(name="profile")
    suite.add_expectation(gx.expectations.ExpectTableColumnsToMatchOrderedList(column_list=list(train.columns)))
    for column in train.columns:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
        lo, hi = float(train[column].min()), float(train[column].max())
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=lo - 0.1 * (hi - lo), max_value=hi + 0.1 * (hi - lo)))
    validation = batch.get_batch(batch_parameters={"dataframe": golden}).validate(suite)
    drift = {f: stats.ks_2samp(train[f], golden[f]).pvalue for f in features}
    # tracking
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
        path.write_text(json.dumps({"contract": contract_ok, "metrics": results, "broke": broke, "slices": len(slices),
                                    "latency": {str(k): v for k, v in timings.items()}, "gx": validation.success, "drift": drift}))
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    """
)

IMPORTS = "import torch, pandas, scipy.stats, mlflow, great_expectations, hypothesis"


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{command} failed: {result.stderr[-2000:]}")
    return elapsed


def stage_seconds(report_path: Path) -> dict[str, float]:
    report = json.loads(report_path.read_text())
    seconds: dict[str, float] = defaultdict(float)
    for check in report["checks"]:
        seconds[check["stage"]] += check.get("duration_s") or 0.0
    return dict(seconds)


def main() -> None:
    sys.path.insert(0, str(EXAMPLE))
    import build

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        build.build(work, register=True)
        (work / "checks").mkdir()
        for check in (EXAMPLE / "checks").glob("*.py"):
            (work / "checks" / check.name).write_text(check.read_text())
        config = (EXAMPLE / "release-kit.toml").read_text().replace('paths = ["checks", "../../checks"]', 'paths = ["checks"]')
        (work / "release-kit.toml").write_text(config)
        (work / "floor.py").write_text(FLOOR)
        release_kit = [str(Path(sys.executable).with_name("release-kit")), "check", "--candidate", "models/candidate-better.pt",
                       "--report", "report.json"]
        floor = [sys.executable, "floor.py", str(work)]
        timed(release_kit, work), timed(floor, work)  # warm-up: SQLite schema creation, file cache
        pairs = [(timed(release_kit, work), timed(floor, work)) for _ in range(ROUNDS)]
        stages = stage_seconds(work / "report.json")
        verdict = json.loads((work / "report.json").read_text())["verdict"]
        imports = median([timed([sys.executable, "-c", IMPORTS], work) for _ in range(3)])
    ours, base = median([p[0] for p in pairs]), median([p[1] for p in pairs])
    ratio = ours / base
    rest = ours - imports - sum(stages.values())
    breakdown = "\n".join(f"| {stage} stage (its checks' durations) | {seconds:.2f} s |" for stage, seconds in sorted(stages.items()))
    write_section(
        "end_to_end",
        "Full pipeline: `release-kit check` on the example vs a hand-written floor",
        f"| | median of {ROUNDS} interleaved runs |\n|---|---:|\n"
        f"| `release-kit check` (every stage, MLflow tracking on, the example's config; verdict {verdict}) | {ours:.2f} s |\n"
        f"| floor script, same work, libraries and budgets | {base:.2f} s |\n| ratio | **{ratio:.2f}×** |\n\n"
        f"Targets ≤ 10 s: {'met' if ours <= 10 else 'NOT met'}; ≤ 1.3×: {'met' if ratio <= 1.3 else 'NOT met'}.\n\n"
        f"Where release-kit's time goes (last run):\n\n| part | seconds |\n|---|---:|\n"
        f"| importing torch, pandas, scipy, mlflow, great_expectations, hypothesis (measured alone) | {imports:.2f} s |\n"
        f"{breakdown}\n| the rest: loading, inference, pytest session, GX context, MLflow logging, report | {rest:.2f} s |\n\n"
        "The search (6 s in the example's config, split between the contract and the monotonic search) and the timing "
        "rounds are budgets, spent alike by the floor.",
    )


if __name__ == "__main__":
    main()
