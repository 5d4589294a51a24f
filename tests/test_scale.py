"""Golden sets beyond memory: Parquet streamed in batches, the local and Ray engines, mergeable statistics,
--max-rows. Real models (the power example's), real Parquet files, the CLI."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import power_forecast as pf
from conftest import POWER_MODEL, QUICK


@pytest.fixture(scope="module")
def golden_directory(tmp_path_factory) -> Path:
    """30,000 golden rows in three Parquet files (and the same rows as one CSV)."""
    directory = tmp_path_factory.mktemp("streamed")
    frames = [pf.make_dataset(10_000, seed=seed) for seed in (11, 12, 13)]
    (directory / "golden").mkdir()
    for index, frame in enumerate(frames):
        frame.to_parquet(directory / "golden" / f"part-{index}.parquet")
    pd.concat(frames).to_csv(directory / "golden.csv", index=False)
    return directory


def configure(root: Path, power, golden: Path, extra: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "release-kit.toml").write_text(POWER_MODEL.replace("{{", "{").replace("}}", "}") + textwrap.dedent(f"""
        [baseline]
        path = "{power['v1']}"
        version = "1.0.0"

        [data]
        golden = "{golden}"
        reference = "{power['train']}"

        [run]
        chunk_rows = 4000
        sample_rows = 5000

        [mlflow]
        enabled = false
        """) + QUICK + textwrap.dedent(extra))


def run(cli, *args) -> dict:
    result = cli("check", "--candidate", "candidate.pt", "--format", "json", *args)
    assert result.exit_code in (0, 1), result.output[-3000:]
    return json.loads(result.stdout)


def metric(report: dict, name: str) -> dict:
    return next(m for c in report["checks"] for m in c["metrics"] if m["name"] == name and c["stage"] == "quality")


@pytest.fixture
def streamed_project(tmp_path, power, golden_directory, monkeypatch):
    import shutil

    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, golden_directory / "golden")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_directory_streams_and_matches_the_in_memory_numbers(streamed_project, power, golden_directory, cli):
    streamed = run(cli)
    assert streamed["data"]["golden"]["rows"] == 30_000 and streamed["verdict"] == "pass"
    checks = {f"{c['stage']}::{c['name']}": c for c in streamed["checks"]}
    assert "exact over all 30,000 rows, streamed" in checks["quality::mae"]["summary"]
    assert "on a uniform sample of 5,000 of 30,000 rows" in checks["outliers::slices"]["summary"]
    assert checks["data::golden_rows"]["summary"].startswith("all 30000 golden rows")

    # The same rows read whole (one CSV): the streamed sums give the in-memory metrics and intervals.
    configure(streamed_project, power, golden_directory / "golden.csv")
    whole = run(cli)
    for name in ("mae", "rmse", "r2"):
        a, b = metric(streamed, name), metric(whole, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (name, key)


def test_the_ray_engine_gives_the_same_numbers_and_verdict(streamed_project, cli):
    pytest.importorskip("ray")
    # Not the performance stage: it times the models on the machine's clock, whichever engine read the data.
    stages = ("--stage", "quality", "--stage", "outliers", "--stage", "data")
    local = run(cli, "--engine", "local", *stages)
    distributed = run(cli, "--engine", "ray", *stages)
    assert distributed["verdict"] == local["verdict"] and distributed["bump"] == local["bump"]
    assert distributed["data"] == local["data"]
    for name in ("mae", "rmse", "r2"):
        a, b = metric(local, name), metric(distributed, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-12), (name, key)
    # Everything decided on the sample is identical too: the bottom-k sample is the same rows in any engine
    # (the searches run on a time budget, so only their verdicts are compared).
    for a, b in zip(local["checks"], distributed["checks"]):
        assert (a["stage"], a["name"], a["status"]) == (b["stage"], b["name"], b["status"])
        if not a["name"].startswith(("search:", "monotonic:")):
            assert a["summary"] == b["summary"]


def test_max_rows_gates_on_a_prefix(streamed_project, power, golden_directory, cli):
    report = run(cli, "--max-rows", "12000")
    assert report["data"]["golden"]["rows"] == 12_000
    assert metric(report, "mae")["candidate"] == pytest.approx(
        np.abs(_better_predictions(power, golden_directory, 12_000) - pd.read_csv(golden_directory / "golden.csv")["power_kw"][:12_000]).mean(),
        rel=1e-6)
    configure(streamed_project, power, golden_directory / "golden.csv")
    assert run(cli, "--max-rows", "500")["data"]["golden"]["rows"] == 500


def _better_predictions(power, golden_directory, rows: int) -> np.ndarray:
    import torch

    frame = pd.read_csv(golden_directory / "golden.csv")[:rows]
    model = torch.jit.load(str(power["better"]))
    with torch.inference_mode():
        return model(torch.from_numpy(frame[pf.FEATURES].to_numpy(np.float32))).double().numpy().reshape(-1)


def test_unusable_rows_are_counted_over_every_row(tmp_path, power, cli, monkeypatch):
    import shutil

    frame = pf.make_dataset(9_000, seed=21)
    frame.loc[[5, 4_500, 8_999], "cloud_cover"] = np.nan
    (tmp_path / "golden").mkdir()
    for index in range(3):
        frame.iloc[index * 3_000 : (index + 1) * 3_000].to_parquet(tmp_path / "golden" / f"p{index}.parquet")
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["quality", "data"]\n')
    monkeypatch.chdir(tmp_path)
    report = run(cli)
    rows = next(c for c in report["checks"] if c["name"] == "golden_rows")
    assert rows["status"] == "fail" and rows["details"]["count"] == 3 and rows["details"]["columns"] == {"cloud_cover": 3}
    assert report["data"]["golden"]["excluded_rows"] == 3 and report["verdict"] == "block"


def test_whole_set_counts_catch_what_the_sample_misses(tmp_path, power, cli, monkeypatch):
    import shutil

    frame = pf.make_dataset(9_000, seed=22)
    frame.loc[7, "temperature"] = 80.0  # one row out of range: the 500-row sample will not hold it
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "all.parquet")
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "weather.json").write_text(json.dumps({"name": "weather", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "temperature", "min_value": -30, "max_value": 50}},
    ]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["data"]\n')
    text = (tmp_path / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 500")
    (tmp_path / "release-kit.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    report = run(cli)
    checks = {c["name"]: c for c in report["checks"]}
    sampled = checks["golden/temperature:column_values_to_be_between"]
    assert "on a uniform sample of 500 of 9,000 rows" in sampled["summary"]
    assert checks["whole_set"]["status"] == "fail" and "temperature maximum 80 > 50" in checks["whole_set"]["summary"]


def test_peak_memory_does_not_grow_with_the_golden_set(tmp_path, power):
    """The local engine holds one batch and the sample: 4× the rows cost no more than a little more memory."""
    import tracemalloc

    import torch

    from release_kit.config import ModelSpec
    from release_kit.models import load_model
    from release_kit.scale.engines import ScanPlan, run_local
    from release_kit.scale.source import ParquetSource

    spec = ModelSpec(name="p", task="regression", target="power_kw", features=pf.FEATURES)
    models = {role: load_model(role, str(power[key]), spec) for role, key in (("candidate", "better"), ("baseline", "v1"))}
    plan = ScanPlan(spec, {"candidate": tuple(pf.FEATURES), "baseline": tuple(pf.FEATURES)}, sample_rows=1_000)
    frame = pf.make_dataset(50_000, seed=3)
    peaks = {}
    for copies in (1, 4):
        folder = tmp_path / f"x{copies}"
        folder.mkdir()
        for index in range(copies):
            frame.to_parquet(folder / f"p{index}.parquet")
        torch.set_num_threads(1)
        tracemalloc.start()
        summary = run_local(ParquetSource.resolve(str(folder)), plan, models, chunk_rows=10_000)
        peaks[copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary.rows == 50_000 * copies
    assert peaks[4] < 1.5 * peaks[1], peaks


@pytest.mark.parametrize(
    ("args", "setup", "needle"),
    [
        (["--max-rows", "0"], None, "--max-rows"),
        (["--engine", "spark"], None, "--engine"),
        ([], "empty", "no Parquet files"),
        ([], "csv-in-directory", "is not a Parquet file"),
        ([], "missing-column", "missing column(s): irradiance"),
    ],
    ids=["max-rows-0", "unknown-engine", "empty-directory", "csv-in-directory", "missing-column"],
)
def test_bad_streamed_input_exits_2_with_one_line(tmp_path, power, cli, monkeypatch, args, setup, needle):
    import shutil

    golden = tmp_path / "golden"
    golden.mkdir()
    frame = pf.make_dataset(1_000, seed=4)
    if setup == "csv-in-directory":
        frame.to_csv(golden / "part.csv", index=False)
    elif setup == "missing-column":
        frame.drop(columns=["irradiance"]).to_parquet(golden / "part.parquet")
    elif setup != "empty":
        frame.to_parquet(golden / "part.parquet")
    if setup == "csv-in-directory":
        golden = tmp_path / "golden" / "*"
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, golden)
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--report", "report.json", *args)
    assert result.exit_code == 2, result.output[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[-1], result.stderr
    assert not (tmp_path / "report.json").exists()


def test_a_model_failing_inside_a_ray_worker_is_bad_input(tmp_path, power, cli, monkeypatch):
    """A model that cannot take the golden rows fails in the actor; the run still ends with one line, exit 2."""
    pytest.importorskip("ray")
    import torch

    from conftest import save_scripted

    class WantsSixFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 1)

        def forward(self, x):
            return self.linear(x).squeeze(-1)

    (tmp_path / "golden").mkdir()
    pf.make_dataset(2_000, seed=5).to_parquet(tmp_path / "golden" / "part.parquet")
    save_scripted(WantsSixFeatures(), tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["quality"]\n')
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--engine", "ray")
    assert result.exit_code == 2, result.output[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("release-kit:")]
    assert len(lines) == 1 and "candidate model" in lines[0] and "failed on input of shape" in lines[0], result.stderr[-2000:]


def test_an_unreachable_ray_cluster_is_bad_input(streamed_project, cli):
    pytest.importorskip("ray")
    text = (streamed_project / "release-kit.toml").read_text().replace("[run]\n", '[run]\nray_address = "127.0.0.1:1"\n')
    (streamed_project / "release-kit.toml").write_text(text)
    result = cli("check", "--candidate", "candidate.pt", "--engine", "ray")
    assert result.exit_code == 2, result.output[-3000:]
    assert "ray_address '127.0.0.1:1'" in result.stderr.strip().splitlines()[-1]
