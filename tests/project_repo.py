"""A model team's git repository with a release-kit config and v1.0.0 released as @champion: shared by the
release tests and the serving test (which releases into a running server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

from conftest import POWER_MODEL

import power_forecast as pf
from release_kit import gate
from release_kit import release as releases
from release_kit.changelog import versions as changelog_versions
from release_kit.registry import publish
from release_kit.signature import Signature
from release_kit.tags import VERSION_TAG
from release_kit.tracking import embedded_uri

CONFIG = POWER_MODEL + """
[baseline]
path = "models:/power-forecast@champion"

[data]
golden = "{golden}"
reference = "{reference}"

[gate]
stages = ["quality", "outliers"]

[outliers.search]
seconds = 1

[mlflow]
{mlflow}

[release]
{release}
"""
V1_CONTRACT = Signature("regression", tuple(pf.FEATURES), "float32", 1, None, (0.0, 6.0))


class Repo:
    """A model team's git repository with a release-kit config, v1.0.0 released as @champion."""

    def __init__(self, root: Path, power: dict[str, Path], uri: str | None = None) -> None:
        self.root, self.power = root, power
        self.uri = uri or embedded_uri(root)
        self.configure()
        # The models live in the project (a release registers only a file inside it).
        shutil.copytree(power["v1"].parent, root / "models", dirs_exist_ok=True)
        self.models = {name: root / "models" / path.name for name, path in power.items() if path.parent == power["v1"].parent}
        (root / ".gitignore").write_text(".release-kit/\nout/\nmodels/\n")
        self.git("init", "--quiet", "--initial-branch=main")
        self.git("add", ".")
        self.git("commit", "--quiet", "-m", "model repo")

    def configure(self, mlflow: str = "", release: str = "") -> None:
        server = f'tracking_uri = "{self.uri}"' if self.uri.startswith("http") else ""
        (self.root / "release-kit.toml").write_text(CONFIG.format(
            golden=self.power["golden"], reference=self.power["train"], mlflow=textwrap.dedent(mlflow) or server,
            release=textwrap.dedent(release),
        ))

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        return subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True, text=True, env=env).stdout.strip()

    def publish_v1(self) -> None:
        publish(self.power["v1"], "power-forecast", "1.0.0", tracking_uri=self.uri, alias="champion", signature=V1_CONTRACT)

    def report(self, candidate: str = "better", name: str = "report.json", **kwargs) -> Path:
        report = gate.check(candidate=str(self.models.get(candidate, self.power[candidate])), directory=self.root, **kwargs)
        path = self.root / "out" / name
        report.write(path)
        return path

    def plan(self, report: Path, **kwargs) -> releases.ReleasePlan:
        from release_kit.report import load_report

        config, project_dir = gate.resolve_config(None, self.root)
        return releases.plan(config, project_dir, load_report(report), **kwargs)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def versions(self) -> dict[str, str]:
        """semver → registry number, for every registered version of the model."""
        found = self.client().search_model_versions("name = 'power-forecast'")
        return {v.tags[VERSION_TAG]: str(v.version) for v in found}

    def version_count(self, semver: str) -> int:
        return sum(1 for v in self.client().search_model_versions("name = 'power-forecast'") if v.tags.get(VERSION_TAG) == semver)

    def champion(self) -> str:
        return self.client().get_model_version_by_alias("power-forecast", "champion").tags[VERSION_TAG]

    def tags(self) -> list[str]:
        return self.git("tag", "--list").split()

    def changelog(self) -> list[str]:
        path = self.root / "CHANGELOG.md"
        return changelog_versions(path.read_text()) if path.exists() else []
