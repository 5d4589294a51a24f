"""The gate end to end on real models: verdicts, bumps, the report contract, user checks."""

from __future__ import annotations

import json

import pytest

from release_kit import gate
from release_kit.report import SCHEMA_VERSION, Status, load_report


def statuses(report) -> dict[str, str]:
    return {f"{c.stage}::{c.name}": c.status.value for c in report.checks}


def test_night_negative_candidate_is_blocked_with_exit_1(project, power, cli):
    result = cli("check", "--candidate", power["night"], "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 1, result.output
    report = json.loads((project.root / "report.json").read_text())
    assert report["verdict"] == "block"
    assert report["bump"] is None  # schema 1.1: a blocked report has no bump
    assert report["next_version"] is None
    contract = next(c for c in report["checks"] if c["name"] == "output_contract")
    assert contract["status"] == "fail"
    assert "below min 0" in contract["summary"]
    assert contract["details"]["violations"]["below min 0"] > 100
    assert contract["details"]["introduced"] == contract["details"]["violations"]["below min 0"]
    table = contract["details"]["table"]
    first = dict(zip(table["columns"], table["rows"][0]))
    assert first["candidate"] < 0 <= first["baseline"] and first["irradiance"] == 0.0


def test_better_candidate_passes_with_a_minor_bump(project, power, cli):
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((project.root / "report.json").read_text())
    assert (report["verdict"], report["bump"]) == ("pass", "minor")
    assert (report["current_version"], report["next_version"]) == ("1.0.0", "1.1.0")
    assert report["schema_version"] == SCHEMA_VERSION
    mae = next(c for c in report["checks"] if c["name"] == "mae")
    metric = mae["metrics"][0]
    assert metric["candidate"] < metric["baseline"]
    assert metric["delta"] == pytest.approx(metric["candidate"] - metric["baseline"])
    assert metric["ci_low"] < metric["delta"] < metric["ci_high"] < 0
    for check in report["checks"]:
        assert set(check) >= {"stage", "name", "status", "summary"}
        assert check["status"] in {"pass", "fail", "warn", "skip", "error"}


def test_same_model_as_baseline_is_bump_none(project, power):
    report = gate.check(candidate=str(power["v1"]), baseline=str(power["v1"]))
    assert report.verdict.value == "pass"
    assert report.bump.value == "none"
    assert report.next_version == "1.0.0"
    assert "bit-identical" in report.bump_reason


def test_a_report_written_before_schema_1_3_digests_as_it_did(project, power):
    """The fields 1.3 added (policy_sha256, data.golden.max_rows) count in the digest only when set: a 1.2
    report read back (without them) digests as its gate run logged it, so `release --report` says what it
    lacks instead of calling it changed."""
    import dataclasses
    import hashlib

    from release_kit.report import Report

    report = gate.check(candidate=str(power["v1"]), baseline=str(power["v1"]))
    assert report.policy_sha256 and report.data["golden"].max_rows is None
    unset = dataclasses.replace(report, policy_sha256=None)
    old = unset.to_dict()
    del old["policy_sha256"], old["data"]["golden"]["max_rows"]
    # What a 1.2 gate run logged: the digest of the report as it was written, without the fields.
    logged = hashlib.sha256(json.dumps({k: v for k, v in old.items() if k != "mlflow"}, sort_keys=True).encode()).hexdigest()
    assert Report.from_dict(old).digest() == logged == unset.digest() != report.digest()


def test_bump_none_says_the_version_stays(project, power, cli):
    """A bump of none keeps the baseline's version: neither the terminal nor the markdown announces one."""
    text = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--stage", "quality", "--no-mlflow")
    assert text.exit_code == 0 and "bump none (stays 1.0.0)" in text.stdout and "→ 1.0.0" not in text.stdout
    markdown = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--stage", "quality", "--no-mlflow",
                   "--format", "markdown")
    assert "**Version:** stays **1.0.0** (bump none: nothing to release)" in markdown.stdout


def test_a_gate_without_the_quality_stage_says_the_primary_metric_was_not_measured(project, power, cli):
    """--stage outliers passes with a patch at most, and says why: no improvement was measured, not 'none found'."""
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--stage", "outliers", "--no-mlflow")
    assert result.exit_code == 0, result.output[-2000:]
    assert "bump patch → 1.0.1: passes; mae, the primary metric, was not measured (the quality stage did not run)" in " ".join(result.stdout.split())


def test_neutral_change_is_a_patch(project, power):
    """v1 with its output bias nudged by 1e-4 kW: not identical, no significant change → patch."""
    import power_forecast as pf
    import torch

    nudged = pf.baseline_factory()
    nudged.load_state_dict(torch.jit.load(str(power["v1"])).state_dict())
    with torch.no_grad():
        nudged.net[-1].bias += 1e-4
    path = project.root / "nudged.pt"
    pf.save_torchscript(nudged, path)
    report = gate.check(candidate=str(path), baseline=str(power["v1"]))
    assert report.verdict.value == "pass", [(c.name, c.summary) for c in report.checks]
    assert report.bump.value == "patch"
    assert report.next_version == "1.0.1"
    # Each metric's two values are shown with the digits that tell them apart (4 significant digits showed
    # "0.1234 → 0.1234" for a change the interval beside them measured), and none as a whole number it is not.
    import re

    for check in (c for c in report.checks if c.stage == "quality" and c.metrics and c.metrics[0].delta):
        shown = re.search(r"(\S+) → (\S+) \(", check.summary)
        assert shown and shown.group(1) != shown.group(2), check.summary
        metric = check.metrics[0]
        for text, value in zip(shown.groups(), (metric.baseline, metric.candidate)):
            assert text.lstrip("-").replace(".", "", 1).isdigit() and float(text) == pytest.approx(value, rel=1e-3), check.summary


def test_worse_candidate_fails_the_metric_on_its_interval(project, power):
    report = gate.check(candidate=str(power["v1"]), baseline=str(power["better"]))
    assert report.verdict.value == "block"
    mae = next(c for c in report.checks if c.name == "mae")
    assert mae.status is Status.FAIL
    worse_low, _ = mae.metrics[0].worsening_interval
    assert worse_low > mae.metrics[0].tolerance


def test_no_baseline_is_an_explicit_first_release(project, power):
    project.config("[release]\ninitial_version = \"0.1.0\"\n").read_text()
    report = gate.check(candidate=str(power["better"]))
    assert report.first_release is True
    assert (report.verdict.value, report.next_version) == ("pass", "0.1.0")
    assert report.baseline is None
    assert statuses(report)["quality::mae"] == "skip"  # nothing to compare, never a silent pass


def test_command_line_flags_win_over_config(project, power, cli):
    project.config(f'[candidate]\npath = "{power["night"]}"\n')
    assert cli("check", "--baseline", power["v1"]).exit_code == 1
    assert cli("check", "--candidate", power["better"], "--baseline", power["v1"]).exit_code == 0


def test_config_in_pyproject(project, power, cli):
    text = (project.root / "release-kit.toml").read_text()
    (project.root / "release-kit.toml").unlink()
    tool = "\n".join(
        line.replace("[", "[tool.release-kit.", 1) if line.startswith("[") else line for line in text.splitlines()
    )
    (project.root / "pyproject.toml").write_text('[project]\nname = "demo"\n' + tool)
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"])
    assert result.exit_code == 0, result.output


def test_safetensors_with_factory(project, power, cli):
    text = (project.root / "release-kit.toml").read_text().replace(
        '[baseline]\nversion = "1.0.0"', '[baseline]\nversion = "1.0.0"\nfactory = "power_forecast:baseline_factory"'
    )
    (project.root / "release-kit.toml").write_text(text)
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1_safetensors"], "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["baseline"]["kind"] == "safetensors"
    assert report["bump"] == "none"  # same weights, same predictions


def test_markdown_output_and_note_from_saved_report(project, power, cli):
    result = cli("check", "--candidate", power["night"], "--baseline", power["v1"], "--format", "markdown",
                 "--report", "r.json")
    assert result.exit_code == 1
    assert "⛔ release-kit: `power-forecast` — BLOCK" in result.stdout
    assert "| ❌ fail | `quality::output_contract` |" in result.stdout
    note = cli("note", "--report", "r.json")
    assert note.exit_code == 0
    assert note.stdout == result.stdout
    assert load_report(project.root / "r.json").verdict.value == "block"


def test_user_checks_land_in_the_report(project, power):
    project.write("checks/conftest.py", """
        import pytest

        @pytest.fixture
        def night(golden):
            return golden.frame["irradiance"].to_numpy() == 0
    """)
    project.write("checks/test_user.py", """
        import numpy as np
        import pytest

        def test_passes(predictions, night, record_metric):
            '''Night output is small.'''
            record_metric("night_max", float(np.abs(predictions.candidate[night]).max()), 0.0)

        def test_fails(predictions):
            assert predictions.candidate.min() > 10, "too small"

        def test_errors():
            raise RuntimeError("boom")

        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass

        def test_needs_baseline(baseline):
            assert baseline.version == "1.0.0"

        @pytest.mark.parametrize("unit", ["kW/h", "W"])
        def test_units(unit):
            assert unit
    """)
    project.write("checks/test_broken.py", "import does_not_exist\n")
    report = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    by_name = {c.name: c for c in report.checks if c.stage == "checks"}
    assert by_name["test_user.py::test_passes"].status is Status.PASS
    assert by_name["test_user.py::test_passes"].summary == "Night output is small."
    assert by_name["test_user.py::test_passes"].metrics[0].name == "night_max"
    assert by_name["test_user.py::test_fails"].status is Status.FAIL
    assert by_name["test_user.py::test_fails"].summary.startswith("too small")
    assert by_name["test_user.py::test_errors"].status is Status.ERROR
    assert "RuntimeError: boom" in by_name["test_user.py::test_errors"].summary
    assert by_name["test_user.py::test_skipped"].status is Status.SKIP
    assert by_name["test_user.py::test_skipped"].summary == "not today"
    assert by_name["test_user.py::test_needs_baseline"].status is Status.PASS
    assert by_name["test_user.py::test_units[kW/h]"].status is Status.PASS
    broken = by_name["checks/test_broken.py"]
    assert broken.status is Status.ERROR and "does_not_exist" in broken.summary
    assert report.verdict.value == "block"
    assert {c.stage for c in report.checks} == {"quality", "checks"}


def test_user_checks_outside_the_project_pytest_config(project, power):
    """The user's own pytest config (addopts, testpaths) does not leak into the gate's session."""
    project.write("pyproject.toml", '[tool.pytest.ini_options]\naddopts = "--definitely-not-an-option"\n')
    project.write("tests/test_unit.py", "def test_user_unit_test():\n    raise AssertionError('not a gate check')\n")
    report = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    assert report.verdict.value == "pass"
    assert all(c.stage == "quality" for c in report.checks)


def test_repeated_runs_in_one_process_reimport_user_checks(project, power, tmp_path_factory):
    project.write("checks/test_same_name.py", "def test_a():\n    assert True\n")
    first = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    other = tmp_path_factory.mktemp("other")
    (other / "checks").mkdir()
    (other / "checks" / "test_same_name.py").write_text("def test_a():\n    assert False, 'second project'\n")
    (other / "release-kit.toml").write_text((project.root / "release-kit.toml").read_text())
    second = gate.check(other / "release-kit.toml", candidate=str(power["better"]), baseline=str(power["v1"]))
    assert statuses(first)["checks::test_same_name.py::test_a"] == "pass"
    assert statuses(second)["checks::test_same_name.py::test_a"] == "fail"


def test_progress_listener_sees_every_check(project, power):
    seen = []

    class Listener:
        def rows(self, count, total, seconds):
            raise AssertionError("a golden set read whole has no scan")

        def started(self, total):
            seen.append(total)

        def finished(self, result):
            seen.append(result.name)

    report = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]), listener=Listener())
    assert seen[0] == len(report.checks)
    assert seen[1:] == [c.name for c in report.checks]


def test_bootstrap_intervals_reach_the_same_verdict(project, power):
    project.config("[quality]\ninterval = \"bootstrap\"\nbootstrap_resamples = 200\n")
    boot = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    project.config()
    analytic = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    assert (boot.verdict, boot.bump, boot.next_version) == (analytic.verdict, analytic.bump, analytic.next_version)
    b, a = boot.metric("mae"), analytic.metric("mae")
    assert b.delta == pytest.approx(a.delta)
    assert b.ci_low == pytest.approx(a.ci_low, rel=0.25) and b.ci_high == pytest.approx(a.ci_high, rel=0.25)
    assert (b.ci_low, b.ci_high) != (a.ci_low, a.ci_high)  # really resampled, not the analytic interval
