"""The MLflow model registry: fetching models named by URI, and publishing a model file as a version.

release-kit registers a model version as the model *file* itself (TorchScript, ``torch.export`` or
safetensors) logged under the run's ``model/`` artifacts, with its semantic version in the
``release_kit.version`` tag. Models logged by MLflow's pytorch flavor are pickles and load only with
``--allow-pickle``.
"""

from __future__ import annotations

import atexit
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, first_line
from .signature import Signature
from .tags import MODEL_SHA256_TAG, SIGNATURE_TAG, VERSION_TAG
from .tracking import call_store, connect, ensure_experiment, quote_filter

if TYPE_CHECKING:
    from .report import RegistryRef

MODEL_SUFFIXES = (".pt", ".pt2", ".pth", ".ts", ".jit", ".safetensors")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class FetchedModel:
    uri: str
    path: Path
    semver: str | None
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    signature: str | None = None  # JSON of the recorded release_kit.signature tag

    def describe(self) -> RegistryRef:
        from .report import RegistryRef

        return RegistryRef(uri=self.uri, name=self.name, version=self.version, run_id=self.run_id)


def fetch_model(uri: str, *, tracking_uri: str | None) -> FetchedModel:
    import mlflow

    if tracking_uri is None:
        raise InputError(f"model {uri} needs MLflow, which is disabled in [mlflow]")
    client = connect(tracking_uri)
    name = version = run_id = semver = signature = None
    if uri.startswith("models:/"):
        match = _MODELS_URI.match(uri)
        if not match:
            raise InputError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
        name = match["name"]
        model_version = _model_version(client, tracking_uri, uri, name, match["alias"], match["version"])
        version, run_id, source = str(model_version.version), model_version.run_id, model_version.source
        semver = model_version.tags.get(VERSION_TAG)
        signature = model_version.tags.get(SIGNATURE_TAG)
    else:
        source = uri
    target = _download_folder()
    try:
        local = call_store(tracking_uri, mlflow.artifacts.download_artifacts, artifact_uri=source, dst_path=str(target), tracking_uri=tracking_uri)
    except OSError as error:
        raise InputError(f"cannot download model {uri}: {error}") from None
    return FetchedModel(uri, _model_file(Path(local), uri), semver, name, version, run_id, signature)


_DOWNLOADS: list[Path] = []


def alias_uri(tracking_uri: str, name: str, alias: str) -> str | None:
    """``models:/name@alias`` when the registry has a version of ``name`` under ``alias`` (the released
    version a candidate is compared with when no baseline is named), else ``None``: no store yet, no such
    model or alias."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return None
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri)
    try:
        call_store(tracking_uri, client.get_model_version_by_alias, name, alias)
    except MlflowException:
        return None
    return f"models:/{name}@{alias}"


def _download_folder() -> Path:
    """A temporary folder for one downloaded model, removed when the process exits (the loaded model
    and its file stay usable until then: a GPU reload and the release re-read it)."""
    if not _DOWNLOADS:
        atexit.register(_remove_downloads)
    folder = Path(tempfile.mkdtemp(prefix="release-kit-model-"))
    _DOWNLOADS.append(folder)
    return folder


def _remove_downloads() -> None:
    import shutil

    while _DOWNLOADS:
        shutil.rmtree(_DOWNLOADS.pop(), ignore_errors=True)


def _model_version(client, tracking_uri: str, uri: str, name: str, alias: str | None, number: str | None):
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return call_store(tracking_uri, client.get_model_version_by_alias, name, alias)
        return call_store(tracking_uri, client.get_model_version, name, number)
    except MlflowException as error:
        # An alias that resolves to nothing is most often a project's first release.
        hint = "; nothing released yet? a first release is checked with --baseline none" if alias is not None else ""
        raise InputError(f"model {uri} not found in the registry at {tracking_uri}: {first_line(error).rstrip('.')}{hint}") from None


def _model_file(local: Path, uri: str) -> Path:
    if local.is_file():
        return local
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    if len(files) != 1:
        found = ", ".join(str(p.relative_to(local)) for p in files) or "none"
        raise InputError(f"model {uri}: expected one model file in its artifacts, found {found}")
    return files[0]


def find_versions(client, uri: str, name: str, tag: str, value: str) -> list:
    """Versions of ``name`` whose ``tag`` equals ``value``, lowest version number first."""
    found = call_store(uri, client.search_model_versions, f"name = '{quote_filter(name)}' and tag.`{tag}` = '{quote_filter(value)}'")
    return sorted(found, key=lambda version: int(version.version))


def register_version(
    model_file: Path,
    name: str,
    *,
    key: tuple[str, str],
    tags: dict[str, str],
    tracking_uri: str,
    experiment: str,
    run_name: str,
):
    """The registered version of ``name`` that carries the tag ``key``, created when there is none.

    The registry assigns version numbers, so two processes registering the same key at once can both
    create one. Each re-reads after creating, the lowest number wins, and the loser deletes its own:
    exactly one version per key remains, whichever process finishes first.
    """
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri)
    existing = find_versions(client, tracking_uri, name, *key)
    if existing:
        return existing[0]
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    run = call_store(tracking_uri, client.create_run, experiment_id, run_name=run_name, tags={key[0]: key[1]})
    client.log_artifact(run.info.run_id, str(model_file), artifact_path="model")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={key[0]: key[1], **tags}
    )
    winner = find_versions(client, tracking_uri, name, *key)[0]
    if winner.version != created.version:
        client.delete_model_version(name, created.version)
    return winner


def publish(
    model_file: Path,
    name: str,
    semver: str,
    *,
    tracking_uri: str,
    experiment: str = "release-kit",
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    signature: Signature | None = None,
) -> str:
    """Register ``model_file`` as version ``semver`` of ``name``; idempotent on (name, semver).

    A plain registration (seeding a registry, importing an old model); ``release-kit release`` is the
    full release. ``signature`` (the model's contract) is recorded so that later candidates can be
    compared with it. Returns the registry's version number; ``alias`` (e.g. ``champion``) is moved to it.
    """
    from .files import file_sha256

    version = register_version(
        model_file, name, key=(VERSION_TAG, semver),
        tags={MODEL_SHA256_TAG: file_sha256(Path(model_file)), **({SIGNATURE_TAG: signature.to_json()} if signature else {}), **(tags or {})},
        tracking_uri=tracking_uri, experiment=experiment, run_name=f"publish {name} {semver}",
    )
    if alias:
        connect(tracking_uri).set_registered_model_alias(name, alias, version.version)
    return str(version.version)
