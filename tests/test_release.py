"""`release-kit release`, `history` and `rollback` with real parts: the embedded SQLite registry and a live
`mlflow server`, a real git repository in a temp dir, real model files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import free_port
from project_repo import CONFIG, V1_CONTRACT, Repo

from release_kit import gate
from release_kit import release as releases
from release_kit.registry import publish
from release_kit.signature import Signature
from release_kit.tags import VERSION_TAG
from release_kit.tracking import embedded_uri


@pytest.fixture
def repo(tmp_path, power, monkeypatch) -> Repo:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    instance = Repo(tmp_path, power)
    instance.publish_v1()
    return instance


def test_release_registers_tags_logs_and_moves_the_alias_last(repo, cli):
    report_path = repo.report()
    head = repo.git("rev-parse", "HEAD")

    result = cli("release", "--report", report_path, "--note-out", "out/note.md")
    assert result.exit_code == 0, result.output
    assert repo.versions() == {"1.0.0": "1", "1.1.0": "2"}
    assert repo.champion() == "1.1.0"
    assert repo.tags() == ["power-forecast-v1.1.0"]
    assert repo.git("rev-list", "-n", "1", "power-forecast-v1.1.0") == head
    assert repo.changelog() == ["1.1.0"]
    assert result.stdout.startswith("# power-forecast 1.1.0\n")
    assert (repo.root / "out" / "note.md").read_text() == result.stdout

    report = json.loads(report_path.read_text())
    version = repo.client().get_model_version("power-forecast", "2")
    tags = version.tags
    assert tags[VERSION_TAG] == "1.1.0" and tags["release_kit.git_sha"] == head and tags["release_kit.git_dirty"] == "false"
    assert tags["release_kit.verdict"] == "pass" and tags["release_kit.bump"] == "minor"
    assert tags["release_kit.data.golden"] == report["data"]["golden"]["sha256"]
    assert float(tags["release_kit.metric.quality.mae"]) == pytest.approx(next(
        m["candidate"] for c in report["checks"] for m in c["metrics"] if m["name"] == "mae"), rel=1e-5)
    assert tags["release_kit.report_uri"] == f"runs:/{version.run_id}/release/report.json"
    # The next candidate is compared with the contract recorded here.
    assert Signature.from_json(tags["release_kit.signature"]) == V1_CONTRACT

    import mlflow

    manifest = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="release/manifest.json", tracking_uri=repo.uri)).read_text())
    assert manifest["version"] == "1.1.0" and manifest["code"] == {"git_sha": head, "dirty": False, "changed_files": []}
    assert manifest["model_file"]["sha256"] == report["candidate"]["sha256"]
    from release_kit.files import file_sha256

    assert manifest["data"]["reference"]["sha256"] == file_sha256(repo.power["train"])
    assert manifest["environment"]["packages"]["torch"].startswith("2.")
    assert manifest["config"]["model"]["name"] == "power-forecast"
    logged = {Path(a.path).name for a in repo.client().list_artifacts(version.run_id, "release")}
    assert logged == {"manifest.json", "release-note.md", "report.json"}

    # Released once: a second run finds every step done and changes nothing.
    again = cli("release", "--report", report_path, "--format", "json")
    assert again.exit_code == 0, again.output
    assert {step["action"] for step in json.loads(again.stdout)["steps"]} == {"already"}
    assert repo.versions() == {"1.0.0": "1", "1.1.0": "2"} and repo.changelog() == ["1.1.0"]


def test_release_without_a_report_runs_the_gate_first(repo, cli):
    result = cli("release", "--candidate", repo.models["better"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == "1.1.0" and repo.champion() == "1.1.0"


def test_dry_run_prints_the_plan_and_changes_nothing(repo, cli):
    report_path = repo.report()
    result = cli("release", "--report", report_path, "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [step["step"] for step in plan["steps"]] == [step.name for step in releases.STEPS]
    assert {step["action"] for step in plan["steps"]} == {"planned"}
    assert repo.versions() == {"1.0.0": "1"} and repo.champion() == "1.0.0"
    assert repo.tags() == [] and not (repo.root / "CHANGELOG.md").exists()
    assert "→ would alias: move @champion" in result.stderr


@pytest.mark.parametrize("crash_after", [step.name for step in releases.STEPS[:-1]])
def test_a_crash_after_any_step_then_a_rerun_ends_in_one_clean_release(repo, crash_after):
    report_path = repo.report()

    class Crash(Exception):
        pass

    def crash(outcome):
        if outcome.step == crash_after:
            raise Crash

    with pytest.raises(Crash):
        releases.execute(repo.plan(report_path), on_step=crash)
    assert repo.champion() == "1.0.0"  # the alias moves last

    state = releases.execute(repo.plan(report_path))
    done_before = [o.step for o in state.outcomes if o.action == "already"]
    assert done_before == [step.name for step in releases.STEPS[: releases.STEPS.index(next(s for s in releases.STEPS if s.name == crash_after)) + 1]]
    assert repo.version_count("1.1.0") == 1
    assert repo.tags() == ["power-forecast-v1.1.0"]
    assert repo.changelog() == ["1.1.0"]
    assert repo.champion() == "1.1.0"


def test_a_killed_release_process_is_completed_by_a_rerun(repo, cli):
    """A hard kill (no exception handlers, no cleanup) right after the version was registered."""
    report_path = repo.report()
    script = textwrap.dedent(f"""
        import os
        from release_kit import gate, release
        from release_kit.report import load_report
        config, project = gate.resolve_config(None)
        plan = release.plan(config, project, load_report({str(report_path)!r}))
        release.execute(plan, on_step=lambda o: os._exit(9) if o.step == "register" else None)
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=repo.root, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert repo.version_count("1.1.0") == 1 and repo.tags() == [] and repo.champion() == "1.0.0"

    result = cli("release", "--report", report_path)
    assert result.exit_code == 0, result.output
    assert repo.version_count("1.1.0") == 1 and repo.tags() == ["power-forecast-v1.1.0"] and repo.changelog() == ["1.1.0"]
    assert repo.champion() == "1.1.0"


def test_registration_race_keeps_one_version_per_release_id(repo, monkeypatch):
    """Two processes that both searched before either created: the lower number wins, the other deletes its own."""
    from release_kit import registry

    report_path = repo.report()
    plan = repo.plan(report_path)
    rival = registry.register_version(
        plan.model_file, plan.model, key=(releases.RELEASE_ID_TAG, plan.release_id), tags={VERSION_TAG: plan.version},
        tracking_uri=repo.uri, experiment="release-kit", run_name="rival",
    )
    real_find = registry.find_versions
    calls = []

    def stale_first_read(*args):
        calls.append(args)
        return [] if len(calls) == 1 else real_find(*args)  # the rival's version is not visible yet

    monkeypatch.setattr(registry, "find_versions", stale_first_read)
    ours = registry.register_version(
        plan.model_file, plan.model, key=(releases.RELEASE_ID_TAG, plan.release_id), tags={VERSION_TAG: plan.version},
        tracking_uri=repo.uri, experiment="release-kit", run_name="ours",
    )
    assert len(calls) == 2 and ours.version == rival.version
    assert repo.version_count("1.1.0") == 1


def test_two_releases_at_once_on_a_live_server_make_one_version(tmp_path, power, mlflow_backends, monkeypatch):
    mlflow_server = mlflow_backends
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Repo(tmp_path / "a", power, mlflow_server), Repo(tmp_path / "b", power, mlflow_server)
    first.publish_v1()
    # The candidate named relative to the project, so that each repository releases its own copy of it.
    monkeypatch.chdir(first.root)
    report_path = first.root / "out" / "report.json"
    gate.check(candidate="models/candidate-better.pt", directory=first.root).write(report_path)
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from release_kit import gate, release
        from release_kit.report import load_report
        config, project = gate.resolve_config(None)
        plan = release.plan(config, project, load_report({str(report_path)!r}))
        pathlib.Path("ready").touch()
        while not pathlib.Path({str(tmp_path / "go")!r}).exists():
            time.sleep(0.01)
        state = release.execute(plan)
        print(state.number)
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=r.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in (first, second)]
    deadline = time.monotonic() + 120
    while not all((r.root / "ready").exists() for r in (first, second)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for p in processes:
                p.kill()
            pytest.fail(str([p.communicate() for p in processes]))
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    numbers = {out.strip() for out, _ in outputs}
    assert len(numbers) == 1  # both processes ended on the same registered version
    assert first.version_count("1.1.0") == 1
    assert first.champion() == "1.1.0"
    assert first.versions()["1.1.0"] == numbers.pop()


def test_release_on_a_live_server_then_history_and_rollback(tmp_path, power, mlflow_backends, monkeypatch, cli):
    mlflow_server = mlflow_backends
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    repo = Repo(tmp_path, power, mlflow_server)
    repo.configure(mlflow=f'tracking_uri = "{mlflow_server}"\nexperiment = "live-release"')
    repo.git("commit", "--quiet", "-am", "experiment")
    repo.publish_v1()
    report = repo.report()
    result = cli("release", "--report", report)
    assert result.exit_code == 0, result.output
    assert repo.champion() == "1.1.0" and not (tmp_path / ".release-kit" / "mlflow.db").exists()

    rolled = cli("rollback", "--to", "1.0.0", "--reason", "night forecasts drift in production", "--by", "oncall")
    assert rolled.exit_code == 0, rolled.output
    assert "from 1.1.0 to 1.0.0" in rolled.stdout and repo.champion() == "1.0.0"
    assert "nothing to do" in cli("rollback", "--to", "1.0.0", "--reason", "again").stdout
    # Re-running the release (a CI re-run), from its report or a new gate run of the same file, does not undo
    # the rollback: putting 1.1.0 back is rollback's decision.
    for again in (report, repo.report(name="again.json")):
        refused = cli("release", "--report", again)
        assert refused.exit_code == 1, refused.output
        assert "1.1.0 was rolled back from @champion" in refused.stderr and "by oncall (night forecasts drift" in refused.stderr
        assert "rollback --to 1.1.0" in refused.stderr and repo.champion() == "1.0.0"

    ledger = json.loads(cli("history", "--format", "json").stdout)
    assert [entry["version"] for entry in ledger] == ["1.1.0", "1.0.0"]
    assert ledger[1]["aliases"] == ["champion"] and ledger[0]["aliases"] == []
    assert ledger[0]["bump"] == "minor" and ledger[0]["git_sha"] == repo.git("rev-parse", "HEAD")
    assert ledger[1]["rollbacks"][0] | {"at": None} == {
        "from": "1.1.0", "to": "1.0.0", "alias": "champion", "reason": "night forecasts drift in production", "by": "oncall", "at": None,
    }
    monkeypatch.setenv("COLUMNS", "200")
    table = cli("history").stdout
    assert "1.1.0" in table and "@champion" in table and "night forecasts drift" in table

    unknown = cli("rollback", "--to", "0.9.0", "--reason", "x")
    assert unknown.exit_code == 2 and "no released version '0.9.0' (released: 1.1.0, 1.0.0)" in unknown.stderr


def test_first_release_then_the_next_note_lists_what_changed(tmp_path, power, monkeypatch, cli):
    """A model's whole life in release-kit: first release (no baseline), then a minor release whose note
    compares the two reproducibility manifests."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    repo = Repo(tmp_path, power)
    first = cli("release", "--candidate", repo.models["v1"], "--baseline", "none", "--format", "json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["version"] == "1.0.0" and repo.champion() == "1.0.0"
    # The first release's quality is measured with no baseline to compare: the ledger records it all the same.
    ledger = cli("history", "--format", "json")
    assert ledger.exit_code == 0, ledger.output
    first_metrics = json.loads(ledger.stdout)[0]["metrics"]
    assert {"quality.mae", "quality.rmse", "quality.r2"} <= first_metrics.keys()
    assert isinstance(first_metrics["quality.mae"], float) and 0 < first_metrics["quality.mae"] < 1  # numbers, not text
    assert "mae" in cli("history").stdout  # the table's quality column: "—" before

    repo.configure(release='tag_format = "release/{model}/{version}"')
    repo.git("commit", "--quiet", "-am", "tag format")
    second = cli("release", "--candidate", repo.models["better"])
    assert second.exit_code == 0, second.output
    note = second.stdout
    assert "### What changed since 1.0.0" in note
    assert "| model file |" in note and "| code (git sha) |" in note and "| config release.tag\\_format |" in note
    assert repo.tags() == ["power-forecast-v1.0.0", "release/power-forecast/1.1.0"]
    assert repo.changelog() == ["1.1.0", "1.0.0"]
    assert repo.champion() == "1.1.0"



def test_with_no_baseline_named_the_champion_is_the_baseline(tmp_path, power, monkeypatch, cli):
    """A config without [baseline] compares with the released version the alias points at: before, each
    check called itself a first release (1.0.0, a taken version) and only the release step refused it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    repo = Repo(tmp_path, power)
    assert cli("release", "--candidate", repo.models["v1"], "--baseline", "none").exit_code == 0
    config = repo.root / "release-kit.toml"
    config.write_text(config.read_text().replace('[baseline]\npath = "models:/power-forecast@champion"\n', ""))
    assert "[baseline]" not in config.read_text()
    report = json.loads(cli("check", "--candidate", repo.models["better"], "--format", "json").stdout)
    assert report["baseline"]["source"] == "models:/power-forecast@champion" and report["baseline"]["version"] == "1.0.0"
    assert (report["bump"], report["next_version"]) == ("minor", "1.1.0"), report["bump_reason"]
    forced = json.loads(cli("check", "--candidate", repo.models["better"], "--baseline", "none", "--format", "json").stdout)
    assert forced["baseline"] is None and forced["first_release"]


def test_with_no_baseline_named_an_unreachable_registry_is_a_clear_error(project, power, cli, monkeypatch):
    """Looking up the champion needs the registry: a server that does not answer is one line, exit 2, before
    the gate runs (not a first release by default, nor a crash)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", f'tracking_uri = "http://127.0.0.1:{free_port()}"')
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert result.exit_code == 2 and result.stderr.startswith("release-kit: error: cannot reach MLflow at http://127.0.0.1:"), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (project.root / "report.json").exists()


def test_a_gate_other_than_the_configured_one_releases_nothing(repo, cli):
    """A gate narrowed with --stage or --max-rows, pointed at other data (--data), run by a laxer config
    (--config) or by user checks since changed passed what it saw: a candidate that [gate] stages block passed
    `--stage performance` alone. Such a report, or `release --stage`/`--max-rows`, is refused before anything
    is written."""
    narrowed = cli("check", "--candidate", repo.models["better"], "--stage", "quality", "--report", "narrowed.json")
    assert narrowed.exit_code == 0, narrowed.output
    for args in (("--report", "narrowed.json"), ("--candidate", repo.models["better"], "--stage", "quality")):
        refused = cli("release", *args)
        assert refused.exit_code == 2, refused.output
        assert "the report's gate did not run the outliers stage of [gate] stages (quality, outliers): a release needs the whole gate" \
            in refused.stderr
    prefix = cli("check", "--candidate", repo.models["better"], "--max-rows", "300", "--report", "prefix.json")
    assert prefix.exit_code == 0, prefix.output
    assert json.loads((repo.root / "prefix.json").read_text())["data"]["golden"]["max_rows"] == 300
    for args in (("--report", "prefix.json"), ("--candidate", repo.models["better"], "--max-rows", "300")):
        refused = cli("release", *args)
        assert refused.exit_code == 2, refused.output
        assert "the report's gate read the first 300 golden rows, where [run] reads every row: a release needs the gate [run]" \
            in refused.stderr
    # Another golden set (--data), or a laxer config (--config): the gate this config sets did not decide.
    (repo.root / "out").mkdir(exist_ok=True)  # ignored by git: the tree stays clean
    shutil.copy(repo.power["golden"], repo.root / "out" / "easier.csv")
    (repo.root / "lax.toml").write_text((repo.root / "release-kit.toml").read_text() + "\n[quality.tolerance]\nmae = 1.0\n")
    for args in (("--data", "out/easier.csv"), ("--config", "lax.toml")):
        other = cli("check", "--candidate", repo.models["better"], *args, "--report", "other.json")
        assert other.exit_code == 0, other.output
        refused = cli("release", "--report", "other.json")
        assert refused.exit_code == 2, refused.output
        assert "the report's gate read another golden set or decided by other settings than this config's" in refused.stderr
    # The user checks decide too: a report checked before a check was weakened is not this tree's gate.
    (repo.root / "checks").mkdir(exist_ok=True)
    (repo.root / "checks" / "test_night.py").write_text("def test_night(predictions):\n    assert predictions.candidate.min() >= 0\n")
    repo.git("add", "checks")
    repo.git("commit", "--quiet", "-m", "a user check")
    checked = cli("check", "--candidate", repo.models["better"], "--report", "checked.json")
    assert checked.exit_code == 0, checked.output
    (repo.root / "checks" / "test_night.py").write_text("def test_night(predictions):\n    assert True\n")
    repo.git("commit", "--quiet", "-am", "the user check, weakened")
    refused = cli("release", "--report", "checked.json")
    assert refused.exit_code == 2 and "decided by other settings than this config's" in refused.stderr, refused.output
    assert repo.champion() == "1.0.0" and "1.1.0" not in repo.versions() and repo.changelog() == []


def test_a_report_checked_on_other_golden_contents_releases_nothing(repo, cli):
    """The golden set at the configured path changed after the check (a branch that dropped the rows the
    candidate gets wrong, then restored them): the report decided about other rows, and the release is
    refused (exit 2) before anything is written, for a file read whole, a streamed Parquet directory and a
    SQL table (read again); so is one checked against another reference, a file or a SQL table. The same
    contents again release."""
    import sqlite3

    import pandas as pd

    golden = pd.read_csv(repo.power["golden"])
    (repo.root / "out").mkdir(exist_ok=True)  # ignored by git: the tree stays clean
    (repo.root / "out" / "parts").mkdir()
    golden.iloc[:1000].to_parquet(repo.root / "out" / "parts" / "part-0.parquet")
    golden.iloc[1000:].to_parquet(repo.root / "out" / "parts" / "part-1.parquet")
    config = (repo.root / "release-kit.toml").read_text()
    def to_sql(frame):
        with sqlite3.connect(repo.root / "out" / "golden.db") as connection:
            frame.to_sql("golden", connection, index=False, if_exists="replace")

    sql = f"sqlite:///{repo.root / 'out' / 'golden.db'}#golden"
    for source, change in (("out/golden.csv", lambda: golden.iloc[:-5].to_csv(repo.root / "out" / "golden.csv", index=False)),
                           ("out/parts", lambda: golden.iloc[1000:-5].to_parquet(repo.root / "out" / "parts" / "part-1.parquet")),
                           (sql, lambda: to_sql(golden.iloc[:-5]))):
        golden.to_csv(repo.root / "out" / "golden.csv", index=False)
        golden.iloc[1000:].to_parquet(repo.root / "out" / "parts" / "part-1.parquet")
        to_sql(golden)
        (repo.root / "release-kit.toml").write_text(config.replace(f'golden = "{repo.power["golden"]}"', f'golden = "{source}"'))
        repo.git("commit", "--quiet", "-am", f"golden set at {source}")
        checked = cli("check", "--candidate", repo.models["better"], "--report", "checked.json")
        assert checked.exit_code == 0, checked.output
        streamed = json.loads((repo.root / "checked.json").read_text())["environment"]["golden_read"]
        assert streamed == ("local" if source == "out/parts" else "whole")
        change()
        refused = cli("release", "--report", "checked.json")
        assert refused.exit_code == 2, refused.output
        named = source if source == sql else repo.root / source
        assert refused.stderr.startswith(f"release-kit: error: [data] golden {named} is not the golden set the report's gate read"), refused.stderr
        assert "its contents changed since the check" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert repo.champion() == "1.0.0" and "1.1.0" not in repo.versions() and repo.changelog() == []
    to_sql(golden)  # the rows the check read: read again, they release
    assert cli("release", "--report", "checked.json", "--dry-run").exit_code == 0
    # The reference the data stage profiles and measures drift against, changed since the check: refused too.
    shutil.copy(repo.power["train"], repo.root / "out" / "train.csv")
    text = (repo.root / "release-kit.toml").read_text()
    (repo.root / "release-kit.toml").write_text(text.replace(f'reference = "{repo.power["train"]}"', 'reference = "out/train.csv"'))
    repo.git("commit", "--quiet", "-am", "the reference in the project")
    assert cli("check", "--candidate", repo.models["better"], "--report", "checked.json").exit_code == 0
    pd.read_csv(repo.power["train"]).iloc[:-50].to_csv(repo.root / "out" / "train.csv", index=False)
    refused = cli("release", "--report", "checked.json")
    assert refused.exit_code == 2 and "decided by other settings than this config's" in refused.stderr, refused.output
    shutil.copy(repo.power["train"], repo.root / "out" / "train.csv")
    assert cli("release", "--report", "checked.json", "--dry-run").exit_code == 0
    # A SQL reference table has no file: its rows are read again, and rows changed in the database are seen.
    def reference_to_sql(frame):
        with sqlite3.connect(repo.root / "out" / "reference.db") as connection:
            frame.to_sql("reference", connection, index=False, if_exists="replace")

    train = pd.read_csv(repo.power["train"])
    reference_to_sql(train)
    text = (repo.root / "release-kit.toml").read_text()
    (repo.root / "release-kit.toml").write_text(text.replace('reference = "out/train.csv"', f'reference = "sqlite:///{repo.root / "out" / "reference.db"}#reference"'))
    repo.git("commit", "--quiet", "-am", "the reference in a database")
    assert cli("check", "--candidate", repo.models["better"], "--report", "checked.json").exit_code == 0
    reference_to_sql(train.iloc[:-50])
    refused = cli("release", "--report", "checked.json")
    assert refused.exit_code == 2 and "decided by other settings than this config's" in refused.stderr, refused.output
    reference_to_sql(train)
    assert cli("release", "--report", "checked.json").exit_code == 0 and repo.champion() == "1.1.0"


def test_a_check_against_another_file_than_the_released_one_releases_nothing(repo, cli):
    """A release replaces the version under @champion: a check that compared the candidate with another file
    (an older, weaker model, given the champion's version) or with nothing (--baseline none) let through a
    candidate the champion would block, and the release moved the alias to it. Compared with the champion's
    own file, it releases."""
    import power_forecast as pf
    import torch

    older = pf.baseline_factory()  # v1 with its output shifted by 0.3 kW: a weaker model than the champion
    older.load_state_dict(torch.jit.load(str(repo.models["v1"])).state_dict())
    with torch.no_grad():
        older.net[-1].bias += 0.3
    night = repo.root / "models" / "older.pt"
    pf.save_torchscript(older, night)
    weak = cli("check", "--candidate", repo.models["better"], "--baseline", night, "--baseline-version", "1.0.0", "--report", "weak.json")
    repo.configure(release='initial_version = "0.1.0"')  # a first release's version free in the registry
    repo.git("commit", "--quiet", "-am", "first releases start at 0.1.0")
    first = cli("check", "--candidate", repo.models["better"], "--baseline", "none", "--report", "first.json")
    assert weak.exit_code == 0 and first.exit_code == 0, weak.output + first.output
    for report, what in (("weak.json", f"{night} (sha256 "), ("first.json", "no baseline (a first release)")):
        refused = cli("release", "--report", report)
        assert refused.exit_code == 2, refused.output
        assert "@champion of power-forecast is version 1 (sha256 " in refused.stderr and f"but the check compared against {what}" in refused.stderr
    assert repo.champion() == "1.0.0" and repo.versions() == {"1.0.0": "1"}
    own = cli("check", "--candidate", repo.models["better"], "--baseline", repo.models["v1"], "--baseline-version", "1.0.0",
              "--report", "own.json")
    assert own.exit_code == 0, own.output
    assert cli("release", "--report", "own.json", "--dry-run").exit_code == 0


def test_pre_release_does_not_move_the_alias(repo, cli):
    result = cli("release", "--candidate", repo.models["better"], "--prerelease", "rc", "--format", "json")
    assert result.exit_code == 0, result.output
    steps = {step["step"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["alias"]["action"] == "skipped" and "pre-release 1.1.0-rc.1" in steps["alias"]["detail"]
    assert repo.versions()["1.1.0-rc.1"] and repo.champion() == "1.0.0"
    assert repo.changelog() == ["1.1.0-rc.1"]


def test_the_alias_moving_during_a_release_stops_it_before_the_alias(repo):
    report_path = repo.report()
    plan = repo.plan(report_path)

    def someone_else_moves_it(outcome):
        if outcome.step == "changelog":
            publish(repo.power["night"], "power-forecast", "1.0.1", tracking_uri=repo.uri, alias="champion")

    with pytest.raises(releases.ReleaseConflict, match="moved to version 3 while releasing"):
        releases.execute(plan, on_step=someone_else_moves_it)
    assert repo.champion() == "1.0.1"


# Refused before anything is written -------------------------------------------------------------------


def assert_nothing_released(repo: Repo) -> None:
    assert repo.versions() == {"1.0.0": "1"} and repo.champion() == "1.0.0"
    assert repo.tags() == [] and not (repo.root / "CHANGELOG.md").exists()


def test_blocked_report_is_not_released(repo, cli):
    result = cli("release", "--report", repo.report("night"))
    assert result.exit_code == 1 and "not released: the gate blocked this candidate" in result.stderr
    assert_nothing_released(repo)


def test_identical_model_has_nothing_to_release(repo, cli):
    result = cli("release", "--report", repo.report("v1"))
    assert result.exit_code == 0 and "nothing to release: predictions are bit-identical" in result.stderr
    assert_nothing_released(repo)


def test_dirty_tree_is_refused_unless_allowed(repo, cli):
    report_path = repo.report()
    (repo.root / "release-kit.toml").write_text((repo.root / "release-kit.toml").read_text() + "\n# edited\n")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "release-kit: error: the git tree has uncommitted changes (release-kit.toml); commit them or pass --allow-dirty"
    )
    assert_nothing_released(repo)

    allowed = cli("release", "--report", report_path, "--allow-dirty")
    assert allowed.exit_code == 0, allowed.output
    version = repo.client().get_model_version("power-forecast", "2")
    assert version.tags["release_kit.git_dirty"] == "true"
    assert "(with uncommitted changes)" in allowed.stdout


def test_unknown_template_variable_is_an_input_error(repo, cli):
    report_path = repo.report()
    templates = repo.root / "templates"
    templates.mkdir()
    (templates / "release-note.md.j2").write_text("# {{ release.model }} {{ release.codename }}\n")
    repo.configure(release=f'templates = "{templates}"')
    repo.git("add", ".")
    repo.git("commit", "--quiet", "-m", "templates")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "release-kit: error: cannot render template release-note.md.j2: 'release_kit.render.ReleaseContext object' has no attribute 'codename'"
    ]
    assert_nothing_released(repo)


def test_unwritable_changelog_is_an_input_error(repo, cli):
    report_path = repo.report()
    (repo.root / "docs").write_text("a file where the CHANGELOG's directory should be")
    repo.configure(release='changelog = "docs/CHANGELOG.md"')
    repo.git("add", ".")
    repo.git("commit", "--quiet", "-m", "changelog path")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2
    assert "cannot write" in result.stderr and "(CHANGELOG)" in result.stderr and "docs/CHANGELOG.md" in result.stderr
    assert repo.versions() == {"1.0.0": "1"} and repo.tags() == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_read_only_changelog_is_an_input_error(repo, cli):
    report_path = repo.report()
    changelog = repo.root / "CHANGELOG.md"
    changelog.write_text("# Changelog\n")
    changelog.chmod(0o444)
    repo.git("add", ".")
    repo.git("commit", "--quiet", "-m", "changelog")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2 and "cannot write" in result.stderr and "(CHANGELOG)" in result.stderr
    assert repo.versions() == {"1.0.0": "1"} and repo.tags() == []


def test_unreachable_registry_is_a_clear_error(repo, cli, monkeypatch):
    report_path = repo.report()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    repo.configure(mlflow=f'tracking_uri = "http://127.0.0.1:{free_port()}"')
    repo.git("commit", "--quiet", "-am", "server")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("release-kit: error: cannot reach MLflow at http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert repo.tags() == [] and not (repo.root / "CHANGELOG.md").exists()


def test_model_file_changed_since_the_check_is_refused(repo, cli, tmp_path):
    copy = tmp_path / "candidate.pt2"
    copy.write_bytes(repo.power["better"].read_bytes())
    report = gate.check(candidate=str(copy), directory=repo.root)
    report.write(repo.root / "out" / "r.json")
    copy.write_bytes(repo.power["night"].read_bytes())
    result = cli("release", "--report", repo.root / "out" / "r.json")
    assert result.exit_code == 2 and f"model file {copy} changed since the check" in result.stderr
    assert_nothing_released(repo)


def test_alias_moved_since_the_check_is_refused(repo, cli):
    report_path = repo.report()
    publish(repo.power["v1_safetensors"], "power-forecast", "1.0.1", tracking_uri=repo.uri, alias="champion")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 1
    assert "@champion of power-forecast now points to version 2, but the check compared against version 1" in result.stderr
    assert repo.tags() == [] and not (repo.root / "CHANGELOG.md").exists()


def test_version_taken_by_another_model_file_is_refused(repo, cli):
    # Taken after the check (a check made now would count from it: see test_pipeline's rollback test).
    report_path = repo.report()
    publish(repo.power["night"], "power-forecast", "1.1.0", tracking_uri=repo.uri)
    result = cli("release", "--report", report_path)
    assert result.exit_code == 1 and "power-forecast 1.1.0 is already registered (version 2) with another model file" in result.stderr
    assert repo.tags() == [] and repo.champion() == "1.0.0"


def test_existing_tag_on_another_commit_is_refused(repo, cli):
    report_path = repo.report()
    repo.git("tag", "power-forecast-v1.1.0")
    repo.git("commit", "--quiet", "--allow-empty", "-m", "later")
    result = cli("release", "--report", report_path)
    assert result.exit_code == 1 and "git tag power-forecast-v1.1.0 already exists at" in result.stderr
    assert repo.versions() == {"1.0.0": "1"}


def test_outside_a_git_repository_is_an_input_error(tmp_path, power, cli, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(golden=power["golden"], reference=power["train"], mlflow="", release=""))
    publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=embedded_uri(tmp_path), alias="champion", signature=V1_CONTRACT)
    shutil.copy(power["better"], tmp_path / "better.pt")
    result = cli("release", "--candidate", "better.pt", "--no-mlflow")
    assert result.exit_code == 2 and "is not in a git repository" in result.stderr and "git_tag = false" in result.stderr

    (tmp_path / "release-kit.toml").write_text(
        CONFIG.format(golden=power["golden"], reference=power["train"], mlflow="", release="git_tag = false"))
    released = cli("release", "--candidate", "better.pt", "--format", "json")
    assert released.exit_code == 0, released.output
    steps = {step["step"]: step["action"] for step in json.loads(released.stdout)["steps"]}
    assert steps["git-tag"] == "skipped" and steps["alias"] == "done"


def test_report_for_another_model_is_refused(repo, cli):
    report_path = repo.report()
    data = json.loads(report_path.read_text())
    data["model"] = "wind-forecast"
    report_path.write_text(json.dumps(data))
    result = cli("release", "--report", report_path)
    assert result.exit_code == 2 and "the report is for model 'wind-forecast'" in result.stderr
    assert_nothing_released(repo)


def test_release_in_github_actions_sets_outputs_and_the_summary(repo, cli, tmp_path, monkeypatch):
    output, summary = tmp_path / "github-output", tmp_path / "github-summary"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = cli("release", "--report", repo.report(), "--format", "github", "--note-out", "release-note.md")
    assert result.exit_code == 0, result.output
    text = output.read_text()
    for name, value in (("version", "1.1.0"), ("tag", "power-forecast-v1.1.0"), ("note", "release-note.md")):
        assert f"{name}<<" in text and f"\n{value}\n" in text
    assert summary.read_text() == (repo.root / "release-note.md").read_text()

    output.write_text("")
    nothing = cli("release", "--report", repo.report("better", name="again.json", baseline="models:/power-forecast@champion"),
                  "--format", "github")
    assert nothing.exit_code == 0 and "nothing to release" in nothing.stderr
    assert "\n\n" in output.read_text() and "1.1.0" not in output.read_text()  # empty outputs: the workflow skips publishing


def test_gate_flags_with_a_saved_report_are_refused(repo, cli):
    result = cli("release", "--report", repo.report(), "--prerelease", "rc", "--candidate", "other.pt")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "release-kit: error: --prerelease, --candidate shape(s) a gate run; with --report the saved report decides (drop one or the other)"
    )
    assert_nothing_released(repo)


def test_history_and_rollback_bad_input(repo, cli):
    unknown = cli("history", "--model", "wind-forecast")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().splitlines() == [f"release-kit: error: no released versions of 'wind-forecast' in the registry at {repo.uri}"]
    blank = cli("rollback", "--to", "1.0.0", "--reason", "  ")
    assert blank.exit_code == 2 and "--reason must say why" in blank.stderr
    assert repo.champion() == "1.0.0"
