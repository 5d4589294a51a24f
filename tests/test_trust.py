"""Trust I: untrusted files run no code and move no release. Each test builds the attack, shows (where it can)
that the attack is real, and asserts it now fails harmlessly: no marker file, no registry version, no tag,
the documented exit code and a one-line reason.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import POWER_MODEL

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Pickles to a call of ``os.system`` that creates ``marker``: code execution, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def rewrite_archive(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the zip ``source`` with the entries whose names end with a key replaced."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as crafted:
        for info in original.infolist():
            data = original.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            crafted.writestr(info, data)
    return target


def crafted_export(power, tmp_path: Path, shape: str, marker: Path) -> Path:
    """The example's real .pt2 with one record made into a pickle that runs code when torch loads it."""
    source = power["better_export"]
    with zipfile.ZipFile(source) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(archive.read(config_name))
    if shape == "weights-use-pickle":
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        return rewrite_archive(source, tmp_path / "evil.pt2", {
            config_name: json.dumps(config).encode(), f"data/weights/{meta['path_name']}": pickled_payload(marker)})
    if shape == "sample-inputs":
        return rewrite_archive(source, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": pickled_payload(marker)})
    raise ValueError(shape)


def run_cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "release_kit.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# 1. Code execution from a .pt2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["weights-use-pickle", "sample-inputs"])
def test_crafted_export_archive_is_a_real_attack_on_plain_torch(power, tmp_path, shape):
    """Control: torch.export.load on the crafted file does run its code. The gate must not."""
    marker = tmp_path / "pwned"
    evil = crafted_export(power, tmp_path, shape, marker)
    code = f"import torch\ntry:\n    torch.export.load({str(evil)!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("shape", ["weights-use-pickle", "sample-inputs"])
@pytest.mark.parametrize("name", ["evil.pt2", "evil.pt"])
def test_crafted_export_archive_is_refused_without_allow_pickle(project, power, cli, tmp_path, shape, name):
    marker = tmp_path / "pwned"
    evil = crafted_export(power, tmp_path, shape, marker)
    if name != evil.name:
        evil = evil.rename(evil.with_name(name))
    result = cli("check", "--candidate", evil, "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 2, result.output
    assert "holds a pickled record" in result.stderr and "--allow-pickle" in result.stderr
    assert not marker.exists()
    assert not (project.root / "report.json").exists()


def test_crafted_export_archive_from_the_registry_is_refused(project, power, cli, tmp_path):
    from release_kit.registry import publish

    marker = tmp_path / "pwned"
    evil = crafted_export(power, tmp_path, "weights-use-pickle", marker)
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    publish(evil, "evil", "1.0.0", tracking_uri=uri)
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", f'tracking_uri = "{uri}"')
    project.write("release-kit.toml", text)
    result = cli("check", "--candidate", "models:/evil/1", "--baseline", "none", "--no-mlflow")
    assert result.exit_code == 2 and "holds a pickled record" in result.stderr, result.output
    assert not marker.exists()


def test_a_pickle_renamed_to_pt2_is_never_unpickled(project, power, cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt2"
    evil.write_bytes(pickled_payload(marker))
    result = cli("check", "--candidate", evil, "--report", "report.json")
    assert result.exit_code == 2 and "is a pickled model" in result.stderr, result.output
    assert not marker.exists()


def test_allow_pickle_is_the_explicit_opt_in(project, power, cli, tmp_path):
    """--allow-pickle trusts the file: its pickled record loads (the marker proves it ran)."""
    marker = tmp_path / "pwned"
    evil = crafted_export(power, tmp_path, "sample-inputs", marker)
    cli("check", "--candidate", evil, "--baseline", power["v1"], "--allow-pickle", "--stage", "quality")
    assert marker.exists()


def test_mlmodel_loader_module_is_ignored(project, power, cli, tmp_path):
    """An MLflow model directory's MLmodel may name a loader_module: release-kit never imports it."""
    folder = tmp_path / "mlmodel"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "MLmodel").write_text(f"flavors:\n  python_function:\n    loader_module: os\n    data: '{marker}'\n")
    result = cli("check", "--candidate", folder)
    assert result.exit_code == 2 and "directory" in result.stderr
    assert not marker.exists()


# 2. A forged report releases nothing ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released_project(tmp_path_factory, power):
    """A git repository with the example, its embedded registry (v1.0.0 at @champion), and two genuine
    reports made by the CLI: one passing (better) and one blocked (night)."""
    from release_kit.registry import publish
    from release_kit.tracking import embedded_uri

    root = tmp_path_factory.mktemp("trust-release")
    shutil.copytree(power["v1"].parent, root / "models")
    (root / "release-kit.toml").write_text(POWER_MODEL.replace("{{", "{").replace("}}", "}") + f"""
[baseline]
path = "models:/power-forecast@champion"

[data]
golden = "{power['golden']}"

[gate]
stages = ["quality", "outliers"]

[outliers.search]
seconds = 1
""")
    (root / ".gitignore").write_text(".release-kit/\nout/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    publish(root / "models" / "v1.pt", "power-forecast", "1.0.0", tracking_uri=embedded_uri(root), alias="champion")
    (root / "out").mkdir()
    assert run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "out/pass.json").returncode == 0
    assert run_cli(root, "check", "--candidate", "models/candidate-night.pt", "--report", "out/block.json").returncode == 1
    return root


def registry_versions(root: Path) -> list[str]:
    from release_kit.tracking import released_versions, embedded_uri

    return list(released_versions(embedded_uri(root), "power-forecast"))


def forge(root: Path, source: str, **changes) -> Path:
    data = json.loads((root / "out" / source).read_text())
    for key, value in changes.items():
        if "." in key:
            section, field = key.split(".")
            data[section][field] = value
        else:
            data[key] = value
    path = root / "out" / "forged.json"
    path.write_text(json.dumps(data))
    return path


def assert_nothing_released(root: Path) -> None:
    assert registry_versions(root) == ["1.0.0"]
    assert subprocess.run(["git", "tag"], cwd=root, capture_output=True, text=True).stdout == ""
    assert not (root / "CHANGELOG.md").exists()


@pytest.mark.parametrize(("source", "changes", "needle"), [
    ("block.json", {"verdict": "pass", "bump": "patch", "next_version": "1.0.1"}, "does not match what gate run"),
    ("pass.json", {"next_version": "99.0.0"}, "does not match what gate run"),
    ("pass.json", {"next_version": "not-a-version"}, "does not match what gate run"),
    ("pass.json", {"candidate.file": "/etc/passwd", "candidate.source": "/etc/passwd"}, "does not match what gate run"),
    ("pass.json", {"mlflow": None}, "names no logged gate run"),
    ("pass.json", {"mlflow": {"tracking_uri": "elsewhere", "experiment_id": "1", "run_id": "0" * 32}}, "is not in the MLflow store"),
])
def test_a_forged_report_releases_nothing(released_project, source, changes, needle):
    forged = forge(released_project, source, **changes)
    result = run_cli(released_project, "release", "--report", forged)
    one_line_error(result, 2, needle)
    assert_nothing_released(released_project)


def test_a_blocked_report_is_refused_by_its_own_checks(released_project):
    result = run_cli(released_project, "release", "--report", "out/block.json")
    assert result.returncode == 1 and "the gate blocked this candidate" in result.stderr, result.stderr
    assert_nothing_released(released_project)


def test_the_release_candidate_must_be_a_model_inside_the_project(released_project, tmp_path):
    from release_kit.errors import InputError
    from release_kit.gate import resolve_config
    from release_kit.release import plan
    from release_kit.report import load_report

    config, root = resolve_config(released_project / "release-kit.toml")
    report = load_report(released_project / "out" / "pass.json")
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0\n")
    report.candidate = {**report.candidate, "file": str(outside), "source": str(outside)}
    with pytest.raises(InputError, match="outside the project"):
        plan(config, root, report)
    inside = released_project / "models" / "notes.txt"
    inside.write_text("not a model")
    from release_kit.files import file_sha256

    report.candidate = {**report.candidate, "file": str(inside), "source": str(inside), "sha256": file_sha256(inside)}
    with pytest.raises(InputError, match="cannot read model"):
        plan(config, root, report)
    inside.unlink()


def test_the_action_never_releases_from_a_report_in_the_tree():
    action = (ROOT / "action.yml").read_text()
    release_branch = action.split("\n          release)", 1)[1].split(";;", 1)[0]
    assert "release-kit release" in release_branch
    assert "--report" not in release_branch and "INPUT_REPORT" not in release_branch


# 3. Templates run in the sandbox ------------------------------------------------------------------------


ESCAPE = "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"


@pytest.mark.parametrize("command", ["check", "note"])
def test_a_template_cannot_escape_the_sandbox(project, power, cli, tmp_path, command):
    marker = tmp_path / "pwned"
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "report.md.j2").write_text(ESCAPE.replace("MARKER", str(marker)))
    project.config(f'[release]\ntemplates = "{templates}"\n')
    if command == "check":
        result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--stage", "quality", "--format", "markdown")
    else:
        report = tmp_path / "r.json"
        cli("check", "--candidate", power["better"], "--stage", "quality", "--report", report)
        result = cli("note", "--report", report, "--templates", templates)
    assert result.exit_code == 2, result.output
    assert "sandbox" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_missing_templates_directory_is_an_error(project, power, cli):
    project.config('[release]\ntemplates = "no-such-dir"\n')
    result = cli("check", "--candidate", power["better"], "--stage", "quality", "--format", "markdown", "--report", "report.json")
    assert result.exit_code == 2 and "templates directory not found" in result.stderr
    assert not (project.root / "report.json").exists()


# 5. Workflows: pinned actions, no persisted credentials, the write token only where no untrusted code runs --


def workflow_files(tmp_path: Path) -> dict[str, dict]:
    import yaml

    from release_kit.scaffolding import _render

    found = {f"repo/{p.name}": yaml.safe_load(p.read_text()) for p in (ROOT / ".github" / "workflows").glob("*.yml")}
    for name in ("release-gate.yml", "release.yml"):
        found[f"init/{name}"] = yaml.safe_load(_render(f"workflows/{name}.j2", action="acme/release-kit@0123456789abcdef0123456789abcdef01234567"))
    return found


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, job, step


def test_every_checkout_drops_credentials_and_third_party_actions_are_pinned(tmp_path):
    for name, workflow in workflow_files(tmp_path).items():
        for job_name, _, step in steps(workflow):
            uses = step.get("uses", "")
            if uses.startswith("actions/checkout"):
                assert step.get("with", {}).get("persist-credentials") is False, (name, job_name)
            if uses and not uses.startswith("./") and not uses.startswith("acme/release-kit"):
                ref = uses.split("@", 1)[1]
                assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), (name, uses)
    action = (ROOT / "action.yml").read_text()
    assert "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0" in action


def test_write_tokens_live_only_in_jobs_that_run_no_untrusted_code(tmp_path):
    for name, workflow in workflow_files(tmp_path).items():
        for job_name, job in workflow["jobs"].items():
            permissions = job.get("permissions", {})
            writes = {scope for scope, level in permissions.items() if level == "write"}
            if not writes:
                continue
            job_steps = job.get("steps", [])
            for step in job_steps:
                uses = step.get("uses", "")
                # The action (release-kit) runs here only as the comment command, from the base commit.
                if uses == "./" or uses.startswith("acme/release-kit"):
                    assert writes == {"pull-requests"} and step["with"]["command"] == "comment", (name, job_name)
                assert "release-kit check" not in step.get("run", "") and "release-kit release" not in step.get("run", "")
            checkouts = [s for s in job_steps if s.get("uses", "").startswith("actions/checkout")]
            if writes == {"pull-requests"}:
                # The PR's own code is never checked out next to the write token.
                assert all(s.get("with", {}).get("ref") == "${{ github.event.pull_request.base.sha }}" for s in checkouts), (name, job_name)


# 6. File modes and leftovers --------------------------------------------------------------------------------


def test_written_files_respect_the_umask_and_keep_an_existing_mode(project, power, cli):
    old = os.umask(0o022)
    try:
        assert cli("check", "--candidate", power["better"], "--stage", "quality", "--report", "report.json").exit_code == 0
        assert stat.S_IMODE((project.root / "report.json").stat().st_mode) == 0o644
        (project.root / "report.json").chmod(0o640)
        cli("check", "--candidate", power["better"], "--stage", "quality", "--report", "report.json")
        assert stat.S_IMODE((project.root / "report.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_registry_downloads_are_removed_when_the_run_ends(released_project, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_cli(released_project, "check", "--candidate", "models/candidate-better.pt", "--stage", "quality", "--no-mlflow",
                     env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    assert not list(scratch.glob("release-kit-model-*"))


def test_history_survives_a_version_tag_that_is_no_semver(power, tmp_path):
    """A registry written by another tool (or by the old half-release) must not break `history`."""
    from release_kit.ledger import history
    from release_kit.registry import publish

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    publish(power["v1"], "m", "1.0.0", tracking_uri=uri)
    publish(power["better"], "m", "not-a-version", tracking_uri=uri)
    assert [entry.version for entry in history(uri, "m")] == ["1.0.0", "not-a-version"]


class WritesIntoItsInput(torch.nn.Module):
    """The baseline's own predictions, after which it zeroes the input tensor it was given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        x.mul_(0.0)
        return y


@pytest.mark.parametrize("golden", ["golden.csv", "golden"])  # read whole, and streamed in batches
def test_a_candidate_that_writes_into_its_input_cannot_change_what_the_baseline_reads(project, power, cli, golden):
    """torch hands a model the memory of the numpy array it is called on. A candidate that is the baseline
    plus ``x.mul_(0)`` after its prediction zeroed the golden features the baseline then read (read whole:
    the golden set itself, for every later stage; streamed: the input both models shared): the baseline's
    MAE went from 0.047 to 1.1 and the quality stage passed the candidate as much better. Each model now
    reads its own copy: the same predictions, no change."""
    import pandas as pd

    candidate = project.root / "candidate.pt"
    torch.jit.save(torch.jit.script(WritesIntoItsInput(torch.jit.load(str(power["v1"])))), str(candidate))
    frame = pd.read_csv(power["golden"])
    (project.root / "golden").mkdir()
    for index in range(2):
        frame.iloc[index * 1_500 : (index + 1) * 1_500].to_parquet(project.root / "golden" / f"part-{index}.parquet")
    frame.to_csv(project.root / "golden.csv", index=False)
    project.config(golden=project.root / golden)
    result = cli("check", "--candidate", candidate, "--baseline", power["v1"], "--format", "json")
    report = json.loads(result.stdout)
    assert report["environment"]["golden_read"] == ("whole" if golden == "golden.csv" else "local")
    mae = next(m for c in report["checks"] for m in c["metrics"] if m["name"] == "mae")
    assert mae["delta"] == 0.0 and mae["candidate"] == mae["baseline"] < 0.1, mae
    assert report["bump"] != "minor", report["bump_reason"]
