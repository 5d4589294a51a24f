"""Golden sets beyond memory (issue #14): 100,000,000 rows × 10 features of Parquet (generated here, once,
under benchmarks/.data/, not in git), two MLP models (10 → 32 → 1, TorchScript).

- local engine (``run_local``, batches of 1,000,000 rows): wall time, peak RSS of its process, and the
  throughput as a ratio to a raw loop that only reads the same batches and runs both models (run with
  torch's default threads and with one fewer, as the engine runs them; the faster is the baseline);
- Ray engine with 2 workers on the same files: wall time and the same numbers (exact metrics equal);
- the bytes each batch ships from a worker to the driver (for the 10⁹-row projection in RESULTS.md);
- the same ratios (quality statistics, every stage's), measured for a costlier model pair (two
  10 → 32 → 32 → 1 MLPs, ``-deep`` parts) on the first ``DEEP_ROWS`` rows: what they are for models that
  cost more than the statistics.

Each measurement runs in its own process (``python scale.py part``) so that peak RSS is that part's alone.

    python benchmarks/scale.py [--rows 100000000]
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data" / "scale"
FEATURES = [f"x{j}" for j in range(10)]
CHUNK = 1_000_000
ROUNDS = 5
PARTS = ("raw", "raw-spared", "local", "every-stage")
DEEP_PARTS = ("raw-deep", "raw-spared-deep", "local-deep", "every-stage-deep")
DEEP_ROWS = 20_000_000
# Every part runs with glibc's mmap and trim thresholds fixed: left dynamic, they return the batches' large
# blocks to the kernel and map them again, and a raw loop spent 0.6–4.7 s of its ~6 s in page faults,
# swinging 2× from run to run. Fixed, every part is steady, and they compare like with like.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
FILE_ROWS = 5_000_000
# The raw loop's rows per call: its fastest here, alone. Measured side by side on this Intel machine (100,000,000
# rows, 3 rounds): 7.7-8.0 s in calls of 8,192 rows, 8.0-8.4 s of 32,768 (the calls release-kit makes for
# these MLPs, see release_kit.models.table_call_rows: faster beside the statistics, slower alone).
RAW_CALL_ROWS = 8_192


def peak_rss_gib() -> float:
    """This process's own peak RSS: the kernel's high-water mark of its memory (``VmHWM``). Not
    ``ru_maxrss``: Linux hands a child its parent's peak, so a part spawned after the parent generated the
    data reported the parent's 1.35 GiB for every part."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: ru_maxrss (KiB), which may count the parent's peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return int(status.split("VmHWM:")[1].split()[0]) / 2**20


def generated(rows: int) -> Path:
    """The data, generated (once) in a process of its own: generating peaks at ~1.4 GiB, and every process
    this one starts afterwards would count that peak as its own (see :func:`peak_rss_gib`)."""
    subprocess.run([sys.executable, __file__, "generate", str(rows)], check=True, cwd=HERE)
    return DATA / f"rows-{rows}"


def generate(rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = DATA / f"rows-{rows}"
    if (folder / "_done").exists():  # a marker as Spark's _SUCCESS: a name the golden directory's reading skips
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=10).astype(np.float32)
    for index, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        x = rng.normal(size=(n, 10)).astype(np.float32)
        y = (x @ weights + rng.normal(0, 0.5, n).astype(np.float32)).astype(np.float32)
        table = pa.table({**{name: x[:, j] for j, name in enumerate(FEATURES)}, "y": y})
        pq.write_table(table, folder / f"part-{index:04d}.parquet", row_group_size=CHUNK)
    (folder / "_done").touch()
    return folder


def models(folder: Path, deep: bool = False) -> dict[str, Path]:
    """Two MLPs, 10 → 32 → 1 (or, ``deep``, 10 → 32 → 32 → 1), TorchScript."""
    import torch

    suffix = "-deep" if deep else ""
    models = folder.parent / f"{folder.name}-models"  # beside the golden directory: it holds Parquet files only
    models.mkdir(exist_ok=True)
    paths = {"candidate": models / f"candidate{suffix}.pt", "baseline": models / f"baseline{suffix}.pt"}
    for seed, path in enumerate(paths.values()):
        if not path.exists():
            torch.manual_seed(seed)
            hidden = [torch.nn.Linear(32, 32), torch.nn.ReLU()] if deep else []
            module = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), *hidden, torch.nn.Linear(32, 1), torch.nn.Flatten(0))
            torch.jit.save(torch.jit.script(module.eval()), str(path))
    return paths


def _plan_and_models(folder: Path, every_stage: bool = False, deep: bool = False):
    """The scan plan of a check with the quality stage only, or (``every_stage``) with the default stages'
    statistics over every row too: drift counts, the worst rows and changes' sketch, per-feature slice sums and
    three pairs' joint tables (their bins fixed from the first 200,000 rows, as a check fixes slice bins; the
    drift bins stand in for a reference's)."""
    from release_kit.config import ModelSpec
    from release_kit.drift import Bins
    from release_kit.models import load_model
    from release_kit.paired import EDGE_SAMPLE_ROWS, SliceBins
    from release_kit.scale.batches import ScanPlan
    from release_kit.scale.source import ParquetSource

    spec = ModelSpec(name="bench", task="regression", target="y", features=FEATURES)
    loaded = {role: load_model(role, str(path), spec, timeout=600) for role, path in models(folder, deep).items()}
    source = ParquetSource.resolve(str(folder))
    extra = {}
    if every_stage:
        first = next(iter(source.batches(FEATURES, EDGE_SAMPLE_ROWS, EDGE_SAMPLE_ROWS)))
        columns = {name: first.column(name).to_numpy().astype(np.float32) for name in FEATURES}
        extra = {"drift_bins": {n: Bins.of(v.astype(np.float64), 10) for n, v in columns.items()}, "worst_rows": 10,
                 "slice_bins": {n: SliceBins.of(n, v, 5) for n, v in columns.items()},
                 "slice_pairs": tuple(itertools.combinations(FEATURES[:3], 2))}  # a check's three pairs
    plan = ScanPlan(spec, {"candidate": tuple(FEATURES), "baseline": tuple(FEATURES)}, sample_rows=1_000_000,
                    total_rows=source.rows(), **extra)
    return source, plan, loaded


CLI_CONFIG = """
[model]
name = "scale-bench"
task = "regression"
target = "y"
features = {features}

[baseline]
path = "{baseline}"
version = "1.0.0"

[data]
golden = "{folder}"
"""


def cli(folder: Path) -> dict:
    """`release-kit check` as users run it on the whole set: default config (every stage, MLflow tracking on,
    its embedded store in a scratch directory), wall time and peak RSS of that process."""
    import tempfile

    paths = models(folder)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "release-kit.toml").write_text(CLI_CONFIG.format(features=json.dumps(FEATURES), baseline=paths["baseline"], folder=folder))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "release_kit.cli", "check", "--candidate", str(paths["candidate"]),
                               "--report", "report.json"], cwd=work, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode not in (0, 1):  # a gate decision either way; anything else is a failed run
            raise SystemExit(f"release-kit check exited {done.returncode}: {done.stderr[-3000:]}")
        report = json.loads((work / "report.json").read_text())
        tracked = (work / ".release-kit" / "mlflow.db").is_file() and bool(report["mlflow"]["run_id"])
    # The child's ru_maxrss counts this process's peak too (see peak_rss_gib): a part that loaded two small
    # models, well under the check's own.
    return {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            "verdict": report["verdict"], "checks": len(report["checks"]), "rows": report["data"]["golden"]["rows"],
            "stages": sorted({c["stage"] for c in report["checks"]}), "tracked": tracked}


def raw_loop(source, plan, loaded: dict, rows: int | None = None, device: str = "cpu", call_rows: int = RAW_CALL_ROWS) -> None:
    """Read the batches and run both models, nothing else: the baseline the engines are measured against.
    A thread reads one batch ahead while the models run (the faster of the two ways to read here: the raw
    loop has no other work for that core). Calls of ``call_rows`` rows (on the CPU its fastest, RAW_CALL_ROWS), each
    call's input stacked from the columns just before the call (on CUDA through pinned memory, copied without
    blocking), both models on it, each call's output cast into one float64 array per model."""
    import torch

    from release_kit.scale.source import batches_read_ahead

    with torch.inference_mode():
        for batch in batches_read_ahead(source.batches(plan.columns, CHUNK, rows)):
            columns = [batch.column(c).to_numpy() for c in FEATURES]
            outputs = {role: torch.empty(batch.num_rows, dtype=torch.float64) for role in loaded}
            for start in range(0, batch.num_rows, call_rows):
                x = torch.from_numpy(np.stack([c[start : start + call_rows] for c in columns], axis=1))
                if device != "cpu":
                    x = x.pin_memory().to(device, non_blocking=True)
                for role, model in loaded.items():
                    output = model.module(x)
                    outputs[role][start : start + len(output)].copy_(output)


def part(name: str, folder: Path) -> dict:
    """One measurement, in this process: its figures and peak RSS."""
    import torch

    if name == "cli":
        return cli(folder)
    deep = name.endswith("-deep")
    rows = DEEP_ROWS if deep else None
    source, plan, loaded = _plan_and_models(folder, every_stage=name.startswith("every-stage"), deep=deep)
    if name.startswith("raw-spared"):  # torch one thread fewer, as the local engine runs the models
        torch.set_num_threads(max(1, torch.get_num_threads() - 1))
    started = time.perf_counter()
    if name.startswith("raw"):
        raw_loop(source, plan, loaded, rows)
        seconds, peak = time.perf_counter() - started, peak_rss_gib()
        result: dict = {}
    else:
        from release_kit.scale.engines import run_local, run_ray
        from release_kit.scale.stats import paired_diff

        if name in ("local", "every-stage", "local-deep", "every-stage-deep"):
            summary = run_local(source, plan, loaded, chunk_rows=CHUNK, max_rows=rows)
        else:
            summary = run_ray(source, plan, loaded, chunk_rows=CHUNK, workers=2)
        # The scan alone: the probe below (bytes a batch ships) is neither timed nor counted in the peak.
        seconds, peak = time.perf_counter() - started, peak_rss_gib()
        result = {"rows": summary.rows, "call_rows": min(m.batch_size for m in loaded.values()), "metrics": {m: list(paired_diff(m, s, 0.95).__dict__.values()) for m, s in summary.quality.items()}}
        if name == "local":
            import pickle

            from release_kit.scale.batches import reduce_batch

            shipped = reduce_batch(plan, loaded, next(iter(source.batches(plan.columns, CHUNK))))
            result["batch_bytes"] = len(pickle.dumps(shipped))
            result["batch_bytes_no_sample"] = len(pickle.dumps({k: v for k, v in shipped.__dict__.items() if k != "sample"}))
    result["seconds"] = seconds
    result["peak_rss_gib"] = peak
    return result


def main() -> None:
    from _results import write_section

    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 100_000_000
    started = time.perf_counter()
    folder = generated(rows)
    generation_seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.glob("*.parquet"))
    figures = {}
    # A first raw pass warms the page cache (the files are read from disk once); then the four parts run in
    # ROUNDS rounds, one after the other (this machine is shared and noisy): each round's ratio compares parts
    # that ran side by side, and the median of the rounds' ratios is the figure.
    runs: dict[str, list[dict]] = {name: [] for name in (*PARTS, *DEEP_PARTS)}
    for name in ("raw-cold", *PARTS * ROUNDS, *DEEP_PARTS * ROUNDS, "ray", "cli"):
        output = subprocess.run([sys.executable, __file__, "part", name, str(folder)], capture_output=True, text=True, cwd=HERE,
                                env={**os.environ, **STEADY_MALLOC})
        if output.returncode != 0:
            raise SystemExit(f"{name} failed: {output.stderr[-3000:]}")
        figures[name] = json.loads(output.stdout.strip().splitlines()[-1])
        runs.setdefault(name, []).append(figures[name])
        print(name, figures[name])
    default_raw, spared_raw, local, full = (sorted(runs[name], key=lambda r: r["seconds"])[ROUNDS // 2] for name in PARTS)
    # Each round's baseline is the faster of its two raw loops.
    baselines = [min(a["seconds"], b["seconds"]) for a, b in zip(runs["raw"], runs["raw-spared"])]
    ratios = {name: sorted(base / run["seconds"] for base, run in zip(baselines, runs[name])) for name in ("local", "every-stage")}
    ratio, full_ratio = (values[ROUNDS // 2] for values in ratios.values())
    raw_seconds = sorted(baselines)[ROUNDS // 2]
    deep_baselines = [min(a["seconds"], b["seconds"]) for a, b in zip(runs["raw-deep"], runs["raw-spared-deep"])]
    deep_ratios, deep_full_ratios = (sorted(base / run["seconds"] for base, run in zip(deep_baselines, runs[name]))
                                     for name in ("local-deep", "every-stage-deep"))
    deep_ratio, deep_full_ratio, deep_raw = deep_ratios[ROUNDS // 2], deep_full_ratios[ROUNDS // 2], sorted(deep_baselines)[ROUNDS // 2]
    deep_local, deep_full = (sorted(r["seconds"] for r in runs[name])[ROUNDS // 2] for name in ("local-deep", "every-stage-deep"))
    ray, check = figures["ray"], figures["cli"]
    same = all(
        np.allclose(local["metrics"][m][:5], ray["metrics"][m][:5], rtol=1e-9, atol=0) for m in local["metrics"]
    )
    own, full_own = ((run["seconds"] - raw_seconds) / rows * 1e9 for run in (local, full))
    call_rows = local["call_rows"]
    mae = local["metrics"]["mae"]
    write_section(
        "scale",
        f"Streamed golden set: {rows:,} rows × 10 features (Parquet, {size / 2**30:.1f} GiB, {len(list(folder.glob('*.parquet')))} files)",
        f"Generated once under benchmarks/.data/ ({generation_seconds:.0f} s this run; kept, not in git). Two MLPs (10 → 32 → 1, TorchScript), batches of {CHUNK:,} rows, "
        "each part in its own process, timed from the scan's start to its end (loading the models is not timed).\n\n"
        f"| | wall time (median of {ROUNDS} rounds) | rows/s | peak RSS |\n|---|---:|---:|---:|\n"
        f"| raw loop: read the batches, run both models in calls of {RAW_CALL_ROWS:,} rows, each call's input stacked from the columns and its output cast into one array per model, as release-kit does (torch's default threads) | {default_raw['seconds']:.1f} s | {rows / default_raw['seconds']:,.0f} | {default_raw['peak_rss_gib']:.2f} GiB |\n"
        f"| raw loop, torch one thread fewer (as the local engine runs the models) | {spared_raw['seconds']:.1f} s | {rows / spared_raw['seconds']:,.0f} | {spared_raw['peak_rss_gib']:.2f} GiB |\n"
        f"| local engine (`run_local`: both models, exact metric sums, whole-set counts, the output contract's counts, 1,000,000-row sample) | {local['seconds']:.1f} s | {rows / local['seconds']:,.0f} | {local['peak_rss_gib']:.2f} GiB |\n"
        f"| local engine, with every default stage's statistics over every row too (drift counts, worst rows and the changes' sketch, per-feature and pair slice sums) | {full['seconds']:.1f} s | {rows / full['seconds']:,.0f} | {full['peak_rss_gib']:.2f} GiB |\n"
        f"| Ray engine, 2 workers (local Ray started by the run) | {ray['seconds']:.1f} s | {rows / ray['seconds']:,.0f} | {ray['peak_rss_gib']:.2f} GiB (driver) |\n"
        f"| `release-kit check` in a subprocess, default config: every stage ({', '.join(check['stages'])}), MLflow tracking on "
        f"({'logged to' if check['tracked'] else 'NOT logged to'} the embedded store), the files hashed for the report, verdict {check['verdict']} "
        f"({check['checks']} checks; the benchmark's random candidate is worse) | {check['seconds']:.1f} s | {check['rows'] / check['seconds']:,.0f} | {check['peak_rss_gib']:.2f} GiB |\n\n"
        f"Local throughput vs the faster raw loop of the same round (median of the {ROUNDS} rounds' ratios): **{ratio:.2f}×** with the quality statistics "
        f"(rounds {ratios['local'][0]:.2f}–{ratios['local'][-1]:.2f}; goal ≥ 0.8×: {'met' if ratio >= 0.8 else 'NOT met'}), "
        f"**{full_ratio:.2f}×** with every stage's (rounds {ratios['every-stage'][0]:.2f}–{ratios['every-stage'][-1]:.2f}: {'met' if full_ratio >= 0.8 else 'NOT met'}); "
        f"peak RSS {max(r['peak_rss_gib'] for r in (*runs['local'], *runs['every-stage'])):.2f} GiB "
        f"(goal ≤ 3 GB: {'met' if max(r['peak_rss_gib'] for r in (*runs['local'], *runs['every-stage'])) * 1.0737 <= 3 else 'NOT met'}). "
        f"Ray vs local: {ray['seconds'] / local['seconds']:.2f}× the wall time; "
        f"exact metrics equal to 1e-9 relative: {'yes' if same else 'NO'} (MAE Δ {mae[2]:+.6f} [{mae[3]:+.6f}, {mae[4]:+.6f}] in both).  \n"
        f"The local engine's own cost is {own:.0f} ns per row with the quality statistics ({full_own:.0f} ns with every stage's), against "
        f"{raw_seconds / rows * 1e9:.0f} ns for reading a row and running both models in the faster raw loop. The models have the main "
        "thread to themselves while a helper thread reads and checks the next batch and summarizes the one before (a third thread "
        "takes over the reading once the helper is seen to cost more CPU than the models, as with every stage's statistics), but they "
        "share the GIL (the statistics' Python steps between numpy's loops; the scan hands it over every 0.2 ms) and the memory: measured, a thread "
        "summarizing beside the models slowed their scoring ~12–20 % in calls of 8,192 rows (not measurably in calls of 32,768), another process ~5 %, yet a process must copy each batch into "
        "shared memory, and in a prototype that cost more than it saved (a scan 10–15 % slower); a worker process that read, "
        "checked and summarized the batches itself, the models' process only scoring from shared memory, was slower still "
        "(its own steps ran 1.5–2× slower beside the models: this machine's two cores share one memory bus, where two "
        "memory-bound loops run 1.6× slower each and two in-cache ones are unaffected). What each model call does besides "
        "the model (its deadline guard, the checks of its output) is kept to ~1 µs on the models' thread: measured side "
        "by side with the code that spent ~5 µs a call, 0.81× against 0.77× (rounds 0.78–0.90 against 0.75–0.82). "
        f"release-kit calls these MLPs on {call_rows:,} rows at a time (as many as keep their widest layer within 4 MiB, "
        f"`release_kit.models.table_call_rows`), the raw loop on {RAW_CALL_ROWS:,}, each the faster for it: beside the "
        "statistics, each call's hand-over of the GIL costs both threads CPU, and calls of 8,192 rows made the local engine "
        "1.14–1.17× slower (100,000,000 rows, 3 rounds, 2026-12-07), while alone the raw loop's 8,192-row calls are 1–6 % faster. "
        "For these two tiny MLPs the statistics' cost weighs; for a costlier pair it weighs less: "
        f"measured for two 10 → 32 → 32 → 1 MLPs on the first {DEEP_ROWS:,} rows, the faster raw loop "
        f"{deep_raw:.1f} s ({deep_raw / DEEP_ROWS * 1e9:.0f} ns per row), the local engine with the quality statistics "
        f"{deep_local:.1f} s: **{deep_ratio:.2f}×** (rounds {deep_ratios[0]:.2f}–{deep_ratios[-1]:.2f}; goal ≥ 0.8×: "
        f"{'met' if deep_ratio >= 0.8 else 'NOT met'} for this pair), with every stage's statistics {deep_full:.1f} s: "
        f"**{deep_full_ratio:.2f}×** (rounds {deep_full_ratios[0]:.2f}–{deep_full_ratios[-1]:.2f}: "
        f"{'met' if deep_full_ratio >= 0.8 else 'NOT met'} for this pair). "
        "Every part ran with glibc's mmap and trim thresholds fixed (`MALLOC_MMAP_THRESHOLD_=64 MiB`, `MALLOC_TRIM_THRESHOLD_=1 GiB`): "
        "left dynamic, a raw loop spent up to 4.7 s in page faults and swung 2× from run to run. This machine is shared and noisy: "
        "the ratios are taken round by round, their median and range shown.\n\n"
        f"Shipped from a worker to the driver per batch: {local['batch_bytes']:,} bytes pickled, of which "
        f"{local['batch_bytes'] - local['batch_bytes_no_sample']:,} are its share of the sample and "
        f"{local['batch_bytes_no_sample']:,} the sums and counts.",
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "part":
        print(json.dumps(part(sys.argv[2], Path(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "generate":
        generate(int(sys.argv[2]))
    else:
        main()
