"""Golden sets beyond memory: Parquet streamed in batches, the local and Ray engines, mergeable statistics,
--max-rows. Real models (the power example's), real Parquet files, the CLI."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import power_forecast as pf
from conftest import POWER_MODEL, QUICK, churn_model


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


@pytest.fixture
def shared_ray():
    """A local Ray for this module's in-process Ray runs, started on first use and stopped when the module
    ends: each start and stop costs ~4 s on two cores. It has what a run's own local Ray has (a logical CPU
    per core and one for the reads), so the runs given it pool as many actors. The runs that start and stop
    a Ray of their own are the CLI subprocess tests (one worker, an actor that kills its process)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False)
    # A failed run frees its actors by collecting its execution, but pytest's log capture keeps the error's
    # traceback, and with it that execution, until the test ends: collected now, once pytest let go of it.
    gc.collect()
    return ray


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_running():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
    assert result.stdout.startswith("{"), result.stdout[:3000]  # stdout is the report alone
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
    assert streamed["environment"]["golden_read"] == "local"
    checks = {f"{c['stage']}::{c['name']}": c for c in streamed["checks"]}
    assert "exact over all 30,000 rows, streamed" in checks["quality::mae"]["summary"]
    assert "on a uniform sample of 5,000 of 30,000 rows" in checks["outliers::prediction_shift"]["summary"]
    slices = checks["outliers::slices"]["summary"]
    assert "over all 30,000 rows, streamed" in slices
    # A pair of features' cell counts every golden row, not the sample's.
    import re

    a, low_a, b, low_b, n = re.search(r"largest change (\w+) ≤ ([\d.]+) and (\w+) ≤ ([\d.]+) \(n=(\d+)\)", slices).groups()
    golden = pd.read_csv(golden_directory / "golden.csv")
    assert int(n) == int(((golden[a].astype(np.float32) <= float(low_a)) & (golden[b].astype(np.float32) <= float(low_b))).sum())
    assert checks["data::golden_rows"]["summary"].startswith("all 30,000 golden rows")
    # The set's digest (hashed beside the models' loading): every file's name and content hash, in order.
    expected = hashlib.sha256()
    for file in sorted((golden_directory / "golden").glob("*.parquet")):
        expected.update(f"{file.name}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode())
    assert streamed["data"]["golden"]["sha256"] == expected.hexdigest()

    # The same rows read whole (one CSV): the streamed sums give the in-memory metrics and intervals.
    configure(streamed_project, power, golden_directory / "golden.csv")
    whole = run(cli)
    assert whole["environment"]["golden_read"] == "whole"
    for name in ("mae", "rmse", "r2"):
        a, b = metric(streamed, name), metric(whole, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (name, key)
    # Drift: PSI (and chi-square) from the counts streamed into the reference's bins cover every row.
    drift = {f"{c['stage']}::{c['name']}": c for c in whole["checks"]}["data::drift"]
    assert "PSI and chi-square over all 30,000 golden rows, streamed; KS on a uniform sample of 5,000 rows" in checks["data::drift"]["summary"]
    streamed_rows, whole_rows = checks["data::drift"]["details"]["table"]["rows"], drift["details"]["table"]["rows"]
    assert [r[:2] for r in streamed_rows] == [r[:2] for r in whole_rows]
    for a, b in zip(streamed_rows, whole_rows):
        assert a[2] == pytest.approx(b[2], rel=1e-12), a  # PSI


def test_a_streamed_check_as_users_run_it_every_stage_with_tracking_on(streamed_project):
    """The CLI in a subprocess, every default stage, MLflow tracking on (the embedded SQLite store): the
    streamed run passes and its gate run is logged with the report's numbers."""
    from mlflow import MlflowClient

    from conftest import run_cli

    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("[mlflow]\nenabled = false\n", ""))
    assert "[mlflow]" not in config.read_text()
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((streamed_project / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} >= {"quality", "outliers", "performance", "data"}
    assert report["data"]["golden"]["rows"] == 30_000
    # The profile's range and not-null expectations were decided over every row, not on the sample.
    counted = [c for c in report["checks"] if c["stage"] == "data" and c["name"].endswith(("to_be_between", "to_not_be_null"))]
    assert len(counted) >= 10 and all(c["status"] == "pass" and "over all 30,000 rows, streamed" in c["summary"] for c in counted), counted
    # The profile was sized for the 30,000 golden rows: temperature's range reaches into the reference's tails,
    # beyond its extremes plus the margin; a share in [0, 1] (cloud cover), whose tail ends, keeps the margin.
    import re
    import tomllib

    train = pd.read_csv(tomllib.loads(config.read_text())["data"]["reference"])
    bounds = {}
    for c in counted:
        found = re.match(r"(\w+) within \[([-\d.e+]+), ([-\d.e+]+)\]", c["summary"])
        if found:
            bounds[found[1]] = (float(found[2]), float(found[3]))
    for column in ("temperature", "cloud_cover"):
        low, high = train[column].min(), train[column].max()
        margin = 0.1 * (high - low)
        extended = bounds[column][1] > high + margin * 1.05
        assert extended == (column == "temperature"), (column, bounds[column], high + margin)
    run = MlflowClient(tracking_uri=f"sqlite:///{streamed_project / '.release-kit' / 'mlflow.db'}").get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["quality.mae.candidate"] == pytest.approx(metric(report, "mae")["candidate"], rel=1e-6)


def test_a_directory_written_by_a_job_is_read_without_its_markers_and_hidden_files(streamed_project, power, golden_directory, cli):
    """A directory a Spark or Hive job wrote holds Parquet files that are not its rows: a failed write's
    ``_temporary/`` output, hidden copies. They are skipped, as pyarrow's datasets skip them: the set gives
    the numbers of its data files alone."""
    import shutil

    job = streamed_project / "job-output"
    shutil.copytree(golden_directory / "golden", job)
    (job / "_SUCCESS").write_text("")
    (job / "_temporary" / "0").mkdir(parents=True)
    pf.make_dataset(500, seed=99).to_parquet(job / "_temporary" / "0" / "part-9.parquet")  # same schema, not data
    pf.make_dataset(500, seed=98).to_parquet(job / ".part-0.parquet")
    (job / "part-0.parquet.crc").write_bytes(b"\0")

    configure(streamed_project, power, job)
    written = run(cli)
    configure(streamed_project, power, golden_directory / "golden")
    alone = run(cli)
    assert written["data"]["golden"]["rows"] == alone["data"]["golden"]["rows"] == 30_000
    assert written["data"]["golden"]["sha256"] == alone["data"]["golden"]["sha256"]
    for name in ("mae", "rmse", "r2"):
        assert metric(written, name) == metric(alone, name)


def test_parquet_files_named_as_hive_names_them_and_linked_directories_are_read(streamed_project, power, golden_directory, cli):
    """Hive and Impala name a table's Parquet files ``000000_0``: read as Parquet by their first bytes, a
    Hadoop checksum beside them skipped. A linked directory is read as Spark reads it, a link back up the tree
    once. The same numbers as the same files named ``*.parquet`` in one directory."""
    import shutil

    hive, elsewhere = streamed_project / "warehouse" / "golden", streamed_project / "elsewhere"
    hive.mkdir(parents=True)
    elsewhere.mkdir()
    written = sorted((golden_directory / "golden").glob("*.parquet"))
    assert len(written) >= 3
    for index, file in enumerate(written):
        folder = elsewhere if index == len(written) - 1 else hive
        shutil.copy(file, folder / f"{index:06d}_0")
        (folder / f"{index:06d}_0.crc").write_bytes(b"crc\0")
    (hive / "later").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(hive, target_is_directory=True)
    configure(streamed_project, power, hive)
    laid_out = run(cli, "--stage", "quality")
    configure(streamed_project, power, golden_directory / "golden")
    named_parquet = run(cli, "--stage", "quality")
    assert laid_out["data"]["golden"]["rows"] == named_parquet["data"]["golden"]["rows"] == 30_000
    for name in ("mae", "rmse", "r2"):
        assert metric(laid_out, name) == metric(named_parquet, name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists mode-0 directories")
def test_a_subdirectory_that_cannot_be_listed_is_bad_input_not_skipped(tmp_path):
    from release_kit.errors import InputError
    from release_kit.scale.source import ParquetSource

    pf.make_dataset(100, seed=1).to_parquet(tmp_path / "part-0.parquet")
    hidden = tmp_path / "day=2"
    hidden.mkdir()
    pf.make_dataset(100, seed=2).to_parquet(hidden / "part-1.parquet")
    hidden.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot list .*day=2: Permission denied"):
            ParquetSource.resolve(str(tmp_path))
    finally:
        hidden.chmod(0o755)


def _write_partitioned(frame: pd.DataFrame, directory: Path, keys: list[str]) -> None:
    """``frame`` as a Hive-partitioned directory (``key=value/`` subdirectories), as Spark's and pyarrow's
    writers lay it out: the keys' columns are in the paths, not in the files."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema = pa.schema([table.schema.field(key) for key in keys])
    pads.write_dataset(table, directory, format="parquet", partitioning=pads.partitioning(schema, flavor="hive"))


def test_a_hive_partitioned_directory_reads_its_partition_columns(streamed_project, power, golden_directory, cli):
    """A directory partitioned by a feature (``hour=7/``, Spark's ``partitionBy``) and by a column the models
    do not read: the partition columns are read from the paths. Checked as users run it (the CLI in a
    subprocess, every default stage, MLflow tracking on, the reference a job's Parquet directory), the gate
    gives the numbers of the same files with those columns stored in them (the same batches: equal to 1e-9),
    and of the rows read whole (other batch shapes, whose float32 predictions round differently: 1e-6). Its
    digest covers the partitions' names."""
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from conftest import run_cli

    reference = streamed_project / "reference"
    reference.mkdir()
    train = pd.read_csv(power["train"])
    for index, start in enumerate(range(0, len(train), 900)):
        train.iloc[start : start + 900].to_parquet(reference / f"part-{index:05d}.parquet")
    (reference / "_SUCCESS").write_text("")

    def configure_with_reference(golden: Path) -> Path:
        configure(streamed_project, power, golden)
        config = streamed_project / "release-kit.toml"
        config.write_text(config.read_text().replace(f'reference = "{power["train"]}"', f'reference = "{reference}"'))
        assert f'reference = "{reference}"' in config.read_text()
        return config

    rows = pd.read_csv(golden_directory / "golden.csv").iloc[:8_000]
    rows = rows.assign(site=np.where(np.arange(len(rows)) % 3 == 0, "north east", "south"))
    partitioned = streamed_project / "partitioned"
    _write_partitioned(rows, partitioned, ["hour", "site"])
    assert (partitioned / "hour=7" / "site=north%20east").is_dir()
    config = configure_with_reference(partitioned)
    config.write_text(config.read_text().replace("[mlflow]\nenabled = false\n", ""))
    done = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--report", "report.json")
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-2000:]
    streamed = json.loads((streamed_project / "report.json").read_text())
    assert {c["stage"] for c in streamed["checks"]} == {"quality", "outliers", "performance", "data"}
    logged = MlflowClient(tracking_uri=f"sqlite:///{streamed_project / '.release-kit' / 'mlflow.db'}").get_run(streamed["mlflow"]["run_id"])
    assert logged.data.metrics["quality.mae.candidate"] == pytest.approx(metric(streamed, "mae")["candidate"], rel=1e-6)

    # The same files in the same order, each with its path's values stored as columns.
    flat = streamed_project / "flat"
    flat.mkdir()
    files = sorted(partitioned.rglob("*.parquet"))
    for index, file in enumerate(files):
        hour, site = (part.split("=")[1] for part in file.relative_to(partitioned).parts[:2])
        frame = pq.read_table(file).to_pandas().assign(hour=int(hour), site=site.replace("%20", " "))
        frame.to_parquet(flat / f"part-{index:05d}.parquet")
    configure_with_reference(flat)
    stored = run(cli)
    pd.concat(pd.read_parquet(f) for f in sorted(flat.glob("*.parquet"))).to_csv(streamed_project / "whole.csv", index=False)
    configure_with_reference(streamed_project / "whole.csv")
    whole = run(cli)

    assert streamed["data"]["golden"]["rows"] == stored["data"]["golden"]["rows"] == whole["data"]["golden"]["rows"] == 8_000
    assert streamed["data"]["golden"]["used_rows"] == 8_000
    for name in ("mae", "rmse", "r2"):
        a, b, c = metric(streamed, name), metric(stored, name), metric(whole, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (name, key)
            assert a[key] == pytest.approx(c[key], rel=1e-6), (name, key)
    checks = {f"{c['stage']}::{c['name']}": c for c in streamed["checks"]}
    assert "exact over all 8,000 rows, streamed" in checks["quality::mae"]["summary"]
    # Every check decided alike, the data stage's on the carried partition column ``site`` included.
    assert [(c["name"], c["status"]) for c in streamed["checks"] if c["stage"] != "performance"] == \
        [(c["name"], c["status"]) for c in stored["checks"] if c["stage"] != "performance"]
    assert "site" in checks["data::golden/table:table_columns_to_match_ordered_list"]["details"]["observed_value"]
    # The reference directory was read whole: the drift check ran against it.
    assert "data::drift" in checks and checks["data::drift"]["status"] in ("pass", "warn"), checks["data::drift"]["summary"]

    # Moving a file to another partition changes its rows' values: the digest changes with it.
    from release_kit.scale.source import ParquetSource

    with ParquetSource.resolve(str(partitioned)).hashing() as digest:
        first = digest.result()
    moved = next((partitioned / "hour=7").rglob("*.parquet"))
    (partitioned / "hour=8" / "site=elsewhere").mkdir()
    moved.rename(partitioned / "hour=8" / "site=elsewhere" / moved.name)
    with ParquetSource.resolve(str(partitioned)).hashing() as digest:
        assert digest.result() != first


def test_hive_partition_values_are_typed_as_arrow_casts_them(tmp_path):
    """A key whose every value casts to an integer is int64, to a finite float double, else text; the null
    partition (``__HIVE_DEFAULT_PARTITION__``) is null; values are URL-decoded. A glob's partitions are the
    ``key=value`` directories under its leading directory, not the directories above it."""
    import pyarrow as pa

    from release_kit.scale.source import HIVE_NULL, ParquetSource, infer_partition_types, typed_partitions

    assert infer_partition_types({"a": {"007", "-3"}, "b": {"1.5", "2"}, "c": {"1e400", "2"}, "d": {"x", "1"},
                            "e": {"4", HIVE_NULL}, "f": {HIVE_NULL}}) == {
        "a": "int64", "b": "double", "c": "string", "d": "string", "e": "int64", "f": "string"}
    batch = pa.RecordBatch.from_pydict({"e": ["4", HIVE_NULL, "5"], "x": [1.0, 2.0, 3.0]})
    typed = typed_partitions(batch, {"e": "int64"})
    assert typed.column("e").to_pylist() == [4, None, 5] and typed.schema.field("e").type == pa.int64()
    assert typed.column("x").to_pylist() == [1.0, 2.0, 3.0]

    base = tmp_path / "run=3" / "golden"  # a key=value name above the golden directory is not a column
    for day, site in (("1", "a%2Fb"), ("2", HIVE_NULL)):
        (base / f"day={day}" / f"site={site}").mkdir(parents=True)
        pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(base / f"day={day}" / f"site={site}" / "part.parquet")
    for name in (str(base), str(base / "day=*" / "*" / "*.parquet")):
        source = ParquetSource.resolve(name)
        assert source.partition_types == {"day": "int64", "site": "string"}, name
        assert source.common_columns() == ("x", "day", "site")
        rows = pa.Table.from_batches(list(source.batches(["site", "x", "day"], 10)))
        assert rows.column_names == ["site", "x", "day"]
        assert rows.column("site").to_pylist() == ["a/b", "a/b", None, None]
        assert rows.column("day").to_pylist() == [1, 1, 2, 2]


def test_the_same_rows_in_any_layout_of_files_give_the_same_numbers(streamed_project, power, golden_directory, cli):
    """A model's output for a row can depend on its batch's size (a matrix product's tail rows take another
    kernel: seen here with 125-row files), so the batches are cut at every chunk_rows-th row whatever the
    files: one file, or 23 files of odd sizes with 97-row row groups and a column stored as float32 in some
    files and float64 in others, give the very same numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pd.read_csv(golden_directory / "golden.csv").iloc[:12_000]
    (streamed_project / "one").mkdir()
    rows.to_parquet(streamed_project / "one" / "all.parquet")
    scattered = streamed_project / "scattered"
    scattered.mkdir()
    bounds = [0, *sorted(np.random.default_rng(3).choice(np.arange(1, 12_000), 22, replace=False)), 12_000]
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        part = rows.iloc[start:end]
        if index % 2:
            part = part.astype({"cloud_cover": np.float32})
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), scattered / f"part-{index:02d}.parquet", row_group_size=97)
    reports = {}
    for layout in ("one", "scattered"):
        configure(streamed_project, power, streamed_project / layout)
        reports[layout] = run(cli, "--stage", "quality")
    for name in ("mae", "rmse", "r2"):
        assert metric(reports["one"], name) == metric(reports["scattered"], name), name


def test_each_read_tasks_files_give_the_batches_that_start_in_them_cut_as_the_whole_sets(tmp_path):
    """A Ray read task is given a run of files and reads the batches that start in them, its last one read on
    into the files after: whatever way the files are split between tasks, the tasks' batches put together are
    the whole set's, cut at the same rows (with --max-rows too). Files of 0 rows, files inside one batch,
    files of many batches, row groups smaller and larger than a batch (those before a task's first row
    skipped)."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    from release_kit.scale.engines import read_task, unwrapped_batch
    from release_kit.scale.source import ParquetSource

    sizes, groups = (0, 7, 25, 3, 0, 41, 12), (5, 4, 100, 1, 5, 4, 12)
    start = 0
    for index, (size, group) in enumerate(zip(sizes, groups)):
        rows = np.arange(start, start + size)
        pq.write_table(pa.table({"x": rows.astype(float), "y": rows * 2}), tmp_path / f"p{index}.parquet", row_group_size=group)
        start += size
    source = ParquetSource.resolve(str(tmp_path))
    for max_rows in (None, 33, 10_000):
        whole = [batch.column("x").to_pylist() for batch in source.batches(["x", "y"], 10, max_rows)]
        kept = min(sum(sizes), max_rows or sum(sizes))
        assert [len(b) for b in whole] == [10] * (kept // 10) + ([kept % 10] if kept % 10 else [])
        assert sum(whole, []) == list(np.arange(kept, dtype=float))
        for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, len(sizes)), k) for k in range(len(sizes))):
            bounds = [0, *cuts, len(sizes)]
            tasks = [pa.table({"file": list(range(a, b))}) for a, b in zip(bounds, bounds[1:])]
            read = [unwrapped_batch(table).column("x").to_pylist() for task in tasks for table in read_task(source, ["x", "y"], 10, max_rows, task)]
            assert read == whole, (max_rows, cuts)

    # The task given p5 (rows 35-75, row groups of 4) starts at row 40, in its second row group: the first
    # is skipped unread. Its last batch (70-79) reads on into p6, from its first row group.
    opened = []
    iter_batches = pq.ParquetFile.iter_batches

    def spied(self, *args, row_groups=None, **kwargs):
        opened.append(row_groups)
        return iter_batches(self, *args, row_groups=row_groups, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq.ParquetFile, "iter_batches", spied)
        read = [unwrapped_batch(table).column("x").to_pylist() for table in read_task(source, ["x", "y"], 10, None, pa.table({"file": [5]}))]
    assert sum(read, []) == list(np.arange(40, 80, dtype=float))
    assert [groups[0] for groups in opened] == [1, 0]


def test_batches_joined_across_files_promote_their_types_as_arrow_does():
    """A batch cut across two files joins their rows: float32 and float64 as float64, categories and plain
    text as text, an all-null column with the other's type; text and numbers do not join (exit 2)."""
    import pyarrow as pa

    from release_kit.errors import InputError
    from release_kit.scale.source import cut_batches

    def part(**columns):
        return pa.RecordBatch.from_pydict(columns)

    categories = pa.array(["x", "y"]).dictionary_encode()
    joined = list(cut_batches(iter([part(c=categories, n=pa.array([1.5, 2.5], pa.float32())),
                                    part(c=pa.array(["w", None]), n=pa.array([3.25, 4.0]))]), 4))
    assert len(joined) == 1 and joined[0].column("c").to_pylist() == ["x", "y", "w", None]
    assert joined[0].schema.field("n").type == pa.float64() and joined[0].column("n").to_pylist() == [1.5, 2.5, 3.25, 4.0]
    nulls = list(cut_batches(iter([part(c=pa.nulls(1)), part(c=pa.array(["w"]))]), 2))
    assert nulls[0].column("c").to_pylist() == [None, "w"]
    with pytest.raises(InputError, match="types that do not join: .*Field c"):
        list(cut_batches(iter([part(c=pa.array(["a"])), part(c=pa.array([1]))]), 2))


def test_a_run_that_fails_before_the_scan_ends_the_golden_sets_hashing(streamed_project, cli):
    """The streamed set is hashed from the run's start, beside the models' loading: a model that cannot be
    loaded is still exit 2 with one line, and no hashing thread outlives the run."""
    (streamed_project / "candidate.pt").write_bytes(b"not a model")
    result = cli("check", "--candidate", "candidate.pt", "--report", "report.json")
    assert result.exit_code == 2, result.output[-2000:]
    assert result.stderr.count("\n") == 1 and "candidate.pt" in result.stderr
    assert not (streamed_project / "report.json").exists()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("release-kit-hash")]


def test_hashing_stops_within_a_block_and_a_file_gone_before_it_is_hashed_is_bad_input(golden_directory, tmp_path):
    import shutil

    from release_kit.files import HashStopped, file_sha256
    from release_kit.errors import InputError
    from release_kit.scale.source import ParquetSource

    first = golden_directory / "golden" / "part-0.parquet"
    assert file_sha256(first, lambda: True) == hashlib.sha256(first.read_bytes()).hexdigest()
    with pytest.raises(HashStopped):
        file_sha256(first, lambda: False)

    # 4 GiB to hash (a sparse file: no disk used), seconds of work on any machine: closed at once, paused or not.
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "a.parquet", "wb") as handle:
        handle.truncate(4 << 30)
    for paused in (False, True):
        digest = ParquetSource.resolve(str(big)).hashing()
        if paused:
            digest.pause()
        time.sleep(0.05)
        started = time.monotonic()
        digest.close()
        assert time.monotonic() - started < 1.0
        assert not [t.name for t in threading.enumerate() if t.name.startswith("release-kit-hash")]
        with pytest.raises(RuntimeError):
            digest.result()

    copy = tmp_path / "golden"
    shutil.copytree(golden_directory / "golden", copy)
    source = ParquetSource.resolve(str(copy))
    with source.hashing() as digest, ParquetSource.resolve(str(golden_directory / "golden")).hashing() as original:
        assert digest.result() == original.result()
    (copy / "part-1.parquet").unlink()
    with source.hashing() as digest, pytest.raises(InputError, match=r"part-1\.parquet: cannot read: "):
        digest.result()


def test_the_ray_engine_gives_the_same_numbers_and_verdict(streamed_project, power, golden_directory, cli, shared_ray):
    """Every check alike on both engines, on a Hive-partitioned directory (partitioned by a feature and by a
    column with nulls, under a ``key=value`` directory that is no column), the null partition null. One file
    is named ``*.pq`` and one as Hive names its files (``000000_0``): Ray Data's own reader would drop both."""
    rows = pd.read_csv(golden_directory / "golden.csv").iloc[:20_000]
    rows = rows.assign(site=pd.Series(np.where(np.arange(len(rows)) % 4 == 0, None, "south"), dtype=object))
    partitioned = streamed_project / "run=2" / "golden"
    _write_partitioned(rows, partitioned, ["hour", "site"])
    assert list(partitioned.glob("hour=3/site=__HIVE_DEFAULT_PARTITION__"))
    written = sorted(partitioned.rglob("*.parquet"))
    written[0].rename(written[0].with_suffix(".pq"))
    written[-1].rename(written[-1].with_name("000000_0"))
    configure(streamed_project, power, partitioned)
    # A suite on a column no model reads (the null partition's) and on the partitioned feature.
    (streamed_project / "checks" / "expectations").mkdir(parents=True)
    (streamed_project / "checks" / "expectations" / "rows.json").write_text(json.dumps({"name": "rows", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "site", "mostly": 0.7}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "hour", "min_value": 1, "max_value": 22, "mostly": 0.8}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "temperature", "min_value": -40, "max_value": 60}},
    ]}))
    # Not the performance stage: it times the models on the machine's clock, whichever engine read the data.
    stages = ("--stage", "quality", "--stage", "outliers", "--stage", "data")
    # The searches bounded by their examples, not by a second of a busy machine's time: each then tries the
    # same inputs in both runs, so a counterexample one run reaches the other reaches too.
    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("[outliers.search]\nseconds = 1\n", "[outliers.search]\nseconds = 120\nmax_examples = 40\n"))
    assert "max_examples = 40" in config.read_text()
    local = run(cli, "--engine", "local", *stages)
    copies = set(Path(tempfile.gettempdir()).glob("release-kit-ray-*"))
    distributed = run(cli, "--engine", "ray", *stages)
    assert set(Path(tempfile.gettempdir()).glob("release-kit-ray-*")) == copies  # the actors' model copies removed
    assert distributed["verdict"] == local["verdict"] and distributed["bump"] == local["bump"]
    assert distributed["data"] == local["data"] and local["data"]["golden"]["rows"] == 20_000
    assert (local["environment"]["golden_read"], distributed["environment"]["golden_read"]) == ("local", "ray")
    for name in ("mae", "rmse", "r2"):
        a, b = metric(local, name), metric(distributed, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-12), (name, key)
    # Everything decided on the sample is identical too: the bottom-k sample is the same rows in any engine,
    # and the searches try the same inputs on it.
    for a, b in zip(local["checks"], distributed["checks"], strict=True):
        assert (a["stage"], a["name"], a["status"], a["summary"]) == (b["stage"], b["name"], b["status"], b["summary"])
    # The null partition's rows are nulls of ``site`` over every row (counted alike in both engines, above);
    # the partitioned feature ``hour`` has the range of the rows', and the values outside [1, 22] theirs.
    for report in (local, distributed):
        counted = {c["name"]: c for c in report["checks"] if c["stage"] == "data"}
        site, hour = counted["golden/site:column_values_to_not_be_null"], counted["golden/hour:column_values_to_be_between"]
        assert site["status"] == "pass" and site["details"]["unexpected_count"] == int(rows["site"].isna().sum()) == 5_000
        assert "over all 20,000 rows, streamed" in site["summary"]
        assert hour["details"]["observed_value"] == {"min": float(rows["hour"].min()), "max": float(rows["hour"].max())}
        assert hour["details"]["unexpected_count"] == int(((rows["hour"] < 1) | (rows["hour"] > 22)).sum()) > 0
        mean = counted["golden/temperature:column_mean_to_be_between"]  # merged from each worker's batches
        assert mean["status"] == "pass" and "over all 20,000 rows, streamed" in mean["summary"]
        assert mean["details"]["observed_value"] == pytest.approx(rows["temperature"].mean(), rel=1e-12)


class CallSized(torch.nn.Module):
    """The wrapped model's prediction, plus one where a call holds exactly 1,000 rows: its numbers tell how
    the rows were split into calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if x.shape[0] == 1000:
            out = out + 1.0
        return out


def test_both_engines_call_the_models_on_inference_batch_size_rows(streamed_project, power, golden_directory, cli, shared_ray):
    """``[inference] batch_size`` reaches the Ray actors: they loaded the models anew with the default calls
    (4,000 rows here, a whole scan batch), so the same rows gave other numbers than the local engine's calls
    of 1,000 for a model whose outputs depend on its call's size."""
    from conftest import save_scripted

    save_scripted(CallSized(torch.jit.load(str(power["better"]))), streamed_project / "candidate.pt")
    configure(streamed_project, power, golden_directory / "golden", extra="\n[inference]\nbatch_size = 1000\n")
    local = run(cli, "--engine", "local", "--stage", "quality")
    distributed = run(cli, "--engine", "ray", "--stage", "quality")
    rows = pd.read_csv(golden_directory / "golden.csv")
    with torch.inference_mode():
        plain = torch.jit.load(str(power["better"]))(torch.tensor(rows[pf.FEATURES].to_numpy(), dtype=torch.float32)).double().numpy()
    called_in_thousands = float(np.abs(plain + 1.0 - rows[pf.TARGET].to_numpy()).mean())
    for report in (local, distributed):
        assert metric(report, "mae")["candidate"] == pytest.approx(called_in_thousands, rel=1e-6)


def test_the_ray_engine_asked_for_a_golden_set_it_cannot_stream_says_it_was_read_whole(streamed_project, power, golden_directory, cli):
    """A CSV golden set is read whole whichever engine is asked for: the run says so, on stderr, in the report
    and in its Markdown, rather than letting the user believe Ray read it."""
    configure(streamed_project, power, golden_directory / "golden.csv")
    result = cli("check", "--candidate", "candidate.pt", "--engine", "ray", "--stage", "quality", "--report", "report.json",
                 "--format", "markdown")
    assert result.exit_code == 0, result.output[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"release-kit: note: the golden set {golden_directory / 'golden.csv'} was read whole, not on Ray "
        "(the Ray engine streams Parquet golden sets)"]
    assert json.loads((streamed_project / "report.json").read_text())["environment"]["golden_read"] == "whole"
    assert "golden set 30000 rows ·" in result.stdout
    configure(streamed_project, power, golden_directory / "golden")
    streamed = cli("check", "--candidate", "candidate.pt", "--stage", "quality", "--format", "markdown")
    assert "golden set 30000 rows (streamed, local engine) ·" in streamed.stdout and "note:" not in streamed.stderr


def test_max_rows_gates_on_a_prefix_and_a_ci_log_shows_the_scans_progress(streamed_project, power, golden_directory, cli, monkeypatch):
    """The CLI's stderr is no terminal here, as in a CI log: the scan's progress comes as lines of rows of the
    prefix's total (one every LOG_EVERY_S seconds, every batch with it 0)."""
    import re

    from release_kit.render import ProgressListener

    monkeypatch.setattr(ProgressListener, "LOG_EVERY_S", 0.0)
    result = cli("check", "--candidate", "candidate.pt", "--format", "json", "--max-rows", "12000")
    report = json.loads(result.stdout)
    assert report["data"]["golden"]["rows"] == 12_000
    progress = [re.fullmatch(r"release-kit: golden rows: ([\d,]+) of ([\d,]+) \([\d,]+ rows/s\)", line)
                for line in result.stderr.splitlines() if "golden rows" in line]
    assert [m.groups() for m in progress] == [("4,000", "12,000"), ("8,000", "12,000"), ("12,000", "12,000")], result.stderr
    assert metric(report, "mae")["candidate"] == pytest.approx(
        np.abs(_predictions(power["better"], golden_directory, 12_000) - pd.read_csv(golden_directory / "golden.csv")["power_kw"][:12_000]).mean(),
        rel=1e-6)
    configure(streamed_project, power, golden_directory / "golden.csv")
    assert run(cli, "--max-rows", "500")["data"]["golden"]["rows"] == 500


def test_max_rows_plans_the_slices_on_the_prefix_alone(tmp_path, power, cli, monkeypatch):
    """The slices' bins are fixed from the golden set's first rows: with --max-rows, from the prefix only. The
    rows after it (one file, one batch) have temperatures a hundred times larger; no bin edge may come from them."""
    import re
    import shutil

    frame = pf.make_dataset(6_000, seed=24)
    frame.loc[1_000:, "temperature"] *= 100
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "part-0.parquet")
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden")
    monkeypatch.chdir(tmp_path)
    report = run(cli, "--max-rows", "1000")
    assert report["data"]["golden"]["rows"] == 1_000
    slices = next(c for c in report["checks"] if c["name"] == "slices")
    labels = " ".join(row[0] for row in slices["details"]["table"]["rows"])
    edges = [float(v) for v in re.findall(r"temperature (?:≤|>) (-?[\d.]+)", labels) + re.findall(r"(-?[\d.]+) < temperature", labels)]
    assert edges and max(edges) <= frame["temperature"][:1_000].max(), labels


def test_newly_broken_counts_every_streamed_row_and_keeps_the_worst(streamed_project, power, golden_directory, cli):
    """The threshold and the rows beyond it come from all 30,000 rows' changes (within the sketch's stated
    range), and the worst rows are the worst of all rows, not of the sample's."""
    import shutil

    shutil.copy(power["night"], streamed_project / "candidate.pt")  # breaks night-time rows
    configure(streamed_project, power, golden_directory / "golden", extra="[outliers]\nk_mad = 0.2\n")
    report = run(cli, "--stage", "outliers")
    check = next(c for c in report["checks"] if c["name"] == "newly_broken")
    details = check["details"]
    truth = pd.read_csv(golden_directory / "golden.csv")["power_kw"].to_numpy()
    delta = np.abs(_predictions(power["night"], golden_directory) - truth) - np.abs(_predictions(power["v1"], golden_directory) - truth)
    # The threshold comes from every row's change (the sketch's buckets), within a bucket's width of the
    # threshold computed from the exact changes of all 30,000 rows.
    from release_kit.paired import change_threshold

    moved = delta[delta != 0]
    centre, threshold = change_threshold(moved, 0.2, 0.0)
    assert details["centre"] == pytest.approx(centre, rel=0.01, abs=1e-3)
    assert details["threshold"] == pytest.approx(threshold, rel=0.01)
    exact = int((delta > details["centre"] + details["threshold"]).sum())
    low, high = details["broke"] if isinstance(details["broke"], list) else (details["broke"],) * 2
    assert exact > 0 and low <= exact <= high and high - low <= 0.05 * exact + 2, (exact, details["broke"])
    assert "of 30,000 row(s) newly broke" in check["summary"] and "over every row" in check["summary"], check["summary"]
    assert "uniform sample of 5,000" in check["summary"]
    shown = [row[-1] for row in details["table"]["rows"]]
    np.testing.assert_allclose(shown, np.sort(delta)[::-1][: len(shown)], rtol=1e-5)

    # A sample that holds every row is not called one.
    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("sample_rows = 5000", "sample_rows = 30000"))
    whole = {c["name"]: c["summary"] for c in run(cli, "--stage", "outliers", "--stage", "data")["checks"]}
    assert "chart of every row" in whole["newly_broken"] and "sample" not in whole["newly_broken"], whole["newly_broken"]
    assert "streamed; KS over every row too" in whole["drift"] and "sample" not in whole["drift"], whole["drift"]


def test_slices_are_summed_over_every_streamed_row(streamed_project, power, golden_directory, cli):
    """A bug confined to the cloudiest rows: a 300-row sample holds too few of them to test, the per-bin
    sums over all 30,000 rows name the slice."""
    import torch

    class CloudyBug(torch.nn.Module):
        def __init__(self, base: torch.nn.Module) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + 2.0 * (x[:, 2] > 0.9).float()

    torch.jit.save(torch.jit.script(CloudyBug(torch.jit.load(str(power["v1"])))), str(streamed_project / "candidate.pt"))
    configure(streamed_project, power, golden_directory / "golden")
    text = (streamed_project / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 300")
    (streamed_project / "release-kit.toml").write_text(text)
    report = run(cli, "--stage", "outliers")
    check = next(c for c in report["checks"] if c["name"] == "slices")
    assert check["status"] == "fail" and "cloud_cover >" in check["summary"], check["summary"]
    assert "over all 30,000 rows" in check["summary"]
    failing = check["details"]["table"]["rows"][0]
    assert failing[0].startswith("cloud_cover >") and failing[1] > 300  # more rows than the whole sample


def test_columns_no_model_reads_reach_declared_slices_and_user_checks_without_the_data_stage(tmp_path, power, cli, monkeypatch):
    """A column the models do not read (a site) is in the streamed sample whatever stages run: a declared slice
    on it (by column and by expr) and a user check reading it decide as on the same rows read whole, with only
    the outlier stage. Before, only a run with the data stage carried it: the slices were bad
    input ("not in the golden set") and a user check's KeyError an error."""
    import shutil

    rows = pf.make_dataset(3_000, seed=21).assign(site=lambda f: np.where(np.arange(len(f)) % 4 == 0, "north", "south"))
    (tmp_path / "golden").mkdir()
    rows.iloc[:1_500].to_parquet(tmp_path / "golden" / "part-0.parquet", index=False)
    rows.iloc[1_500:].to_parquet(tmp_path / "golden" / "part-1.parquet", index=False)
    rows.to_csv(tmp_path / "golden.csv", index=False)
    shutil.copy(power["night"], tmp_path / "candidate.pt")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_sites.py").write_text(textwrap.dedent("""
        def test_every_site_is_scored(golden, record_metric):
            sites = golden.frame["site"]
            record_metric("sites", float(sites.nunique()))
            assert set(sites) == {"north", "south"}
        """))
    extra = """
        [[outliers.slices]]
        column = "site"
        categories = ["north", "south"]
        [[outliers.slices]]
        name = "northern nights"
        expr = "site == 'north' and irradiance == 0"
        [checks]
        paths = ["checks"]
        """
    monkeypatch.chdir(tmp_path)
    decided = {}
    for golden in ("golden", "golden.csv"):
        configure(tmp_path, power, tmp_path / golden, extra)
        report = run(cli, "--stage", "outliers")
        assert report["environment"]["golden_read"] == ("local" if golden == "golden" else "whole")
        checks = {c["name"]: c for c in report["checks"]}
        user = checks["test_sites.py::test_every_site_is_scored"]
        assert user["status"] == "pass", user["summary"]
        site, nights = checks["slice:site"], checks["slice:northern nights"]
        assert nights["status"] == "fail", nights["summary"]  # the night candidate forecasts negative power
        decided[golden] = [(c["status"], c["summary"]) for c in (site, nights)]
    assert decided["golden"] == decided["golden.csv"]


def test_the_output_contract_holds_over_every_streamed_row(streamed_project, power, golden_directory, cli):
    """One golden row in 30,000 gets a negative forecast: a 300-row sample would likely miss it, the counts
    over every row do not."""
    import torch

    golden = pd.read_csv(golden_directory / "golden.csv")
    brightest = float(np.float32(golden["irradiance"].max()))

    class OneBadRow(torch.nn.Module):
        def __init__(self, base: torch.nn.Module, value: float) -> None:
            super().__init__()
            self.base, self.value = base, value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x[:, 4] == self.value, torch.full_like(x[:, 0], -1.0), self.base(x))

    torch.jit.save(torch.jit.script(OneBadRow(torch.jit.load(str(power["v1"])), brightest)), str(streamed_project / "candidate.pt"))
    text = (streamed_project / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 300")
    (streamed_project / "release-kit.toml").write_text(text)
    result = cli("check", "--candidate", "candidate.pt", "--stage", "quality", "--format", "json")
    assert result.exit_code == 1, result.output[-2000:]
    check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "output_contract")
    expected = int((golden["irradiance"].astype(np.float32) == np.float32(brightest)).sum())
    assert check["status"] == "fail" and check["details"]["violations"] == {"below min 0": expected}
    assert f"{expected:,} of 30,000 candidate predictions break the contract" in check["summary"]
    assert "over every streamed row" in check["summary"] and check["details"]["introduced"] == expected
    assert [row[4] for row in check["details"]["table"]["rows"]] == [pytest.approx(brightest)] * expected


def test_slice_sums_of_batches_add_up_to_the_whole():
    from release_kit.paired import SliceBins, SliceTables

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=9_000), rng.integers(0, 4, 1_000)]).astype(np.float32)
    weights = tuple(rng.normal(size=(3, len(values))))
    for sample in (values[:2_000], rng.integers(0, 5, 500).astype(np.float32)):  # quantile edges; integer levels
        bins = SliceBins.of("x", sample, 5)

        def sums(rows: slice, bins: SliceBins = bins) -> np.ndarray:
            return SliceTables([bins.binning(values[rows])], tuple(w[rows] for w in weights)).marginal("x")

        whole = sums(slice(None))
        parts = sum(sums(slice(i, i + 3_000)) for i in range(0, len(values), 3_000))
        np.testing.assert_allclose(parts, whole, rtol=1e-12)
        assert whole[0].sum() == len(values) and whole.shape[1] == len(bins.labels)
    assert bins.labels[-1] == "x other" and whole[0, -1] == (values > 4).sum() + ((values < 0) | (values != np.round(values))).sum()


def test_grouped_slice_tables_equal_each_feature_and_pair_tabulated_alone():
    """Features tabulated together (a group's table) give each feature's sums and each pair's cells exactly as
    tabulating them alone; paired features are grouped first; a pair split over two groups is tabulated alone."""
    from release_kit.paired import TABLE_MAX_CELLS, SliceBins, SliceTables, joint_sums

    rng = np.random.default_rng(3)
    n = 20_000
    columns = {f"x{j}": rng.normal(size=n).astype(np.float32) for j in range(7)}
    columns["hour"] = rng.integers(0, 12, n).astype(np.float32)  # 12 levels and an "other" bin
    weights = tuple(rng.normal(size=(3, n)))
    binnings = [SliceBins.of(name, values[:2_000], 5).binning(values) for name, values in columns.items()]
    together = (("x5", "hour"), ("x6", "x5"), ("x6", "hour"))
    tables = SliceTables(binnings, weights, together=together)
    assert len(tables.tables) >= 2 and all(t[0].size <= TABLE_MAX_CELLS for t in tables.tables)
    assert len({tables.group_of[name][0] for pair in together for name in pair}) == 1
    for binning in binnings:
        alone = np.stack([np.bincount(binning.codes, weights=w, minlength=len(binning.labels))
                          for w in (np.ones(n), *weights)])
        np.testing.assert_allclose(tables.marginal(binning.feature), alone, rtol=1e-10, atol=1e-9)
    by_name = {b.feature: b for b in binnings}
    split = next((a, b) for a in columns for b in columns if tables.group_of[a][0] != tables.group_of[b][0])
    for first, second in (*together, split, ("hour", "x5")):
        expected = joint_sums(by_name[first], by_name[second], weights)
        assert expected.shape == (4, len(by_name[first].labels), len(by_name[second].labels))
        np.testing.assert_allclose(tables.pair(first, second), expected, rtol=1e-10, atol=1e-9)
    codes = by_name["x6"].codes * 13 + by_name["hour"].codes
    np.testing.assert_array_equal(tables.pair("x6", "hour")[0].ravel(), np.bincount(codes, minlength=5 * 13))


def _predictions(model: Path, golden_directory, rows: int | None = None) -> np.ndarray:
    import torch

    frame = pd.read_csv(golden_directory / "golden.csv")[:rows]
    with torch.inference_mode():
        return torch.jit.load(str(model))(torch.from_numpy(frame[pf.FEATURES].to_numpy(np.float32))).double().numpy().reshape(-1)


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


def both_ways(root: Path, power, frame: pd.DataFrame, whole: str) -> None:
    """The same rows as two Parquet halves under ``golden/`` (streamed) and as the CSV ``whole`` (read whole),
    with the better candidate as ``candidate.pt``."""
    import shutil

    (root / "golden").mkdir()
    half = len(frame) // 2
    for index in range(2):
        frame.iloc[index * half : (index + 1) * half].to_parquet(root / "golden" / f"p{index}.parquet")
    frame.to_csv(root / whole, index=False)
    shutil.copy(power["better"], root / "candidate.pt")


def test_a_batch_with_no_usable_row_after_usable_ones_is_counted_not_a_crash(tmp_path, power, cli, monkeypatch):
    """A day of missing labels: the second file's targets are all null. Its rows are counted as excluded and
    the metrics are those of the usable rows, the numbers of the same rows read whole."""

    frame = pf.make_dataset(10_000, seed=23)
    frame.loc[5_000:, pf.TARGET] = np.nan
    both_ways(tmp_path, power, frame, "golden.csv")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for golden in ("golden", "golden.csv"):
        configure(tmp_path, power, tmp_path / golden, '[gate]\nstages = ["quality", "data"]\n')
        reports[golden] = run(cli)
    streamed, whole = reports["golden"], reports["golden.csv"]
    assert streamed["data"]["golden"]["excluded_rows"] == whole["data"]["golden"]["excluded_rows"] == 5_000
    for name in ("mae", "rmse", "r2"):
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert metric(streamed, name)[key] == pytest.approx(metric(whole, name)[key], rel=1e-9), (name, key)
    assert streamed["verdict"] == whole["verdict"] == "block"  # half the golden rows unusable


def test_a_float64_feature_beyond_float32_is_an_excluded_row_streamed_as_read_whole(tmp_path, power, cli, monkeypatch):
    """The models read features as float32: a float64 value beyond its range (1e300, -1e39) is infinite
    there. Read whole, its row was excluded; streamed, the model was given inf (NaN predictions broke the
    output contract, the search's domain overflowed: an error). Now both exclude the same rows, give the same
    numbers, and no overflow warning is printed (each is an error here)."""
    import warnings

    frame = pf.make_dataset(10_000, seed=29).astype("float64")
    # The set's last rows: the rows before them keep their places in the models' calls either way (a float32
    # model's output for a row can move by an ulp with its position in a call, which would blur the comparison).
    frame.loc[[9_998, 9_999], "temperature"] = [1e300, -1e39]
    both_ways(tmp_path, power, frame, "whole.csv")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for golden in ("golden", "whole.csv"):
        configure(tmp_path, power, tmp_path / golden, '[gate]\nstages = ["quality", "outliers", "data"]\n')
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            reports[golden] = run(cli)
    streamed, whole = reports["golden"], reports["whole.csv"]
    assert (streamed["environment"]["golden_read"], whole["environment"]["golden_read"]) == ("local", "whole")
    for report in (streamed, whole):
        rows = next(c for c in report["checks"] if c["name"] == "golden_rows")
        assert rows["status"] == "fail" and rows["details"]["columns"] == {"temperature": 2}
        assert not [c["name"] for c in report["checks"] if c["status"] == "error"]
        contract = next(c for c in report["checks"] if c["name"] == "output_contract")
        assert contract["status"] == "pass", contract["summary"]
    for name in ("mae", "rmse", "r2"):
        for key in ("candidate", "baseline", "delta"):
            assert metric(streamed, name)[key] == pytest.approx(metric(whole, name)[key], rel=1e-9), (name, key)


def test_a_boolean_target_streams_as_classes_0_and_1_as_in_memory(tmp_path, cli, monkeypatch):
    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    train, golden = make_classification(3_000, 2, seed=1), make_classification(12_000, 2, seed=2)
    save_scripted(train_classifier(train, 2, epochs=4, squash="none"), tmp_path / "baseline.pt")
    save_scripted(train_classifier(train, 2, epochs=40, squash="none"), tmp_path / "candidate.pt")
    golden["label"] = golden["label"].astype(bool)
    (tmp_path / "golden").mkdir()
    for index in range(2):
        golden.iloc[index * 6_000 : (index + 1) * 6_000].to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    golden.to_csv(tmp_path / "golden.csv", index=False)
    reports = {}
    for source in ("golden", "golden.csv"):
        (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden=source))
        reports[source] = run(cli)
    for name in ("accuracy", "log_loss", "f1"):
        for key in ("candidate", "baseline", "delta"):
            a, b = metric(reports["golden"], name)[key], metric(reports["golden.csv"], name)[key]
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (name, key)


@pytest.mark.parametrize("stored", ["booleans", "text"])
def test_the_data_stage_checks_a_streamed_target_as_its_files_store_it(tmp_path, cli, monkeypatch, stored):
    """The suite profiled from the reference says what the target is (booleans, or class names as text), and
    the streamed sample's target is checked as the files store it, as a golden set read whole is: it was
    the class ids, so "is bool" or "is text" and "in {low, mid, high}" failed on every row streamed."""
    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    classes = 2 if stored == "booleans" else 3
    train, golden = make_classification(2_000, classes, seed=1), make_classification(4_000, classes, seed=2)
    model = train_classifier(train, classes, epochs=4, squash="none")
    save_scripted(model, tmp_path / "baseline.pt")
    save_scripted(model, tmp_path / "candidate.pt")
    names = ["low", "mid", "high"]

    def as_stored(frame):
        labels = frame["label"].astype(bool) if stored == "booleans" else frame["label"].map(dict(enumerate(names)))
        return frame.assign(label=labels)

    as_stored(train).to_csv("train.csv", index=False)
    (tmp_path / "golden").mkdir()
    for index in range(2):
        as_stored(golden).iloc[index * 2_000 : (index + 1) * 2_000].to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    config = CLASSIFIER.format(golden="golden").replace('stages = ["quality"]', 'stages = ["data"]')
    config = config.replace('golden = "golden"', 'golden = "golden"\nreference = "train.csv"')
    if stored == "text":
        config = config.replace('prediction = "logits"', f'prediction = "logits"\nclasses = {names}')
    (tmp_path / "release-kit.toml").write_text(config)
    report = run(cli)
    label = {c["name"]: c for c in report["checks"] if c["name"].startswith("golden/label:")}
    assert any("type_list" in name for name in label) and any("in_set" in name for name in label), sorted(label)
    assert all(c["status"] == "pass" for c in label.values()), [c["summary"] for c in label.values()]
    assert report["environment"]["golden_read"] == "local"


def test_a_golden_set_far_larger_than_the_reference_passes_its_profiled_ranges_and_an_impossible_value_fails(tmp_path, cli, monkeypatch):
    """A streamed golden set 75 times the reference's size, drawn as it was (normal features, an exponential
    amount), as users run the check (a subprocess, the profile of the reference): every profiled range holds
    over all 150,000 rows. Held to the reference's extremes plus the 10 % margin, nearly every such column
    failed: its tails reach further in more rows. One impossible amount in the files still fails."""
    from conftest import make_classification, run_cli, save_scripted, train_classifier

    train = make_classification(2_000, 2, seed=1)
    rng = np.random.default_rng(2)
    rows = 150_000
    x = rng.normal(size=(rows, 3))
    golden = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                           "label": (x.sum(axis=1) + rng.logistic(size=rows) > 0).astype(np.int64)})
    train["amount"], golden["amount"] = np.random.default_rng(3).exponential(20.0, len(train)), rng.exponential(20.0, rows)
    # A heavy tail (an income): an exponential fit's reach failed such golden sets drawn alike nearly always.
    train["income"], golden["income"] = np.random.default_rng(4).lognormal(10.0, 1.5, len(train)), rng.lognormal(10.0, 1.5, rows)
    model = train_classifier(train, 2, epochs=4, squash="none")
    save_scripted(model, tmp_path / "baseline.pt")
    save_scripted(model, tmp_path / "candidate.pt")
    train.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "golden").mkdir()

    def write_golden() -> None:
        for index in range(3):
            golden.iloc[index * 50_000 : (index + 1) * 50_000].to_parquet(tmp_path / "golden" / f"part-{index}.parquet")

    write_golden()
    config = CLASSIFIER.format(golden="golden").replace('stages = ["quality"]', 'stages = ["data"]')
    config = config.replace('golden = "golden"', 'golden = "golden"\nreference = "train.csv"').replace("chunk_rows = 5000", "chunk_rows = 50000")
    (tmp_path / "release-kit.toml").write_text(config)

    def ranges(report: dict) -> dict:
        return {c["name"]: c for c in report["checks"] if c["name"].endswith(":column_values_to_be_between")}

    done = run_cli(tmp_path, "check", "--candidate", "candidate.pt", "--format", "json")  # as users run it
    assert done.returncode in (0, 1), done.stderr[-3000:]
    code, drawn_alike = done.returncode, ranges(json.loads(done.stdout))
    assert sorted(drawn_alike) == [f"golden/{c}:column_values_to_be_between" for c in ("a", "amount", "b", "c", "income", "label")]
    assert all(c["status"] == "pass" and "over all 150,000 rows" in c["summary"] for c in drawn_alike.values()), \
        [c["summary"] for c in drawn_alike.values()]
    assert code == 0
    # The premise: the reference's extremes plus the margin, which every value had to lie within before.
    beyond = 0
    for column in ("a", "b", "c", "amount"):
        low, high = train[column].min(), train[column].max()
        margin = 0.1 * (high - low)
        beyond += bool(((golden[column] < low - margin) | (golden[column] > high + margin)).any())
    assert beyond >= 3
    from release_kit.validation import RANGE_TAIL_ALPHA

    top = np.sort(train["income"].to_numpy())[::-1][:46]  # the exponential fit's reach, from the top √n
    exponential_reach = top[45] + np.mean(top[:45] - top[45]) * math.log(rows * 45 / (len(train) * RANGE_TAIL_ALPHA))
    assert golden["income"].max() > exponential_reach  # which this income's golden set passed

    golden.loc[123_456, "amount"] = 5_000.0  # 250 times the mean: no draw of 150,000 reaches it
    write_golden()
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--format", "json")
    amount = ranges(json.loads(result.stdout))["golden/amount:column_values_to_be_between"]
    assert amount["status"] == "fail" and "1 of 150,000 values unexpected" in amount["summary"], amount["summary"]
    assert result.exit_code == 1


def test_a_boolean_feature_is_the_models_0_and_1_read_whole_or_streamed(tmp_path, cli, monkeypatch):
    """A feature stored as booleans (pandas' and Arrow's; a reference's too) is read by the models as 0 and 1,
    as a boolean target's classes are: the same numbers read whole (CSV) or streamed (Parquet files), and the
    data stage checks it as stored ("is bool", "in {False, True}") and bins it for drift. It was bad input,
    "not numeric", on both paths."""
    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    train, golden = make_classification(2_000, 2, seed=1), make_classification(6_000, 2, seed=2)
    train["c"], golden["c"] = train["c"] > 0, golden["c"] > 0
    save_scripted(train_classifier(train, 2, epochs=4, squash="none"), tmp_path / "baseline.pt")
    save_scripted(train_classifier(train, 2, epochs=40, squash="none"), tmp_path / "candidate.pt")
    train.to_csv("train.csv", index=False)
    golden.to_csv("golden.csv", index=False)
    (tmp_path / "golden").mkdir()
    for index in range(2):
        golden.iloc[index * 3_000 : (index + 1) * 3_000].to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    reports = {}
    for source in ("golden", "golden.csv"):
        config = CLASSIFIER.format(golden=source).replace('stages = ["quality"]', 'stages = ["quality", "outliers", "data"]')
        (tmp_path / "release-kit.toml").write_text(config.replace(f'golden = "{source}"', f'golden = "{source}"\nreference = "train.csv"'))
        reports[source] = run(cli)
    streamed, whole = reports["golden"], reports["golden.csv"]
    assert (streamed["environment"]["golden_read"], whole["environment"]["golden_read"]) == ("local", "whole")
    for name in ("accuracy", "log_loss", "f1"):
        assert metric(streamed, name)["delta"] == pytest.approx(metric(whole, name)["delta"], rel=1e-9, abs=1e-12), name
    for report in (streamed, whole):
        checks = {c["name"]: c for c in report["checks"]}
        stored = [c for name, c in checks.items() if name.startswith("golden/c:")]
        assert stored and all(c["status"] == "pass" for c in stored), [c["summary"] for c in stored]
        assert any(c["summary"].startswith("c is bool") for c in stored)
        assert checks["drift"]["status"] == "pass" and "c" in [row[0] for row in checks["drift"]["details"]["table"]["rows"]]
        assert checks["slices"]["status"] != "error", checks["slices"]["summary"]


def test_a_decimal_feature_is_read_as_numbers_whole_or_streamed(tmp_path, power, cli, monkeypatch):
    """A feature stored as decimals (a warehouse's NUMERIC, Spark's DecimalType) is float64 to the models, the
    statistics and the suites: in a streamed directory of Parquet files, in one file read whole, and in a
    reference, the numbers are those of the same rows as CSV floats. Streamed, it was bad input ("stored as
    decimal128(9, 3), not as numbers"); read whole, Python Decimal objects."""
    import decimal
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    golden, train = (pd.read_csv(power[name]).round({"temperature": 3}) for name in ("golden", "train"))
    golden.to_csv("golden.csv", index=False)

    def with_decimals(frame: pd.DataFrame) -> pa.Table:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        stored = pa.array([decimal.Decimal(f"{value:.3f}") for value in frame["temperature"]], pa.decimal128(9, 3))
        return table.set_column(table.schema.get_field_index("temperature"), "temperature", stored)

    table = with_decimals(golden)
    (tmp_path / "golden").mkdir()
    pq.write_table(table.slice(0, 1_000), "golden/part-0.parquet")
    pq.write_table(table.slice(1_000), "golden/part-1.parquet")
    pq.write_table(table, "golden.parquet")
    pq.write_table(with_decimals(train), "train.parquet")
    reports = {}
    for source in ("golden", "golden.parquet", "golden.csv"):
        configure(tmp_path, power, source, '[gate]\nstages = ["quality", "outliers", "data"]\n')
        config = tmp_path / "release-kit.toml"
        config.write_text(config.read_text().replace(f'reference = "{power["train"]}"', 'reference = "train.parquet"'))
        reports[source] = run(cli)
    assert {source: r["environment"]["golden_read"] for source, r in reports.items()} == \
        {"golden": "local", "golden.parquet": "whole", "golden.csv": "whole"}
    for source in ("golden", "golden.parquet"):
        for name in ("mae", "rmse", "r2"):
            assert metric(reports[source], name)["delta"] == pytest.approx(metric(reports["golden.csv"], name)["delta"], rel=1e-9), (source, name)
    for source, report in reports.items():
        checks = {c["name"]: c for c in report["checks"]}
        stored = [c for name, c in checks.items() if name.startswith("golden/temperature:")]
        assert len(stored) == 3 and all(c["status"] == "pass" for c in stored), (source, [c["summary"] for c in stored])
        assert checks["drift"]["status"] == "pass" and "temperature" in [row[0] for row in checks["drift"]["details"]["table"]["rows"]]
        assert not [c["name"] for c in report["checks"] if c["status"] in ("fail", "error")], source


def test_missing_values_in_pandas_nullable_columns_are_unusable_rows_read_whole_or_streamed(tmp_path, cli, monkeypatch):
    """A label stored as pandas' nullable booleans and a feature as its nullable floats, each with missing
    values: those rows are unusable, counted and shown, as NaN would be, the same read whole or streamed (they
    were "not numeric" streamed, and exit 4 read whole). A reference table of nullable numbers profiles and
    bins the drift check as numpy's do (it was exit 4 streamed, and the drift check's error read whole)."""
    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    train, golden = make_classification(3_000, 2, seed=1), make_classification(8_000, 2, seed=2)
    save_scripted(train_classifier(train, 2, epochs=4, squash="none"), tmp_path / "baseline.pt")
    save_scripted(train_classifier(train, 2, epochs=40, squash="none"), tmp_path / "candidate.pt")
    golden["label"], golden["a"] = golden["label"].astype("boolean"), golden["a"].astype("Float64")
    golden.loc[[3, 6_500], "label"] = pd.NA
    golden.loc[[10], "a"] = pd.NA
    golden.to_parquet(tmp_path / "whole.parquet")  # one file of fewer rows than chunk_rows: read whole
    reference = train.astype({"a": "Float64", "b": "Float64", "c": "Float64", "label": "Int64"})
    reference.loc[[0], "a"] = pd.NA
    reference.to_parquet(tmp_path / "reference.parquet")
    (tmp_path / "golden").mkdir()
    for index in range(2):
        golden.iloc[index * 4_000 : (index + 1) * 4_000].to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    reports = {}
    for source in ("golden", "whole.parquet"):
        config = CLASSIFIER.format(golden=source).replace("chunk_rows = 5000", "chunk_rows = 10000" if source == "whole.parquet" else "chunk_rows = 3000")
        config = config.replace('stages = ["quality"]', 'stages = ["quality", "data"]')
        (tmp_path / "release-kit.toml").write_text(config.replace(f'golden = "{source}"', f'golden = "{source}"\nreference = "reference.parquet"'))
        result = cli("check", "--candidate", "candidate.pt", "--report", f"{source}.json")
        assert result.exit_code == 1, result.output[-3000:]  # the unusable rows block; nothing crashed
        reports[source] = json.loads((tmp_path / f"{source}.json").read_text())
    streamed, whole = reports["golden"], reports["whole.parquet"]
    assert (streamed["environment"]["golden_read"], whole["environment"]["golden_read"]) == ("local", "whole")
    for report in (streamed, whole):
        rows = next(c for c in report["checks"] if c["name"] == "golden_rows")
        assert rows["status"] == "fail" and rows["details"]["columns"] == {"label": 2, "a": 1}
        assert report["data"]["golden"]["excluded_rows"] == 3
        drift = next(c for c in report["checks"] if c["name"] == "drift")
        assert drift["status"] in ("pass", "warn") and "error" not in drift["summary"], drift["summary"]
    table = next(c for c in whole["checks"] if c["name"] == "golden_rows")["details"]["table"]
    assert [row[0] for row in table["rows"]] == [3, 10, 6_500]
    assert table["rows"][0][-1] == "<NA>" and table["rows"][1][1] == "nan"  # the label's missing value; the feature's, read as NaN
    assert [row[1] for row in next(c for c in streamed["checks"] if c["name"] == "drift")["details"]["table"]["rows"]] == \
        [row[1] for row in next(c for c in whole["checks"] if c["name"] == "drift")["details"]["table"]["rows"]]
    for name in ("accuracy", "log_loss"):
        for key in ("candidate", "baseline", "delta"):
            assert metric(streamed, name)[key] == pytest.approx(metric(whole, name)[key], rel=1e-9, abs=1e-12), (name, key)


def test_the_data_stage_validates_every_column_and_decides_counts_over_every_row(tmp_path, power, cli, monkeypatch):
    """A streamed set's GX suite sees every column of the golden set, as when it is read whole (a text column
    and a float32 one no model reads), and its row-count, minimum and maximum expectations are decided over
    every row, not on the 500-row sample: the same statuses as the same rows read whole, and the minimum
    is the one row the sample does not hold."""
    import shutil

    frame = pf.make_dataset(30_000, seed=25)
    frame.insert(0, "site", np.where(frame.index % 3 == 0, "north", "south"))
    frame["humidity"] = np.linspace(0.1, 0.9, len(frame)).astype(np.float32)
    frame.loc[7, "temperature"] = -60.0
    (tmp_path / "golden").mkdir()
    for index in range(3):
        frame.iloc[index * 10_000 : (index + 1) * 10_000].to_parquet(tmp_path / "golden" / f"p{index}.parquet", index=False)
    frame.to_csv(tmp_path / "golden.csv", index=False)
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "golden.json").write_text(json.dumps({"name": "golden", "expectations": [
        {"type": "expect_table_columns_to_match_ordered_list", "kwargs": {"column_list": list(frame.columns)}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 25_000, "max_value": 35_000}},
        {"type": "expect_column_min_to_be_between", "kwargs": {"column": "temperature", "min_value": -100, "max_value": -50}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "humidity", "min_value": 0.5, "max_value": 1.0}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "site", "value_set": ["north", "south"]}},
    ]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for golden in ("golden", "golden.csv"):
        configure(tmp_path, power, tmp_path / golden, '[gate]\nstages = ["data"]\n')
        config = tmp_path / "release-kit.toml"
        config.write_text(config.read_text().replace("sample_rows = 5000", "sample_rows = 500"))
        reports[golden] = {c["name"]: c for c in run(cli)["checks"] if c["name"].startswith("golden/")}
    streamed, whole = reports["golden"], reports["golden.csv"]
    assert len(streamed) == 5 and {n: c["status"] for n, c in streamed.items()} == {n: c["status"] for n, c in whole.items()}
    assert all(c["status"] == "pass" for c in streamed.values()), streamed
    minimum = streamed["golden/temperature:column_min_to_be_between"]
    assert minimum["details"]["observed_value"] == -60.0 and "over all 30,000 rows, streamed" in minimum["summary"]
    assert "over all 30,000 rows" in streamed["golden/table:table_row_count_to_be_between"]["summary"]
    assert "over all 30,000 rows, streamed" in streamed["golden/site:column_values_to_be_in_set"]["summary"]
    assert "on a uniform sample of 500 of 30,000 rows" in streamed["golden/table:table_columns_to_match_ordered_list"]["summary"]

    # The columns no model reads are counted over every row too: one null text value and one float out of
    # range, in rows the sample does not hold, fail their expectations.
    frame.loc[9, "humidity"], frame.loc[11, "site"] = 5.0, None
    for index in range(3):
        frame.iloc[index * 10_000 : (index + 1) * 10_000].to_parquet(tmp_path / "golden" / f"p{index}.parquet", index=False)
    (tmp_path / "checks" / "expectations" / "golden.json").write_text(json.dumps({"name": "golden", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "humidity", "min_value": 0.0, "max_value": 1.0}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "site"}},
    ]}))
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["data"]\n')
    config = tmp_path / "release-kit.toml"
    config.write_text(config.read_text().replace("sample_rows = 5000", "sample_rows = 500"))
    checks = {c["name"]: c for c in run(cli)["checks"]}
    humidity, site = checks["golden/humidity:column_values_to_be_between"], checks["golden/site:column_values_to_not_be_null"]
    assert humidity["status"] == "fail" and "1 of 30,000 values unexpected" in humidity["summary"], humidity
    assert humidity["details"]["observed_value"]["max"] == 5.0 and "over all 30,000 rows, streamed" in humidity["summary"]
    assert site["status"] == "fail" and "1 of 30,000 values are null" in site["summary"], site
    # A bound the counts cannot compare with (a suite parameter) is an error that says so, not a crash.
    (tmp_path / "checks" / "expectations" / "golden.json").write_text(json.dumps({"name": "golden", "expectations": [
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "temperature", "min_value": {"$PARAMETER": "t"}}},
    ]}))
    unusable = {c["name"]: c for c in run(cli)["checks"]}["golden/temperature:column_max_to_be_between"]
    assert unusable["status"] == "error" and "bound {'$PARAMETER': 't'} is not a number" in unusable["summary"]


def test_a_streamed_sample_holds_each_column_as_its_files_store_it(tmp_path, power, cli, monkeypatch):
    """The data stage's suites see a streamed sample's columns with the files' types and order, the model
    columns too, as the same rows read whole: the sample once held the features as the models' float32 and
    the target as float64, so a suite typing a feature int64 failed streamed and passed read whole."""
    import shutil

    frame = pf.make_dataset(12_000, seed=27).astype({"day_of_year": "int32", "cloud_cover": "float32", pf.TARGET: "float32"})
    frame = frame[[pf.TARGET, *[c for c in frame.columns if c != pf.TARGET]]]  # the target first
    (tmp_path / "golden").mkdir()
    for index in range(3):
        frame.iloc[index * 4_000 : (index + 1) * 4_000].to_parquet(tmp_path / "golden" / f"p{index}.parquet", index=False)
    frame.to_parquet(tmp_path / "all.parquet", index=False)
    typed = {"hour": "int64", "day_of_year": "int32", "cloud_cover": "float32", "temperature": "float64", pf.TARGET: "float32"}
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "types.json").write_text(json.dumps({"name": "types", "expectations": [
        {"type": "expect_table_columns_to_match_ordered_list", "kwargs": {"column_list": list(frame.columns)}},
        *({"type": "expect_column_values_to_be_of_type", "kwargs": {"column": c, "type_": t}} for c, t in typed.items()),
    ]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for golden in ("golden", "all.parquet"):  # a directory streams; one file of fewer rows than a batch is read whole
        configure(tmp_path, power, tmp_path / golden, '[gate]\nstages = ["quality", "data"]\n')
        text = (tmp_path / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 500")
        (tmp_path / "release-kit.toml").write_text(text.replace("chunk_rows = 4000", "chunk_rows = 20000" if golden == "all.parquet" else "chunk_rows = 4000"))
        reports[golden] = run(cli)
    streamed, whole = ({c["name"]: c for c in reports[g]["checks"] if c["name"].startswith("golden/")} for g in ("golden", "all.parquet"))
    assert len(streamed) == 6 and all(c["status"] == "pass" for c in whole.values()), whole
    for name, check in streamed.items():
        assert check["status"] == "pass", check
        assert "on a uniform sample of 500 of 12,000 rows" in check["summary"] and "sample" not in whole[name]["summary"]
    for name in ("mae", "rmse"):  # the models read the float32 matrix stacked from those columns, as in memory
        a, b = metric(reports["golden"], name), metric(reports["all.parquet"], name)
        for key in ("candidate", "baseline", "delta"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), (name, key)


def test_a_wide_streamed_golden_set_builds_its_sample_without_pandas_warnings(tmp_path, power, cli, monkeypatch):
    """150 columns no model reads, carried in the sample for the data stage: the sample's frame is built at
    once, where adding them one by one fragmented it and pandas warned on the user's stderr."""
    import shutil
    import warnings

    frame = pf.make_dataset(2_000, seed=26)
    extra = pd.DataFrame(np.random.default_rng(26).normal(size=(len(frame), 150)).astype(np.float32), columns=[f"c{i}" for i in range(150)])
    (tmp_path / "golden").mkdir()
    pd.concat([frame, extra], axis=1).to_parquet(tmp_path / "golden" / "p0.parquet", index=False)
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["data"]\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run(cli)
    assert report["data"]["golden"]["rows"] == 2_000 and report["environment"]["golden_read"] == "local"
    assert not [w for w in caught if issubclass(w.category, pd.errors.PerformanceWarning)], [str(w.message) for w in caught]


def test_range_set_and_not_null_expectations_are_decided_over_every_row_as_gx_decides_them(tmp_path, power, cli, monkeypatch):
    """A streamed set's range, set and not-null expectations are decided from counts over every row, with
    GX's rules: ``mostly`` (of the non-null values, for a range or set), ``strict_min``/``strict_max``, NaN
    and null missing, ±inf a value. The same file read whole (GX on every row) gives the same statuses and
    counts. The minimum and maximum alone once failed a range that ``mostly`` lets a few values leave, and
    a value outside a set in rows the sample missed passed."""
    import shutil

    frame = pf.make_dataset(9_000, seed=22)
    frame.loc[frame.index[100:130], "temperature"] = 80.0  # 30 of 9,000 rows (0.33 %) above 50
    humidity = np.random.default_rng(22).uniform(0.05, 0.95, len(frame))
    humidity[[10, 20, 4_000]] = 1.0  # on the bound: outside when it is strict
    humidity[[30, 40]] = [-np.inf, np.inf]
    humidity[[50, 60, 70]] = np.nan  # missing: never outside a range
    frame["humidity"] = humidity
    site = np.where(np.arange(len(frame)) % 2 == 0, "north", "south").astype(object)
    site[[5, 6_000]], site[[7, 8]] = "west", None  # a text column no model reads: 2 outside, 2 missing
    frame["site"] = pd.Categorical(site)  # stored as a Parquet dictionary column
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "all.parquet")
    between = "expect_column_values_to_be_between"
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "weather.json").write_text(json.dumps({"name": "weather", "expectations": [
        {"type": between, "kwargs": {"column": "temperature", "min_value": -30, "max_value": 50, "mostly": 0.99}},
        {"type": between, "kwargs": {"column": "temperature", "min_value": -30, "max_value": 50, "mostly": 0.999}},
        {"type": between, "kwargs": {"column": "humidity", "min_value": 0, "max_value": 1}},
        {"type": between, "kwargs": {"column": "humidity", "min_value": 0, "max_value": 1, "strict_max": True}},
        {"type": between, "kwargs": {"column": "humidity", "max_value": 1, "mostly": 0.999}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "humidity", "mostly": 0.999}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "humidity"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "site", "value_set": ["north", "south"]}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "site", "value_set": ["north", "south"], "mostly": 0.999}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "hour", "value_set": list(range(23))}},
    ]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for chunk_rows in (2_000, 10_000):  # the one file streamed in batches, then read whole (more rows a batch than it has)
        configure(tmp_path, power, tmp_path / "golden" / "all.parquet", '[gate]\nstages = ["data"]\n')
        text = (tmp_path / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 500")
        (tmp_path / "release-kit.toml").write_text(text.replace("chunk_rows = 4000", f"chunk_rows = {chunk_rows}"))
        reports[chunk_rows] = {c["name"]: c for c in run(cli)["checks"] if c["name"].startswith("golden/")}
    streamed, whole = reports[2_000], reports[10_000]
    assert set(streamed) == set(whole) and len(streamed) == 10
    for name, check in streamed.items():
        assert "over all 9,000 rows, streamed" in check["summary"] and "streamed" not in whole[name]["summary"], check
        assert check["status"] == whole[name]["status"], (check, whole[name])
        assert check["details"]["unexpected_count"] == whole[name]["details"]["unexpected_count"], (check, whole[name])
    statuses = {name.removeprefix("golden/"): (c["status"], c["details"]["unexpected_count"]) for name, c in streamed.items()}
    assert statuses == {
        "temperature:column_values_to_be_between": ("pass", 30),  # 99.67 % inside, mostly 99 %
        "temperature:column_values_to_be_between#2": ("fail", 30),  # not 99.9 %
        "humidity:column_values_to_be_between": ("fail", 2),  # ±inf
        "humidity:column_values_to_be_between#2": ("fail", 5),  # and the three on the strict bound
        "humidity:column_values_to_be_between#3": ("pass", 1),  # +inf alone, within mostly
        "humidity:column_values_to_not_be_null": ("pass", 3),
        "humidity:column_values_to_not_be_null#2": ("fail", 3),
        "site:column_values_to_be_in_set": ("fail", 2),
        "site:column_values_to_be_in_set#2": ("pass", 2),
        "hour:column_values_to_be_in_set": ("fail", int((frame["hour"] == 23).sum())),
    }, statuses
    assert "30 of 9,000 values unexpected" in streamed["golden/temperature:column_values_to_be_between#2"]["summary"]


def test_mean_stdev_and_sum_expectations_are_decided_over_every_row_as_gx_decides_them(tmp_path, power, cli, monkeypatch):
    """A streamed set's column mean, standard deviation and sum expectations are decided from sums over every
    row (merged batch by batch), where they were GX's on the sample: the same statuses and observed values
    as GX gives the file read whole, NaN skipped, an infinity's mean infinite and its deviation none, an
    integer column's sum exact."""
    import shutil

    frame = pf.make_dataset(9_000, seed=23)
    frame.loc[frame.index[:4_500], "temperature"] += 6.0  # the first half warmer: a sample's mean would stray
    humidity = np.random.default_rng(23).uniform(0.05, 0.95, len(frame))
    humidity[[50, 60, 70]] = np.nan
    frame["humidity"] = humidity
    spikes = np.ones(len(frame))
    spikes[8_999] = np.inf
    frame["spikes"] = spikes
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "all.parquet")
    temperature = frame["temperature"]
    expectations = [
        ("mean", "temperature", temperature.mean() - 0.01, temperature.mean() + 0.01),  # met by the whole set only
        ("mean", "temperature", None, temperature.mean() - 0.05),
        ("stdev", "temperature", temperature.std() - 0.01, None),
        ("sum", "hour", int(frame["hour"].sum()), int(frame["hour"].sum())),  # an integer column's exact sum
        ("mean", "humidity", 0.4, 0.6),
        ("stdev", "humidity", 0.2, 0.3),
        ("sum", "humidity", None, 1_000.0),
        ("mean", "spikes", 0, None),  # infinite: met, as GX's inf is
        ("stdev", "spikes", 0, None),  # none: not met
    ]
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "moments.json").write_text(json.dumps({"name": "moments", "expectations": [
        {"type": f"expect_column_{what}_to_be_between", "kwargs": {"column": column, "min_value": low, "max_value": high}}
        for what, column, low, high in expectations]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    reports = {}
    for chunk_rows in (2_000, 10_000):  # the one file streamed in batches, then read whole
        configure(tmp_path, power, tmp_path / "golden" / "all.parquet", '[gate]\nstages = ["data"]\n')
        text = (tmp_path / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 500")
        (tmp_path / "release-kit.toml").write_text(text.replace("chunk_rows = 4000", f"chunk_rows = {chunk_rows}"))
        reports[chunk_rows] = {c["name"]: c for c in run(cli)["checks"] if c["name"].startswith("golden/")
                               and any(f"_{what}_" in c["name"] for what in ("mean", "stdev", "sum"))}
    streamed, whole = reports[2_000], reports[10_000]
    assert set(streamed) == set(whole) and len(streamed) == len(expectations)
    for name, check in streamed.items():
        assert "over all 9,000 rows, streamed" in check["summary"] and "streamed" not in whole[name]["summary"], check
        assert check["status"] == whole[name]["status"], (check, whole[name])
        observed = whole[name]["details"]["observed_value"]
        assert check["details"]["observed_value"] == (None if observed is None else pytest.approx(observed, rel=1e-12)), (check, whole[name])
    statuses = [c["status"] for c in streamed.values()]
    assert statuses == ["pass", "fail", "pass", "pass", "pass", "pass", "fail", "pass", "fail"], statuses
    assert streamed["golden/hour:column_sum_to_be_between"]["details"]["observed_value"] == int(frame["hour"].sum())
    assert "observed none" in streamed["golden/spikes:column_stdev_to_be_between"]["summary"]


def test_uniqueness_a_sample_cannot_show_is_a_warn_and_a_repeat_it_finds_a_fail(tmp_path, power, cli, monkeypatch):
    """On a streamed set's sample GX finds no repeat of a value repeated once in 9,000 rows (both copies are
    rarely drawn): that pass was silent. It is a warn saying why; a repeat the sample holds is a fail, as it
    is in the set; a count of distinct values decides where the sample's count (the set's at least) can. A
    distinct value the sample lacks (a rare one) blocked the gate: a warn, where a value beyond a set the
    values must equal is a fail."""
    import shutil

    frame = pf.make_dataset(9_000, seed=24)
    frame["id"] = np.arange(len(frame))
    frame["order"] = np.arange(len(frame))
    frame.loc[frame.index[8_000], "order"] = 17  # one repeat in 9,000 rows
    frame["code"] = np.arange(len(frame)) % 10
    frame.loc[frame.index[4_321], "code"] = 99  # one rare value, which 500 sampled rows hardly hold
    (tmp_path / "golden").mkdir()
    for index in range(3):
        frame.iloc[index * 3_000 : (index + 1) * 3_000].to_parquet(tmp_path / "golden" / f"p{index}.parquet", index=False)
    expectations = [
        ("expect_column_values_to_be_unique", "id", {}),
        ("expect_column_values_to_be_unique", "order", {}),
        ("expect_column_values_to_be_unique", "code", {}),
        ("expect_column_unique_value_count_to_be_between", "code", {"min_value": 5, "max_value": 8}),
        ("expect_column_unique_value_count_to_be_between", "code", {"min_value": 5}),
        ("expect_column_unique_value_count_to_be_between", "code", {"min_value": 5, "max_value": 20}),
        ("expect_column_proportion_of_unique_values_to_be_between", "id", {"min_value": 0.99}),
        ("expect_column_distinct_values_to_contain_set", "code", {"value_set": [0, 9, 99]}),
        ("expect_column_distinct_values_to_contain_set", "code", {"value_set": [0, 9]}),
        ("expect_column_distinct_values_to_equal_set", "code", {"value_set": list(range(9))}),
        ("expect_column_distinct_values_to_equal_set", "code", {"value_set": [*range(10), 99, 100]}),
    ]
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    (tmp_path / "checks" / "expectations" / "unique.json").write_text(json.dumps({"name": "unique", "expectations": [
        {"type": kind, "kwargs": {"column": column, **bounds}} for kind, column, bounds in expectations]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    monkeypatch.chdir(tmp_path)
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["data"]\n')
    (tmp_path / "release-kit.toml").write_text((tmp_path / "release-kit.toml").read_text().replace("sample_rows = 5000", "sample_rows = 500"))
    report = run(cli)
    checks = [c for c in report["checks"] if c["name"].startswith(("golden/id:", "golden/order:", "golden/code:"))]
    assert [c["status"] for c in checks] == ["warn", "warn", "fail", "fail", "pass", "warn", "warn", "warn", "pass", "fail", "warn"], \
        [(c["name"], c["summary"]) for c in checks]
    assert all("on a uniform sample of 500 of 9,000 rows" in c["summary"] for c in checks)
    assert "cannot show every row's unique" in checks[1]["summary"]
    assert report["verdict"] == "block"  # the repeats the sample holds


def test_expectations_on_some_rows_or_with_bounds_that_are_no_numbers_are_left_to_gx_on_the_sample(tmp_path, power, cli, monkeypatch):
    """A streamed set's counts cover every row: an expectation with a row_condition holds on some rows only, and
    a bound that is no number cannot be compared with them. Both are GX's, on the sample; they once made the
    whole-set check fail on every row's maximum, or crash (exit 4)."""
    import shutil

    frame = pf.make_dataset(9_000, seed=22)
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "all.parquet")
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    night = {"column": pf.TARGET, "row_condition": "irradiance == 0", "condition_parser": "pandas"}
    (tmp_path / "checks" / "expectations" / "night.json").write_text(json.dumps({"name": "night", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {**night, "min_value": 0, "max_value": 0.2}},
        {"type": "expect_column_max_to_be_between", "kwargs": {**night, "max_value": 0.2}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "temperature", "min_value": "2026-01-01"}},
    ]}))
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["data"]\n')
    monkeypatch.chdir(tmp_path)
    report = run(cli)
    checks = {c["name"]: c for c in report["checks"]}
    assert frame[pf.TARGET].max() > 0.2 and frame.loc[frame["irradiance"] == 0, pf.TARGET].max() <= 0.2
    between = checks[f"golden/{pf.TARGET}:column_values_to_be_between"]
    assert between["status"] == "pass" and "on a uniform sample of 5,000 of 9,000 rows" in between["summary"]
    maximum = checks[f"golden/{pf.TARGET}:column_max_to_be_between"]
    assert maximum["status"] == "pass" and "streamed" not in maximum["summary"], maximum["summary"]  # GX's, on the sample
    assert checks["golden/temperature:column_values_to_be_between"]["status"] == "error"
    assert "whole_set" not in checks


def test_peak_memory_does_not_grow_with_the_golden_set(tmp_path, power):
    """The local engine holds one batch and the sample: 4× the rows cost no more than a little more memory."""
    import tracemalloc

    import torch

    from release_kit.config import ModelSpec
    from release_kit.models import load_model
    from release_kit.scale.batches import ScanPlan
    from release_kit.scale.engines import run_local
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


@pytest.mark.parametrize("row_group_rows", [3_000_000, 50_000], ids=["one-row-group", "many-row-groups"])
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_reading_a_file_holds_a_few_batches_whatever_its_size_and_row_groups(tmp_path, row_group_rows, engine):
    """Arrow's memory while a file streams stays a few batches, for a file written as one row group (older
    pyarrow wrote up to 64Mi rows in one) and for one of many, in the local engine and in a Ray read task
    (the function Ray runs, here in this process): pyarrow's defaults decode a whole row group at once and
    pre-buffer every row group read until the file is closed, so one 10⁸-row file held ~all of it, and Ray
    Data's reader held a row group whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from release_kit.scale.engines import read_task, unwrapped_batch
    from release_kit.scale.source import ParquetSource

    rng = np.random.default_rng(0)
    table = pa.table({name: rng.normal(size=3_000_000) for name in ("x", "y")})  # random floats: incompressible
    pq.write_table(table, tmp_path / "golden.parquet", row_group_size=row_group_rows)
    source = ParquetSource.resolve(str(tmp_path / "golden.parquet"))
    if engine == "local":
        batches = source.batches(["x", "y"], 100_000)
    else:
        batches = (unwrapped_batch(table) for table in read_task(source, ["x", "y"], 100_000, None, pa.table({"file": [0]})))
    before, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in batches:
        peak, rows = max(peak, pa.total_allocated_bytes() - before), rows + batch.num_rows
    assert rows == 3_000_000
    assert peak < table.nbytes / 3, (peak, table.nbytes)  # 48 MB in all, batches of 1.6 MB


@pytest.mark.parametrize(
    ("args", "setup", "needle"),
    [
        (["--max-rows", "0"], None, "--max-rows"),
        (["--engine", "spark"], None, "--engine"),
        ([], "empty", "no Parquet files"),
        ([], "delta-table", "a Delta table (it has a _delta_log/)"),
        ([], "only-a-failed-jobs-output", "no Parquet files (*.parquet, *.pq) there (1 skipped: a name under it starts with _ or .)"),
        ([], "csv-in-directory", "is not a Parquet file"),
        ([], "missing-column", "missing column(s): irradiance"),
        ([], "missing-column-in-a-later-file", "part-1.parquet: missing column(s): irradiance"),
        ([], "corrupt-later-file", "part-1.parquet: cannot read Parquet data"),
        ([], "text-column-in-a-later-file", "part-1.parquet: golden column 'temperature' is stored as text, not as numbers"),
        ([], "booleans-in-a-later-file", "part-1.parquet: column 'hour' is stored as bool, which does not join the int64 of "
                                         "the files before it"),
        ([], "text-categories", "part.parquet: golden column 'cloud_cover' is stored as categories of text, not as numbers"),
        ([], "not-parquet", "part.parquet: cannot read Parquet data"),
        ([], "zero-chunk-rows", "run.chunk_rows"),
        ([], "repeated-column-in-a-later-file", "part-1.parquet: column name(s) repeated: power_kw"),
        ([], "stored-and-partition-column", "column 'hour' is stored in the file and is a partition of its path (hour=3)"),
        ([], "partitioned-unevenly", "site=3/part.parquet: its Hive partition directories (site=) are not the first file's (none"),
        ([], "text-partition-feature", "golden column 'hour' is stored as text in its path (hour=7h), not as numbers"),
        ([], "text-file-in-directory", "golden/notes.txt is not a Parquet file (a Parquet directory holds Parquet files only"),
        ([], "broken-link", "golden/gone.parquet is not a file that can be read (a broken link?)"),
        ([], "iceberg-table", "an Iceberg table (it has metadata/*.metadata.json)"),
        ([], "hudi-table", "a Hudi table (it has a .hoodie/): its directory also holds the files of rows removed"),
        (["--engine", "ray", "--data", "s3://bucket/golden/*.parquet"], None,
         "s3://bucket/golden/*.parquet: data sets are read from local paths, not from s3:// URLs"),
    ],
    ids=["max-rows-0", "unknown-engine", "empty-directory", "delta-table", "only-a-failed-jobs-output", "csv-in-directory", "missing-column", "missing-column-in-a-later-file",
         "corrupt-later-file", "text-column-in-a-later-file", "booleans-in-a-later-file", "text-categories", "not-parquet", "zero-chunk-rows",
         "repeated-column-in-a-later-file", "stored-and-partition-column", "partitioned-unevenly",
         "text-partition-feature", "text-file-in-directory", "broken-link", "iceberg-table", "hudi-table", "object-store-url"],
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
    elif setup == "missing-column-in-a-later-file":
        frame.to_parquet(golden / "part-0.parquet")
        frame.drop(columns=["irradiance"]).to_parquet(golden / "part-1.parquet")
    elif setup == "text-column-in-a-later-file":  # found from the footers, before any batch is read
        frame.to_parquet(golden / "part-0.parquet")
        frame.assign(temperature=frame["temperature"].astype(str)).to_parquet(golden / "part-1.parquet")
    elif setup == "booleans-in-a-later-file":  # Arrow joins no booleans with numbers: found from the footers too
        frame.to_parquet(golden / "part-0.parquet")
        frame.assign(hour=frame["hour"] > 12).to_parquet(golden / "part-1.parquet")
    elif setup == "text-categories":  # pandas' category dtype of strings: a dictionary column in Parquet
        frame.assign(cloud_cover=frame["cloud_cover"].astype(str).astype("category")).to_parquet(golden / "part.parquet")
    elif setup == "not-parquet":
        (golden / "part.parquet").write_text("hour,power_kw\n1,2\n")
    elif setup == "repeated-column-in-a-later-file":  # pyarrow writes it; pandas could not say which is the target
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame.to_parquet(golden / "part-0.parquet")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table.append_column("power_kw", table.column("power_kw")), golden / "part-1.parquet")
    elif setup == "corrupt-later-file":  # its footer reads; its pages fail half-way through the scan
        frame.to_parquet(golden / "part-0.parquet")
        _corrupt_pages(frame, golden / "part-1.parquet")
    elif setup == "delta-table":  # its directory keeps the files of removed rows: which are live is the log's
        frame.to_parquet(golden / "part-0.parquet")
        (golden / "_delta_log").mkdir()
        (golden / "_delta_log" / "00000000000000000000.json").write_text("{}")
    elif setup == "only-a-failed-jobs-output":
        (golden / "_temporary").mkdir()
        frame.to_parquet(golden / "_temporary" / "part-0.parquet")
    elif setup == "stored-and-partition-column":  # which is the golden hour: the file's or the path's?
        (golden / "hour=3").mkdir()
        frame.to_parquet(golden / "hour=3" / "part.parquet")
    elif setup == "text-partition-feature":
        for hour in ("7h", "8h"):
            (golden / f"hour={hour}").mkdir()
            frame.drop(columns=["hour"]).to_parquet(golden / f"hour={hour}" / "part.parquet")
    elif setup == "partitioned-unevenly":  # Ray Data would read the second file as partitioned like the first
        frame.to_parquet(golden / "part.parquet")
        (golden / "site=3").mkdir()
        frame.to_parquet(golden / "site=3" / "part.parquet")
    elif setup == "iceberg-table":  # its data/ keeps the files of removed rows: which are live is its snapshot's
        (golden / "data").mkdir()
        frame.to_parquet(golden / "data" / "part.parquet")
        (golden / "metadata").mkdir()
        (golden / "metadata" / "v1.metadata.json").write_text("{}")
    elif setup == "hudi-table":  # a file group's every version is a Parquet file: only its timeline says which is live
        frame.to_parquet(golden / "fg-1_0-1-0_20240101.parquet")
        frame.to_parquet(golden / "fg-1_0-2-0_20240102.parquet")
        (golden / ".hoodie").mkdir()
    elif setup != "empty":
        frame.to_parquet(golden / "part.parquet")
    if setup == "text-file-in-directory":  # not skipped: a file left out would be rows the gate never saw
        (golden / "notes.txt").write_text("written by hand")
    elif setup == "broken-link":
        (golden / "gone.parquet").symlink_to(golden / "moved-away.parquet")
    if setup == "csv-in-directory":
        golden = tmp_path / "golden" / "*"
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, golden)
    if setup == "zero-chunk-rows":
        config = tmp_path / "release-kit.toml"
        config.write_text(config.read_text().replace("chunk_rows = 4000", "chunk_rows = 0"))
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--report", "report.json", *args)
    assert result.exit_code == 2, result.output[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[-1], result.stderr
    assert not (tmp_path / "report.json").exists()


def _corrupt_pages(frame: pd.DataFrame, path: Path) -> None:
    """A Parquet file whose footer is intact and whose columns' compressed pages are not."""
    import pyarrow.parquet as pq

    repeated = pd.concat([frame.iloc[:10]] * 100, ignore_index=True)  # compressible: snappy has tags to break
    repeated.to_parquet(path, compression="snappy", use_dictionary=False)
    group = pq.ParquetFile(path).metadata.row_group(0)
    data = bytearray(path.read_bytes())
    for index in range(group.num_columns):
        chunk = group.column(index)
        middle = chunk.data_page_offset + chunk.total_compressed_size // 2
        data[middle : middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("read_ahead", [False, True], ids=["in-the-caller", "read-ahead"])
def test_batches_are_read_in_file_order_and_a_reader_ends_with_the_iteration(golden_directory, tmp_path, read_ahead):
    """Every file's rows in order, stopping at --max-rows; a reading thread (:func:`batches_read_ahead`) ends
    when the caller stops early or fails; a file that fails half-way is bad input naming that file."""
    import threading

    from release_kit.errors import InputError
    from release_kit.scale.source import ParquetSource, batches_read_ahead

    def read_batches(source, *args, **kwargs):
        read = source.batches(*args, **kwargs)
        return batches_read_ahead(read) if read_ahead else read

    def readers() -> int:
        return sum(t.name == "release-kit-read" for t in threading.enumerate())

    source = ParquetSource.resolve(str(golden_directory / "golden"))
    whole = pd.concat([pd.read_parquet(f) for f in source.files], ignore_index=True)
    batches = list(read_batches(source, ["power_kw", "temperature"], 4_000))
    assert [b.num_rows for b in batches] == [4_000] * 7 + [2_000]  # cut at every 4,000th row, across the files
    assert np.array_equal(np.concatenate([b.column("power_kw").to_numpy() for b in batches]), whole["power_kw"].to_numpy())
    prefix = list(read_batches(source, ["power_kw"], 4_000, max_rows=13_500))
    assert [b.num_rows for b in prefix] == [4_000, 4_000, 4_000, 1_500] and readers() == 0
    first = next(iter(read_batches(source, ["power_kw"], 1_000)))  # the generator is dropped: its thread ends
    assert first.num_rows == 1_000 and readers() == 0
    with pytest.raises(RuntimeError, match="caller failed"):
        for _ in read_batches(source, ["power_kw"], 1_000):
            raise RuntimeError("caller failed")
    assert readers() == 0

    frame = pd.read_parquet(source.files[0])
    (tmp_path / "golden").mkdir()
    frame.to_parquet(tmp_path / "golden" / "part-0.parquet")
    _corrupt_pages(frame, tmp_path / "golden" / "part-1.parquet")
    read = []
    with pytest.raises(InputError, match=r"part-1\.parquet: cannot read Parquet data"):
        for batch in read_batches(ParquetSource.resolve(str(tmp_path / "golden")), ["power_kw"], 4_000):
            read.append(batch.num_rows)
    assert read == [4_000, 4_000] and readers() == 0  # the file's last 2,000 rows wait for the next file's


def test_each_model_call_is_stacked_from_the_columns_as_the_whole_matrix_would_be(power, golden_directory):
    """score_batch stacks each call's input from the batch's columns: the outputs are bit for bit those of
    the whole feature matrix (several calls per batch; a baseline on other columns gets its own input), and
    the columns taken by row give the matrix's rows."""
    from dataclasses import replace

    from release_kit.scale.batches import FeatureColumns, score_batch

    source, plan, models = _every_stage_scan(power, golden_directory)
    models = {role: replace(model, batch_size=1_500) for role, model in models.items()}  # 3 calls for 4,000 rows
    reordered = tuple(reversed(plan.features["candidate"]))
    plan = replace(plan, features={"candidate": plan.features["candidate"], "baseline": reordered})
    batch = next(iter(source.batches(plan.columns, 4_000)))
    scored = score_batch(plan, models, batch)
    for role, columns in plan.features.items():
        matrix = np.column_stack([batch.column(c).to_numpy() for c in columns]).astype(np.float32)
        assert np.array_equal(np.asarray(scored.kept.inputs[role]), matrix)
        assert np.array_equal(scored.kept.outputs[role], models[role].raw_outputs(matrix))
    rows = np.array([3_999, 0, 17, 17])
    assert np.array_equal(scored.kept.inputs["baseline"][rows], matrix[rows])
    part = scored.kept.inputs["baseline"][100:200]
    assert isinstance(part, FeatureColumns) and np.array_equal(np.asarray(part), matrix[100:200])
    # A batch whose rows are all excluded (a feature all NaN): each model is called once on no rows.
    import pyarrow as pa

    from release_kit.scale.batches import summarize_batch

    unusable = batch.set_column(batch.schema.get_field_index("cloud_cover"), "cloud_cover", pa.array(np.full(4_000, np.nan)))
    empty = score_batch(plan, models, unusable)
    assert all(len(output) == 0 for output in empty.kept.outputs.values())
    summary = summarize_batch(plan, empty)
    assert summary.rows == 4_000 and summary.excluded_rows == 4_000 and summary.excluded == {"cloud_cover": 4_000}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=300), st.integers(41, 60), st.integers(0, 2**32 - 1))
def test_bin_sums_are_numpys_bincount(codes, size, seed):
    """The GIL-free counts and sums behind the slice tables and sketches: np.bincount's numbers, bit for
    bit (the same additions in row order), counts as int64."""
    from release_kit.paired import bin_sums

    codes = np.asarray(codes, dtype=np.uint8)
    weights = np.random.default_rng(seed).normal(size=len(codes)) * 10.0 ** np.random.default_rng(seed).integers(-8, 8, len(codes))
    counts = bin_sums(codes, size)
    assert counts.dtype == np.int64 and np.array_equal(counts, np.bincount(codes, minlength=size))
    assert np.array_equal(bin_sums(codes, size, weights), np.bincount(codes, weights=weights, minlength=size))


def test_a_model_failing_inside_a_ray_worker_is_bad_input(tmp_path, power, cli, monkeypatch, shared_ray):
    """A model that cannot take the golden rows fails in the actor; the run still ends with one line, exit 2."""
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
    # The file the user named, as the local engine says it (not the copy the actor loaded).
    assert len(lines) == 1 and lines[0].startswith("release-kit: error: candidate model candidate.pt failed on input of shape"), result.stderr[-2000:]


@pytest.mark.slow
def test_a_failed_ray_run_frees_the_cluster_for_the_next(tmp_path, power, golden_directory):
    """A driver that keeps its Ray (a notebook, a service gating many models): after a run that failed on bad
    input, the next run's actors get the CPUs at once. Ray Data's failed execution, held by its error's
    traceback, kept the first run's actors until garbage collection, and the next run waited ~15 s for them.
    In a process of its own: pytest's log capture keeps that traceback alive for its report."""
    pytest.importorskip("ray")
    import subprocess

    import torch

    from conftest import save_scripted

    save_scripted(torch.nn.Sequential(torch.nn.Linear(6, 1), torch.nn.Flatten(0)), tmp_path / "six.pt")
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r}); sys.path.insert(0, {str(Path(pf.__file__).parent)!r})
        import ray
        from test_scale import _library_scan
        from release_kit.errors import InputError
        from release_kit.models import load_model
        from release_kit.scale.engines import run_ray

        source, plan, models = _library_scan({{"better": {str(power["better"])!r}}}, {str(golden_directory / "golden")!r})
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
        try:
            run_ray(source, plan, {{"candidate": load_model("candidate", {str(tmp_path / "six.pt")!r}, plan.spec)}}, chunk_rows=10_000)
        except InputError:
            pass
        time.sleep(2)  # the actors' kill is asynchronous
        print("free", ray.available_resources().get("CPU", 0), "of", ray.cluster_resources()["CPU"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "free 3.0 of 3.0", done.stdout[-1000:]



@pytest.mark.slow  # starts and stops a Ray of its own in a subprocess: ~20 s on two cores
def test_a_run_that_starts_its_own_ray_leaves_the_process_environment_as_it_found_it(power, golden_directory):
    """``ray.init`` sets RAY_AUTH_MODE=token (and PYTHONBREAKPOINT) in the process's environment and leaves
    them after ``ray.shutdown``: a driver's next run, joining a cluster without token authentication, would
    ask it for a token, and every subprocess would inherit them. A run that started its Ray restores them."""
    pytest.importorskip("ray")
    import subprocess

    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r}); sys.path.insert(0, {str(Path(pf.__file__).parent)!r})
        from test_scale import _library_scan
        from release_kit.scale.engines import run_ray

        source, plan, models = _library_scan({{"better": {str(power["better"])!r}}}, {str(golden_directory / "golden")!r})
        import ray  # its import sets RAY_CLIENT_MODE=0, and the module stays imported: not the run's doing
        before = dict(os.environ)
        summary = run_ray(source, plan, models, chunk_rows=10_000, workers=1)
        changed = sorted(k for k in {{*before, *os.environ}} if before.get(k) != os.environ.get(k))
        print("rows", summary.rows, "changed", changed)
    """)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONBREAKPOINT"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "rows 30000 changed []", done.stdout[-1000:]


@pytest.mark.slow  # starts and stops a Ray of its own in a subprocess: ~30 s on two cores
def test_a_model_that_kills_its_ray_actor_fails_the_run_instead_of_hanging(tmp_path, power):
    """A model whose forward ends its process (as a segfault would) in a Ray worker: the actor is not restarted
    and its batch not retried without end; the run ends with an internal error (never exit 1), in seconds."""
    pytest.importorskip("ray")
    from conftest import run_cli

    (tmp_path / "golden").mkdir()
    pf.make_dataset(2_000, seed=5).to_parquet(tmp_path / "golden" / "part.parquet")
    (tmp_path / "crashing.py").write_text(textwrap.dedent("""
        import os
        import sys

        import power_forecast


        class EndsRayWorkers(power_forecast.PowerMLP):
            def forward(self, x):
                if "default_worker" in sys.argv[0]:  # a Ray worker process, not the driver
                    os._exit(1)
                return super().forward(x)


        def factory():
            return EndsRayWorkers(hidden=16)
        """))
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["quality"]\n')
    config = tmp_path / "release-kit.toml"
    config.write_text(config.read_text().replace("[baseline]", '[candidate]\nfactory = "crashing:factory"\n\n[baseline]', 1))
    env = {"PYTHONPATH": f"{tmp_path}:{Path(pf.__file__).parent}"}  # the workers import the factory's module
    result = run_cli(tmp_path, "check", "--candidate", str(power["v1_safetensors"]), "--engine", "ray", env=env, timeout=120)
    assert result.returncode == 4, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("release-kit: internal error: ActorDiedError"), result.stderr[-3000:]
    # The local Ray it started has token authentication, and Ray's note of it ("Set RAY_AUTH_MODE=disabled
    # to opt out") is not shown.
    assert "Token authentication" not in result.stderr and "RAY_AUTH_MODE" not in result.stderr, result.stderr[-3000:]


def test_a_corrupt_file_read_by_a_ray_worker_is_bad_input(tmp_path, power, cli, monkeypatch, shared_ray):
    """A file whose pages fail in a Ray read task: one line naming the file and the cause, exit 2 (it was
    exit 4, an internal error)."""
    import shutil

    (tmp_path / "golden").mkdir()
    frame = pf.make_dataset(2_000, seed=5)
    frame.to_parquet(tmp_path / "golden" / "part-0.parquet")
    _corrupt_pages(frame, tmp_path / "golden" / "part-1.parquet")
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["quality"]\n')
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--engine", "ray", "--report", "report.json")
    assert result.exit_code == 2, result.output[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("release-kit:")]
    assert len(lines) == 1 and "golden/part-1.parquet: cannot read Parquet data" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "report.json").exists()


@pytest.fixture
def ray_cluster():
    """A Ray cluster launched by `ray start` on 127.0.0.1 (2 CPUs), with token authentication as Ray 2.59+
    enables it for such clusters: its address and the environment a client needs to join it."""
    pytest.importorskip("ray")
    import secrets
    import shutil
    import socket
    import subprocess

    ray = Path(sys.executable).with_name("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **auth}
    temp = tempfile.mkdtemp(prefix="rk-ray-")  # short: Ray's socket paths live under it
    subprocess.run([str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
                   env=environment, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}", auth
    finally:
        # `ray stop` ends every Ray on the machine, this process's own too (the module's shared one, started
        # by an earlier test), and a driver whose Ray is killed under it ends the process: pytest died
        # without a word. That Ray is shut down first; the next test that needs it starts it again.
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        subprocess.run([str(ray), "stop", "--force"], env=environment, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_an_existing_ray_cluster_gives_the_local_numbers_and_a_refused_token_is_bad_input(streamed_project, ray_cluster):
    from conftest import run_cli

    address, auth = ray_cluster
    stages = ("--stage", "quality", "--stage", "data")
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "local", *stages, "--report", "local.json")
    assert result.returncode == 0, result.stderr[-3000:]
    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("chunk_rows = 4000", f'chunk_rows = 4000\nray_address = "{address}"'))
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "ray", *stages, "--report", "ray.json", env=auth)
    assert result.returncode == 0, result.stderr[-3000:]
    local, distributed = (json.loads((streamed_project / name).read_text()) for name in ("local.json", "ray.json"))
    assert distributed["environment"]["golden_read"] == "ray" and distributed["data"] == local["data"]
    for name in ("mae", "rmse", "r2"):
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert math.isclose(metric(local, name)[key], metric(distributed, name)[key], rel_tol=1e-9, abs_tol=1e-12), (name, key)

    # Without the token the cluster refuses the client: one line, exit 2, saying what it needs.
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "ray", *stages, "--report", "no.json")
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"release-kit: error: [run] ray_address '{address}': cannot start or reach Ray") and "RAY_AUTH_MODE=token" in line
    assert not (streamed_project / "no.json").exists()


@pytest.mark.parametrize(("address", "line"), [
    ("127.0.0.1:1", "release-kit: error: [run] ray_address '127.0.0.1:1': nothing answers there ([Errno 111] Connection refused)"),
    ("head:63 79", "release-kit: error: [run] ray_address 'head:63 79': not host:port (its port '63 79' is not a port number), "
                   "\"auto\" or empty"),
])
def test_an_unreachable_or_malformed_ray_address_is_bad_input(streamed_project, address, line):
    pytest.importorskip("ray")
    from conftest import run_cli

    text = (streamed_project / "release-kit.toml").read_text().replace("[run]\n", f'[run]\nray_address = "{address}"\n')
    (streamed_project / "release-kit.toml").write_text(text)
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "ray", "--report", "report.json")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [line]
    assert not (streamed_project / "report.json").exists()


def test_the_ray_engine_without_ray_installed_is_bad_input(streamed_project):
    """A Python where ``import ray`` fails as it does when Ray is not installed (a module that raises the same
    ImportError shadows the installed one): one line naming the extra, exit 2, nothing written."""
    from conftest import run_cli

    shadow = streamed_project / "no-ray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "ray", "--report", "report.json",
                     env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == ["release-kit: error: [run] engine = \"ray\" needs Ray: pip install 'release-kit[ray]'"]
    assert not (streamed_project / "report.json").exists()


CLASSIFIER = churn_model() + """
[baseline]
path = "baseline.pt"
version = "1.0.0"

[data]
golden = "{golden}"

[run]
chunk_rows = 5000
sample_rows = 6000

[gate]
stages = ["quality"]  # the metrics' numbers; the other stages run on the sample as for tables

[mlflow]
enabled = false
"""


def test_a_golden_set_without_some_classes_decides_the_auc_over_the_classes_it_holds(tmp_path, cli, monkeypatch):
    """A 4-class model's golden set without rows of class 3: ROC AUC is the macro mean over the three classes it
    holds, read whole, streamed with the scores in memory, and binned from a sample: decided (not "could not be
    compared"), and said so. The streamed numbers equal the whole set's (binned: within the printed bound); so
    does macro F1, over the classes held or predicted."""
    import re

    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    train = make_classification(3_000, 4, seed=1)
    golden = make_classification(20_000, 4, seed=2).query("label != 3").reset_index(drop=True)
    save_scripted(train_classifier(train, 4, epochs=4, squash="none"), tmp_path / "baseline.pt")
    save_scripted(train_classifier(train, 4, epochs=60, squash="none"), tmp_path / "candidate.pt")
    (tmp_path / "golden").mkdir()
    golden.iloc[:9_000].to_parquet(tmp_path / "golden" / "part-0.parquet")
    golden.iloc[9_000:].to_parquet(tmp_path / "golden" / "part-1.parquet")
    golden.to_csv(tmp_path / "golden.csv", index=False)
    reports = {}
    for name, source, sample in (("whole", "golden.csv", 6000), ("fits", "golden", 30000), ("binned", "golden", 6000)):
        (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden=source).replace("sample_rows = 6000", f"sample_rows = {sample}"))
        reports[name] = run(cli)
        auc = next(c for c in reports[name]["checks"] if c["name"] == "roc_auc")
        assert auc["status"] != "warn" and "macro over the 3 of 4 classes the golden set holds rows of" in auc["summary"], auc
    # Macro F1 over the classes the rows hold or a model predicts, from the streamed sums as in memory.
    for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
        assert metric(reports["binned"], "f1")[key] == pytest.approx(metric(reports["whole"], "f1")[key], rel=1e-9), key
    whole, fits, binned = (metric(reports[name], "roc_auc") for name in ("whole", "fits", "binned"))
    assert whole["candidate"] > whole["baseline"] > 0.5
    for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
        assert fits[key] == pytest.approx(whole[key], rel=1e-9), key
    summary = next(c for c in reports["binned"]["checks"] if c["name"] == "roc_auc")["summary"]
    bound = float(re.search(r"each AUC within ±(\S+) of the exact value", summary).group(1))
    for key in ("candidate", "baseline"):
        assert abs(binned[key] - whole[key]) <= bound * 1.05, (key, binned[key], whole[key], bound)


@pytest.mark.parametrize("classes", [2, 3])
def test_streamed_classification_metrics_match_the_in_memory_numbers(tmp_path, cli, monkeypatch, classes):
    """Accuracy, log loss and F1 from the sums equal the in-memory numbers; ROC AUC from the binned counts is
    within its stated bound of the exact value, and its interval is about as wide as the exact one."""
    import re

    from conftest import make_classification, save_scripted, train_classifier

    monkeypatch.chdir(tmp_path)
    train, golden = make_classification(3_000, classes, seed=1), make_classification(24_000, classes, seed=2)
    save_scripted(train_classifier(train, classes, epochs=4, squash="none"), tmp_path / "baseline.pt")
    save_scripted(train_classifier(train, classes, epochs=60, squash="none"), tmp_path / "candidate.pt")
    (tmp_path / "golden").mkdir()
    for index, start in enumerate(range(0, len(golden), 8_000)):
        part = golden.iloc[start : start + 8_000]
        part.to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    golden.to_csv(tmp_path / "golden.csv", index=False)

    (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden="golden"))
    streamed = run(cli)
    (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden="golden.csv"))
    whole = run(cli)
    assert streamed["data"]["golden"]["rows"] == whole["data"]["golden"]["rows"] == 24_000
    for name in ("accuracy", "log_loss", "f1"):
        a, b = metric(streamed, name), metric(whole, name)
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (name, key)

    auc = next(c for c in streamed["checks"] if c["name"] == "roc_auc")
    bound = float(re.search(r"each AUC within ±(\S+) of the exact value", auc["summary"]).group(1))
    assert 0 < bound < 1e-3, auc["summary"]
    a, b = metric(streamed, "roc_auc"), metric(whole, "roc_auc")
    for key in ("candidate", "baseline"):
        assert abs(a[key] - b[key]) <= bound * 1.05, (key, a[key], b[key], bound)  # the bound as printed, rounded
    assert a["ci_low"] <= b["delta"] <= a["ci_high"]
    assert 0.5 < (a["ci_high"] - a["ci_low"]) / (b["ci_high"] - b["ci_low"]) < 2.0

    # Where the scores fit (a sample as large as the golden set), the AUC is the exact one.
    (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden="golden").replace("sample_rows = 6000", "sample_rows = 30000"))
    fits = run(cli)
    for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
        assert metric(fits, "roc_auc")[key] == pytest.approx(b[key], rel=1e-9), key
    assert "binned" not in next(c for c in fits["checks"] if c["name"] == "roc_auc")["summary"]


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=80), k=st.integers(1, 30),
       cuts=st.lists(st.integers(0, 80), max_size=6), order=st.permutations(range(7)))
def test_a_sample_merged_in_any_grouping_is_the_k_smallest_keys_rows_in_key_order(keys, k, cuts, order):
    """The bottom-k sample of batches merged in any order (compacting as it goes) holds the rows of the k
    smallest keys, in key order, each column with its own rows."""
    from release_kit.scale.stats import BottomK

    keys = np.array(keys, dtype=np.uint64)
    values = np.arange(len(keys), dtype=np.float64) * 1.5
    bounds = sorted({0, len(keys), *(min(c, len(keys)) for c in cuts)})
    parts = [BottomK.of(k, keys[a:b], {"x": values[a:b], "y": values[a:b].astype(np.int64)}) for a, b in zip(bounds, bounds[1:])]
    parts = [parts[i] for i in order if i < len(parts)]
    merged = parts[0] if parts else BottomK(k, [], 0)
    for part in parts[1:]:
        merged = merged.merge(part)
    sample = merged.ordered()
    expected = np.argsort(keys, kind="stable")[:k]
    assert np.array_equal(sample.get("x", np.zeros(0)), values[expected])
    assert np.array_equal(sample.get("y", np.zeros(0, np.int64)), values[expected].astype(np.int64))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.floats(width=32), st.sampled_from([0.0, 1.0, -1.0])), min_size=0, max_size=40),
       dtype=st.sampled_from(["float32", "float64", "int64"]),
       low=st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.5])), high=st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 1.0, 2.5])),
       strict_low=st.booleans(), strict_high=st.booleans(), cut=st.integers(0, 40))
def test_values_outside_a_range_counted_in_batches_are_pandas_count_over_the_column(values, dtype, low, high, strict_low, strict_high, cut):
    """The values outside a range (the count a streamed set decides ``mostly`` from), summed over two batches
    that skip the counting pass when their minimum and maximum lie inside, are the count pandas gives over
    the whole column, as GX compares it: NaN never outside, ±inf outside a bound on its side."""
    from release_kit.scale.stats import ColumnCounts, ValueRange

    column = np.array(values, dtype=np.float64)
    if dtype == "int64":
        column = np.nan_to_num(column, nan=0.0, posinf=3.0, neginf=-3.0).clip(-9, 9).round()
    column = column.astype(dtype)
    value_range = ValueRange(low, high, strict_low, strict_high)
    first, second = ColumnCounts(), ColumnCounts()
    first.add("x", column[:cut], conditions=(value_range,))
    second.add("x", column[cut:], conditions=(value_range,))
    merged = first.merge(second)
    series = pd.Series(column)
    outside = pd.Series(False, index=series.index)
    if low is not None:
        outside |= series <= low if strict_low else series < low
    if high is not None:
        outside |= series >= high if strict_high else series > high
    assert merged.outside[("x", value_range)] == int(outside.sum())
    assert merged.nulls["x"] == int(series.isna().sum())


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.nan, 0.5])), min_size=0, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=3), infinite=st.booleans())
def test_a_columns_moments_merged_over_batches_are_pandas_mean_stdev_and_sum(values, cuts, infinite):
    """The mean, standard deviation (n − 1) and sum a streamed set decides GX's expectations from, merged
    batch by batch in any split, are pandas' over the whole column, as GX computes them: NaN skipped, a
    column with an infinity has an infinite mean and sum and no deviation, an empty one no mean."""
    from release_kit.scale.stats import ColumnCounts

    column = np.array(values + ([np.inf] if infinite else []), dtype=np.float64)
    edges = [0, *sorted(min(c, len(column)) for c in cuts), len(column)]
    merged = ColumnCounts()
    for start, stop in zip(edges, edges[1:]):
        part = ColumnCounts()
        part.add("x", column[start:stop], moments=True)
        merged = merged.merge(part)
    moments, series = merged.moments.get("x"), pd.Series(column)
    if moments is None:  # no batch had a row
        assert len(column) == 0
        return
    with np.errstate(invalid="ignore"):  # pandas' deviation of an infinity: NaN, and numpy's warning
        deviation = series.std()
    for observed, expected in ((moments.mean, series.mean()), (moments.stdev, deviation), (moments.total, series.sum())):
        assert (math.isnan(observed) and math.isnan(expected)) or observed == pytest.approx(expected, rel=1e-9, abs=1e-6), (observed, expected)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=60),
       cuts=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=6, unique=True),
       categorical=st.booleans(), near=st.booleans())
def test_drift_counts_of_a_float32_column_equal_its_float64_counts(values, cuts, categorical, near):
    """A float32 column is counted as it is (not widened): the counts are the exact float64 comparisons',
    cuts between two float32 values and levels no float32 equals included."""
    from release_kit.drift import Bins

    column = np.array(values, dtype=np.float32)
    cuts = np.sort(np.array(cuts))
    if near:  # cuts just beside the column's own values: where a rounding to float32 would miscount
        cuts = np.unique(np.concatenate([cuts, column.astype(np.float64) * (1 + 1e-12), column.astype(np.float64) + 1e-300]))
    bins = Bins(categorical, cuts)
    np.testing.assert_array_equal(bins.counts(column), bins.counts(column.astype(np.float64)))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 4).flatmap(lambda classes: st.tuples(
        st.just(classes),
        st.lists(st.tuples(st.integers(0, classes - 1), st.lists(st.floats(-30, 30), min_size=classes, max_size=classes)),
                 min_size=2, max_size=200),
    ))
)
def test_binned_auc_is_within_its_bound_and_merges_exactly(case):
    """Any scores, ties and extremes included: the binned AUC is within its bound of the exact (DeLong) AUC,
    and the histogram of the whole equals the merge of its parts (so every engine and batching agrees)."""
    from release_kit.metrics import METRICS
    from release_kit.scale.stats import ScoreHistogram

    classes, rows = case
    y = np.array([label for label, _ in rows])
    logits = np.array([scores for _, scores in rows], dtype=np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    baseline = probabilities[:, ::-1].copy()
    histogram = ScoreHistogram.of(y, probabilities, baseline)
    for model, p in enumerate((probabilities, baseline)):
        exact, _ = METRICS["roc_auc"].estimate(y, p)
        binned, bound = histogram.auc(model)
        if math.isnan(exact):
            assert math.isnan(binned)
        else:
            assert abs(binned - exact) <= bound + 1e-12, (binned, exact, bound)
    half = len(y) // 2
    merged = ScoreHistogram.of(y[:half], probabilities[:half], baseline[:half]).merge(
        ScoreHistogram.of(y[half:], probabilities[half:], baseline[half:]))
    assert np.array_equal(merged.counts, histogram.counts)


@pytest.mark.parametrize("categorical", [True, False])
def test_drift_from_streamed_counts_equals_drift_over_every_row(categorical):
    """PSI and chi-square from counts in the reference's bins (added up batch by batch) are those of the whole
    golden set, unseen categories included; KS runs on the sample it is given."""
    from release_kit.drift import Bins, feature_drift

    rng = np.random.default_rng(0)
    if categorical:
        reference, current = rng.integers(0, 6, 20_000).astype(float), rng.integers(0, 8, 50_000).astype(float)
    else:
        reference, current = rng.normal(size=20_000), rng.normal(0.3, 1.2, size=50_000)
    whole = feature_drift("x", reference, current, bins=10, test_rows=200_000, rng=np.random.default_rng(1))
    bins = Bins.of(reference, 10)
    counts = sum(bins.counts(part) for part in np.array_split(current, 7))
    streamed = feature_drift("x", reference, current[:5_000], bins=10, test_rows=200_000, rng=np.random.default_rng(1),
                             current_counts=counts)
    assert streamed.test == whole.test == ("chi2" if categorical else "ks")
    assert streamed.psi == pytest.approx(whole.psi, rel=1e-12) and streamed.psi > 0.05
    if categorical:
        assert counts[-1] == (current >= 6).sum() > 0  # the unseen levels share the last bin
        assert streamed.statistic == pytest.approx(whole.statistic, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(0.0), st.floats(-1e-8, 1e-8), st.just(math.nan)), min_size=1, max_size=300),
    st.one_of(st.floats(-1e3, 1e3), st.floats(-1e-8, 1e-8)),
    st.integers(1, 5),
)
def test_the_change_sketch_brackets_every_count_and_merges_exactly(values, threshold, n):
    """Any changes and threshold: the exact count of changes above (below) it lies in the sketch's range; the
    sketch and the worst rows of the whole equal the merge of its parts."""
    from release_kit.scale.stats import ChangeSketch, WorstRows

    delta = np.array(values)
    sketch = ChangeSketch.of(delta)  # a NaN change is neither above nor below any threshold, as in memory
    low, high = sketch.count_above(threshold)
    assert low <= int((delta > threshold).sum()) <= high
    low, high = sketch.count_below(threshold)
    assert low <= int((delta < threshold).sum()) <= high
    half = len(delta) // 2
    merged = ChangeSketch.of(delta[:half]).merge(ChangeSketch.of(delta[half:]))
    assert np.array_equal(merged.positive, sketch.positive) and np.array_equal(merged.negative, sketch.negative)
    keys = np.arange(len(delta), dtype=np.uint64)[::-1].copy()
    whole = WorstRows.of(n, delta, keys, {"row": np.arange(len(delta))})
    parts = WorstRows.of(n, delta[:half], keys[:half], {"row": np.arange(half)}).merge(
        WorstRows.of(n, delta[half:], keys[half:], {"row": np.arange(half, len(delta))}))
    assert np.array_equal(whole.arrays["row"], parts.arrays["row"])
    finite = np.sort(delta[np.isfinite(delta)])[::-1]
    assert np.array_equal(finite[:n], whole.delta)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5]), st.floats(-1e6, 1e6)), min_size=1, max_size=400),
       st.integers(1, 12), st.sampled_from([1, 2, 4, 8]))
def test_the_worst_rows_are_the_exact_top_n_with_ties_by_key(values, n, block):
    """Whatever the changes (many ties, plateaus) and however small the blocks the candidates are taken
    from: the n largest changes, ties broken by the smaller row key, as a full sort gives them."""
    from unittest import mock

    from release_kit.scale import stats

    delta = np.array(values)
    keys = np.random.default_rng(len(values)).permutation(len(values)).astype(np.uint64)
    with mock.patch.object(stats, "TOP_BLOCK_ROWS", block):
        worst = stats.WorstRows.of(n, delta, keys, {"row": np.arange(len(delta))})
    expected = np.lexsort((keys, -delta))[:n]
    assert np.array_equal(worst.arrays["row"], expected)


def _library_scan(power, golden: Path):
    """The library's scan parts for the power example on a streamed golden set (no baseline: the quality sums
    are not needed here)."""
    from release_kit.config import ModelSpec
    from release_kit.models import load_model
    from release_kit.scale.batches import ScanPlan
    from release_kit.scale.source import ParquetSource

    spec = ModelSpec(name="power-forecast", task="regression", target="power_kw", features=pf.FEATURES)
    models = {"candidate": load_model("candidate", str(power["better"]), spec)}
    source = ParquetSource.resolve(str(golden))
    return source, ScanPlan(spec, {"candidate": tuple(pf.FEATURES)}, sample_rows=1_000, total_rows=source.rows()), models


def _every_stage_scan(power, golden_directory):
    """The library's scan parts with both models and every default stage's statistics over every row."""
    import dataclasses
    import itertools

    from release_kit.drift import Bins
    from release_kit.models import load_model
    from release_kit.paired import SliceBins

    source, plan, models = _library_scan(power, golden_directory / "golden")
    models["baseline"] = load_model("baseline", str(power["v1"]), plan.spec)
    first = pd.read_parquet(sorted((golden_directory / "golden").glob("*.parquet"))[0])
    columns = {name: first[name].to_numpy(np.float32) for name in pf.FEATURES}
    plan = dataclasses.replace(
        plan, features={"candidate": tuple(pf.FEATURES), "baseline": tuple(pf.FEATURES)}, worst_rows=10,
        drift_bins={n: Bins.of(v.astype(np.float64), 10) for n, v in columns.items()},
        slice_bins={n: SliceBins.of(n, v, 5) for n, v in columns.items()},
        slice_pairs=tuple(itertools.combinations(pf.FEATURES[:3], 2)))
    return source, plan, models


def test_a_batch_summarized_in_parts_gives_the_whole_batch_numbers(power, golden_directory):
    """summarize_batch works through a batch in cache-sized parts: any part size gives the numbers of the
    batch summarized at once (counts equal, sums to rounding), excluded rows counted once."""
    from unittest import mock

    import pyarrow as pa

    from release_kit.scale import batches

    source, plan, models = _every_stage_scan(power, golden_directory)
    batch = next(iter(source.batches(plan.columns, 10_000)))
    frame = batch.to_pandas()
    frame.loc[[3, 5_000, 9_999], pf.FEATURES[1]] = np.nan  # three rows excluded, in different parts
    scored = batches.score_batch(plan, models, pa.Table.from_pandas(frame))
    with mock.patch.object(batches, "SUMMARY_PART_ROWS", 10**9):
        whole = batches.summarize_batch(plan, scored)
    with mock.patch.object(batches, "SUMMARY_PART_ROWS", 1_024):
        parts = batches.summarize_batch(plan, scored)
    assert (parts.rows, parts.excluded_rows, parts.excluded) == (whole.rows, whole.excluded_rows, whole.excluded) == (10_000, 3, {pf.FEATURES[1]: 3})
    assert parts.counts == whole.counts and parts.used_rows == 9_997
    for metric, moments in whole.quality.items():
        assert parts.quality[metric].n == moments.n == 9_997
        np.testing.assert_allclose(parts.quality[metric].outer, moments.outer, rtol=1e-12)
    for name, counts in whole.drift.items():
        assert np.array_equal(parts.drift[name], counts)
    for name, (_, sums) in whole.slices.items():
        np.testing.assert_allclose(parts.slices[name][1], sums, rtol=1e-12, atol=1e-12)
    for pair, table in whole.slice_pairs.items():
        np.testing.assert_allclose(parts.slice_pairs[pair], table, rtol=1e-12, atol=1e-12)
    assert np.array_equal(parts.changes.sketch.positive, whole.changes.sketch.positive)
    assert np.array_equal(parts.changes.worst.keys, whole.changes.worst.keys)
    assert np.array_equal(parts.sample.ordered()["target"], whole.sample.ordered()["target"])


def test_the_overlapped_local_scan_equals_its_batches_reduced_one_by_one(power, golden_directory):
    """run_local summarizes a batch while the models score the next: its numbers (every default stage's
    statistics) are exactly those of each batch reduced alone and merged in order; torch's thread count,
    Python's GIL switch interval and the frozen objects (all changed during the scan) are restored after, and
    an error in a batch still ends the scan with that error."""
    import sys

    import torch

    from release_kit.errors import InputError
    from release_kit.scale.batches import reduce_batch
    from release_kit.scale.engines import SCAN_SWITCH_INTERVAL, run_local

    source, plan, models = _every_stage_scan(power, golden_directory)
    worker_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the scan spares the helper a core: one thread fewer, whatever this worker has
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    during, frozen = [], []
    try:
        overlapped = run_local(source, plan, models, chunk_rows=4_000,
                               progress=lambda *_: (during.append((torch.get_num_threads(), sys.getswitchinterval())),
                                                    frozen.append(gc.get_freeze_count())))
    finally:
        torch.set_num_threads(worker_threads)
    assert threads == 2 and worker_threads == torch.get_num_threads() and sys.getswitchinterval() == interval
    assert min(frozen) > 10_000 and gc.get_freeze_count() == 0  # torch's objects and the rest, thawed after
    assert during and {t for t, _ in during} == {1}
    during = [i for _, i in during]
    assert during and during == pytest.approx([min(interval, SCAN_SWITCH_INTERVAL)] * len(during))  # kept in µs
    one_by_one = None
    for batch in source.batches(plan.columns, 4_000):
        summary = reduce_batch(plan, models, batch)
        one_by_one = summary if one_by_one is None else one_by_one.merge(summary)
    assert overlapped.rows == one_by_one.rows == 30_000
    for metric, moments in one_by_one.quality.items():
        assert np.array_equal(overlapped.quality[metric].outer, moments.outer), metric
    for name, counts in one_by_one.drift.items():
        assert np.array_equal(overlapped.drift[name], counts) and counts.sum() == 30_000
    for name, (_, sums) in one_by_one.slices.items():
        assert np.array_equal(overlapped.slices[name][1], sums)
    for pair, table in one_by_one.slice_pairs.items():
        assert np.array_equal(overlapped.slice_pairs[pair], table)
    assert np.array_equal(overlapped.changes.worst.keys, one_by_one.changes.worst.keys)
    assert np.array_equal(overlapped.sample.ordered()["target"], one_by_one.sample.ordered()["target"])

    module, calls = models["candidate"].module, []

    def failing(x):  # the third batch's model call fails: the scan ends with its error, threads restored
        calls.append(len(x))
        if len(calls) == 3:
            raise RuntimeError("broke on batch 3")
        return module(x)

    torch.set_num_threads(2)
    try:
        with pytest.raises(InputError, match="candidate model .* failed on input of shape .*: broke on batch 3"):
            run_local(source, plan, {**models, "candidate": dataclasses.replace(models["candidate"], module=failing)}, chunk_rows=4_000)
        assert torch.get_num_threads() == 2 and sys.getswitchinterval() == interval
    finally:
        torch.set_num_threads(worker_threads)


@pytest.mark.parametrize("slower", ["models", "statistics"])
def test_the_local_scan_reads_on_its_helper_thread_until_the_models_wait_for_it(power, golden_directory, slower):
    """Two threads scan while the helper (read, prepare, summarize) costs less CPU than the models; when it
    costs more, a third thread takes over the reading, one batch ahead. The numbers are the same either way."""
    import threading
    from unittest import mock

    from release_kit.scale import engines

    source, plan, models = _every_stage_scan(power, golden_directory)
    plain = engines.run_local(source, plan, models, chunk_rows=1_000)

    def slowed(function):  # 30 ms more CPU per call (the engine compares CPU times, not waits)
        def slow(*args, **kwargs):
            spinning = time.thread_time()
            while time.thread_time() - spinning < 0.03:
                pass
            return function(*args, **kwargs)
        return slow

    running = []
    with mock.patch.object(engines, "run_models" if slower == "models" else "summarize_batch",
                           slowed(engines.run_models if slower == "models" else engines.summarize_batch)):
        summary = engines.run_local(source, plan, models, chunk_rows=1_000,
                                    progress=lambda *_: running.append({t.name.split("_")[0] for t in threading.enumerate()}))
    assert len(running) == 30  # files of 10,000 rows: 10 batches each
    assert all("release-kit-scan" in names for names in running)
    reading = ["release-kit-read" in names for names in running]
    if slower == "models":
        assert not any(reading)
    else:  # decided once 5 + 8 batches were scored (progress comes a batch behind), then read ahead to the end
        assert not any(reading[:11]) and any(reading[11:])
    assert not [t for t in threading.enumerate() if t.name.startswith(("release-kit-read", "release-kit-scan"))]
    for metric, moments in plain.quality.items():
        assert np.array_equal(summary.quality[metric].outer, moments.outer), metric
    assert np.array_equal(summary.sample.ordered()["target"], plain.sample.ordered()["target"])


def test_a_later_batch_that_cannot_be_prepared_ends_the_local_scan_with_its_error(power, golden_directory, tmp_path):
    """The next batch is read and checked on a helper thread while the models score the last one: a bad
    batch there (a column of text in the third file) ends the scan with that batch's one-line error, and no
    thread of the scan is left running."""
    import threading

    from release_kit.errors import InputError
    from release_kit.scale.engines import run_local

    source, plan, models = _every_stage_scan(power, golden_directory)
    files = sorted((golden_directory / "golden").glob("*.parquet"))
    (tmp_path / "golden").mkdir()
    for index, file in enumerate(files):
        frame = pd.read_parquet(file)
        if index == 2:
            frame[pf.FEATURES[0]] = frame[pf.FEATURES[0]].map("{:.3f}".format)
        frame.to_parquet(tmp_path / "golden" / file.name)
    source = type(source).resolve(str(tmp_path / "golden"))
    progress = []
    with pytest.raises(InputError, match=f"golden column '{pf.FEATURES[0]}' is not numeric"):
        run_local(source, plan, models, chunk_rows=4_000, progress=lambda rows, total, _: progress.append((rows, total)))
    assert progress and progress[-1][0] <= 20_000  # the batches before it were summarized
    assert {total for _, total in progress} == {source.rows()}
    assert not [t for t in threading.enumerate() if t.name.startswith(("release-kit-read", "release-kit-scan"))]


def test_the_ray_engine_asked_for_cuda_on_a_cluster_without_gpus_is_bad_input(power, golden_directory, shared_ray):
    from release_kit.errors import InputError
    from release_kit.scale.engines import run_ray

    source, plan, models = _library_scan(power, golden_directory / "golden")
    with pytest.raises(InputError, match="the Ray cluster has no GPU"):
        run_ray(source, plan, models, chunk_rows=10_000, workers=1, device="cuda")


class _BatchSize(torch.nn.Module):
    """Predicts its input's row count: a model whose every output shows the batch it was scored in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), float(x.shape[0]))


def test_ray_actors_score_the_local_engines_batches_whatever_ray_datas_block_size(tmp_path, power, golden_directory, shared_ray):
    """Ray Data joins and slices a task's output rows to fit its block size (128 MiB by default, less than a
    1,000,000-row batch of 17 float64 columns) and bundles an actor's rows where they fall: batches of many
    rows reached the actors cut elsewhere than the local engine's. With a 50 kB block size (7,000-row
    batches of ~400 KB; seen then: batches of 7,000, 7,000, 196, 846, ...), every row is still scored in the
    batch the local engine scores it in."""
    import ray.data

    from conftest import save_scripted
    from release_kit.models import load_model
    from release_kit.scale.engines import run_local, run_ray

    source, plan, _ = _library_scan(power, golden_directory / "golden")
    models = {"candidate": load_model("candidate", str(save_scripted(_BatchSize(), tmp_path / "size.pt")), plan.spec)}
    context = ray.data.DataContext.get_current()
    default, context.target_max_block_size = context.target_max_block_size, 50_000
    try:
        distributed = run_ray(source, plan, models, chunk_rows=7_000)
    finally:
        context.target_max_block_size = default
    local = run_local(source, plan, models, chunk_rows=7_000)
    scored_in = local.sample.ordered()["candidate"]
    assert set(scored_in.tolist()) == {7_000.0, 2_000.0}  # 30,000 rows: four whole batches and 2,000
    np.testing.assert_array_equal(distributed.sample.ordered()["candidate"], scored_in)


def test_a_model_file_changed_after_loading_is_not_what_the_ray_actors_score(tmp_path, power, golden_directory, shared_ray):
    """The actors load the bytes the driver ships, re-read from the file: a file replaced after the run loaded
    (and hashed) it is refused, so the report never names one model while the actors scored another."""
    import shutil

    from release_kit.errors import InputError
    from release_kit.models import load_model
    from release_kit.scale.engines import run_ray

    source, plan, _ = _library_scan(power, golden_directory / "golden")
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    models = {"candidate": load_model("candidate", str(tmp_path / "candidate.pt"), plan.spec)}
    shutil.copy(power["night"], tmp_path / "candidate.pt")
    with pytest.raises(InputError, match=r"^candidate model .*candidate\.pt changed while the run read it \(sha256 "):
        run_ray(source, plan, models, chunk_rows=10_000)


@pytest.mark.slow  # starts and stops a Ray of its own in a subprocess: ~30 s on two cores
def test_one_ray_worker_gives_the_local_numbers_instead_of_waiting_forever(streamed_project, cli):
    """`ray_workers = 1` once started a one-CPU Ray whose actor left too little for the read tasks: the run
    waited forever (seen on a GPU machine, reproduced on CPU). Both gate on a prefix (--max-rows) that ends
    inside a file and inside a batch, and stdout is the JSON report alone. The Ray run is the CLI as users run
    it: every default stage, MLflow tracking on (the embedded store)."""
    pytest.importorskip("ray")
    from mlflow import MlflowClient

    from conftest import run_cli

    local = run(cli, "--engine", "local", "--stage", "quality", "--max-rows", "12345")
    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("[run]\n", "[run]\nray_workers = 1\n").replace("[mlflow]\nenabled = false\n", ""))
    assert "[mlflow]" not in config.read_text()
    result = run_cli(streamed_project, "check", "--candidate", "candidate.pt", "--engine", "ray",
                     "--max-rows", "12345", "--report", "ray.json", "--format", "json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == json.loads((streamed_project / "ray.json").read_text())
    assert local["data"]["golden"]["rows"] == json.loads(result.stdout)["data"]["golden"]["rows"] == 12_345
    # Ray's notes are not the user's: no INFO lines (its plan, timings), no deprecation of what release-kit
    # calls, no note that progress bars are off or that the set has fewer blocks than actors.
    noise = [line for line in result.stderr.splitlines()
             if " INFO " in line or "Warning:" in line or "Progress bars" in line or "concurrent actors" in line]
    assert not noise, result.stderr
    distributed = json.loads((streamed_project / "ray.json").read_text())
    for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
        assert math.isclose(metric(local, "mae")[key], metric(distributed, "mae")[key], rel_tol=1e-9, abs_tol=1e-12), key
    assert {c["stage"] for c in distributed["checks"]} == {"quality", "outliers", "performance", "data"}
    assert distributed["environment"]["golden_read"] == "ray"
    logged = MlflowClient(tracking_uri=f"sqlite:///{streamed_project / '.release-kit' / 'mlflow.db'}").get_run(distributed["mlflow"]["run_id"])
    assert logged.data.metrics["quality.mae.candidate"] == pytest.approx(metric(distributed, "mae")["candidate"], rel=1e-6)


def test_the_ray_actors_leave_cpus_to_the_read_tasks():
    """A local Ray started by the run: a CPU per core for the actors, one more for the reads. A cluster: two
    thirds of its CPUs for the actors, the rest for read tasks side by side (one would feed only two or three
    scoring actors). ray_workers decides when set."""
    from release_kit.scale.engines import actor_pool_size

    assert actor_pool_size(3, None, local=True) == 2
    assert [actor_pool_size(cpus, None, local=False) for cpus in (1, 2, 3, 64, 96.5)] == [1, 1, 2, 42, 64]
    assert actor_pool_size(64, 5, local=False) == actor_pool_size(3, 5, local=True) == 5


def test_a_ray_cluster_too_small_for_the_actors_and_the_reads_is_bad_input(power, golden_directory):
    ray = pytest.importorskip("ray")
    from release_kit.errors import InputError
    from release_kit.scale.engines import run_ray

    source, plan, models = _library_scan(power, golden_directory / "golden")
    if ray.is_initialized():  # the module's shared one
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # a cluster of one CPU, already running
    try:
        with pytest.raises(InputError, match=r"the Ray cluster has 1 CPU\(s\): 1 actor\(s\) and the read tasks need at least 1.1"):
            run_ray(source, plan, models, chunk_rows=10_000)
    finally:
        ray.shutdown()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_ray_actors_on_the_gpu_give_the_local_numbers(power, golden_directory):
    pytest.importorskip("ray")
    from release_kit.scale.engines import run_local, run_ray

    source, plan, models = _library_scan(power, golden_directory / "golden")
    local = run_local(source, plan, models, chunk_rows=10_000)
    on_gpu = run_ray(source, plan, models, chunk_rows=10_000, workers=1, device="auto")
    assert on_gpu.rows == local.rows
    # float32 arithmetic on another device: equal to its rounding (seen on an H100: 1.5e-8 apart near zero).
    np.testing.assert_allclose(on_gpu.sample.ordered()["candidate"], local.sample.ordered()["candidate"], rtol=1e-5, atol=1e-6)


def test_a_streamed_scan_shows_its_rows_of_the_total_as_a_bar_or_as_log_lines():
    """On a terminal the rows go into the progress bar; in a CI log (no terminal) a long scan prints one line
    every LOG_EVERY_S seconds of its own clock, and a short one prints nothing."""
    import io

    from rich.console import Console

    from release_kit.render import ProgressListener

    log = io.StringIO()
    listener = ProgressListener(Console(file=log, force_terminal=False, width=200))
    for rows, seconds in ((1_000_000, 4.0), (2_000_000, 10.5), (3_000_000, 12.0), (4_000_000, 20.6), (5_000_000, 21.0)):
        listener.rows(rows, 50_000_000, seconds)
    listener.close()
    assert log.getvalue().splitlines() == ["release-kit: golden rows: 2,000,000 of 50,000,000 (190,476 rows/s)",
                                           "release-kit: golden rows: 4,000,000 of 50,000,000 (194,175 rows/s)"]
    terminal = io.StringIO()
    listener = ProgressListener(Console(file=terminal, force_terminal=True, width=200))
    listener.rows(2_000_000, 50_000_000, 10.5)
    task = listener.progress.tasks[0]
    assert (task.completed, task.total, task.description) == (2_000_000, 50_000_000, "golden rows: 2,000,000 of 50,000,000 (190,476 rows/s)")
    listener.close()
    # In an 80-column terminal the line says its counts whole, once (a column of counts beside them was cut).
    narrow = io.StringIO()
    listener = ProgressListener(Console(file=narrow, force_terminal=True, width=80))
    listener.rows(12_000_000, 100_000_000, 10.0)
    listener.progress.refresh()
    assert "golden rows: 12,000,000 of 100,000,000 (1,200,000 rows/s)" in narrow.getvalue() and "…" not in narrow.getvalue()
    # Then the checks: their line replaces the rows' and counts them the same way.
    from release_kit.report import CheckResult, Status

    listener.started(3)
    listener.finished(CheckResult("quality", "mae", Status.PASS, "mae"))
    assert [task.description for task in listener.progress.tasks] == ["1 of 3: quality::mae"]
    listener.close()


def test_scan_sizes_fit_the_memory_available():
    """The batch size a scan takes: [run] chunk_rows when the scan fits; its default lowered to fit (not below
    the floor); an explicit value, or a sample that does not fit, refused naming the key and a value that fits.
    The sample's size is never changed (the checks on it would decide differently on another machine)."""
    from release_kit.errors import InputError
    from release_kit.scale.sizing import BATCH_ALIGNMENT_ROWS, BATCH_COPIES, HEADROOM_BYTES, MIN_CHUNK_ROWS, SAMPLE_COPIES, ScanRowBytes, chunk_rows_that_fit

    row = ScanRowBytes(batch=1000, sample=500)
    sample = 100_000 * 500 * SAMPLE_COPIES

    def fit(available, chunk_rows=1_000_000, chunk_rows_set=False, sample_rows=100_000, total_rows=10**8, batch_holders=1):
        return chunk_rows_that_fit("golden", chunk_rows=chunk_rows, chunk_rows_set=chunk_rows_set, sample_rows=sample_rows,
                                   total_rows=total_rows, row_bytes=row, available=available, batch_holders=batch_holders)

    assert fit(None) == 1_000_000  # no figure for the memory: as configured
    plenty = HEADROOM_BYTES + sample + 1_000_000 * 1000 * BATCH_COPIES
    assert fit(plenty) == 1_000_000
    # The largest multiple of 64 rows that fits (a lowered batch scores each row as the default's does).
    assert fit(plenty - 1) == 999_936 and 999_936 % BATCH_ALIGNMENT_ROWS == 0
    assert fit(HEADROOM_BYTES + sample + 300_000 * 1000 * BATCH_COPIES) == 299_968
    assert fit(HEADROOM_BYTES + sample + 1, batch_holders=0) == 1_000_000  # a cluster's workers hold the batches
    assert fit(HEADROOM_BYTES + sample + 300_032 * 1000 * BATCH_COPIES, batch_holders=2) == 150_016  # two local Ray actors
    # A set smaller than a batch (and than the sample) is held whole: only its rows count.
    assert fit(HEADROOM_BYTES + 50_000 * (500 * SAMPLE_COPIES + 1000 * BATCH_COPIES), total_rows=50_000, chunk_rows_set=True) == 1_000_000
    with pytest.raises(InputError) as explicit:
        fit(HEADROOM_BYTES + sample + 300_000 * 1000 * BATCH_COPIES, chunk_rows_set=True)
    assert str(explicit.value).endswith("set [run] chunk_rows = 300000 or fewer")
    floor = HEADROOM_BYTES + sample + (MIN_CHUNK_ROWS - 1) * 1000 * BATCH_COPIES
    with pytest.raises(InputError) as small:
        fit(floor)
    fewer = math.floor((floor - HEADROOM_BYTES - MIN_CHUNK_ROWS * 1000 * BATCH_COPIES) / (500 * SAMPLE_COPIES))
    assert str(small.value).startswith(f"golden: streaming it in batches of {MIN_CHUNK_ROWS:,} rows of ~1,000 bytes with a sample of 100,000 rows")
    assert str(small.value).endswith(f"set [run] sample_rows = {fewer} or fewer") and 0 < fewer < 100_000
    assert fit(floor, sample_rows=fewer) == MIN_CHUNK_ROWS  # the advice fits
    with pytest.raises(InputError, match="run it on a machine with more memory, or with fewer columns"):
        fit(HEADROOM_BYTES)


def test_a_wide_golden_set_scans_in_batches_that_fit_or_is_refused_naming_the_key(streamed_project, power, golden_directory, cli, monkeypatch):
    """Through check, with the memory available set low (this machine's is what it is; the golden rows are
    few): the default batch size is lowered to fit and gives the same numbers; a sample that does not fit is
    refused (exit 2, one line) with a sample_rows that fits, and with that value the run goes through; so is
    an explicit chunk_rows that does not fit."""
    import release_kit.environment
    from release_kit.scale import engines, sizing

    generous = run(cli)
    monkeypatch.setattr(sizing, "MIN_CHUNK_ROWS", 1000)  # the golden set has 30,000 rows, not millions
    scanned = []
    local = engines.run_local
    monkeypatch.setattr(engines, "run_local", lambda *args, **kwargs: scanned.append(kwargs["chunk_rows"]) or local(*args, **kwargs))

    def configured(run_section: str) -> None:
        text = (streamed_project / "release-kit.toml").read_text()
        start = text.index("[run]")
        end = text.index("\n[", start) + 1  # the next table
        (streamed_project / "release-kit.toml").write_text(text[:start] + "[run]\n" + run_section + "\n\n" + text[end:])

    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: sizing.HEADROOM_BYTES + 3 * 2**20)
    configured("sample_rows = 5000")  # chunk_rows left at its default
    # As users run it: every stage, MLflow tracking on (the embedded store under the project).
    config = streamed_project / "release-kit.toml"
    config.write_text(config.read_text().replace("[mlflow]\nenabled = false\n", ""))
    lowered = run(cli)
    assert 1000 <= scanned[-1] < 30_000
    assert lowered["mlflow"]["run_id"] and {c["stage"] for c in lowered["checks"]} >= {"quality", "outliers", "performance", "data"}
    assert lowered["verdict"] == generous["verdict"]
    for name in ("mae", "rmse", "r2"):
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert metric(lowered, name)[key] == pytest.approx(metric(generous, name)[key], rel=1e-9, abs=1e-12), (name, key)

    configured("chunk_rows = 20000\nsample_rows = 5000")
    refused = cli("check", "--candidate", "candidate.pt", "--report", "report.json")
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.output[-2000:]
    assert "more than the memory available (259.0 MiB): set [run] chunk_rows = " in refused.stderr
    assert not (streamed_project / "report.json").exists()
    configured(f"chunk_rows = {refused.stderr.split('chunk_rows = ')[1].split()[0]}\nsample_rows = 5000")
    run(cli)

    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: sizing.HEADROOM_BYTES + 2**20)
    configured("")  # every default: a sample of up to 1,000,000 rows, here all 30,000
    refused = cli("check", "--candidate", "candidate.pt", "--report", "report.json")
    assert refused.exit_code == 2, refused.output[-2000:]
    line = refused.stderr.strip()
    assert line.startswith(f"release-kit: error: {golden_directory / 'golden'}: streaming it in batches of 1,000 rows") and "\n" not in line
    assert "with a sample of 30,000 rows needs" in line and "set [run] sample_rows = " in line
    configured(f"sample_rows = {line.split('sample_rows = ')[1].split()[0]}")
    assert run(cli)["verdict"] in ("pass", "block")


def test_one_parquet_file_within_a_batch_that_would_not_fit_read_whole_is_streamed(streamed_project, power, golden_directory, cli, monkeypatch):
    """A Parquet file of fewer rows than chunk_rows is read whole, unless that would not fit (a wide table):
    then it is streamed, with the same numbers, instead of being refused. (The memory available is set below
    the file's ~1.7 MB read whole; the scan's headroom is set to none, its floor to 1,000-row batches.)"""
    import release_kit.environment
    from release_kit.scale import sizing

    single = streamed_project / "golden.parquet"
    pd.concat([pd.read_parquet(file) for file in sorted((golden_directory / "golden").glob("*.parquet"))]).to_parquet(single)
    configure(streamed_project, power, single, "")
    text = (streamed_project / "release-kit.toml").read_text().replace("chunk_rows = 4000\nsample_rows = 5000", "sample_rows = 2000")
    (streamed_project / "release-kit.toml").write_text(text)
    whole = run(cli)
    assert whole["environment"]["golden_read"] == "whole"
    monkeypatch.setattr(sizing, "HEADROOM_BYTES", 0)
    monkeypatch.setattr(sizing, "MIN_CHUNK_ROWS", 1000)
    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: 1_600_000)
    streamed = run(cli)
    assert streamed["environment"]["golden_read"] == "local" and streamed["data"]["golden"]["rows"] == 30_000
    for name in ("mae", "rmse", "r2"):
        for key in ("candidate", "baseline", "delta", "ci_low", "ci_high"):
            assert metric(streamed, name)[key] == pytest.approx(metric(whole, name)[key], rel=1e-9, abs=1e-12), (name, key)


def test_a_classifier_of_many_classes_is_sized_by_its_outputs(tmp_path, cli, monkeypatch):
    """Each model's outputs are held per row in a batch and in the sample, as float64: 400 classes are 6.4 KB
    a row for the two models, far more than three features. They are counted from a call on the set's first
    rows (no [model] classes names them here), so a sample that would not fit is refused with a sample_rows
    that fits, and with that value the run goes through. (The memory available is set low.)"""
    import release_kit.environment
    from conftest import TinyClassifier, save_scripted
    from release_kit.scale import sizing

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for name in ("baseline.pt", "candidate.pt"):
        save_scripted(TinyClassifier(3, 400, "none"), tmp_path / name)
    rng = np.random.default_rng(0)
    (tmp_path / "golden").mkdir()
    for index in range(2):
        frame = pd.DataFrame({"a": rng.normal(size=2_000), "b": rng.normal(size=2_000), "c": rng.normal(size=2_000),
                              "label": rng.integers(0, 400, 2_000)})
        frame.to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    (tmp_path / "release-kit.toml").write_text(CLASSIFIER.format(golden="golden").replace("sample_rows = 6000\n", ""))
    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: sizing.HEADROOM_BYTES + 20 * 2**20)
    refused = cli("check", "--candidate", "candidate.pt", "--report", "report.json")
    assert refused.exit_code == 2, refused.output[-2000:]
    line = refused.stderr.strip()
    assert "\n" not in line and "with a sample of 4,000 rows needs" in line, line
    # Here neither the explicit batches (5,000 rows) nor the sample fits beside the other: both are named.
    advice = line.partition("set [run] ")[2].removesuffix(" or fewer")
    values = dict(part.split(" = ") for part in advice.split(" and "))
    assert set(values) == {"chunk_rows", "sample_rows"} and 100 <= int(values["sample_rows"]) < 4_000, line
    text = (tmp_path / "release-kit.toml").read_text().replace("chunk_rows = 5000\n", "".join(f"{k} = {v}\n" for k, v in values.items()))
    (tmp_path / "release-kit.toml").write_text(text)
    assert run(cli)["data"]["golden"]["rows"] == 4_000


def _claim_rows(path: Path, actual: int, claimed: int, *, row_group_too: bool) -> None:
    """Rewrite a one-row-group Parquet file's footer to count ``claimed`` rows (its data holding ``actual``):
    the file's count, and with ``row_group_too`` its row group's. Thrift's compact encoding: field 3, an
    i64 after field 2, is the byte 0x16 then the zigzag varint; the count's width must not change."""
    import pyarrow.parquet as pq

    def varint(value: int) -> bytes:
        value, out = value << 1, bytearray()
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes([*out, value])

    old, new = b"\x16" + varint(actual), b"\x16" + varint(claimed)
    assert len(old) == len(new)
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    footer = bytearray(data[-8 - length : -8])
    places = [i for i in range(len(footer)) if footer[i : i + len(old)] == old]
    for place in places[:1] + (places[-1:] if row_group_too else []):  # the file's count first, the row group's last
        footer[place : place + len(new)] = new
    path.write_bytes(data[: -8 - length] + bytes(footer) + data[-8:])
    metadata = pq.read_metadata(path)
    assert (metadata.num_rows, metadata.row_group(0).num_rows) == (claimed, claimed if row_group_too else actual)


@pytest.mark.parametrize("row_group_too", [False, True])
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_parquet_footer_that_miscounts_its_rows_is_bad_input(tmp_path, power, cli, monkeypatch, engine, row_group_too, request):
    """Every engine checks the rows it scanned against the files' footers, and a difference is an internal
    error (exit 4): a row left out or read twice is the engine's fault. A footer that counts rows its data
    does not hold is the file's: exit 2, one line naming it. With the row groups' counts summing to another
    number than the file's, before any batch is read; with a row group that counts more rows than its pages
    hold, when its pages end."""
    import shutil

    if engine == "ray":
        request.getfixturevalue("shared_ray")
    (tmp_path / "golden").mkdir()
    pf.make_dataset(1_000, seed=5).to_parquet(tmp_path / "golden" / "part-0.parquet")
    pf.make_dataset(1_000, seed=6).to_parquet(tmp_path / "golden" / "part-1.parquet")
    _claim_rows(tmp_path / "golden" / "part-1.parquet", 1_000, 1_001, row_group_too=row_group_too)
    shutil.copy(power["better"], tmp_path / "candidate.pt")
    configure(tmp_path, power, tmp_path / "golden", '[gate]\nstages = ["quality"]\n')
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--candidate", "candidate.pt", "--engine", engine, "--report", "report.json")
    assert result.exit_code == 2, result.output[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("release-kit:")]
    expected = ("its footer counts 1,001 rows but its data ends at row 1,000" if row_group_too
                else "its footer says 1,001 rows but its row groups hold 1,000")
    assert len(lines) == 1 and f"golden/part-1.parquet: {expected}: a corrupt or tampered Parquet file" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "report.json").exists()
