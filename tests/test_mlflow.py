"""MLflow for real: the embedded SQLite store, registry baselines, and a live `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json

from conftest import free_port

from release_kit import gate
from release_kit.registry import publish
from release_kit.tracking import embedded_uri


def enable_mlflow(project, tracking_uri: str | None = None) -> None:
    text = (project.root / "release-kit.toml").read_text()
    replacement = "enabled = true" + (f'\ntracking_uri = "{tracking_uri}"' if tracking_uri else "")
    project.write("release-kit.toml", text.replace("enabled = false", replacement).replace('version = "1.0.0"', ""))


def test_registry_baseline_on_the_embedded_store(project, power, cli):
    uri = embedded_uri(project.root)
    assert publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=uri, alias="champion") == "1"
    assert publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=uri, alias="champion") == "1"  # idempotent
    enable_mlflow(project)

    result = cli("check", "--candidate", power["better"], "--baseline", "models:/power-forecast@champion", "--report", "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((project.root / "r.json").read_text())
    assert report["baseline"]["version"] == "1.0.0"  # from the registry's release_kit.version tag
    assert report["baseline"]["registry"]["version"] == "1"
    assert report["next_version"] == "1.1.0"

    # The run was logged to the embedded store, with metrics and the report as an artifact.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.tags["release_kit.verdict"] == "pass"
    assert run.data.metrics["quality.mae.candidate"] < run.data.metrics["quality.mae.baseline"]
    assert run.data.params["golden_sha256"] == report["data"]["golden"]["sha256"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["report.json"]
    assert (project.root / ".release-kit" / "mlflow.db").is_file()
    assert not (project.root / "mlruns").exists()


def test_registry_uri_forms(project, power):
    uri = embedded_uri(project.root)
    publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=uri)
    publish(power["better"], "power-forecast", "1.1.0", tracking_uri=uri, alias="champion")
    enable_mlflow(project)
    by_number = gate.check(candidate=str(power["better"]), baseline="models:/power-forecast/1", log_to_mlflow=False)
    assert by_number.baseline["version"] == "1.0.0" and by_number.bump.value == "minor"
    by_alias = gate.check(candidate=str(power["better"]), baseline="models:/power-forecast@champion", log_to_mlflow=False)
    assert by_alias.bump.value == "none"  # the same model file as the champion
    run_id = by_alias.baseline["registry"]["run_id"]
    by_run = gate.check(candidate=str(power["better"]), baseline=f"runs:/{run_id}/model", log_to_mlflow=False)
    assert by_run.bump.value == "none" and by_run.baseline["version"] is None


def test_unreachable_tracking_server_is_a_clear_error(project, power, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    enable_mlflow(project, f"http://127.0.0.1:{free_port()}")
    result = cli("check", "--candidate", power["better"], "--report", "r.json")
    assert result.exit_code == 2
    assert "cannot reach MLflow at http://127.0.0.1:" in result.stderr
    assert not (project.root / "r.json").exists()


def test_registry_baseline_on_a_live_mlflow_server(project, power, cli, mlflow_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A registered model of this test's own: the server is shared with other modules' tests.
    assert publish(power["v1"], "live-baseline", "1.0.0", tracking_uri=mlflow_server, alias="champion") == "1"
    enable_mlflow(project, mlflow_server)
    result = cli("check", "--candidate", power["night"], "--baseline", "models:/live-baseline@champion", "--report", "r.json")
    assert result.exit_code == 1, result.output
    report = json.loads((project.root / "r.json").read_text())
    assert report["baseline"]["version"] == "1.0.0"
    assert report["mlflow"]["tracking_uri"] == mlflow_server

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.tags["release_kit.verdict"] == "block"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.json"]
    assert not (project.root / ".release-kit").exists()  # nothing embedded when a server is configured


def test_environment_variable_selects_the_server(project, power, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    enable_mlflow(project)
    report = gate.check(candidate=str(power["better"]))
    assert report.mlflow["tracking_uri"] == mlflow_server
