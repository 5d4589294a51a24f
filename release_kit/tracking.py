"""MLflow tracking: the embedded default store and logging of gate runs.

With no tracking URI in config or ``$MLFLOW_TRACKING_URI``, everything goes to a SQLite store at
``.release-kit/mlflow.db`` with artifacts under ``.release-kit/artifacts`` in the project directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, ReleaseKitError, first_line
from .tags import MODEL_SHA256_TAG, VERSION_TAG, GateRunTags, mlflow_key

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from .config import Config
    from .report import MlflowRef, Report

STATE_DIR = ".release-kit"
_MLFLOW_DEFAULTS = {
    # MLflow's default HTTP retry policy waits minutes on an unreachable server; a gate should fail fast.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow prints run links on stdout for HTTP servers, which would corrupt `--format json` output.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
def tracking_uri(config: Config, project_dir: Path) -> str:
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return embedded_uri(project_dir)


def embedded_uri(project_dir: Path) -> str:
    return f"sqlite:///{(Path(project_dir) / STATE_DIR / 'mlflow.db').resolve()}"


def check_store_writable(uri: str) -> None:
    """The embedded store must be creatable and writable, and one that exists must open, before a gate runs
    for minutes and then logs."""
    if uri.startswith("sqlite:///"):
        from .outputs import check_writable

        path = Path(uri.removeprefix("sqlite:///"))
        check_writable(path, "the embedded MLflow store (set [mlflow] tracking_uri, or --no-mlflow)")
        if path.exists():
            connect(uri)


def released_versions(uri: str, model: str, *, except_file: str | None = None) -> tuple[str, ...]:
    """Every semantic version of ``model`` in the registry (empty when the model or the embedded store
    does not exist yet), leaving out versions released from the model file with sha256 ``except_file``:
    releasing that file again is the same release, not a new version."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return ()
    from mlflow.exceptions import MlflowException

    client = connect(uri)
    try:
        found = call_store(uri, client.search_model_versions, f"name = '{quote_filter(model)}'")
    except MlflowException:
        return ()
    return tuple(sorted({
        v.tags[VERSION_TAG] for v in found
        if VERSION_TAG in v.tags and (except_file is None or v.tags.get(MODEL_SHA256_TAG) != except_file)
    }))


def quote_filter(text: str) -> str:
    """A value inside a single-quoted MLflow search-filter string."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def connect(uri: str) -> MlflowClient:
    """A client for tracking and registry at ``uri``; creates the embedded store's directory."""
    import logging

    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    # Schema-migration chatter on a new SQLite store is noise on a gate's terminal.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if not uri.startswith("sqlite:///") or uri in _SCHEMA_READY:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    from alembic.util import CommandError
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from .outputs import held_lock

    path = Path(uri.removeprefix("sqlite:///"))
    # Held while this process opens the store: MLflow creates or migrates the schema then, and two processes
    # doing it at once (three checks started together in a new project) left a half-run migration behind
    # ("table _alembic_tmp_metrics already exists"), which every later run failed on.
    with held_lock(path.with_name(path.name + ".lock")):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            # The client builds the tracking store; the first registry call builds the registry's.
            client.search_registered_models(max_results=1)
        except (SQLAlchemyError, CommandError, MlflowException) as error:
            # A file that is no SQLite database, or a store left half-migrated: the user's to look at.
            raise InputError(f"the MLflow store {path} cannot be opened: {first_line(error, 200)}") from None
    _SCHEMA_READY.add(uri)
    return client


_SCHEMA_READY: set[str] = set()  # the SQLite stores this process has opened under the lock


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    experiment = call_store(uri, client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        # Without this, MLflow puts artifacts in ./mlruns of whatever directory the process runs in.
        store = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        artifact_location = store.resolve().as_uri()
    return call_store(uri, client.create_experiment, name, artifact_location=artifact_location)


def call_store(uri: str, function, *args, **kwargs):
    """Run an MLflow call; turn connection failures into one clear line."""
    from mlflow.exceptions import MlflowException

    try:
        return function(*args, **kwargs)
    except MlflowException as error:
        text = str(error)
        if any(word in text for word in ("Max retries", "Connection", "connect", "API request")):
            raise ReleaseKitError(f"cannot reach MLflow at {uri}: {first_line(error, 200)}") from None
        raise


def log_gate_run(uri: str, experiment: str, report: Report) -> MlflowRef:
    """One MLflow run per gate run: params, metrics, verdict tags (the report's digest among them, which
    ``release --report`` checks) and the report as an artifact."""
    from .report import MlflowRef

    client = connect(uri)
    experiment_id = ensure_experiment(client, experiment, uri)
    run = call_store(
        uri, client.create_run, experiment_id,
        run_name=f"check {report.model} {report.next_version or ''}".strip(),
        tags=GateRunTags(
            model=report.model, verdict=report.verdict.value, bump=report.bump.value if report.bump else None,
            report_sha256=report.digest(), candidate_sha256=report.candidate.sha256, next_version=report.next_version,
        ).to_tags(),
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        params = {
            "model": report.model,
            "task": report.task,
            "candidate": report.candidate.source,
            "candidate_sha256": report.candidate.sha256,
            "baseline": report.baseline.source if report.baseline else "none",
            "golden_sha256": report.data["golden"].sha256,
            "golden_rows": report.data["golden"].used_rows,
        }
        client.log_batch(run_id, params=_params(params), metrics=_metrics(report))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "report.json"
            path.write_text(report.to_json(), encoding="utf-8")
            client.log_artifact(run_id, str(path))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return MlflowRef(tracking_uri=uri, experiment_id=experiment_id, run_id=run_id)


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(mlflow_key(key), str(value)[:6000]) for key, value in values.items()]


def _metrics(report: Report):
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics: dict[str, Metric] = {}  # two names that map to one key (``a:b``, ``a=b``): the first is logged
    for check in report.checks:
        for diff in check.metrics:
            prefix = f"{check.stage}.{diff.name}".replace(" ", "_")
            for suffix, value in (("candidate", diff.candidate), ("baseline", diff.baseline), ("delta", diff.delta)):
                key = mlflow_key(f"{prefix}.{suffix}")
                if value is not None and math.isfinite(value) and key not in metrics:
                    metrics[key] = Metric(key, float(value), now, 0)
    return list(metrics.values())
