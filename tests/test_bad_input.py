"""Every bad input: exit 2, one line naming the problem, no traceback, no report written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def assert_input_error(result, project, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("release-kit: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (project.root / "report.json").exists()


def check(cli, *args):
    return cli("check", *args, "--report", "report.json")


def test_missing_config_file(project, power, cli):
    assert_input_error(check(cli, "--config", "nope.toml", "--candidate", power["better"]), project, "nope.toml")


def test_no_config_anywhere(project, power, cli):
    (project.root / "release-kit.toml").unlink()
    assert_input_error(check(cli, "--candidate", power["better"]), project, "no release-kit.toml")


def test_invalid_toml(project, power, cli):
    project.write("release-kit.toml", "[model\nname = 1\n")
    assert_input_error(check(cli, "--candidate", power["better"]), project, "invalid TOML")


def test_unknown_config_key_is_named(project, power, cli):
    project.config("[quality]\ntolerence = { mae = 0.1 }\n")
    assert_input_error(check(cli, "--candidate", power["better"]), project, "unknown config key 'quality.tolerence'")


def test_unknown_nested_key_is_named(project, power, cli):
    text = (project.root / "release-kit.toml").read_text().replace("bounds = {", "bounds = { mn = 1, ")
    project.write("release-kit.toml", text)
    assert_input_error(check(cli, "--candidate", power["better"]), project, "'model.bounds.mn'")


def test_missing_required_key(project, power, cli):
    text = (project.root / "release-kit.toml").read_text().replace('target = "power_kw"\n', "")
    project.write("release-kit.toml", text)
    assert_input_error(check(cli, "--candidate", power["better"]), project, "missing required config key 'model.target'")


@pytest.mark.parametrize(("section", "line", "key"), [
    ("performance", "threads = 100000", "performance.threads"),  # torch.set_num_threads crashed the process
    ("performance", "batch_sizes = [100000000000000000000]", "performance.batch_sizes.0"),  # exit 4
    ("quality", "seed = -1", "quality.seed"),  # numpy refused it in two checks: blocked (exit 1)
    ("gate", "model_timeout_seconds = 1e308", "gate.model_timeout_seconds"),  # the watchdog's thread failed
    ("run", "chunk_rows = 100000000000000000000", "run.chunk_rows"),  # exit 4 streamed
    ("performance", "resamples = 100000000000000000000", "performance.resamples"),  # numpy refused it: blocked (exit 1)
])
def test_a_config_number_beyond_what_can_run_is_named(project, power, cli, section, line, key):
    text = (project.root / "release-kit.toml").read_text()
    project.write("release-kit.toml", text.replace(f"[{section}]\n", f"[{section}]\n{line}\n") if f"[{section}]\n" in text
                  else text + f"\n[{section}]\n{line}\n")
    assert_input_error(check(cli, "--candidate", power["better"]), project, f"config key '{key}'")


@pytest.mark.parametrize(("section", "line", "key"), [
    ("run", 'chunk_rows = "4000"', "run.chunk_rows"),  # a quoted number was read as one
    ("quality", 'seed = "7"', "quality.seed"),
    ("performance", "threads = 2.0", "performance.threads"),  # a float for a count was truncated silently
    ("run", "chunk_rows = true", "run.chunk_rows"),  # a boolean was read as 1 row per batch
])
def test_a_config_value_of_the_wrong_toml_type_is_named(project, power, cli, section, line, key):
    # TOML types its values; a string or float where the schema wants an integer is a typo to report, not to coerce.
    text = (project.root / "release-kit.toml").read_text()
    project.write("release-kit.toml", text.replace(f"[{section}]\n", f"[{section}]\n{line}\n") if f"[{section}]\n" in text
                  else text + f"\n[{section}]\n{line}\n")
    assert_input_error(check(cli, "--candidate", power["better"]), project, f"config key '{key}'", "integer")


def test_a_benchmark_batch_larger_than_memory_is_refused_before_it_is_built(project, power, cli, monkeypatch):
    import release_kit.environment

    project.config('[gate]\nstages = ["performance"]\n[performance]\nbatch_sizes = [1, 100000]\n')
    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: 1 << 20)  # 1 MiB left
    assert_input_error(check(cli, "--candidate", power["better"], "--baseline", power["v1"]), project,
                       "[performance] batch_sizes: a batch of 100,000 samples",
                       "more than half the memory available")


def test_missing_candidate_file(project, cli):
    assert_input_error(check(cli, "--candidate", "models/nope.pt"), project, "candidate model file not found", "nope.pt")


def test_missing_baseline_file(project, power, cli):
    assert_input_error(check(cli, "--candidate", power["better"], "--baseline", "gone.pt2"), project, "baseline", "gone.pt2")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-0 files")
def test_unreadable_model_file(project, power, cli):
    path = project.write("locked.pt", "x")
    path.chmod(0)
    assert_input_error(check(cli, "--candidate", path), project, "locked.pt")


def test_model_path_is_a_directory(project, cli):
    (project.root / "models").mkdir()
    assert_input_error(check(cli, "--candidate", "models"), project, "directory")


def test_corrupt_model_file(project, power, cli):
    data = power["better"].read_bytes()
    path = project.root / "corrupt.pt2"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(check(cli, "--candidate", path), project, "corrupt.pt2")


def test_garbage_model_file(project, cli):
    path = project.write("garbage.bin", "definitely not a model")
    assert_input_error(check(cli, "--candidate", path), project, "garbage.bin")


def test_pickled_model_is_refused_without_allow_pickle(project, power, cli):
    import power_forecast as pf

    path = project.root / "pickled.pt"
    torch.save(pf.baseline_factory(), path)
    assert_input_error(check(cli, "--candidate", path), project, "pickled", "--allow-pickle")
    allowed = cli("check", "--candidate", path, "--allow-pickle")
    assert allowed.exit_code in (0, 1), allowed.output  # it loads and is judged


def test_safetensors_without_factory(project, power, cli):
    assert_input_error(check(cli, "--candidate", power["v1_safetensors"]), project, "factory")


def test_safetensors_with_wrong_factory(project, power, cli):
    project.config('[candidate]\nfactory = "power_forecast:nope"\n')
    assert_input_error(check(cli, "--candidate", power["v1_safetensors"]), project, "power_forecast:nope")


def test_safetensors_that_do_not_fit_the_factory_name_the_keys(project, power, cli):
    """torch's reasons (which keys are missing, unexpected or of another size) come on the lines after its
    first; the one line said only "Error(s) in loading state_dict for PowerMLP:"."""
    from safetensors.torch import load_file, save_file

    project.config('[candidate]\nfactory = "power_forecast:baseline_factory"\n')
    weights = load_file(str(power["v1_safetensors"]))
    missing, other = sorted(weights)[0], sorted(weights)[-1]
    save_file({k: v for k, v in weights.items() if k != missing}, str(project.root / "missing.safetensors"))
    assert_input_error(check(cli, "--candidate", "missing.safetensors"), project, "do not fit factory power_forecast:baseline_factory",
                       f'Missing key(s) in state_dict: "{missing}"')
    save_file({**weights, other: torch.zeros(7, 3)}, str(project.root / "resized.safetensors"))
    assert_input_error(check(cli, "--candidate", "resized.safetensors"), project, f"size mismatch for {other}: copying a param with shape torch.Size([7, 3])")


def test_model_input_width_differs_from_features(project, power, cli):
    narrow = torch.nn.Sequential(torch.nn.Linear(4, 1))
    path = project.root / "narrow.pt"
    torch.jit.save(torch.jit.script(narrow), str(path))
    assert_input_error(check(cli, "--candidate", path), project, "narrow.pt", "shape (3000, 5)")


def test_output_shape_does_not_fit_regression(project, cli):
    wide = torch.nn.Sequential(torch.nn.Linear(5, 3))
    path = project.root / "wide.pt"
    torch.jit.save(torch.jit.script(wide), str(path))
    assert_input_error(check(cli, "--candidate", path), project, "output shape (N, 3)", "regression")


class ShortOnAPartialBatch(torch.nn.Module):
    """Right on full batches of 1,200 rows; a row short on the golden set's last, partial batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.sum(1)
        if x.shape[0] < 1200:
            return y[:-1]
        return y


class ScalarOnAPartialBatch(torch.nn.Module):
    """Predictions for full batches, a single number for the last, partial one (later outputs are checked by
    type and dtype alone: a 0-d tensor of the same dtype was an IndexError, exit 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 1200:
            return x.sum()
        return x.sum(1)


@pytest.mark.parametrize(("module", "needles"), [
    (ShortOnAPartialBatch, ("returned outputs of shape (599,) for input of shape (600, 5)", "not one row per sample")),
    (ScalarOnAPartialBatch, ("returned a single number (a 0-d tensor), not one prediction per row",)),
])
def test_a_later_model_call_that_returns_something_else(project, cli, module, needles):
    path = project.root / "later.pt"
    torch.jit.save(torch.jit.script(module()), str(path))
    project.config("""
        [inference]
        batch_size = 1200
    """)
    assert_input_error(check(cli, "--candidate", path), project, "candidate model", "later.pt", *needles)


def test_column_vector_output_counts_as_one_regression_output(project, power, cli):
    wide = torch.nn.Sequential(torch.nn.Linear(5, 1))
    path = project.root / "one.pt"
    torch.jit.save(torch.jit.script(wide), str(path))
    result = check(cli, "--candidate", path, "--baseline", power["v1"])
    assert result.exit_code in (0, 1)  # (N,1) and (N,) both mean one regression output


@pytest.mark.parametrize("layout", ["golden.csv", "directory"])
def test_bounds_listed_for_more_outputs_than_the_target_has(project, power, cli, layout):
    """``[[model.bounds]]`` names one range per output: two ranges for a one-column target is bad input, read
    whole or streamed. Streamed, it passed (exit 0): the contract applied the first range and its summary
    named both."""
    import pandas as pd

    text = (project.root / "release-kit.toml").read_text()
    bounds = next(line for line in text.splitlines() if line.startswith("bounds = "))
    project.write("release-kit.toml", text.replace(bounds, "bounds = [{ min = 0.0, max = 6.0 }, { min = 0.0, max = 1.0 }]"))
    golden = power["golden"]
    if layout == "directory":
        golden = project.root / "golden"
        golden.mkdir()
        pd.read_csv(power["golden"]).to_parquet(golden / "part-0.parquet")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project,
                       "[model] bounds lists 2 ranges but the target has 1 output(s)")


def test_empty_golden_set(project, power, cli):
    header = power["golden"].read_text().splitlines()[0]
    golden = project.write("empty.csv", header + "\n")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "empty.csv", "no rows")


def test_zero_byte_golden_file(project, power, cli):
    golden = project.write("zero.csv", "")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "zero.csv")


def test_missing_data_file(project, power, cli):
    assert_input_error(check(cli, "--candidate", power["better"], "--data", "nope.csv"), project, "nope.csv")


def test_unsupported_data_format(project, power, cli):
    golden = project.write("golden.json", "{}")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "golden.json", ".csv")


@pytest.mark.parametrize("column", ["irradiance", "power_kw"])
def test_missing_column(project, power, cli, column):
    import pandas as pd

    golden = project.root / "golden.csv"
    pd.read_csv(power["golden"]).drop(columns=[column]).to_csv(golden, index=False)
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, f"missing column(s): {column}")


@pytest.mark.parametrize("separator, named", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_separated_otherwise_says_so(project, power, cli, separator, named):
    """A European spreadsheet's export (``;`` and decimal commas) or a TSV: its header is one column."""
    import pandas as pd

    golden = project.root / "golden.csv"
    pd.read_csv(power["golden"]).to_csv(golden, index=False, sep=separator, decimal=",")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project,
                       "golden.csv: missing column(s): hour", f"not by {named}")


def test_repeated_column_name_in_a_csv_header(project, power, cli):
    """pandas reads ``a,a`` as columns a and a.1: which one is the target would be a guess."""
    lines = power["golden"].read_text().splitlines()
    golden = project.write("golden.csv", "\n".join([lines[0] + ",power_kw", *(line + ",0" for line in lines[1:])]) + "\n")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "golden.csv: column name(s) repeated: power_kw")


def assert_golden_rows_block(result, project, row: int, column: str) -> None:
    """Bad golden rows are a gate decision with a report (issue: Trust II), not an input error."""
    import json

    assert result.exit_code == 1, result.output
    report = json.loads((project.root / "report.json").read_text())
    checks = {f"{c['stage']}::{c['name']}": c for c in report["checks"]}
    rows = checks["data::golden_rows"]
    assert rows["status"] == "fail"
    assert rows["details"]["rows"] == [row] and rows["details"]["columns"] == {column: 1}
    assert f"rows {row}" in rows["summary"] and column in rows["summary"]
    assert "1 golden row(s) with NaN/inf or impossible values left out" in checks["quality::mae"]["summary"]
    assert report["data"]["golden"]["used_rows"] == report["data"]["golden"]["rows"] - 1
    assert report["bump"] is None and "data::golden_rows" in report["bump_reason"]


def test_nan_target(project, power, cli):
    import pandas as pd

    frame = pd.read_csv(power["golden"])
    frame.loc[7, "power_kw"] = float("nan")
    golden = project.root / "golden.parquet"
    frame.to_parquet(golden)
    assert_golden_rows_block(check(cli, "--candidate", power["better"], "--baseline", power["v1"], "--data", golden), project, 7, "power_kw")


def test_non_numeric_target(project, power, cli):
    import pandas as pd

    frame = pd.read_csv(power["golden"])
    frame["power_kw"] = frame["power_kw"].astype(str)
    frame.loc[3, "power_kw"] = "lots"
    golden = project.root / "golden.csv"
    frame.to_csv(golden, index=False)
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project,
                       "target column 'power_kw' is not numeric; data row 4 holds 'lots'")


def test_a_feature_with_decimal_commas_names_a_value(project, power, cli):
    """A column written with decimal commas (a European locale's export) is text: the error shows its first
    value, which says why."""
    import pandas as pd

    frame = pd.read_csv(power["golden"])
    frame["temperature"] = frame["temperature"].map(lambda v: f"{v:.2f}".replace(".", ","))
    golden = project.root / "golden.csv"
    frame.to_csv(golden, index=False)
    first = frame["temperature"].iloc[0]
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project,
                       f"feature column 'temperature' is not numeric; data row 1 holds {first!r}")


def test_nan_feature(project, power, cli):
    import pandas as pd

    frame = pd.read_csv(power["golden"])
    frame.loc[11, "temperature"] = float("inf")
    golden = project.root / "golden.csv"
    frame.to_csv(golden, index=False)
    assert_golden_rows_block(check(cli, "--candidate", power["better"], "--baseline", power["v1"], "--data", golden), project, 11, "temperature")


def test_golden_set_without_a_usable_row(project, power, cli):
    import pandas as pd

    frame = pd.read_csv(power["golden"]).head(5)
    frame["temperature"] = float("nan")
    golden = project.root / "golden.csv"
    frame.to_csv(golden, index=False)
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "no usable golden row", "temperature")


@pytest.mark.parametrize("name, content", [
    ("golden.csv.gz", b"not gzip"),
    ("golden.csv.xz", b"not xz"),
    ("golden.csv.zip", b"not a zip"),
    ("golden.csv.gz", "truncated"),
], ids=["gz", "xz", "zip", "truncated-gz"])
def test_a_corrupt_compressed_csv_is_one_line(project, power, cli, name, content):
    import gzip

    if content == "truncated":
        whole = gzip.compress(power["golden"].read_bytes())
        content = whole[: len(whole) // 2]
    golden = project.root / name
    golden.write_bytes(content)
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, f"{name}: cannot read data")


@pytest.mark.parametrize("name", ["golden.csv", "golden.csv.gz", "golden.csv.bz2", "golden.csv.xz", "golden.csv.zip"])
def test_a_csv_beyond_the_memory_available_is_refused_before_it_is_read(project, power, cli, monkeypatch, name):
    """A CSV is read whole: one whose text is larger than the memory available (a compressed one counted as
    it unpacks: its header's size can lie) is refused before pandas reads it, not read until the kernel
    kills the job. Here 12 MB of text, 200 KB compressed, with the memory available set to 5 MiB (this
    machine's is what it is); with the machine's own, it reads."""
    import pandas as pd

    import release_kit.environment

    frame = pd.read_csv(power["golden"])
    big = pd.concat([frame] * 60, ignore_index=True)
    golden = project.root / name
    big.to_csv(golden, index=False)
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 5 * 2**20)
        result = check(cli, "--candidate", power["better"], "--data", golden)
    needle = "holds" if name == "golden.csv" else "unpacks to"
    assert_input_error(result, project, f"data file {golden} {needle}", "the memory available (5.0 MiB")
    assert check(cli, "--candidate", power["better"], "--data", golden).exit_code in (0, 1)


@pytest.mark.parametrize("layout", ["golden.parquet", "golden.pq", "directory"])
def test_a_parquet_table_beyond_the_memory_available_is_refused_before_it_is_read(project, power, cli, monkeypatch, layout):
    """A reference directory is read whole: ~8 bytes a value in pandas, whatever the files' compression (a
    repeated value is a few bytes on disk). One that would take more than the memory available is refused
    before it is read (its footers give the rows): exit 2, one line, no report. A Parquet golden file of
    fewer rows than [run] chunk_rows that would not fit read whole is streamed instead, and refused when
    its scan does not fit either. Here 180,000 rows of 6 columns, ~8 MiB, with the memory available
    set to 5 MiB (this machine's is what it is); with the machine's own, it reads."""
    import pandas as pd

    import release_kit.environment

    big = pd.concat([pd.read_csv(power["golden"])] * 60, ignore_index=True)
    if layout != "directory":
        table = project.root / layout
        big.to_parquet(table)
        args = ("--data", table)
    else:
        table = project.root / "reference"
        table.mkdir()
        big.to_parquet(table / "part-0.parquet")
        project.config(extra='[gate]\nstages = ["data"]\n')
        (project.root / "release-kit.toml").write_text((project.root / "release-kit.toml").read_text().replace(
            "[data]\n", f'[data]\nreference = "{table}"\n', 1))
        args = ()
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 5 * 2**20)
        result = check(cli, "--candidate", power["better"], *args)
    if layout == "directory":
        assert_input_error(result, project, f"{table}: 180,000 rows of 6 columns take ~8.2 MiB read whole", "the memory available (5.0 MiB)")
    else:  # a golden file that would not fit read whole is streamed instead, and that does not fit 5 MiB either
        assert_input_error(result, project, f"{table}: streaming it in batches of 65,536 rows", "the memory available (5.0 MiB)")
    assert check(cli, "--candidate", power["better"], *args).exit_code in (0, 1)


def test_a_sql_table_beyond_the_memory_available_is_refused_before_it_is_read(project, power, cli, monkeypatch):
    """A SQL golden table is read whole: its COUNT(*) and columns, at ~8 bytes a value, are checked before
    pandas reads it, as a Parquet file's footers are. Its name may need quoting. With the machine's own
    memory, it reads."""
    import sqlite3

    import pandas as pd

    import release_kit.environment

    with sqlite3.connect(project.root / "golden.db") as connection:
        pd.concat([pd.read_csv(power["golden"])] * 60, ignore_index=True).to_sql("golden set", connection, index=False)
    source = "sqlite:///golden.db#golden set"
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 5 * 2**20)
        result = check(cli, "--candidate", power["better"], "--data", source)
    assert_input_error(result, project, f"{source}: 180,000 rows of 6 columns take ~8.2 MiB read whole", "the memory available (5.0 MiB)")
    assert check(cli, "--candidate", power["better"], "--data", source).exit_code in (0, 1)


def test_corrupt_parquet(project, power, cli):
    golden = project.write("golden.parquet", "PAR1 this is not parquet")
    assert_input_error(check(cli, "--candidate", power["better"], "--data", golden), project, "golden.parquet")


def test_bad_baseline_version(project, power, cli):
    assert_input_error(
        check(cli, "--candidate", power["better"], "--baseline", power["v1"], "--baseline-version", "v1"), project, "'v1'"
    )


def test_unknown_stage(project, power, cli):
    assert_input_error(check(cli, "--candidate", power["better"], "--stage", "vibes"), project, "unknown stage 'vibes'")


def test_explicit_check_path_missing(project, power, cli):
    project.config('[checks]\npaths = ["my-checks"]\n')
    assert_input_error(check(cli, "--candidate", power["better"]), project, "my-checks")


def test_unknown_registry_model(project, power, cli):
    project.config()
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", "enabled = true")
    project.write("release-kit.toml", text)
    assert_input_error(
        check(cli, "--candidate", power["better"], "--baseline", "models:/nobody@champion"), project, "models:/nobody@champion",
        "a first release is checked with --baseline none",
    )


def test_debug_shows_the_traceback(project, cli):
    from release_kit.errors import InputError

    with pytest.raises(InputError):
        cli("--debug", "check", "--candidate", "models/nope.pt")


def test_note_on_a_missing_or_foreign_report(project, cli):
    result = cli("note", "--report", "missing.json")
    assert result.exit_code == 2 and "missing.json" in result.stderr
    project.write("foreign.json", '{"hello": 1}')
    result = cli("note", "--report", "foreign.json")
    assert result.exit_code == 2 and "not a release-kit report" in result.stderr


def test_config_path_that_cannot_be_read(project, power, cli):
    (project.root / "conf.toml").mkdir()
    assert_input_error(check(cli, "--config", "conf.toml", "--candidate", power["better"]), project, "cannot read config file", "conf.toml")


def test_data_path_that_cannot_be_read(project, power, cli):
    (project.root / "golden.csv").mkdir()
    assert_input_error(check(cli, "--candidate", power["better"], "--data", "golden.csv"), project, "golden.csv")


def test_note_out_and_junit_paths_that_cannot_be_written(project, power, cli):
    (project.root / "blocker").write_text("a file, not a directory")
    result = cli("check", "--candidate", power["better"], "--report", "r.json")
    assert result.exit_code == 0, result.output
    note = cli("note", "--report", "r.json", "--format", "html", "--out", "blocker/note.html")
    assert note.exit_code == 2 and note.stderr.startswith("release-kit: error: cannot write blocker/note.html")
    junit = cli("check", "--candidate", power["better"], "--junit", "blocker/junit.xml")
    assert junit.exit_code == 2 and "cannot write blocker/junit.xml" in junit.stderr


def test_fallback_version_must_be_semver(project, power, cli):
    config = project.root / "release-kit.toml"
    config.write_text(config.read_text().replace('version = "1.0.0"', 'version = "1.0.0"\nfallback = "v1.pt"\nfallback_version = "one"'))
    result = check(cli, "--candidate", power["better"])
    assert result.exit_code == 2 and "baseline.fallback_version" in result.stderr


def test_an_unknown_expectation_type_is_one_line(project, power):
    """GX drops an expectation of a type it does not know, logging its traceback: one line names it instead."""
    project.config('[gate]\nstages = ["data"]\n')
    project.write("checks/expectations/golden.json",
                  '{"name": "golden", "expectations": [{"type": "expect_nonexistent_thing", "kwargs": {"column": "hour"}}]}')
    from conftest import run_cli

    result = run_cli(project.root, "check", "--candidate", power["better"], "--report", "report.json")  # GX's logging as users see it
    assert result.returncode == 2 and not (project.root / "report.json").exists()
    assert result.stderr.strip().splitlines() == [f"release-kit: error: {project.root / 'checks/expectations/golden.json'}: invalid "
                                                  "expectation suite: unknown expectation type 'expect_nonexistent_thing'"], result.stderr


@pytest.mark.parametrize(("setup", "needle"), [
    ("empty-directory", "no Parquet files (*.parquet, *.pq) there"),
    ("csv-in-a-glob", "is not a Parquet file"),
    ("file-without-a-column", "part-1.parquet: missing column(s): irradiance"),
    ("types-that-do-not-join", "part-1.parquet: column 'hour' is stored as bool, which does not join the int64 of the files before it"),
])
def test_a_bad_reference_set_is_one_line(project, power, cli, setup, needle):
    """A reference set given as a directory or glob of Parquet files: what is wrong with it is named."""
    import pandas as pd

    train = pd.read_csv(power["train"])
    folder = project.root / "reference"
    folder.mkdir()
    reference = "reference"
    if setup == "csv-in-a-glob":
        train.to_csv(folder / "part-0.csv", index=False)
        reference = "reference/part-*"
    elif setup == "file-without-a-column":
        train.to_parquet(folder / "part-0.parquet")
        train.drop(columns=["irradiance"]).to_parquet(folder / "part-1.parquet")
    elif setup == "types-that-do-not-join":
        train.to_parquet(folder / "part-0.parquet")
        train.assign(hour=train["hour"] > 12).to_parquet(folder / "part-1.parquet")
    project.config('[gate]\nstages = ["data"]\n')
    text = (project.root / "release-kit.toml").read_text()
    project.write("release-kit.toml", text.replace("[data]\n", f'[data]\nreference = "{reference}"\n', 1))
    assert_input_error(check(cli, "--candidate", power["better"]), project, needle)


def test_an_output_that_names_a_file_the_command_reads_is_refused(project, power, cli):
    """A typo that would replace the golden set, a model or the config with a report, or two outputs in one
    file: exit 2 naming both, before the gate runs, with every file as it was."""
    import shutil

    golden = Path(shutil.copy(power["golden"], project.root / "golden.csv"))
    baseline = Path(shutil.copy(power["v1"], project.root / "v1.pt"))
    config = project.config(golden=golden)
    (project.root / "alias.csv").symlink_to(golden)
    (project.root / "checks" / "expectations").mkdir(parents=True)
    (project.root / "parts").mkdir()
    before = {path: path.read_bytes() for path in (golden, baseline, config)}
    cases = [
        (["--report", "r.json", "--junit", "./r.json"], "--report and --junit both name r.json: one would overwrite the other"),
        (["--report", "golden.csv"], "--report names golden.csv, the golden set the gate reads: it would be overwritten"),
        (["--report", "alias.csv"], "--report names alias.csv, the golden set the gate reads"),  # a link to it
        (["--junit", "release-kit.toml"], "--junit names release-kit.toml, the config the gate reads"),
        (["--baseline", "v1.pt", "--benchmark-json", "v1.pt"], "--benchmark-json names v1.pt, the baseline model the gate reads"),
        (["--data", str(golden), "--format", "github", "--comment-out", "golden.csv"], "--comment-out names golden.csv, the golden set"),
        # A file in a directory the gate reads as a whole: the next run would take it for one of its files.
        (["--junit", "checks/expectations/junit.xml"],
         "--junit names checks/expectations/junit.xml, inside the expectation suites the gate reads: the next run would read it"),
        (["--data", "parts", "--report", "parts/r.json"], "--report names parts/r.json, inside the golden set the gate reads"),
    ]
    for args, needle in cases:
        result = cli("check", "--candidate", power["better"], *args)
        assert_input_error(result, project, needle)
        assert not (project.root / "r.json").exists()
    assert {path: path.read_bytes() for path in before} == before

    assert cli("check", "--candidate", power["better"], "--report", "r.json").exit_code == 0
    report = (project.root / "r.json").read_bytes()
    assert_input_error(cli("note", "--report", "r.json", "--out", "r.json"), project, "--out names r.json, the report it renders")
    assert_input_error(cli("data", "profile", "--reference", "golden.csv", "--out", "golden.csv"), project,
                       "--out names golden.csv, the reference it profiles")
    project.write("CHANGELOG.md", "# Changelog\n")
    assert_input_error(cli("release", "--candidate", power["better"], "--note-out", "CHANGELOG.md", "--dry-run"), project,
                       "--note-out names CHANGELOG.md, the CHANGELOG the release writes")
    assert_input_error(cli("release", "--report", "r.json", "--note-out", "r.json"), project, "--note-out names r.json, the report to release")
    assert (project.root / "r.json").read_bytes() == report and (project.root / "CHANGELOG.md").read_text() == "# Changelog\n"
    assert {path: path.read_bytes() for path in before} == before


def test_documents_nested_too_deeply_or_not_files_are_one_line(project, power, cli):
    """A report, a config or an expectation suite is parsed by a parser that recurses per level: a few hundred
    KB of ``[[[[…]]]]`` crashed it (exit 4, "internal error: RecursionError"). And a report that is no regular
    file (``/dev/zero``, a FIFO) was read forever. Each is bad input naming the file, in a subprocess as users
    run it."""
    from conftest import run_cli

    deep = "[" * 100_000 + "]" * 100_000
    project.write("deep-report.json", '{"schema_version": ' + deep + "}")
    project.write("deep.toml", "x = " + deep + "\n")
    os.mkfifo(project.root / "fifo.json")
    cases = [
        (("note", "--report", "deep-report.json"), "cannot read report deep-report.json: it is nested too deeply"),
        (("release", "--report", "deep-report.json", "--dry-run"), "cannot read report deep-report.json: it is nested too deeply"),
        (("note", "--report", "/dev/zero"), "cannot read report /dev/zero: not a regular file"),
        (("note", "--report", "fifo.json"), "cannot read report fifo.json: not a regular file"),
        (("note", "--report", "."), "cannot read report .: not a regular file"),
        (("check", "--config", "deep.toml", "--candidate", power["better"]), "cannot read config file deep.toml: it is nested too deeply"),
    ]
    for args, line in cases:
        # What read forever before runs as users run it, in a subprocess (a regression ends at its timeout, not
        # the suite's), and so does the first; the rest in process, with the same exit and line.
        if args == cases[0][0] or "/dev/zero" in args or "fifo.json" in args:
            result = run_cli(project.root, *args, timeout=60)
            code, stderr = result.returncode, result.stderr
        else:
            result = cli(*args)
            code, stderr = result.exit_code, result.stderr
        assert code == 2, (args, stderr)
        assert stderr.strip().splitlines() == [f"release-kit: error: {line}"], (args, stderr)

    project.config('[gate]\nstages = ["data"]\n')
    suite = project.write("checks/expectations/golden.json", '{"name": "golden", "expectations": ' + deep + "}")
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2 and not (project.root / "report.json").exists()
    assert result.stderr.strip().splitlines() == [f"release-kit: error: cannot read expectation suite {suite}: it is nested too deeply"]


def test_a_document_larger_than_any_release_kit_reads_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from release_kit import files
    from release_kit.errors import InputError
    from release_kit.report import load_report

    (tmp_path / "big.json").write_text(" " * 2048 + "{}")
    monkeypatch.setattr(files, "DOCUMENT_MAX_BYTES", 1024)
    with pytest.raises(InputError, match="it holds more than .* which no report needs"):
        load_report(tmp_path / "big.json")


def test_a_model_or_data_file_that_is_no_regular_file_is_refused_not_read_forever(project, power):
    """A model committed as a link to /dev/zero, or a golden set that is a FIFO, held the gate until its job's
    timeout (hashing or reading a file without end): bad input naming it, exit 2."""
    from conftest import run_cli

    (project.root / "models").mkdir()
    (project.root / "models" / "candidate.pt").symlink_to("/dev/zero")
    os.mkfifo(project.root / "golden.csv")
    cases = [
        (("--candidate", "models/candidate.pt"), "candidate model models/candidate.pt is not a regular file"),
        (("--candidate", power["better"], "--baseline", "/dev/zero"), "baseline model /dev/zero is not a regular file"),
        (("--candidate", power["better"], "--data", "golden.csv"), "data file golden.csv is not a regular file"),
    ]
    for args, needle in cases:  # each in a subprocess, as users run it: a regression ends at its timeout, not the suite's
        result = run_cli(project.root, "check", *args, "--report", "report.json", timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, result.stderr)
        assert not (project.root / "report.json").exists()
