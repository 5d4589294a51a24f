"""Trust II: the gate users run. The CLI in a subprocess with the default config (every stage, MLflow tracking
on), exit codes that mean what they say, and no silent pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import POWER_MODEL, QUICK, DictOutput, churn_model, pf, run_cli, save_scripted

STAGES = {"quality", "outliers", "performance", "data"}


def write_project(root: Path, power, *, extra: str = "", tracking_uri: str | None = None, golden: Path | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(power["v1"].parent, root / "models", dirs_exist_ok=True)
    mlflow = f'\n[mlflow]\ntracking_uri = "{tracking_uri}"\n' if tracking_uri else ""
    (root / "release-kit.toml").write_text(POWER_MODEL.replace("{{", "{").replace("}}", "}") + f"""
[baseline]
path = "models/v1.pt"
version = "1.0.0"

[data]
golden = "{golden or power['golden']}"
reference = "{power['train']}"
{QUICK}{mlflow}{extra}""")
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def gate_run(uri: str, report: dict):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(report["mlflow"]["run_id"])


# The whole pipeline, as users run it ------------------------------------------------------------------------


def test_default_check_runs_every_stage_with_embedded_tracking(tmp_path, power):
    root = write_project(tmp_path / "p", power)
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((root / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} >= STAGES
    assert report["verdict"] == "pass" and report["bump"] == "minor" and report["next_version"] == "1.1.0"
    assert not [c for c in report["checks"] if c["status"] in ("fail", "error")]

    run = gate_run(f"sqlite:///{root / '.release-kit' / 'mlflow.db'}", report)
    keys = set(run.data.metrics)
    assert "performance.p50_latency_ratio_batch_1.candidate" in keys and "quality.mae.delta" in keys
    assert run.data.tags["release_kit.report_sha256"] and run.info.status == "FINISHED"
    # The terminal output: a summary line first; passing checks collapsed.
    assert result.stdout.splitlines()[0].startswith("release-kit · power-forecast: ")
    assert "passing or skipped check(s) not shown" in result.stdout
    assert not (root / ".hypothesis").exists()  # the outlier stage's search keeps no state in the project


def test_a_program_exported_with_a_fixed_batch_runs_every_stage(tmp_path, power):
    """``torch.export.export(model, (example,))`` fixes the batch to the example's: the program refuses any
    other number of rows, and every stage ended in exit 2 ("Guard failed: x.size()[0] == 16"). Gated against
    its own weights exported with a dynamic batch, every stage, tracking on: the same predictions (3,000
    golden rows, not a multiple of 16, the search's single rows, batch 1's timing), and the latency check
    says the candidate's batches are padded."""
    root = write_project(tmp_path / "p", power)
    program = torch.export.export(torch.export.load(str(power["better_export"])).module(), (torch.zeros(16, 5),))
    torch.export.save(program, str(root / "models" / "static.pt2"))
    result = run_cli(root, "check", "--candidate", "models/static.pt2", "--baseline", "models/candidate-better.pt2", "--report", "report.json")
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((root / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} >= STAGES and not [c for c in report["checks"] if c["status"] == "error"]
    for metric in (m for c in report["checks"] if c["stage"] == "quality" for m in c["metrics"]):
        assert metric["candidate"] == pytest.approx(metric["baseline"], rel=1e-6, abs=1e-9), metric
    outliers = {c["name"]: c for c in report["checks"] if c["stage"] == "outliers"}
    assert outliers["newly_broken"]["status"] == "pass" and outliers["prediction_shift"]["status"] == "pass", outliers
    latency = next(c for c in report["checks"] if c["name"] == "latency:batch=1")
    assert "the candidate runs batches of exactly 16: padded or split" in latency["summary"]


class LeftInTraining(torch.nn.Module):
    """A network with a dropout after it, exported in training mode (a forgotten ``model.eval()``)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.dropout = inner, torch.nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.inner(x))


@pytest.mark.parametrize("golden", ["golden.csv", "golden"])  # read whole, and streamed in batches
@pytest.mark.parametrize("role", ["candidate", "baseline"])
def test_a_model_whose_predictions_are_random_is_refused(project, power, cli, golden, role):
    """torch.export keeps the mode the model was exported in: a dropout left in training mode made every
    prediction random. The gate ran on the noise (the example's better candidate with it: 9 checks blocked,
    quality among them, and a smaller dropout could as well pass by luck) and a release would have shipped
    it. Each model is now called twice on the same golden rows: outputs that differ are bad input, exit 2,
    one line naming the model and what to do, and no report."""
    network = pf.baseline_factory()
    network.load_state_dict(torch.jit.load(str(power["v1"])).state_dict())
    program = torch.export.export(LeftInTraining(network).train(), (torch.zeros(8, 5),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    random = project.root / "random.pt2"
    torch.export.save(program, str(random))
    frame = pd.read_csv(power["golden"])
    frame.to_csv(project.root / "golden.csv", index=False)
    (project.root / "golden").mkdir()
    for index in range(2):
        frame.iloc[index * 1_500 : (index + 1) * 1_500].to_parquet(project.root / "golden" / f"part-{index}.parquet")
    project.config(golden=project.root / golden)
    models = {"candidate": power["better"], "baseline": power["v1"], role: random}
    result = cli("check", "--candidate", models["candidate"], "--baseline", models["baseline"], "--report", "report.json")
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.count("\n") == 0 and f"{role} model {random} gave other outputs for the same 256 golden rows" in message, message
    assert "call model.eval() before exporting" in message and not (project.root / "report.json").exists()
    # The same network exported in eval mode gates as it is.
    program = torch.export.export(LeftInTraining(network).eval(), (torch.zeros(8, 5),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(random))
    assert cli("check", "--candidate", models["candidate"], "--baseline", models["baseline"]).exit_code in (0, 1)


class NormalizedInTraining(torch.nn.Module):
    """A BatchNorm before the network, exported in training mode: it normalizes by its batch's statistics, so
    a row's prediction depends on the rows that share its batch (and two calls on one batch agree)."""

    def __init__(self, inner: torch.nn.Module, features: int) -> None:
        super().__init__()
        self.norm, self.inner = torch.nn.BatchNorm1d(features), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.norm(x))


@pytest.mark.parametrize("golden", ["golden.csv", "golden"])  # read whole, and streamed in batches
def test_a_model_whose_predictions_depend_on_the_rest_of_its_batch_is_blocked(project, power, golden):
    """A BatchNorm left in training mode repeats its outputs on the same batch, so it passed the second-call
    check, and the gate passed predictions normalized by 8,192-row batches that no served request of a few
    rows gets. The candidate's outputs for 32 golden rows are now also compared with those in batches of 2:
    quality::batch_independence blocks it (exit 1, with a report); the network exported in eval mode passes
    that check."""
    from conftest import run_cli

    from release_kit import gate

    network = pf.baseline_factory()
    network.load_state_dict(torch.jit.load(str(power["v1"])).state_dict())
    model = NormalizedInTraining(network, 5)
    frame = pd.read_csv(power["golden"])
    with torch.no_grad():  # running statistics, as training would leave them
        model.train()(torch.tensor(frame[pf.FEATURES].to_numpy(), dtype=torch.float32))
    (project.root / "golden").mkdir()
    for index in range(2):
        frame.iloc[index * 1_500 : (index + 1) * 1_500].to_parquet(project.root / "golden" / f"part-{index}.parquet")
    project.config(golden=project.root / "golden" if golden == "golden" else power["golden"])
    batch = ({0: torch.export.Dim("batch", min=2)},)
    for mode in ("train", "eval"):
        torch.export.save(torch.export.export(getattr(model, mode)(), (torch.zeros(8, 5),), dynamic_shapes=batch),
                          str(project.root / f"{mode}.pt2"))
    result = run_cli(project.root, "check", "--candidate", "train.pt2", "--baseline", power["v1"], "--report", "report.json")
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads((project.root / "report.json").read_text())
    probe = next(c for c in report["checks"] if c["name"] == "batch_independence")
    assert probe["summary"].startswith("32 golden rows called in one batch and in batches of 2: other outputs"), probe["summary"]
    assert report["verdict"] == "block" and "quality::batch_independence" in report["bump_reason"]
    assert probe["status"] == "fail" and "BatchNorm left in training mode" in probe["summary"]
    assert probe["details"]["largest_change"] > probe["details"]["tolerance"] * 100
    # The same network exported in eval mode passes the check (in process: the path above is the user's).
    passed = next(c for c in gate.check(candidate="eval.pt2", baseline=str(power["v1"])).checks if c.name == "batch_independence")
    assert passed.status.value == "pass" and "the same outputs" in passed.summary


def test_a_dynamically_quantized_model_is_batch_dependent_by_design_and_can_be_waived(project, power):
    """Dynamic quantization scales each batch's activations by that batch's range, so a row's prediction
    depends on its batch: the check fails and its summary names that cause (not only a BatchNorm); a team
    that ships such a model knowingly waives the check, and the gate passes it with the waiver recorded."""
    from release_kit import gate

    network = pf.baseline_factory()
    network.load_state_dict(torch.jit.load(str(power["v1"])).state_dict())
    quantized = torch.ao.quantization.quantize_dynamic(network.eval(), {torch.nn.Linear}, dtype=torch.qint8)
    save_scripted(quantized, project.root / "quantized.pt")
    project.config('[gate]\nstages = ["quality"]\n')
    probe = next(c for c in gate.check(candidate="quantized.pt", baseline=str(power["v1"])).checks if c.name == "batch_independence")
    assert probe.status.value == "fail" and "dynamic quantization, which scales each batch's activations" in probe.summary, probe.summary
    waived = gate.check(candidate="quantized.pt", baseline=str(power["v1"]),
                        waivers=(("quality::batch_independence", "dynamic quantization, shipped knowingly", "ml-team"),))
    assert [(w.check, w.applied) for w in waived.waivers] == [("quality::batch_independence", True)]
    assert waived.verdict.value == "pass", waived.bump_reason


def test_every_stage_with_a_live_mlflow_server(tmp_path, power, mlflow_backends):
    mlflow_server = mlflow_backends
    root = write_project(tmp_path / "p", power, tracking_uri=mlflow_server)
    result = run_cli(root, "check", "--candidate", "models/candidate-night.pt", "--report", "report.json", "--format", "json")
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads((root / "report.json").read_text())
    assert report == json.loads(result.stdout)
    assert {c["stage"] for c in report["checks"]} >= STAGES
    assert report["verdict"] == "block" and report["bump"] is None and report["next_version"] is None
    run = gate_run(mlflow_server, report)
    assert run.data.tags["release_kit.verdict"] == "block"
    assert any(key.startswith("performance.") for key in run.data.metrics)
    assert not (root / ".release-kit" / "mlflow.db").exists()


@pytest.mark.parametrize("stages", [["quality", "performance"], ["outliers", "data"], ["performance", "data"]])
def test_stage_combinations_track_cleanly(tmp_path, power, cli, monkeypatch, stages):
    """Every stage's metric names become valid MLflow keys, in any combination (embedded store)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = write_project(tmp_path / "p", power, extra=f"\n[gate]\nstages = {json.dumps(stages)}\n")
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/candidate-better.pt", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {c["stage"] for c in report["checks"]} == set(stages)
    run = gate_run(f"sqlite:///{root / '.release-kit' / 'mlflow.db'}", report)
    assert run.info.status == "FINISHED" and run.data.tags["release_kit.verdict"] == "pass"


# Exit codes -------------------------------------------------------------------------------------------------


def test_bad_input_in_a_subprocess_exits_2_and_writes_nothing(tmp_path, power):
    root = write_project(tmp_path / "p", power)
    before = files_under(root)
    result = run_cli(root, "check", "--candidate", "models/missing.pt", "--report", "report.json", "--junit", "junit.xml")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "missing.pt" in result.stderr
    assert files_under(root) == before


@pytest.mark.parametrize("flag", ["--report", "--junit", "--benchmark-json"])
def test_an_unwritable_output_is_refused_before_the_gate_runs(project, power, cli, flag):
    (project.root / "blocker").write_text("a file, not a folder")
    args = ["check", "--candidate", power["better"], "--stage", "quality"]
    if flag != "--report":
        args += ["--report", "report.json"]
    result = cli(*args, flag, "blocker/out")
    assert result.exit_code == 2 and flag in result.stderr and "not a directory" in result.stderr, result.output
    assert not (project.root / "report.json").exists()


def test_checks_started_together_in_a_new_project_share_its_embedded_store(tmp_path, power):
    """Three checks started at once in a project with no store yet: MLflow creates and migrates the SQLite
    schema when a process first opens it, and three doing so together left a half-run migration behind
    (exit 4 for two of them, then "table _alembic_tmp_metrics already exists" for every later run). The
    first opening is serialised: each check logs its run, and so does one after them. Subprocesses, default
    tracking."""
    import subprocess
    import sys

    root = write_project(tmp_path / "p", power, extra='\n[gate]\nstages = ["quality"]\n')
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "release_kit.cli", "check", "--candidate", "models/candidate-better.pt"]
    started = [subprocess.Popen([*command, "--report", f"r{i}.json"], cwd=root, env=environment, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    errors = [process.communicate(timeout=300)[1] for process in started]
    assert [process.returncode for process in started] == [0, 0, 0], errors
    later = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "r3.json")
    assert later.returncode == 0, later.stderr[-2000:]
    runs = {json.loads((root / f"r{i}.json").read_text())["mlflow"]["run_id"] for i in range(4)}
    assert len(runs) == 4 and all(runs)


@pytest.mark.parametrize("flag", ["--report", "--junit"])
def test_an_output_to_a_pipe_is_written_through_not_replaced(tmp_path, power, flag):
    """``--report /dev/stdout`` or a FIFO: the text goes into the pipe. The atomic rename would have put a
    regular file in its place (as root, ``/dev/null`` itself: every later process on the machine reads it)."""
    import stat
    import threading

    root = write_project(tmp_path / "p", power)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--stage", "quality", "--no-mlflow", flag, str(fifo))
    reader.join(timeout=30)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert stat.S_ISFIFO(fifo.stat().st_mode) and received, "the pipe was replaced by a file"
    assert ("checks" in json.loads(received[0])) if flag == "--report" else received[0].startswith("<?xml")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_embedded_store_is_refused_before_the_gate_runs(project, power, cli):
    (project.root / "blocker").write_text("a file")
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", 'tracking_uri = "sqlite:///blocker/mlflow.db"')
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2 and "embedded MLflow store" in result.stderr, result.output
    assert not (project.root / "report.json").exists()


def test_an_embedded_store_that_does_not_open_is_bad_input_before_the_gate_runs(project, power, cli, monkeypatch):
    """A file at the store's path that is no SQLite database (or one left half-migrated): one line naming
    it, exit 2, before the gate runs, where it was an internal error (exit 4) after the whole gate."""
    from release_kit import engine

    def ran(*args, **kwargs):
        raise AssertionError("the checks ran before the store was opened")

    monkeypatch.setattr(engine, "run_checks", ran)
    (project.root / ".release-kit").mkdir()
    (project.root / ".release-kit" / "mlflow.db").write_text("not a database")
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", "enabled = true")
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"release-kit: error: the MLflow store {project.root / '.release-kit' / 'mlflow.db'} cannot be opened: ")
    assert len(result.stderr.strip().splitlines()) == 1 and not (project.root / "report.json").exists()


def test_github_runner_files_are_checked_before_the_gate_runs(project, power, cli, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project.root / "nope" / "x" / "summary"))
    (project.root / "nope").write_text("file")
    result = cli("check", "--candidate", power["better"], "--format", "github", "--report", "report.json")
    assert result.exit_code == 2 and "$GITHUB_STEP_SUMMARY" in result.stderr
    assert not (project.root / "report.json").exists() and not (project.root / "release-kit-comment.md").exists()


def test_an_internal_error_exits_4_never_1(project, power, cli, monkeypatch):
    from release_kit import engine

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(engine, "run_checks", broken)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 4, result.output
    assert result.stderr == "release-kit: internal error: ZeroDivisionError: a bug (rerun with --debug for the traceback)\n"
    assert not (project.root / "report.json").exists()


def test_ctrl_c_is_not_blocked(project, power, cli, monkeypatch):
    """An interrupted run is no gate decision: exit 130 (the shell's SIGINT code), never 1."""
    from release_kit import engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_checks", interrupted)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 130 and result.stderr == "release-kit: interrupted\n"
    assert not (project.root / "report.json").exists()


# No silent pass ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "needle"), [
    ("[gate]\nstages = []\n", "gate.stages"),
    ('[quality]\ntolerance = { mae = "nan%" }\n', "quality.tolerance"),
    ("[quality]\ntolerance = { mae = nan }\n", "quality.tolerance"),
    ('[quality]\nmin_effect = "inf"\n', "quality.min_effect"),
    ('[outliers]\nslice_tolerance = "nan"\n', "outliers.slice_tolerance"),
])
def test_configs_that_would_decide_nothing_are_refused(project, power, cli, extra, needle):
    project.config(extra)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_nan_bounds_are_refused(project, power, cli):
    text = (project.root / "release-kit.toml").read_text().replace("min = 0.0", "min = nan")
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", power["better"])
    assert result.exit_code == 2 and "model.bounds.min" in result.stderr


@pytest.mark.parametrize("rows", [1, 2])
def test_a_tiny_golden_set_decides_nothing(project, power, cli, rows):
    golden = project.root / "tiny.csv"
    pd.read_csv(power["golden"]).head(rows).to_csv(golden, index=False)
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--data", golden, "--stage", "quality",
                 "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    metrics = [c for c in report["checks"] if c["name"] in ("mae", "rmse", "r2")]
    assert all(c["status"] == "warn" and "too small" in c["summary"] or "min_rows" in c["summary"] for c in metrics)
    assert "no quality metric could be decided" in report["bump_reason"]
    assert "no significant change" not in result.stdout


def test_every_metric_undefined_decides_nothing(project, power, cli):
    frame = pd.read_csv(power["golden"])
    frame["power_kw"] = 1e308
    golden = project.root / "huge.csv"
    frame.to_csv(golden, index=False)
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--data", golden, "--stage", "quality",
                 "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "block" and "could be decided" in report["bump_reason"]


def test_a_constant_tiny_shift_breaks_no_rows(project, power, cli, tmp_path):
    import power_forecast as pf

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-4

    v1 = torch.jit.load(str(power["v1"]))
    module = pf.baseline_factory()
    module.load_state_dict(v1.state_dict())
    shifted = save_scripted(Shifted(module.eval()), tmp_path / "shifted.pt")
    result = cli("check", "--candidate", shifted, "--baseline", power["v1"], "--stage", "outliers", "--format", "json")
    report = json.loads(result.stdout)
    broken = next(c for c in report["checks"] if c["name"] == "newly_broken")
    assert broken["details"]["broke"] < 10, broken["summary"]
    assert broken["status"] != "fail"


def test_the_search_keeps_a_counterexample_when_time_runs_out(power):
    """A slow property and a budget that ends mid-shrink: the counterexample found is reported, not lost.
    The budget leaves room for Hypothesis's one-time scan of the loaded modules (~0.5 s once mlflow is
    imported in the process), and the property is slow enough that a shrink cannot end within it."""
    import time

    import pandas as pd

    from release_kit.search import search
    from release_kit.strategies import domain_from_data, rows

    features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
    golden = pd.read_csv(power["golden"])[features].to_numpy(np.float32)

    def violates(row):
        time.sleep(0.05)
        return bool(row[0] > 1)

    found = search(rows(domain_from_data(features, golden, {})), violates, seconds=2.0, max_examples=1000, features=features)
    assert found.example is not None and found.example[0] > 1
    assert found.timed_out and "hour=" in found.words()


def test_the_search_and_the_timing_end_at_their_budgets_whatever_counts_the_config_asks(tmp_path, power):
    """A config (a pull request's, say) asking for 10¹² search examples and 10⁹ timing rounds: each ends at its
    time budget (1 s for the search, 2 s for the timing of both batch sizes). Hypothesis went on drawing rows
    past the budget, declined one by one, and the first timing rounds had no deadline: the run never ended."""
    import time

    root = write_project(tmp_path, power)
    config = root / "release-kit.toml"
    text = config.read_text().replace("rounds = 4", "rounds = 1000000000")
    config.write_text(text.replace("[outliers.search]\nseconds = 1\n", "[outliers.search]\nseconds = 1\nmax_examples = 1000000000000\n"))
    started = time.monotonic()
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--stage", "outliers", "--stage", "performance",
                     "--no-mlflow", "--format", "json", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 120
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    search = checks["search:contract"]["details"]["search"]
    assert search["stopped_by_time_budget"] and search["tried"] > 0 and search["seconds"] < 5
    for rows in (1, 64):  # two batch sizes share the 2 s: about 1 s each, an even count of at least 4 rounds
        latency = checks[f"latency:batch={rows}"]["details"]
        assert 4 <= latency["rounds"] < 10_000 and latency["rounds"] % 2 == 0 and latency["seconds"] < 10, latency


def test_a_hung_model_ends_the_run_with_one_line(tmp_path, power):
    """TorchScript stuck in a loop cannot be interrupted: the watchdog ends the run, exit 2, naming the model."""

    class Hang(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = x.sum()
            i = 0
            while i < 4_000_000_000:
                total = total + 1.0
                i += 1
            return x[:, 0] + total

    save_scripted(Hang(), tmp_path / "hang.pt")
    root = write_project(tmp_path / "p", power, extra="\n[gate]\nmodel_timeout_seconds = 1\n")
    result = run_cli(root, "check", "--candidate", tmp_path / "hang.pt", "--report", "report.json", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "candidate model" in result.stderr and "hang.pt" in result.stderr and "did not return within 1 s" in result.stderr
    assert not (root / "report.json").exists()


def test_a_slow_python_model_is_interrupted(project, power, cli, tmp_path, monkeypatch):
    import time

    from release_kit import models

    original = models.LoadedModel.raw_outputs

    def slow(self, features, *, timeout=None):
        if self.role == "candidate":
            with models.call_deadline(0.2, f"{self.role} model {self.source}"):
                time.sleep(5)
        return original(self, features, timeout=timeout)

    monkeypatch.setattr(models.LoadedModel, "raw_outputs", slow)
    started = time.monotonic()
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2 and "did not return within 0.2 s" in result.stderr
    assert time.monotonic() - started < 4  # the blocking call itself was interrupted, not waited out


@pytest.mark.parametrize("swallowed", [False, True])
def test_a_model_call_past_its_deadline_fails_with_sigint_ignored_or_swallowed(swallowed):
    """A process started with SIGINT ignored (a background job) still interrupts the call, and a call whose
    code catches the interrupt and returns anyway still fails: a deadline that passed is never a pass."""
    import signal
    import time

    from release_kit.errors import InputError
    from release_kit.models import call_deadline

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        started = time.monotonic()
        with pytest.raises(InputError, match="slow model did not return within 0.2 s"):
            with call_deadline(0.2, "slow model"):
                try:
                    time.sleep(3)
                except KeyboardInterrupt:
                    if not swallowed:
                        raise
        assert time.monotonic() - started < 2.5  # interrupted, not waited out
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the process's own setting is back
        with call_deadline(5, "fast model"):  # a call within its deadline is untouched
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, previous)


class Raising(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 5:
            raise ValueError("weights were trained for 6 features")
        return x


@pytest.mark.parametrize(("kind", "needle"), [
    ("torchscript-error", "weights were trained for 6 features"),
    ("empty", "is empty"),
    ("garbage", "not a model file release-kit can read"),
    ("complex", "complex numbers"),
    ("scalar", "0-d tensor"),
])
def test_model_errors_keep_their_real_cause(project, power, cli, tmp_path, kind, needle):
    path = tmp_path / "model.pt"
    if kind == "torchscript-error":
        save_scripted(Raising(), path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(512))
    elif kind == "complex":
        class Complex(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.complex(x[:, 0], x[:, 1])
        save_scripted(Complex(), path)
    else:
        class Scalar(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.sum()
        save_scripted(Scalar(), path)
    result = cli("check", "--candidate", path, "--report", "report.json")
    assert result.exit_code == 2 and needle in result.stderr, result.stderr
    assert "pickled model" not in result.stderr and "TorchScript interpreter" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_where_predictions_moved_is_named(project, power, cli, tmp_path):
    import power_forecast as pf

    class ChangedAtHighIrradiance(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return torch.where(x[:, 4] > 0.9, out * 1.01, out)

    v1 = torch.jit.load(str(power["v1"]))
    module = pf.baseline_factory()
    module.load_state_dict(v1.state_dict())
    changed = save_scripted(ChangedAtHighIrradiance(module.eval()), tmp_path / "changed.pt")
    result = cli("check", "--candidate", changed, "--baseline", power["v1"], "--stage", "outliers", "--format", "json")
    moved = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "moved_region")
    assert moved["status"] == "warn" and "irradiance" in moved["summary"], moved["summary"]


# Fixes found by the newcomer ---------------------------------------------------------------------------------


def test_the_default_profile_keeps_whole_numbers_numeric(power):
    from release_kit.config import ProfileSpec
    from release_kit.validation import profile

    frame = pd.DataFrame({"pixels": np.arange(100) % 17, "colour": ["red", "blue"] * 50, "x": np.linspace(0, 1, 100)})
    suite = profile(frame, ProfileSpec(), name="t", source="t")
    kinds = {(e["kwargs"].get("column"), e["type"]) for e in suite.expectations}
    assert ("pixels", "expect_column_values_to_be_between") in kinds
    assert ("pixels", "expect_column_values_to_be_in_set") not in kinds
    assert ("colour", "expect_column_values_to_be_in_set") in kinds
    declared = profile(frame, ProfileSpec(categorical=["pixels"], mostly=0.95), name="t", source="t")
    in_set = next(e for e in declared.expectations if e["kwargs"].get("column") == "pixels" and e["type"].endswith("in_set"))
    assert in_set["kwargs"]["mostly"] == 0.95


def test_data_profile_reads_the_config_found_here(project, power, cli):
    project.config('[data.profile]\ncategorical = ["hour"]\nmax_categories = 30\n')
    result = cli("data", "profile", "--reference", power["train"], "--out", "suite.json")
    assert result.exit_code == 0, result.output
    suite = json.loads((project.root / "suite.json").read_text())
    assert any(e["kwargs"].get("column") == "hour" and e["type"].endswith("in_set") for e in suite["expectations"])


def test_data_profile_sizes_the_suite_for_the_golden_rows_given(project, power, cli):
    """``--golden-rows``: a range reaches further into the reference's tail for a larger golden set (the
    temperature's), and a bad count is one line, exit 2, nothing written."""
    def temperature_range(*args) -> tuple[float, float]:
        result = cli("data", "profile", "--reference", power["train"], "--out", "suite.json", *args)
        assert result.exit_code == 0, result.output
        suite = json.loads((project.root / "suite.json").read_text())
        (kwargs,) = [e["kwargs"] for e in suite["expectations"]
                     if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "temperature"]
        return kwargs["min_value"], kwargs["max_value"]

    low, high = temperature_range()
    far_low, far_high = temperature_range("--golden-rows", "100000000")
    assert far_low < low and far_high > high
    (project.root / "suite.json").unlink()
    result = cli("data", "profile", "--reference", power["train"], "--out", "suite.json", "--golden-rows", "0")
    assert result.exit_code == 2 and "--golden-rows" in result.output and not (project.root / "suite.json").exists()


def test_cpu_memory_counts_what_the_model_holds(project, power):
    from release_kit.timing import Timer

    small = torch.nn.Linear(5, 1)
    big = torch.nn.Sequential(torch.nn.Linear(5, 1), torch.nn.Linear(1, 512 * 512, bias=False))  # +1 MiB of weights
    x = torch.zeros(1, 5)
    memory = {name: Timer(module, x, name).peak_memory_bytes() for name, module in (("small", small), ("big", big))}
    if memory["small"] is None:
        pytest.skip("no /proc on this platform")
    assert memory["small"] > 0
    assert memory["big"] - memory["small"] >= 2**20


def test_after_a_rollback_the_next_release_takes_a_new_version():
    from release_kit.config import Config
    from release_kit.report import Bump, CheckResult, Status
    from release_kit.versioning import decide

    config = Config.model_validate({"model": {"name": "m", "task": "regression", "target": "y", "features": ["a"]}})
    checks = [CheckResult("quality", "mae", Status.PASS, "better")]
    # 1.0.0, 1.1.0 and 2.0.0 were released; @champion was rolled back to 1.0.0.
    released = ("1.0.0", "1.1.0", "1.1.1", "2.0.0")
    minor = decide(config, checks, has_baseline=True, identical_predictions=False, baseline_version="1.0.0", released=released)
    assert minor.bump is Bump.PATCH and minor.next_version == "1.0.1"
    from release_kit.versioning import highest_in_line, next_version

    assert next_version(highest_in_line("1.0.0", Bump.MINOR, released), Bump.MINOR) == "1.2.0"
    assert next_version(highest_in_line("1.1.0", Bump.PATCH, released), Bump.PATCH) == "1.1.2"
    assert next_version(highest_in_line("1.0.0", Bump.MAJOR, released), Bump.MAJOR) == "3.0.0"


def test_init_for_classification_needs_and_writes_prediction(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = cli("init", "--name", "m", "--task", "classification", "--target", "y", "--features", "a,b")
    assert refused.exit_code == 2 and "--prediction" in refused.stderr and not list(tmp_path.iterdir())
    wrong = cli("init", "--name", "m", "--task", "regression", "--prediction", "logits", "--target", "y", "--features", "a,b")
    assert wrong.exit_code == 2 and "--prediction applies to --task classification only" in wrong.stderr
    assert not list(tmp_path.iterdir())
    result = cli("init", "--name", "m", "--task", "classification", "--prediction", "logits", "--target", "y", "--features", "a,b")
    assert result.exit_code == 0, result.output
    from release_kit.config import load_config

    assert load_config(tmp_path / "release-kit.toml").model.prediction == "logits"



def test_init_writes_the_classes_of_a_text_target(tmp_path, cli, monkeypatch):
    """init --data with class names in the target writes them, sorted, as [model] classes: a check then
    reads the names (without, it would stop at "target column 'label' is not numeric")."""
    import pandas as pd

    from release_kit.config import load_config

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"a": [0.1, 0.2, 0.3], "label": ["yes", "no", None]}).to_csv(tmp_path / "data.csv", index=False)
    result = cli("init", "--name", "m", "--task", "classification", "--prediction", "logits", "--target", "label",
                 "--data", "data.csv")
    assert result.exit_code == 0, result.output
    model = load_config(tmp_path / "release-kit.toml").model
    assert model.classes == ["no", "yes"] and model.features == ["a"]


def test_init_takes_the_columns_a_model_can_read_as_features(tmp_path, cli, monkeypatch):
    """init --data: numbers and booleans are the features; a text column is named in a comment, not made a
    feature that the first check would refuse ("not numeric"). A file with no such column is bad input."""
    import pandas as pd

    from release_kit.config import load_config

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"a": [0.1, 0.2], "city": ["x", "y"], "flag": [True, False], "y": [1.0, 2.0]}).to_csv("data.csv", index=False)
    result = cli("init", "--name", "m", "--task", "regression", "--target", "y", "--data", "data.csv")
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "release-kit.toml").model.features == ["a", "flag"]
    assert "still validated by the data stage: city" in (tmp_path / "release-kit.toml").read_text()
    (tmp_path / "only-text").mkdir()
    pd.DataFrame({"city": ["x", "y"], "y": [1.0, 2.0]}).to_csv(tmp_path / "only-text" / "data.csv", index=False)
    refused = cli("init", "--name", "m", "--task", "regression", "--target", "y", "--data", "data.csv", "--directory", "only-text")
    assert refused.exit_code == 2 and "no column besides the target 'y' holds numbers or booleans" in refused.stderr
    assert not (tmp_path / "only-text" / "release-kit.toml").exists()


def test_terminal_output_puts_failures_first_and_names_waivers(project, power, cli):
    project.config('[[waivers]]\ncheck = "quality::output_contract"\nreason = "night offset known"\nby = "ana"\n')
    result = cli("check", "--candidate", power["night"], "--baseline", power["v1"], "--stage", "quality")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("release-kit · power-forecast: ") and " fail" in lines[0]
    statuses = [line.split("│")[1].strip() for line in lines if line.startswith("│") and line.split("│")[1].strip()]
    order = {"fail": 0, "error": 1, "warn": 2}
    assert statuses == sorted(statuses, key=order.get)
    assert "waived: quality::output_contract" in result.stdout.replace("\n", "")
    verbose = cli("check", "--candidate", power["night"], "--baseline", power["v1"], "--stage", "quality", "--verbose")
    assert "quality::output_contract" in verbose.stdout and "not shown" not in verbose.stdout


def test_text_columns_pass_their_profiled_type(tmp_path):
    """pandas 3 reads text as its `str` dtype, which GX's type check does not know: a text column must not
    fail its own profile."""
    from release_kit.config import ProfileSpec
    from release_kit.validation import profile, validate

    path = tmp_path / "t.csv"
    pd.DataFrame({"segment": ["north", "south"] * 20, "x": np.arange(40.0)}).to_csv(path, index=False)
    frame = pd.read_csv(path)
    suite = profile(frame, ProfileSpec(), name="t", source=str(path))
    outcomes = validate(path, frame, suite)
    assert all(o.success for o in outcomes), [(o.type, o.column, o.result.get("observed_value")) for o in outcomes if not o.success]


def test_a_classifier_with_a_text_column_through_the_default_pipeline(tmp_path):
    """Another kind of model and data, as a user runs it: every stage, tracking on, a text metadata column."""
    from conftest import make_classification, train_classifier

    train, golden = make_classification(3000, 3, seed=1), make_classification(1500, 3, seed=2)
    for frame in (train, golden):
        frame["segment"] = np.where(frame["a"] > 0, "north", "south")
    train.to_csv(tmp_path / "train.csv", index=False)
    golden.to_csv(tmp_path / "golden.csv", index=False)
    save_scripted(train_classifier(train, 3, epochs=5, squash="none"), tmp_path / "weak.pt")
    save_scripted(train_classifier(train, 3, epochs=200, squash="none"), tmp_path / "strong.pt")
    (tmp_path / "release-kit.toml").write_text(churn_model() + f"""
[baseline]
path = "weak.pt"
version = "2.3.0"

[data]
golden = "golden.csv"
reference = "train.csv"
{QUICK}""")
    result = run_cli(tmp_path, "check", "--candidate", "strong.pt", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} >= STAGES
    assert report["bump"] == "minor" and report["next_version"] == "2.4.0" and report["mlflow"]["run_id"]


@pytest.mark.parametrize(("factory", "needle"), [
    ("os:getcwd", "returned str, not a torch.nn.Module"),
    ("power_forecast:train", "failed: TypeError"),
])
def test_a_factory_that_fails_is_an_input_error(project, power, cli, factory, needle):
    result = cli("check", "--candidate", power["v1_safetensors"], "--report", "report.json")
    assert result.exit_code == 2 and "factory" in result.stderr  # none configured: named in the error
    text = (project.root / "release-kit.toml").read_text().replace("[baseline]", f'[candidate]\nfactory = "{factory}"\n\n[baseline]')
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", power["v1_safetensors"], "--report", "report.json")
    assert result.exit_code == 2 and needle in result.stderr, result.stderr
    assert not (project.root / "report.json").exists()


def test_slices_whose_statistics_are_nan_do_not_pass():
    from types import SimpleNamespace

    from release_kit.paired import SliceStat
    from release_kit.stages.outliers import slice_verdict

    gate = SimpleNamespace(config=SimpleNamespace(outliers=SimpleNamespace(alpha=0.05), model=SimpleNamespace(task="regression")))
    nan = float("nan")
    undefined = SliceStat("hour > 20", 40, nan, nan, nan, 0.1, 0.005, nan, nan)
    fine = SliceStat("hour ≤ 20", 400, 0.0, -0.01, 0.01, 0.1, 0.005, 0.9, 0.9)
    only_nan = slice_verdict(gate, "slices", [undefined], searched="1 slice")
    assert only_nan.status.value == "warn" and "undefined" in only_nan.summary
    mixed = slice_verdict(gate, "slices", [undefined, fine], searched="2 slices")
    assert mixed.status.value == "warn" and "could not be tested" in mixed.summary


class TupleOutput(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1), self.inner(x)


def test_a_model_returning_several_outputs_is_gated_on_the_one_model_output_names(project, power, cli):
    """As users run it (the CLI in a subprocess, every default stage, the embedded MLflow store): a model
    returning a dict is gated on [model] output's key, with the numbers of the same network returning the
    prediction alone. Unset, or naming no output, it is bad input naming what the model returned; a tuple's
    output is named by its index."""
    better = torch.jit.load(str(power["better"]))
    save_scripted(DictOutput(better), project.root / "dict.pt")
    save_scripted(TupleOutput(better), project.root / "tuple.pt")
    config = project.root / "release-kit.toml"
    plain = config.read_text()

    unset = cli("check", "--candidate", "dict.pt", "--baseline", power["v1"], "--report", "report.json")
    assert unset.exit_code == 2 and unset.stderr.count("\n") == 1, unset.output
    assert "candidate model dict.pt returned a dict of 'hidden', 'prediction': name the prediction's key in [model] output" in unset.stderr
    assert not (project.root / "report.json").exists()
    config.write_text(plain.replace('task = "regression"', 'task = "regression"\noutput = 1'))
    tuple_plain = cli("check", "--candidate", "tuple.pt", "--baseline", power["v1"], "--stage", "quality", "--format", "json")
    assert tuple_plain.exit_code == 0, tuple_plain.output
    wrong = cli("check", "--candidate", "dict.pt", "--baseline", power["v1"])
    assert wrong.exit_code == 2 and "returned a dict of 'hidden', 'prediction' (1 is not one of them)" in wrong.stderr, wrong.output

    every_stage = project.config(f"[gate]\n{QUICK}").read_text()  # the default stages, quicker
    config.write_text(every_stage.replace('task = "regression"', 'task = "regression"\noutput = "prediction"').replace("[mlflow]\nenabled = false\n", ""))
    result = run_cli(project.root, "check", "--candidate", "dict.pt", "--baseline", power["v1"], "--report", "report.json")
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((project.root / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} == {"quality", "outliers", "performance", "data"} and report["mlflow"]["run_id"]
    alone = {m["name"]: m for c in json.loads(tuple_plain.stdout)["checks"] for m in c.get("metrics", [])}
    selected = {m["name"]: m for c in report["checks"] if c["stage"] == "quality" for m in c.get("metrics", [])}
    for name in ("mae", "rmse", "r2"):
        assert selected[name]["candidate"] == pytest.approx(alone[name]["candidate"], rel=1e-12), name
    assert not [c["name"] for c in report["checks"] if c["stage"] in ("quality", "outliers", "data") and c["status"] in ("fail", "error")]
