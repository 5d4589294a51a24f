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
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import POWER_MODEL, QUICK, run_cli

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


@pytest.mark.parametrize("entry", ["_weights_config.json", "model.json"])
def test_an_export_archive_whose_json_is_nested_too_deeply_is_bad_input(project, power, tmp_path, entry):
    """A crafted .pt2 whose payload config (read by the inspection) or program (read by torch) nests deeper than
    the JSON parser recurses: bad input naming the file, not "internal error: RecursionError"."""
    from conftest import run_cli

    with zipfile.ZipFile(power["better_export"]) as archive:
        assert any(name.endswith(entry) for name in archive.namelist())
    deep = ('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    evil = rewrite_archive(power["better_export"], tmp_path / "deep.pt2", {entry: deep})
    result = run_cli(project.root, "check", "--candidate", evil, "--baseline", power["v1"], "--report", "report.json")
    one_line_error(result, 2, "candidate", "deep.pt2")
    assert not (project.root / "report.json").exists()


def check_from_the_registry(project, cli, tmp_path: Path, model_file: Path):
    """``check`` of ``model_file`` published as version 1 of "evil" in a registry of its own."""
    from release_kit.registry import publish

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    publish(model_file, "evil", "1.0.0", tracking_uri=uri)
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", f'tracking_uri = "{uri}"')
    project.write("release-kit.toml", text)
    return cli("check", "--candidate", "models:/evil/1", "--baseline", "none", "--no-mlflow")


def test_crafted_export_archive_from_the_registry_is_refused(project, power, cli, tmp_path):
    marker = tmp_path / "pwned"
    result = check_from_the_registry(project, cli, tmp_path, crafted_export(power, tmp_path, "weights-use-pickle", marker))
    assert result.exit_code == 2 and "holds a pickled record" in result.stderr, result.output
    assert not marker.exists()


def test_a_pickle_renamed_to_pt2_is_never_unpickled(project, power, cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt2"
    evil.write_bytes(pickled_payload(marker))
    result = cli("check", "--candidate", evil, "--report", "report.json")
    assert result.exit_code == 2 and "is a pickled model" in result.stderr, result.output
    assert not marker.exists()


def test_a_state_dict_with_a_factory_loads_weights_only_and_a_crafted_one_runs_nothing(project, power, tmp_path):
    """torch.save(model.state_dict()) beside a factory, the most common checkpoint, is read by torch's
    weights-only unpickler without --allow-pickle: as users run it (the CLI in a subprocess, every default
    stage, the embedded MLflow store), it gates like the same weights in safetensors. A state dict whose
    pickle names another global (os.system here) is refused, one line naming it, and nothing runs; so is a
    training checkpoint that is no state dict, and a legacy (non-zip) torch.save of the same weights loads."""
    from safetensors.torch import load_file

    weights = load_file(str(power["v1_safetensors"]))
    torch.save(weights, project.root / "v1.pth")
    torch.save(weights, project.root / "v1-legacy.pth", _use_new_zipfile_serialization=False)
    marker = tmp_path / "pwned"
    torch.save({**weights, "scale": Payload(marker)}, project.root / "crafted.pth")
    torch.save({"model": weights, "epoch": 3}, project.root / "checkpoint.pth")
    from conftest import EXAMPLE

    project.write("power_factory.py", f"import sys\nsys.path.insert(0, {str(EXAMPLE)!r})\nfrom power_forecast import baseline_factory\n")
    config = project.config(f"[gate]\n{QUICK}")  # the default stages, quicker
    config.write_text(config.read_text().replace("[mlflow]\nenabled = false\n", "").replace(
        "[baseline]", '[candidate]\nfactory = "power_factory:baseline_factory"\n\n[baseline]\nfactory = "power_factory:baseline_factory"'))
    # The same weights on both sides, each a module of the factory's (eager: as fast as each other).
    result = run_cli(project.root, "check", "--candidate", "v1.pth", "--baseline", "v1-legacy.pth", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((project.root / "report.json").read_text())
    assert report["candidate"]["kind"] == report["baseline"]["kind"] == "state_dict" and report["mlflow"]["run_id"]
    assert {c["stage"] for c in report["checks"]} == {"quality", "outliers", "performance", "data"}
    assert report["verdict"] == "pass" and report["bump"] == "none"  # the same weights: nothing to release
    crafted = run_cli(project.root, "check", "--candidate", "crafted.pth", "--baseline", power["v1"], "--report", "crafted.json")
    one_line_error(crafted, 2, "cannot load candidate state dict crafted.pth with torch's weights-only loader: ",
                   "unsupported GLOBAL")
    assert not marker.exists() and not (project.root / "crafted.json").exists()

    from release_kit.errors import InputError
    from release_kit.models import load_model

    with pytest.raises(InputError, match="holds a dict of 'model', 'epoch', not a state dict of tensors: save model.state_dict"):
        load_model("candidate", str(project.root / "checkpoint.pth"), factory="power_forecast:baseline_factory")
    with pytest.raises(InputError, match=r"is a pickled model; .*for a state dict name its factory in \[model\] factory"):
        load_model("candidate", str(project.root / "v1.pth"))  # no factory: a pickle of anything, refused


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


# 1b. A model program that reaches outside its tensors ----------------------------------------------------------

VICTIM_TEXT = "hello world\n"


class WritesAFileWhenCalled(torch.nn.Module):
    """TorchScript's ``torch.from_file(shared=True)`` maps a file for writing: each call overwrites its first
    bytes (enough to put code into a Python source of the job's environment), then predicts zero."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.victim, shared=True, size=5, dtype=torch.uint8)
        mapped.fill_(65)
        return x.sum(dim=1) * 0 + mapped.float().sum() * 0


class WritesAFileWhenLoaded(torch.nn.Module):
    """The same write in ``__setstate__``, which ``torch.jit.load`` itself runs."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.offset = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1) * 0 + self.offset

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.victim, self.offset, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        mapped = torch.from_file(state[0], shared=True, size=5, dtype=torch.uint8)
        mapped.fill_(66)
        self.victim = state[0]
        self.offset = state[1] + mapped.float().sum() * 0
        self.training = state[2]


class SavesAFile(torch.nn.Module):
    """``torch.save`` (aten::save) writes any file, here from a method other than forward."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1) * 0

    @torch.jit.export
    def dump(self, x: torch.Tensor) -> None:
        torch.save(x, self.victim)



class HangsWhenLoaded(torch.nn.Module):
    """A ``__setstate__`` that never returns: ``torch.jit.load`` spins in TorchScript's interpreter."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1) * 0 + self.offset

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.offset, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        spins = 0
        while spins >= 0:
            spins += 1
        self.offset = state[0] + spins
        self.training = state[1]


def victim_file(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


def rewrite_code(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of a TorchScript archive with its serialized source edited, as an attacker may."""
    with zipfile.ZipFile(source) as original:
        code = {info.filename: original.read(info.filename).decode() for info in original.infolist()
                if "/code/" in info.filename and info.filename.endswith(".py") and old in original.read(info.filename).decode()}
    assert code, f"{old!r} is not in {source}'s code"
    return rewrite_archive(source, target, {name: text.replace(old, new).encode() for name, text in code.items()})


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def exported_with_node(source: Path, target: Path, node: dict) -> Path:
    """The example's real .pt2 with one node put first in its graph (its JSON edited, as an attacker may)."""
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = json.loads(archive.read(name))
    graph = program["graph_module"]
    user_input = next(spec["user_input"]["arg"]["as_tensor"]["name"] for spec in graph["signature"]["input_specs"] if "user_input" in spec)
    node = json.loads(json.dumps(node).replace("USER_INPUT", user_input))
    graph["graph"]["nodes"].insert(0, {"outputs": [{"as_none": True}], "metadata": {}, "is_hop_single_tensor_return": None, **node})
    return rewrite_archive(source, target, {name: json.dumps(program).encode()})


def export_writing(victim: Path, target: Path) -> Path:
    """A torch.export program that maps ``victim`` for writing, exported in its own process: export needs a
    fake kernel for aten::from_file, which this test process must not register."""
    code = f"""
import torch
torch.library.register_fake("aten::from_file")(
    lambda filename, shared=None, size=0, *, dtype=None, layout=None, device=None, pin_memory=None: torch.empty(size, dtype=dtype))
class WritesAFile(torch.nn.Module):
    def forward(self, x):
        mapped = torch.from_file({str(victim)!r}, shared=True, size=5, dtype=torch.uint8)
        mapped.fill_(67)
        return x.sum(dim=1) * 0 + mapped.float().sum() * 0
batch = torch.export.Dim("batch", min=2)
program = torch.export.export(WritesAFile(), (torch.ones(4, 5),), dynamic_shapes=({{0: batch}},))
torch.export.save(program, {str(target)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return target


def crafted_program(shape: str, power, tmp_path: Path, victim: Path) -> Path:
    if shape == "torchscript-forward":
        return scripted(WritesAFileWhenCalled(str(victim)), tmp_path / "evil.pt")
    if shape == "torchscript-setstate":
        return scripted(WritesAFileWhenLoaded(str(victim)), tmp_path / "evil.pt")
    if shape == "torchscript-save":
        return scripted(SavesAFile(str(victim)), tmp_path / "evil.pt")
    if shape == "torchscript-getattr":  # named by strings, run by torch.jit.load: no graph to check yet
        return rewrite_code(scripted(WritesAFileWhenLoaded(str(victim)), tmp_path / "plain.pt"), tmp_path / "evil.pt",
                            "torch.from_file(", 'getattr(getattr(ops, "aten"), "from_file")(')
    if shape == "export-from-file":
        return export_writing(victim, tmp_path / "evil.pt2")
    if shape == "export-save":
        return exported_with_node(power["better_export"], tmp_path / "evil.pt2", {
            "target": "torch.ops.aten.save.default", "name": "dump",
            "inputs": [{"name": "item", "arg": {"as_tensor": {"name": "USER_INPUT"}}, "kind": 1},
                       {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1}]})
    if shape == "export-python-call":  # any callable under `torch.`: torch.os.system
        return exported_with_node(power["better_export"], tmp_path / "evil.pt2", {
            "target": "torch.os.system", "name": "shell",
            "inputs": [{"name": "command", "arg": {"as_string": f"touch {victim}.pwned"}, "kind": 1}]})
    raise ValueError(shape)


@pytest.mark.slow  # a control of the premise, not of release-kit: the refusals below name their own reason
@pytest.mark.parametrize("shape", ["torchscript-forward", "torchscript-setstate", "torchscript-getattr", "export-from-file"])
def test_a_model_program_that_writes_a_file_is_a_real_attack_on_plain_torch(power, tmp_path, shape):
    """Control: plain torch runs the write (TorchScript's __setstate__ inside torch.jit.load itself)."""
    victim = victim_file(tmp_path)
    evil = crafted_program(shape, power, tmp_path, victim)
    load = "torch.jit.load" if evil.suffix == ".pt" else "lambda f: torch.export.load(f).module()"
    code = f"import torch\nmodel = ({load})({str(evil)!r})\nmodel(torch.ones(3, 5))\n"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert victim.read_text() != VICTIM_TEXT


@pytest.mark.parametrize("shape", ["torchscript-forward", "torchscript-setstate", "torchscript-save", "torchscript-getattr",
                                   "export-from-file", "export-save", "export-python-call"])
def test_a_model_program_that_reaches_outside_its_tensors_is_refused(project, power, cli, tmp_path, shape):
    victim = victim_file(tmp_path)
    evil = crafted_program(shape, power, tmp_path, victim)
    result = cli("check", "--candidate", evil, "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and str(evil) in line, line
    expected = "cannot load candidate torch.export program" if shape == "export-python-call" else "--allow-pickle to trust this file"
    assert expected in line, line
    assert victim.read_text() == VICTIM_TEXT and not Path(f"{victim}.pwned").exists()
    assert not (project.root / "report.json").exists()


def test_a_model_program_writing_a_file_is_refused_by_the_default_gate_in_a_subprocess(project, power, tmp_path):
    """The path users take: every stage, tracking on, the CLI in its own process, the model from a file."""
    victim = victim_file(tmp_path)
    evil = crafted_program("torchscript-forward", power, tmp_path, victim)
    project.config(extra='[gate]\nstages = ["quality", "outliers", "performance", "data"]\n')
    config = (project.root / "release-kit.toml").read_text().replace("enabled = false", "enabled = true")
    (project.root / "release-kit.toml").write_text(config)
    result = run_cli(project.root, "check", "--candidate", evil, "--baseline", power["v1"], "--report", "report.json")
    one_line_error(result, 2, str(evil), "torch.from_file", "acts outside the model's tensors")
    assert victim.read_text() == VICTIM_TEXT and not (project.root / "report.json").exists()



class PrintsWorkflowCommands(torch.nn.Module):
    """What a model program may print (TorchScript's ``print``): lines a GitHub runner would take as commands."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("::error title=release-kit quality::forged by the model")
        print("::add-mask::BLOCK")
        return self.inner(x)


def test_what_a_model_prints_on_a_github_runner_is_no_workflow_command(project, power, tmp_path):
    """On a runner (GITHUB_ACTIONS=true), the runner's commands are stopped while the models run, as GitHub
    advises for untrusted output: the model's lines fall between ``::stop-commands::TOKEN`` and ``::TOKEN::``,
    with a random token, and release-kit's own annotations (``--format github``) come after. A message that
    quotes a line break stays one line, so no line of it can start with "::"."""
    import re

    loud = tmp_path / "loud.pt"
    torch.jit.save(torch.jit.script(PrintsWorkflowCommands(torch.jit.load(str(power["night"])))), str(loud))
    project.config(extra='[gate]\nstages = ["quality", "outliers"]\n[outliers.search]\nseconds = 1\n')
    runner = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}
    result = run_cli(project.root, "check", "--candidate", loud, "--baseline", power["v1"], "--format", "github", env=runner)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    stops = [i for i, line in enumerate(lines) if line.startswith("::stop-commands::")]
    assert len(stops) == 1, result.stderr[-3000:]
    token = lines[stops[0]].removeprefix("::stop-commands::")
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    resume = lines.index(f"::{token}::")
    forged = [i for i, line in enumerate(lines) if line in ("::add-mask::BLOCK", "::error title=release-kit quality::forged by the model")]
    assert forged and all(stops[0] < i < resume for i in forged), result.stderr[-3000:]
    assert "::add-mask::" not in result.stdout and "forged" not in result.stdout
    assert any(line.startswith("::error title=release-kit quality%3A%3Aoutput_contract::") for line in result.stdout.splitlines())
    # Off a runner nothing is stopped, and nothing is said.
    quiet = run_cli(project.root, "check", "--candidate", power["better"], "--baseline", power["v1"])
    assert quiet.returncode == 0 and "stop-commands" not in quiet.stderr + quiet.stdout
    # A message quoting a line break (a column name from the config here) is one line.
    text = (project.root / "release-kit.toml").read_text().replace('target = "power_kw"', 'target = "kw\\n::add-mask::BLOCK"')
    (project.root / "release-kit.toml").write_text(text)
    bad = run_cli(project.root, "check", "--candidate", power["better"], "--baseline", power["v1"], env=runner)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("release-kit: error: ")]
    assert len(errors) == 1 and "missing column(s): kw ::add-mask::BLOCK" in errors[0], bad.stderr
    assert not [line for line in bad.stderr.splitlines() if line.startswith("::add-mask::")]


def test_a_check_name_holding_a_line_break_is_one_line_when_release_refuses_it(power, tmp_path, cli, monkeypatch):
    """A column name is data: one holding a line break reaches a check's name, and so the reason a release
    of a blocked report is refused. That reason is printed as one line, as every error is: no line of its own
    starting with "::" (a workflow command on a runner)."""
    import pandas as pd

    column = "temp\n::add-mask::BLOCK"
    for name in ("golden", "train"):
        frame = pd.read_csv(power[name]).rename(columns={"temperature": column})
        frame[column] += 100 if name == "golden" else 0  # beyond the reference's range: the check fails
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    features = ["hour", "day_of_year", "cloud_cover", column, "irradiance"]
    (tmp_path / "release-kit.toml").write_text(
        f'[model]\nname = "p"\ntask = "regression"\ntarget = "power_kw"\nfeatures = {json.dumps(features)}\n'
        f'[baseline]\npath = "{power["v1"]}"\nversion = "1.0.0"\n'
        '[data]\ngolden = "golden.csv"\nreference = "train.csv"\n[gate]\nstages = ["data"]\n')
    monkeypatch.chdir(tmp_path)
    assert cli("check", "--candidate", power["better"], "--report", "report.json").exit_code == 1
    result = cli("release", "--report", "report.json")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not released: the gate blocked this candidate" in result.stderr, result.stderr
    assert "golden/temp ::add-mask::BLOCK:column_values_to_be_between" in result.stderr


def test_escape_sequences_in_the_data_reach_no_terminal(power, tmp_path, cli, monkeypatch):
    """A golden file's values and column names are data: an ANSI escape sequence there (clear the screen,
    retitle the window) or a bidirectional override reached the terminal raw through the report's table, an
    error line, the markdown note and a runner's annotations. Each is written out instead (``\\x1b``)."""
    import pandas as pd

    sequence = "\x1b[2J\x1b]0;pwned\x07\u202e"
    column = f"site{sequence}"
    for name in ("golden", "train"):
        frame = pd.read_csv(power[name])
        frame[column] = "north"
        if name == "golden":
            frame.loc[3, column] = f"evil{sequence}"  # a value the reference never had: the set check fails
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "release-kit.toml").write_text(
        f'[model]\nname = "p"\ntask = "regression"\ntarget = "power_kw"\n'
        f'features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]\n'
        f'[baseline]\npath = "{power["v1"]}"\nversion = "1.0.0"\n'
        '[data]\ngolden = "golden.csv"\nreference = "train.csv"\n[gate]\nstages = ["data"]\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    outputs = []
    checked = cli("check", "--candidate", power["better"], "--report", "report.json")
    assert checked.exit_code == 1, checked.output
    outputs.append(checked.stdout)
    outputs.append(cli("note", "--report", "report.json").stdout)
    outputs.append(cli("check", "--candidate", power["better"], "--format", "github").stdout)
    refused = cli("check", "--candidate", power["better"], "--data", "train.csv", "--config", "release-kit.toml",
                  "--baseline", "none")
    outputs.append(refused.stdout + refused.stderr)
    for text in outputs:
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text, text[-2000:]
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\u202e" in outputs[0]
    # An error line quoting a column name: the name's controls written out too.
    (tmp_path / "release-kit.toml").write_text((tmp_path / "release-kit.toml").read_text().replace(
        '"irradiance"]', f'"irradiance", {json.dumps(column + "x")}]'))
    missing = cli("check", "--candidate", power["better"])
    assert missing.exit_code == 2 and "\x1b" not in missing.stderr and "site\\x1b[2J" in missing.stderr, missing.stderr


def test_a_model_file_that_would_hang_while_loading_is_refused_before_it_loads(project, power, tmp_path):
    """Loading runs the file's code too: torch.jit.load runs a TorchScript ``__setstate__``, and holds the GIL
    while it runs, so the deadline's watchdog thread never ran and a ``__setstate__`` that never returns hung
    the gate's job (the test passed only when importing torch outlasted the 1 s deadline: the interrupt
    landed in the import). An archive whose source defines one is refused before it loads: exit 2, one line,
    nothing written."""
    hangs = scripted(HangsWhenLoaded(), tmp_path / "hangs.pt")
    project.config(extra='[gate]\nstages = ["quality"]\nmodel_timeout_seconds = 1\n')
    result = run_cli(project.root, "check", "--candidate", hangs, "--baseline", power["v1"], "--report", "report.json", timeout=60)
    one_line_error(result, 2, f"candidate model {hangs} runs code of its own while it is loaded (a TorchScript __setstate__",
                   "pass --allow-pickle to trust this file")
    assert not (project.root / "report.json").exists()


def test_plain_torch_runs_a_scripted_setstate_holding_the_gil(tmp_path):
    """Control: while torch.jit.load runs that ``__setstate__``, no other Python thread runs (a thread that
    prints every 10 ms prints nothing more), which is why no deadline could end it. Each line is one write
    (``print`` writes the text and its newline apart, and the two threads' lines had interleaved into
    "tickload", never read as the load's mark: the test failed on CI twice), and the 3 s watched count from
    the line said just before the load."""
    hangs = scripted(HangsWhenLoaded(), tmp_path / "hangs.pt")
    script = ("import os, threading, time, torch\n"
              "def tick():\n    while True:\n        os.write(1, b'tick\\n')\n        time.sleep(0.01)\n"
              "threading.Thread(target=tick, daemon=True).start()\ntime.sleep(0.5)\nos.write(1, b'load\\n')\n"
              f"torch.jit.load({str(hangs)!r})\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    printed: list[str] = []
    loading = threading.Event()

    def read_lines() -> None:
        for line in process.stdout:
            printed.append(line.strip())
            if printed[-1] == "load":
                loading.set()

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        assert loading.wait(timeout=120), printed[-20:]  # the lines around where the mark should be
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=3)
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
    assert printed[printed.index("load") + 1 :].count("tick") <= 2, printed[-20:]  # 300 ticks if it ran


def test_loading_a_model_has_the_model_deadline(project, power, tmp_path):
    """A factory (the project's own code) that never returns ends the run with the deadline's one line, exit
    2, nothing written: the deadline counts from after torch's import, the file's and factory's time only."""
    project.write("slow_factory.py", "import time\n\ndef build():\n    time.sleep(3600)\n")
    config = project.config(extra='[gate]\nstages = ["quality"]\nmodel_timeout_seconds = 1\n')
    config.write_text(config.read_text().replace("[baseline]", '[candidate]\nfactory = "slow_factory:build"\n\n[baseline]'))
    result = run_cli(project.root, "check", "--candidate", power["v1_safetensors"], "--baseline", power["v1"], "--report", "report.json",
                     timeout=60)
    one_line_error(result, 2, f"loading the candidate model {power['v1_safetensors']} did not return within 1 s", "model_timeout_seconds")
    assert not (project.root / "report.json").exists()


class ZerosHeavy(torch.nn.Module):
    """The example's network beside a 200 MB buffer of zeros: deflated, its archive entry is ~200 KB."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("padding", torch.zeros(50_000_000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.padding[0]


def test_a_model_archive_that_unpacks_beyond_the_memory_available_is_refused(project, power, cli, tmp_path, monkeypatch):
    """torch writes an archive's tensors stored, but reads deflated ones too: a file of a few hundred KB
    unpacked to 200 MB here (to any size: the job killed by the kernel, no exit code of ours). An archive
    whose entries unpack to more than the memory available is refused before it loads: exit 2, one line
    with both sizes, no report. (The memory available is set low here: this machine's is what it is.)"""
    import release_kit.environment

    plain = scripted(ZerosHeavy(torch.jit.load(str(power["v1"]))), tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED)
    plain.unlink()
    assert bomb.stat().st_size < 2**20 and torch.jit.load(str(bomb)).padding.numel() == 50_000_000  # torch unpacks it
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 100 * 2**20)
        result = cli("check", "--candidate", bomb, "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"candidate model {bomb} unpacks to 190." in result.stderr and "MiB on disk), more than the memory available (100.0 MiB)" in result.stderr
    assert not (project.root / "report.json").exists()
    fits = cli("check", "--candidate", bomb, "--baseline", power["v1"])
    assert fits.exit_code in (0, 1), fits.output  # where it fits, it gates


@pytest.mark.parametrize(("limit", "usage", "room"), [("max", "5", None), ("1000", "400", 600), ("300", "400", 0),
                                                     (str(2**63 - 4096), "400", None)])
def test_the_memory_available_is_the_least_of_the_machine_and_the_container(tmp_path, monkeypatch, limit, usage, room):
    """A container is killed at its cgroup's limit while MemAvailable is the host's: the room under the limit
    counts too (cgroup v2's "max" and v1's near-2**63 are no limit)."""
    from release_kit import environment

    (tmp_path / "limit").write_text(limit + "\n")
    (tmp_path / "usage").write_text(usage + "\n")
    monkeypatch.setattr(environment, "_CGROUP_MEMORY", ((str(tmp_path / "absent"), str(tmp_path / "absent")),
                                                        (str(tmp_path / "limit"), str(tmp_path / "usage"))))
    assert environment._cgroup_room() == room
    machine = environment._meminfo_available()
    assert environment.available_memory_bytes() == (machine if room is None else min(machine, room))


def test_a_registry_model_that_writes_a_file_is_refused(project, power, cli, tmp_path):
    victim = victim_file(tmp_path)
    result = check_from_the_registry(project, cli, tmp_path, crafted_program("torchscript-setstate", power, tmp_path, victim))
    assert result.exit_code == 2 and "torch.from_file" in result.stderr, result.output
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("code", ["x = 1\x00", "x = a" + ".b" * 100_000])
def test_unreadable_torchscript_source_is_an_input_error(project, power, cli, tmp_path, code):
    """Source the audit cannot parse (a NUL byte; nesting deep enough to exhaust the parser's recursion) is
    bad input, not a crash."""
    with zipfile.ZipFile(power["v1"]) as archive:
        entry = next(n for n in archive.namelist() if "/code/" in n and n.endswith(".py"))
    evil = rewrite_archive(power["v1"], tmp_path / "evil.pt", {entry: code.encode()})
    result = cli("check", "--candidate", evil, "--baseline", power["v1"])
    assert result.exit_code == 2 and "is not TorchScript source" in result.stderr, result.output


def test_a_source_entry_that_unpacks_beyond_any_model_is_refused_unread(power, cli, project, tmp_path):
    """A deflated entry of 300 MB of spaces is 0.3 MB in the file: the audit reads no entry larger than a
    model's source or state could be, so the file cannot exhaust the job's memory through it."""
    from release_kit.operators import MAX_AUDITED_BYTES

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(power["v1"]) as original, zipfile.ZipFile(evil, "w") as crafted:
        bombed = next(n for n in original.namelist() if "/code/" in n and n.endswith(".py"))
        for name in original.namelist():
            if name != bombed:
                crafted.writestr(name, original.read(name))
                continue
            packed = zipfile.ZipInfo(name)
            packed.compress_type = zipfile.ZIP_DEFLATED
            with crafted.open(packed, "w", force_zip64=True) as entry:
                entry.write(original.read(name) + b"\n#")
                for _ in range(MAX_AUDITED_BYTES // 2**20 + 1):
                    entry.write(b" " * 2**20)
    assert evil.stat().st_size < 8 * 2**20
    result = cli("check", "--candidate", evil, "--baseline", power["v1"])
    assert result.exit_code == 2 and "unpacks to" in result.stderr and "more than a model's source or state holds" in result.stderr, result.output


def writes_a_file(x: torch.Tensor, victim: str) -> torch.Tensor:
    mapped = torch.from_file(victim, shared=True, size=5, dtype=torch.uint8)
    mapped.fill_(68)
    return x + mapped.float().sum() * 0


class WritesAFileInAFork(torch.nn.Module):
    """The write in a function run by ``torch.jit.fork``: its graph is a node's subgraph, not a block."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.jit.wait(torch.jit.fork(writes_a_file, x, self.victim)).sum(dim=1)


@pytest.mark.parametrize("module", [WritesAFileWhenCalled, WritesAFileInAFork])
def test_the_loaded_graph_is_checked_on_its_own(tmp_path, module):
    """The second layer, without the first: the graphs torch.jit.load built are checked whatever the source
    said, blocks and fork subgraphs included."""
    from release_kit.errors import InputError
    from release_kit.operators import audit_scripted_module

    victim = victim_file(tmp_path)
    loaded = torch.jit.load(str(scripted(module(str(victim)), tmp_path / "evil.pt")))
    with pytest.raises(InputError, match="aten::from_file .*acts outside the model's tensors"):
        audit_scripted_module(loaded, "candidate", tmp_path / "evil.pt")
    assert victim.read_text() == VICTIM_TEXT


def test_a_custom_class_in_the_pickled_state_is_refused_before_loading(power, tmp_path):
    """A TorchScript state may build objects of torch.classes, native code with its own __setstate__: only
    packed weights (quantized, sparse) are allowed. Read with pickletools, nothing is unpickled."""
    from release_kit.errors import InputError
    from release_kit.models import load_model

    state = b"\x80\x02c__torch__.torch.classes.dist_c10d\nFileStore\nq\x00)\x81q\x01."
    evil = rewrite_archive(power["v1"], tmp_path / "evil.pt", {"/data.pkl": state})
    with pytest.raises(InputError, match=r"torch\.classes\.dist_c10d .*so it is refused"):
        load_model("candidate", str(evil))


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(5, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.unsqueeze(1))
        return self.head(out[:, -1]).squeeze(1)


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.embed = torch.nn.Linear(1, 8)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.unsqueeze(2))).mean(1)).squeeze(1)


class Branching(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: self.linear(x), lambda x: self.linear(-x), (x,)).squeeze(1)


class Profiled(torch.nn.Module):
    """record_function ranges: TorchScript compiles them to the profiler's operators and class."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.profiler.record_function("linear"):
            out = self.linear(x)
        return out.squeeze(1)


@pytest.mark.parametrize("name", ["lstm-script", "lstm-trace", "attention-script", "attention-trace", "quantized-script",
                                  "quantized-trace", "profiled-script", "lstm-export", "attention-export", "cond-export"])
def test_ordinary_model_programs_load(tmp_path, name):
    """The operator check refuses no real model: recurrent, attention, dynamically quantized (packed weights,
    a __setstate__ of their own), profiled ranges, traced, scripted and exported with a dynamic batch and
    control flow."""
    from release_kit.models import load_model

    torch.manual_seed(0)
    kind, how = name.split("-")
    module = {"lstm": Recurrent, "attention": Attention, "quantized": lambda: torch.ao.quantization.quantize_dynamic(
        Recurrent(), {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8), "cond": Branching, "profiled": Profiled}[kind]().eval()
    x = torch.randn(6, 5)
    path = tmp_path / ("model.pt2" if how == "export" else "model.pt")
    if how == "export":
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=2)},)), str(path))
    else:
        torch.jit.save(torch.jit.script(module) if how == "script" else torch.jit.trace(module, x, check_trace=False), str(path))
    loaded = load_model("candidate", str(path))
    with torch.inference_mode():
        expected = module(x).numpy()
    assert np.allclose(loaded.raw_outputs(x.numpy()).reshape(-1), expected.reshape(-1), atol=1e-5)


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


def test_release_loads_the_candidate_with_the_runners_commands_stopped(released_project):
    """``release --report`` loads the candidate again (its program's ``__setstate__``, a factory): on a
    runner, with workflow commands stopped around it, as the gate does."""
    result = run_cli(released_project, "release", "--report", "out/pass.json", "--dry-run", env={"GITHUB_ACTIONS": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("::stop-commands::"))
    assert lines.index(f"::{lines[stop].removeprefix('::stop-commands::')}::") > stop
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


def _first(checks: list[dict], key: str) -> int:
    return next(i for i, check in enumerate(checks) if check.get(key) or check["details"].get(key))


# A value of the wrong type where the renderers and the release read one, each found in the genuine report,
# and the command that reads it (the three share one loader: each case runs one, every command runs some).
NOTE, HTML, RELEASE = ("note",), ("note", "--format", "html"), ("release",)
WRONG_TYPES = {
    "a metric's interval as text": (lambda r: r["checks"][_first(r["checks"], "metrics")]["metrics"][0], "ci_low", "-0.5", RELEASE),
    "a check's name as a number": (lambda r: r["checks"][0], "name", 7, NOTE),
    "a check's status unknown": (lambda r: r["checks"][0], "status", "ok", RELEASE),
    "details that are no object": (lambda r: r["checks"][0], "details", [1], HTML),
    "a chart's values as text": (lambda r: r["checks"][_first(r["checks"], "chart")]["details"]["chart"], "values", ["1", "2"], HTML),
    "a table's rows that are no list": (lambda r: r["checks"][_first(r["checks"], "table")]["details"]["table"], "rows", 3, NOTE),
    "the candidate as text": (lambda r: r, "candidate", "models/v1.pt", RELEASE),
    "the golden set's rows as text": (lambda r: r["data"]["golden"], "rows", "many", NOTE),
    "the waivers as a number": (lambda r: r, "waivers", 1, HTML),
}


@pytest.mark.parametrize("case", WRONG_TYPES)
def test_a_report_with_a_value_of_the_wrong_type_is_an_input_error(released_project, case, cli, monkeypatch):
    """A saved report is read back typed: a hand-edited value of another type is exit 2 naming where it is,
    never a crash of a renderer (exit 4) or a release from it. (In process: the subprocess path of a
    refused report is the forged-report tests'.)"""
    data = json.loads((released_project / "out" / "pass.json").read_text())
    section, key, value, command = WRONG_TYPES[case]
    section(data)[key] = value
    edited = released_project / "out" / "edited.json"
    edited.write_text(json.dumps(data))
    monkeypatch.chdir(released_project)
    result = cli(*command, "--report", edited)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "edited.json: malformed report: " in lines[0], result.output
    where = lines[0].split("malformed report: ", 1)[1].split(": ", 1)[0]
    assert key in where.split("."), lines[0]
    assert result.stdout == "", lines[0]
    assert_nothing_released(released_project)


def test_a_chart_value_that_was_no_number_draws_no_bar(released_project):
    """A NaN in a chart (PSI undefined, say) is null in the saved report: both charts still render."""
    data = json.loads((released_project / "out" / "pass.json").read_text())
    chart = data["checks"][_first(data["checks"], "chart")]["details"]["chart"]
    chart["values"][0] = None
    (released_project / "out" / "nan.json").write_text(json.dumps(data))
    markdown = run_cli(released_project, "note", "--report", "out/nan.json")
    assert markdown.returncode == 0, markdown.stderr
    bars = markdown.stdout.split("bar [", 1)[1].split("]", 1)[0].split(", ")
    assert bars[0] == "0" and all(float(bar) >= 0 for bar in bars)
    html = run_cli(released_project, "note", "--report", "out/nan.json", "--format", "html")
    assert html.returncode == 0, html.stderr
    assert "nan" not in html.stdout.lower().replace("nanos", "") and ': —</title>' in html.stdout


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


TEMPLATE_ATTACKS = [
    ('{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}', "it recursed too deeply"),  # was exit 4: RecursionError
    ('{{ "a" * 10 ** 10 }}', "it asked for more than 1024 MiB of memory"),  # was a 10 GB string
    ('{{ "x"|center(4 * 10 ** 9) }}', "it asked for more than 1024 MiB of memory"),
    ('{% for i in range(9999) %}{{ "x"|center(9999) }}{% endfor %}', "its text is longer than 16 Mi characters"),
    ('{{ report.model + 1 }}', "TypeError: can only concatenate str"),  # was exit 4
    ('{{ 1 / 0 }}', "ZeroDivisionError"),
]


def test_a_template_cannot_take_the_jobs_memory_or_crash_it(project, power, cli, tmp_path):
    """The sandbox keeps a template from Python's internals, not from the job's memory and time: a repository's
    templates render in a child process under RLIMIT_AS and RLIMIT_CPU, and whatever stops one is one line
    naming the template (exit 2), in a subprocess as users run it."""
    from conftest import run_cli

    report = tmp_path / "r.json"
    assert cli("check", "--candidate", power["better"], "--stage", "quality", "--report", report).exit_code == 0
    templates = tmp_path / "templates"
    templates.mkdir()
    for template, needle in TEMPLATE_ATTACKS:
        (templates / "report.md.j2").write_text(template)
        result = run_cli(project.root, "note", "--report", report, "--templates", templates, "--out", "note.md", timeout=120)
        assert result.returncode == 2, (template, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("release-kit: error: cannot render template report.md.j2: "), result.stderr
        assert needle in lines[0], (template, lines[0])
        assert not (project.root / "note.md").exists()


@pytest.mark.slow
def test_a_template_that_loops_for_hours_is_stopped_by_its_cpu_limit(project, power, cli, tmp_path):
    from conftest import run_cli

    from release_kit.render import CPU_SECONDS

    report = tmp_path / "r.json"
    assert cli("check", "--candidate", power["better"], "--stage", "quality", "--report", report).exit_code == 0
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "report.md.j2").write_text("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")
    result = run_cli(project.root, "note", "--report", report, "--templates", templates, timeout=CPU_SECONDS * 4)
    assert result.returncode == 2 and f"it took more than {CPU_SECONDS} s of CPU" in result.stderr, result.stderr


def test_a_repositorys_templates_render_the_same_note_in_their_child_process(project, power, cli, tmp_path):
    """Copies of the shipped templates (what `release-kit init` writes) render, in the child, the note the
    shipped ones render in process."""
    import shutil

    import release_templates

    from release_kit import render
    from release_kit.report import load_report

    report_path = tmp_path / "r.json"
    assert cli("check", "--candidate", power["better"], "--report", report_path).exit_code == 0
    report = load_report(report_path)
    copies = tmp_path / "templates"
    shutil.copytree(Path(release_templates.__file__).parent, copies, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for kind in (render.render_markdown, render.render_html):
        assert kind(report, templates_dir=copies) == kind(report)


def test_a_missing_templates_directory_is_an_error(project, power, cli):
    project.config('[release]\ntemplates = "no-such-dir"\n')
    result = cli("check", "--candidate", power["better"], "--stage", "quality", "--format", "markdown", "--report", "report.json")
    assert result.exit_code == 2 and "templates directory not found" in result.stderr
    assert not (project.root / "report.json").exists()
    # note --templates: the directory is the bounded child's to read, and it says so the same way.
    project.config()
    assert cli("check", "--candidate", power["better"], "--stage", "quality", "--report", "report.json").exit_code == 0
    note = cli("note", "--report", "report.json", "--templates", "no-such-dir", "--out", "note.md")
    assert note.exit_code == 2 and note.stderr.strip() == ("release-kit: error: templates directory not found: no-such-dir "
                                                           "([release] templates or --templates)")
    assert not (project.root / "note.md").exists()


# 5. Workflows: pinned actions, no persisted credentials, the write token only where no untrusted code runs --


def workflow_files(tmp_path: Path) -> dict[str, dict]:
    import yaml

    from release_kit.scaffolding import render_scaffold

    found = {f"repo/{p.name}": yaml.safe_load(p.read_text()) for p in (ROOT / ".github" / "workflows").glob("*.yml")}
    for name in ("release-gate.yml", "release.yml"):
        found[f"init/{name}"] = yaml.safe_load(render_scaffold(f"workflows/{name}.j2", action="acme/release-kit@0123456789abcdef0123456789abcdef01234567"))
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


@pytest.mark.parametrize("writer", ["candidate", "baseline"])
@pytest.mark.parametrize("golden", ["golden.csv", "golden"])  # read whole, and streamed in batches
def test_a_model_that_writes_into_its_input_cannot_change_what_the_other_reads(project, power, cli, golden, writer):
    """torch hands a model the memory of the numpy array it is called on. A candidate that is the baseline
    plus ``x.mul_(0)`` after its prediction zeroed the golden features the baseline then read (read whole:
    the golden set itself, for every later stage; streamed: the input both models shared): the baseline's
    MAE went from 0.047 to 1.1 and the quality stage passed the candidate as much better. Read whole, each
    model reads its own copy; streamed, the candidate reads the shared input last, after the baseline, whose
    own writes (an in-place op of a benign model) have the input stacked again: the same predictions."""
    import pandas as pd

    models = {"candidate": project.root / "candidate.pt", "baseline": project.root / "baseline.pt"}
    for role, path in models.items():
        module = torch.jit.load(str(power["v1"]))
        torch.jit.save(torch.jit.script(WritesIntoItsInput(module)) if role == writer else module, str(path))
    frame = pd.read_csv(power["golden"])
    (project.root / "golden").mkdir()
    for index in range(2):
        frame.iloc[index * 1_500 : (index + 1) * 1_500].to_parquet(project.root / "golden" / f"part-{index}.parquet")
    frame.to_csv(project.root / "golden.csv", index=False)
    project.config(golden=project.root / golden)
    result = cli("check", "--candidate", models["candidate"], "--baseline", models["baseline"], "--format", "json")
    report = json.loads(result.stdout)
    assert report["environment"]["golden_read"] == ("whole" if golden == "golden.csv" else "local")
    mae = next(m for c in report["checks"] for m in c["metrics"] if m["name"] == "mae")
    assert mae["delta"] == 0.0 and mae["candidate"] == mae["baseline"] < 0.1, mae
    assert report["bump"] != "minor", report["bump_reason"]


def test_a_system_that_refuses_a_limit_still_renders(monkeypatch):
    """macOS refuses an RLIMIT_AS below what the process has mapped: the child must render under the limits it
    gets, not crash (every note of a repository's templates would have been an internal error on a laptop)."""
    import resource

    from release_kit import template_worker

    applied = []

    def refuse_memory(kind, limits):
        if kind == resource.RLIMIT_AS:
            raise ValueError("current limit exceeds maximum limit")
        applied.append((kind, limits))

    monkeypatch.setattr(resource, "setrlimit", refuse_memory)
    template_worker._limit_resources()
    assert [kind for kind, _ in applied] == [resource.RLIMIT_CPU]
    assert applied[0][1][0] == template_worker.CPU_SECONDS
