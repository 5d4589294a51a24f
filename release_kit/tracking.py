"""MLflow tracking: the embedded default store and logging of gate runs.

With no tracking URI in config or ``$MLFLOW_TRACKING_URI``, everything goes to a SQLite store at
``.release-kit/mlflow.db`` with artifacts under ``.release-kit/artifacts`` in the project directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ReleaseKitError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from .config import Config
    from .gate import GateContext
    from .report import Report

STATE_DIR = ".release-kit"
VERSION_TAG = "release_kit.version"

# MLflow's default HTTP retry policy waits minutes on an unreachable server; a gate should fail fast.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow prints run links on stdout for HTTP servers, which would corrupt `--format json` output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def tracking_uri(config: Config, project_dir: Path) -> str:
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return embedded_uri(project_dir)


def embedded_uri(project_dir: Path) -> str:
    return f"sqlite:///{(Path(project_dir) / STATE_DIR / 'mlflow.db').resolve()}"


def connect(uri: str) -> MlflowClient:
    """A client for tracking and registry at ``uri``; creates the embedded store's directory."""
    import logging

    from mlflow import MlflowClient

    # Schema-migration chatter on a new SQLite store is noise on a gate's terminal.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    experiment = _call(uri, client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        # Without this, MLflow puts artifacts in ./mlruns of whatever directory the process runs in.
        store = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        artifact_location = store.resolve().as_uri()
    return _call(uri, client.create_experiment, name, artifact_location=artifact_location)


def _call(uri: str, function, *args, **kwargs):
    """Run an MLflow call; turn connection failures into one clear line."""
    from mlflow.exceptions import MlflowException

    try:
        return function(*args, **kwargs)
    except MlflowException as error:
        text = str(error)
        if any(word in text for word in ("Max retries", "Connection", "connect", "API request")):
            raise ReleaseKitError(f"cannot reach MLflow at {uri}: {text.splitlines()[0][:200]}") from None
        raise


def log_gate_run(gate: GateContext, report: Report) -> dict[str, Any]:
    """One MLflow run per gate run: params, metrics, verdict tags and the report as an artifact."""
    uri = tracking_uri(gate.config, gate.project_dir)
    client = connect(uri)
    experiment_id = ensure_experiment(client, gate.config.mlflow.experiment, uri)
    run = _call(
        uri, client.create_run, experiment_id,
        run_name=f"check {report.model} {report.next_version or ''}".strip(),
        tags={
            "release_kit.verdict": report.verdict.value,
            "release_kit.bump": report.bump.value,
            "release_kit.model": report.model,
            **({"release_kit.next_version": report.next_version} if report.next_version else {}),
        },
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        params = {
            "model": report.model,
            "task": report.task,
            "candidate": report.candidate["source"],
            "candidate_sha256": report.candidate["sha256"],
            "baseline": report.baseline["source"] if report.baseline else "none",
            "golden_sha256": gate.golden.sha256,
            "golden_rows": len(gate.golden),
        }
        client.log_batch(run_id, params=_params(params), metrics=_metrics(report))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "report.json"
            path.write_text(report.to_json(), encoding="utf-8")
            client.log_artifact(run_id, str(path))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(key, str(value)[:6000]) for key, value in values.items()]


def _metrics(report: Report):
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for check in report.checks:
        for diff in check.metrics:
            prefix = f"{check.stage}.{diff.name}".replace(" ", "_")
            for suffix, value in (("candidate", diff.candidate), ("baseline", diff.baseline), ("delta", diff.delta)):
                if value is not None and math.isfinite(value):
                    metrics.append(Metric(f"{prefix}.{suffix}", float(value), now, 0))
    return metrics
