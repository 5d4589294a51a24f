"""Any PyTorch model: tensor golden sets (.npz, .safetensors, a dataset factory), several inputs, multi-output
regression, class and metadata slices, the differential robustness search, tensor drift, and their bad input.
Real models, real files, the CLI as users run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import QUICK as SHARED_QUICK
from conftest import ROOT, run_cli, save_scripted

SHAPES = ROOT / "examples" / "shape-classifier"
# Appended, not prepended: conftest puts the power example (its own build.py) first on the path.
sys.path.append(str(SHAPES))  # shapes.py, which the shape example's build.py imports


# The shared quick settings, with a longer search: the robustness search's example needs a few seconds.
QUICK = SHARED_QUICK.replace("seconds = 1\n", "seconds = 3\n")


@pytest.fixture(scope="session")
def shape_example(tmp_path_factory) -> Path:
    """The shape-classifier example built once: data/ and models/ (baseline and three candidates)."""
    from importlib import util

    spec = util.spec_from_file_location("shapes_build", SHAPES / "build.py")
    build = util.module_from_spec(spec)
    spec.loader.exec_module(build)
    directory = tmp_path_factory.mktemp("shapes")
    build.build(directory)
    return directory


def shape_project(root: Path, example: Path, extra: str = "", *, quick: bool = True) -> Path:
    """A copy of the example's project with the example's config (made quicker), plus ``extra``."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in ("data", "models"):
        shutil.copytree(example / folder, root / folder, dirs_exist_ok=True)
    text = (SHAPES / "release-kit.toml").read_text()
    if quick:
        text = text.replace("[outliers.search]\nseconds = 8\n", "").replace('[performance]\nbatch_sizes = [1, 64]\n', "") + QUICK
    (root / "release-kit.toml").write_text(text + textwrap.dedent(extra))
    return root


def checks_by_name(report: dict) -> dict[str, dict]:
    return {f"{c['stage']}::{c['name']}": c for c in report["checks"]}


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("release-kit: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# The example, as users run it: the CLI in a subprocess, default stages, tracking on -----------------------


def test_the_better_cnn_passes_every_stage_with_tracking(tmp_path, shape_example):
    root = shape_project(tmp_path / "p", shape_example)
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((root / "report.json").read_text())
    assert {c["stage"] for c in report["checks"]} == {"quality", "outliers", "performance", "data"}
    assert report["verdict"] == "pass" and report["bump"] == "minor"
    checks = checks_by_name(report)
    assert checks["outliers::search:robustness"]["status"] == "pass"
    assert checks["outliers::classes"]["status"] == "pass"
    assert checks["data::tensor:layout"]["status"] == "pass" and checks["data::drift"]["status"] == "pass"
    # Slices over the metadata columns, not over pixels.
    assert checks["outliers::slices"]["details"]["searched"] > 20
    # The contract records the input's shape with a free batch dimension, and the output width.
    assert report["contract"]["candidate"]["inputs"] == [{"shape": [None, 1, 32, 32], "dtype": "float32"}]
    assert report["contract"]["candidate"]["outputs"] == 4
    assert report["mlflow"]["run_id"] and (root / ".release-kit" / "mlflow.db").is_file()


def test_init_scaffolds_a_tensor_golden_set_that_checks_as_users_run_it(tmp_path, shape_example, cli, monkeypatch):
    """`release-kit init --data golden.npz` names no features or target (the file's arrays are the inputs and
    the target), and the scaffold's own checks run on a tensor set: the gate passes with every stage and
    tracking on. A tensor set with --target, or without a 'target' array, is bad input with nothing written;
    a table without --target too."""
    root = tmp_path / "p"
    shutil.copytree(shape_example / "data", root / "data")
    shutil.copytree(shape_example / "models", root / "models")
    subprocess.run(["git", "init", "--quiet"], cwd=root, check=True)
    monkeypatch.chdir(root)
    before = sorted(p.name for p in root.iterdir())
    for args, needle in (
        (["--target", "label", "--data", "data/golden.npz"], "data/golden.npz: a tensor golden set takes no --target or --features"),
        (["--data", "data/inputs-only.npz"], "data/inputs-only.npz: no array 'target'"),
        (["--data", "data/golden-meta.csv"], "pass --target, the golden table's target column"),
    ):
        np.savez(root / "data" / "inputs-only.npz", inputs=np.zeros((4, 1, 32, 32), np.float32))
        result = cli("init", "--name", "shapes", "--task", "classification", "--prediction", "logits", *args)
        assert result.exit_code == 2 and needle in result.stderr, result.output
        assert sorted(p.name for p in root.iterdir()) == before
    result = cli("init", "--name", "shapes", "--task", "classification", "--prediction", "logits", "--data", "data/golden.npz")
    assert result.exit_code == 0, result.output
    config = (root / "release-kit.toml").read_text()
    assert "features =" not in config and "target =" not in config and 'golden = "data/golden.npz"' in config
    (root / "release-kit.toml").write_text(config + QUICK)
    done = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--baseline", "models/v1.pt",
                   "--baseline-version", "1.0.0", "--report", "report.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = checks_by_name(json.loads((root / "report.json").read_text()))
    assert {name.split("::")[0] for name in checks} == {"quality", "outliers", "performance", "data", "checks"}
    assert checks["checks::test_model_basics.py::test_predictions_are_deterministic"]["status"] == "pass"
    assert (root / ".release-kit" / "mlflow.db").is_file()


def test_a_broken_class_is_named_by_the_class_slices(tmp_path, shape_example, cli, monkeypatch):
    root = shape_project(tmp_path / "p", shape_example)
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/candidate-triangle.pt", "--stage", "outliers", "--format", "json")
    assert result.exit_code == 1, result.output[-2000:]
    classes = checks_by_name(json.loads(result.stdout))["outliers::classes"]
    assert classes["status"] == "fail"
    assert classes["summary"].startswith("recall of class 2 (triangle) dropped from 0.")
    assert classes["details"]["table"]["rows"][0][:2] == ["2 (triangle)", "recall"]
    # Newly broken samples are listed by index, with their metadata, the truth and both decisions.
    broken = checks_by_name(json.loads(result.stdout))["outliers::newly_broken"]["details"]["table"]
    assert broken["columns"] == ["sample", "x", "y", "size", "brightness", "contrast", "noise", "truth", "baseline", "candidate"]
    first = broken["rows"][0]
    assert first[7] == "2 (triangle)" and first[8].startswith("2 (triangle) (") and not first[9].startswith("2 (")


def test_gx_suites_validate_the_metadata_table(tmp_path, shape_example, cli, monkeypatch):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["data"]\n')
    (root / "checks" / "expectations").mkdir(parents=True)
    (root / "checks" / "expectations" / "sensor.json").write_text(json.dumps({
        "name": "sensor",
        "expectations": [
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "noise", "min_value": 0, "max_value": 0.06}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "brightness", "min_value": 0, "max_value": 0.3}},
        ],
    }))
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/candidate-better.pt", "--format", "json")
    checks = checks_by_name(json.loads(result.stdout))
    assert checks["data::golden/noise:column_values_to_be_between"]["status"] == "pass"
    brightness = checks["data::golden/brightness:column_values_to_be_between"]
    assert brightness["status"] == "fail" and "of 1,500 values unexpected" in brightness["summary"]
    assert result.exit_code == 1


def test_the_robustness_search_finds_a_flip_only_the_candidate_has(tmp_path, shape_example, cli, monkeypatch):
    root = shape_project(tmp_path / "p", shape_example)
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/candidate-unstable.pt", "--stage", "outliers", "--format", "json",
                 "--report", "report.json")
    assert result.exit_code == 1, result.output[-2000:]
    report = json.loads(result.stdout)
    robustness = checks_by_name(report)["outliers::search:robustness"]
    assert robustness["status"] == "fail", robustness["summary"]
    details = robustness["details"]
    assert details["flip_rate_candidate"] > 0.3 > details["flip_rate_baseline"]
    assert "the baseline's does not" in robustness["summary"]
    # The example is real: perturbing that sample that way flips the candidate and not the baseline.
    sample = details["sample"]
    assert details["metadata"].keys() == {"x", "y", "size", "brightness", "contrast", "noise"}
    assert [image["title"] for image in details["images"]] == ["golden", "perturbed"]
    assert len(details["images"][0]["pixels"]) == 32
    # Everything else about this candidate is the better model's: quality alone would have released it.
    assert report["checks"] and all(c["status"] != "fail" for c in report["checks"] if c["name"] != "search:robustness")
    assert sample >= 0
    # The HTML note shows the golden image and its perturbation as thumbnails.
    assert cli("note", "--report", "report.json", "--format", "html", "--out", "note.html").exit_code == 0
    page = (root / "note.html").read_text()
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" width="96" height="110"') == 2
    assert page.count('<rect x="93" y="107" width="3" height="3"') == 2


def test_a_metadata_slice_regression_is_found(tmp_path, shape_example, cli, monkeypatch):
    """A candidate that mixes up classes on bright images only: the slices over the metadata name brightness."""

    class BrightBug(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = self.inner(images)
            bright = (images.flatten(1).median(dim=1).values > 0.3).unsqueeze(1)
            return torch.where(bright, logits.roll(1, dims=1), logits)

    root = shape_project(tmp_path / "p", shape_example)
    better = torch.jit.load(str(root / "models" / "candidate-better.pt"))
    save_scripted(BrightBug(better), root / "models" / "bright-bug.pt")
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/bright-bug.pt", "--stage", "outliers", "--format", "json")
    assert result.exit_code == 1
    slices = checks_by_name(json.loads(result.stdout))["outliers::slices"]
    assert slices["status"] == "fail"
    assert "brightness >" in slices["summary"], slices["summary"]


def test_tensor_drift_and_range_against_the_reference(tmp_path, shape_example, cli, monkeypatch):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["data"]\n')
    golden = np.load(root / "data" / "golden.npz")
    # A reference taken with a dimmer, lower-contrast sensor: brightness and contrast drift, values exceed it.
    np.savez(root / "data" / "reference.npz", inputs=golden["inputs"] * 0.5, target=golden["target"])
    monkeypatch.chdir(root)
    result = cli("check", "--candidate", "models/candidate-better.pt", "--format", "json")
    checks = checks_by_name(json.loads(result.stdout))
    drift = checks["data::drift"]
    assert drift["status"] == "warn" and "inputs[0] mean" in drift["details"]["drifted"], drift["summary"]
    assert checks["data::tensor:range"]["status"] == "fail"
    assert checks["data::tensor:layout"]["status"] == "pass"
    # Drift alone warns (the default action); the range check blocks.
    assert result.exit_code == 1

    np.savez(root / "data" / "reference.npz", inputs=golden["inputs"][:, :, :16, :16], target=golden["target"])
    result = cli("check", "--candidate", "models/candidate-better.pt", "--format", "json")
    checks = checks_by_name(json.loads(result.stdout))
    assert checks["data::tensor:layout"]["status"] == "fail"
    assert "(N, 1, 16, 16)" in checks["data::tensor:layout"]["summary"]


# Several inputs, multi-output regression, safetensors golden files, dataset factories -------------------------


class TwoInputRegressor(torch.nn.Module):
    """Two positional inputs (an image-like (N, 2, 4) and a vector (N, 3)) → two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(8, 2)
        self.vector = torch.nn.Linear(3, 2)

    def forward(self, grid: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.image(grid.flatten(1)) + self.vector(vector)


def two_input_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    grid = rng.normal(size=(n, 2, 4)).astype(np.float32)
    vector = rng.normal(size=(n, 3)).astype(np.float32)
    target = np.stack([grid[:, 0].sum(1) + vector[:, 0], grid[:, 1].mean(1) - vector[:, 2]], axis=1)
    return grid, vector, target + rng.normal(0, 0.1, target.shape)


def fit(model: torch.nn.Module, grid, vector, target, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    x1, x2, y = torch.from_numpy(grid), torch.from_numpy(vector), torch.from_numpy(target.astype(np.float32))
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(model(x1, x2), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("two-inputs")
    grid, vector, target = two_input_data(2_000, seed=1)
    save_scripted(fit(TwoInputRegressor(), grid, vector, target, 30), directory / "v1.pt")
    save_scripted(fit(TwoInputRegressor(), grid, vector, target, 300), directory / "better.pt")
    golden_grid, golden_vector, golden_target = two_input_data(600, seed=2)
    from safetensors.numpy import save_file

    save_file({"inputs.0": golden_grid, "inputs.1": golden_vector, "target": golden_target}, str(directory / "golden.safetensors"))
    return directory


def two_input_config(root: Path, data: Path, extra: str = "") -> None:
    (root / "release-kit.toml").write_text(textwrap.dedent(f"""
        [model]
        name = "two-inputs"
        task = "regression"
        bounds = [{{ min = -50, max = 50 }}, {{ min = -50, max = 50 }}]

        [baseline]
        path = "{data / 'v1.pt'}"
        version = "2.0.0"

        [data]
        golden = "{data / 'golden.safetensors'}"

        [mlflow]
        enabled = false
        """) + textwrap.dedent(extra) + QUICK)


def test_several_inputs_and_multi_output_regression(tmp_path, two_inputs, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_input_config(tmp_path, two_inputs)
    result = cli("check", "--candidate", two_inputs / "better.pt", "--format", "json")
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    checks = checks_by_name(report)
    # Aggregate metrics over both outputs, and the primary metric per output.
    assert {"quality::mae", "quality::rmse", "quality::r2", "quality::mae:output_0", "quality::mae:output_1"} <= checks.keys()
    assert all(checks[name]["status"] == "pass" for name in ("quality::mae", "quality::mae:output_0", "quality::mae:output_1"))
    mae = checks["quality::mae"]["metrics"][0]
    per_output = [checks[f"quality::mae:output_{k}"]["metrics"][0]["candidate"] for k in (0, 1)]
    assert mae["candidate"] == pytest.approx(np.mean(per_output))
    assert report["contract"]["candidate"]["inputs"] == [{"shape": [None, 2, 4], "dtype": "float32"}, {"shape": [None, 3], "dtype": "float32"}]
    assert report["contract"]["candidate"]["outputs"] == 2
    assert report["verdict"] == "pass" and report["bump"] == "minor"
    # A regressor's "flip" is a prediction moved beyond regression_change target deviations, named as such.
    robustness = checks["outliers::search:robustness"]
    moved = f"rate of predictions moved > {0.5 * np.std(two_input_data(600, seed=2)[2]):.3g} (0.5 target std)"
    assert robustness["summary"].startswith(moved) and "flip" not in robustness["summary"], robustness["summary"]


class NaNOnSentinel(torch.nn.Module):
    """A regressor whose outputs are NaN where the vector's last value is exactly 7 (marked golden rows):
    a perturbation moves the value off it, so no perturbed sample newly breaks the contract."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, grid: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        out = self.inner(grid, vector)
        return torch.where(vector[:, 2:] == 7.0, torch.full_like(out, float("nan")), out)


def test_golden_outputs_that_break_the_contract_are_the_contracts_to_report_not_the_searchs(tmp_path, two_inputs, cli, monkeypatch):
    """NaN on golden samples is output_contract's failure. The robustness search perturbs samples whose
    outputs both models keep within the contract: it had drawn the NaN ones and reported "golden sample
    147 under no change: the candidate's prediction moves from [nan, nan] to [nan, nan]"."""
    from safetensors.numpy import save_file

    monkeypatch.chdir(tmp_path)
    grid, vector, target = two_input_data(600, seed=2)
    vector[::10, 2] = 7.0  # 60 marked samples
    save_file({"inputs.0": grid, "inputs.1": vector, "target": target}, str(tmp_path / "golden.safetensors"))
    two_input_config(tmp_path, two_inputs)
    config = tmp_path / "release-kit.toml"
    config.write_text(config.read_text().replace(str(two_inputs / "golden.safetensors"), "golden.safetensors"))
    save_scripted(NaNOnSentinel(fit(TwoInputRegressor(), *two_input_data(2_000, seed=1), 300)), tmp_path / "nan.pt")
    result = cli("check", "--candidate", "nan.pt", "--stage", "quality", "--stage", "outliers", "--format", "json")
    assert result.exit_code == 1, result.output[-3000:]
    checks = checks_by_name(json.loads(result.stdout))
    assert checks["quality::output_contract"]["status"] == "fail"
    assert "60 of 600 candidate predictions break the contract (60 non-finite)" in checks["quality::output_contract"]["summary"]
    robustness = checks["outliers::search:robustness"]
    assert robustness["details"]["contract_breaks"] == 0 and "[nan" not in robustness["summary"], robustness["summary"]
    assert robustness["status"] == "pass", robustness["summary"]


def test_per_output_bounds_break_the_contract(tmp_path, two_inputs, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_input_config(tmp_path, two_inputs)
    text = (tmp_path / "release-kit.toml").read_text().replace("{ min = -50, max = 50 }]", "{ min = -0.5, max = 0.5 }]")
    (tmp_path / "release-kit.toml").write_text(text)
    result = cli("check", "--candidate", two_inputs / "better.pt", "--stage", "quality", "--format", "json")
    assert result.exit_code == 1
    contract = checks_by_name(json.loads(result.stdout))["quality::output_contract"]
    assert contract["status"] == "fail"
    assert "output 1 above max 0.5" in contract["details"]["violations"]
    assert not any(kind.startswith("output 0") for kind in contract["details"]["violations"])


def test_tensor_range_of_inputs_drawn_as_the_reference_passes_and_an_impossible_value_fails(tmp_path, two_inputs, cli, monkeypatch):
    """Normal inputs: a golden set 50 times the reference's size reaches beyond the reference's extremes plus
    the 10 % margin (the range's bound before), not beyond its tails' reach; one value of 40 sd does."""
    monkeypatch.chdir(tmp_path)
    reference = two_input_data(400, seed=3)
    golden = two_input_data(20_000, seed=4)
    np.savez(tmp_path / "reference.npz", **{"inputs.0": reference[0], "inputs.1": reference[1], "target": reference[2]})
    two_input_config(tmp_path, two_inputs, '[gate]\nstages = ["data"]\n')
    config = (tmp_path / "release-kit.toml").read_text()
    config = config.replace(f'golden = "{two_inputs / "golden.safetensors"}"', 'golden = "golden.npz"\nreference = "reference.npz"')
    (tmp_path / "release-kit.toml").write_text(config)

    def tensor_range(grid: np.ndarray) -> dict:
        np.savez(tmp_path / "golden.npz", **{"inputs.0": grid, "inputs.1": golden[1], "target": golden[2]})
        result = cli("check", "--candidate", two_inputs / "better.pt", "--format", "json")
        assert result.exit_code in (0, 1), result.output[-3000:]
        return checks_by_name(json.loads(result.stdout))["data::tensor:range"]

    for values, alike in ((reference[0], golden[0]), (reference[1], golden[1])):  # the premise
        margin = 0.1 * (values.max() - values.min())
        assert ((alike < values.min() - margin) | (alike > values.max() + margin)).any()
    drawn_alike = tensor_range(golden[0])
    assert drawn_alike["status"] == "pass", drawn_alike["summary"]
    impossible = golden[0].copy()
    impossible[123, 1, 2] = 40.0
    failed = tensor_range(impossible)
    assert failed["status"] == "fail" and failed["summary"].startswith("inputs.0: 1 of 160,000 values (0.000625%) outside"), failed["summary"]


def write_dataset_factory(module: Path, arrays: Path | str, *, metadata: bool = False) -> None:
    """A module whose ``golden()`` is a map-style Dataset of the two-input safetensors file ``arrays`` (read when
    it is built): ``(inputs, target)`` items, with a ``site`` metadata dict when ``metadata``."""
    meta = ', {"site": "north" if i % 2 else "south"}' if metadata else ""
    module.write_text(textwrap.dedent(f"""
        import torch
        from safetensors.numpy import load_file

        class Golden(torch.utils.data.Dataset):
            def __init__(self):
                self.arrays = load_file("{arrays}")

            def __len__(self):
                return len(self.arrays["target"])

            def __getitem__(self, i):
                inputs = (torch.from_numpy(self.arrays["inputs.0"][i]), torch.from_numpy(self.arrays["inputs.1"][i]))
                return inputs, torch.from_numpy(self.arrays["target"][i]){meta}

        def golden():
            return Golden()
        """))


def test_a_dataset_factory_with_metadata(tmp_path, two_inputs, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset_factory(tmp_path / "golden_data.py", two_inputs / "golden.safetensors", metadata=True)
    two_input_config(tmp_path, two_inputs)
    text = (tmp_path / "release-kit.toml").read_text().replace(f'golden = "{two_inputs / "golden.safetensors"}"', 'dataset = "golden_data:golden"')
    (tmp_path / "release-kit.toml").write_text(text + '[gate]\nstages = ["quality", "outliers"]\n')
    result = cli("check", "--candidate", two_inputs / "better.pt", "--format", "json")
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    assert report["data"]["golden"]["rows"] == 600 and report["data"]["golden"]["path"] == "golden_data:golden"
    slices = checks_by_name(report)["outliers::slices"]
    assert slices["status"] == "pass" and slices["details"]["searched"] >= 2  # site = north, site = south


def test_a_dataset_factory_whose_items_changed_since_the_check_releases_nothing(tmp_path, two_inputs, cli, monkeypatch):
    """A dataset factory has no file to hash: the release reads its items again, as the gate read them, and
    refuses a report whose gate read other items (exit 2, one line, nothing released); the same items again
    release."""
    import os
    import shutil
    import subprocess

    from safetensors.numpy import load_file, save_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(two_inputs / "better.pt", tmp_path / "better.pt")
    arrays = load_file(str(two_inputs / "golden.safetensors"))
    (tmp_path / "data").mkdir()
    save_file(arrays, str(tmp_path / "data" / "golden.safetensors"))
    write_dataset_factory(tmp_path / "golden_items.py", "data/golden.safetensors")
    two_input_config(tmp_path, two_inputs)
    text = (tmp_path / "release-kit.toml").read_text().replace(f'golden = "{two_inputs / "golden.safetensors"}"', 'dataset = "golden_items:golden"')
    (tmp_path / "release-kit.toml").write_text(text.replace("[mlflow]\nenabled = false\n", "") + '[gate]\nstages = ["quality"]\n')
    (tmp_path / ".gitignore").write_text(".release-kit/\ndata/\n*.json\n__pycache__/\n")
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for command in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "model repo"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True, capture_output=True, env={**os.environ, **identity})
    checked = cli("check", "--candidate", "better.pt", "--baseline", "none", "--report", "checked.json")
    assert checked.exit_code == 0, checked.output[-3000:]
    save_file({name: array[:-5] for name, array in arrays.items()}, str(tmp_path / "data" / "golden.safetensors"))
    refused = cli("release", "--report", "checked.json")
    assert refused.exit_code == 2, refused.output[-3000:]
    assert refused.stderr.startswith("release-kit: error: [data] dataset golden_items:golden is not the golden set the report's gate read")
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "CHANGELOG.md").exists()
    save_file(arrays, str(tmp_path / "data" / "golden.safetensors"))
    released = cli("release", "--report", "checked.json")
    assert released.exit_code == 0, released.output[-3000:]
    assert "1.0.0" in (tmp_path / "CHANGELOG.md").read_text()


def test_a_dataset_factory_is_size_checked_from_its_first_items_and_read_only_as_far_as_max_rows(tmp_path, two_inputs, cli, monkeypatch):
    """A dataset factory's items are read in batches and joined: one whose length, at what its first batch
    takes, would need more than the memory available is refused before the rest are read (exit 2, one
    line). With --max-rows only that prefix is read. This dataset claims 10,000,000 items and fails past
    item 2,047, which the refusal and the prefix never reach. A __len__ that fails is bad input too. (The
    memory available is set to 64 MiB.)"""
    import release_kit.environment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "claimed_data.py").write_text(textwrap.dedent(f"""
        import torch
        from safetensors.numpy import load_file

        class Golden(torch.utils.data.Dataset):
            def __init__(self):
                self.arrays = load_file("{two_inputs / 'golden.safetensors'}")

            def __len__(self):
                return 10_000_000

            def __getitem__(self, i):
                if i >= 2048:
                    raise IndexError(f"item {{i}} was read")
                i %= len(self.arrays["target"])
                return (torch.from_numpy(self.arrays["inputs.0"][i]), torch.from_numpy(self.arrays["inputs.1"][i])), torch.from_numpy(self.arrays["target"][i])

        def golden():
            return Golden()
        """))
    two_input_config(tmp_path, two_inputs, '[gate]\nstages = ["quality"]\n')
    text = (tmp_path / "release-kit.toml").read_text().replace(f'golden = "{two_inputs / "golden.safetensors"}"', 'dataset = "claimed_data:golden"')
    (tmp_path / "release-kit.toml").write_text(text)
    monkeypatch.setattr(release_kit.environment, "available_memory_bytes", lambda: 64 * 2**20)
    refused = cli("check", "--candidate", two_inputs / "better.pt", "--report", "report.json")
    assert refused.exit_code == 2, refused.output[-2000:]
    assert refused.stderr.strip().splitlines() == [
        "release-kit: error: [data] dataset claimed_data:golden: 10,000,000 items take ~1.1 GiB read whole, more than the memory "
        "available (64.0 MiB)"]
    assert not (tmp_path / "report.json").exists()
    prefix = cli("check", "--candidate", two_inputs / "better.pt", "--max-rows", "600", "--format", "json")
    assert prefix.exit_code == 0, prefix.output[-2000:]
    assert json.loads(prefix.stdout)["data"]["golden"]["rows"] == 600

    # A dataset whose __len__ fails: its error, one line, exit 2 (not an internal error).
    (tmp_path / "claimed_data.py").write_text((tmp_path / "claimed_data.py").read_text().replace(
        "return 10_000_000", "raise RuntimeError('no length here')"))
    sys.modules.pop("claimed_data", None)
    broken = cli("check", "--candidate", two_inputs / "better.pt", "--report", "report.json")
    assert broken.exit_code == 2, broken.output[-2000:]
    assert broken.stderr.strip().splitlines() == [
        "release-kit: error: [data] dataset claimed_data:golden: len() failed: RuntimeError: no length here"]
    assert not (tmp_path / "report.json").exists()


def test_several_inputs_from_an_npz_with_cli_data_override(tmp_path, two_inputs, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_input_config(tmp_path, two_inputs, '[gate]\nstages = ["quality"]\n')
    grid, vector, target = two_input_data(300, seed=3)
    np.savez(tmp_path / "other.npz", **{"inputs.0": grid, "inputs.1": vector, "target": target})
    result = cli("check", "--candidate", two_inputs / "better.pt", "--data", "other.npz", "--format", "json")
    assert result.exit_code == 0, result.output[-2000:]
    assert json.loads(result.stdout)["data"]["golden"]["rows"] == 300


def test_an_npz_that_unpacks_beyond_the_memory_available_is_refused(tmp_path, two_inputs, cli, monkeypatch):
    """``np.savez_compressed`` deflates each array, and numpy reads it whole: a golden set of a few hundred
    KB can unpack to any size (a 200 MB array of zeros here). One whose arrays unpack to more than the memory
    available is refused before it is read: exit 2, one line, no report. (The memory available is set low
    here: this machine's is what it is.)"""
    import release_kit.environment

    monkeypatch.chdir(tmp_path)
    two_input_config(tmp_path, two_inputs, '[gate]\nstages = ["quality"]\n')
    grid, vector, target = two_input_data(300, seed=3)
    np.savez_compressed(tmp_path / "bomb.npz", **{"inputs.0": grid, "inputs.1": vector, "target": target,
                                                 "padding": np.zeros(50_000_000, dtype=np.float32)})
    assert (tmp_path / "bomb.npz").stat().st_size < 2**20
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 100 * 2**20)
        result = cli("check", "--candidate", two_inputs / "better.pt", "--data", "bomb.npz", "--report", "report.json")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "data file bomb.npz unpacks to 190." in result.stderr and "MiB on disk), more than the memory available (100.0 MiB)" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_a_changed_input_shape_is_a_breaking_contract_change():
    from release_kit.signature import InputSpec, Signature, compare

    def contract(shape, dtype="float32", outputs=4):
        return Signature("classification", (), dtype, outputs, "logits", None, (InputSpec((None, *shape), dtype),))

    assert compare(contract((1, 32, 32)), contract((1, 32, 32))).breaking == []
    assert compare(contract((1, 32, 32)), contract((3, 32, 32))).breaking == ["inputs changed from (N, 1, 32, 32) float32 to (N, 3, 32, 32) float32"]
    assert compare(contract((128,), "int64"), contract((128,), "int32")).breaking == ["inputs changed from (N, 128) int64 to (N, 128) int32"]
    assert compare(contract((1, 32, 32)), contract((1, 32, 32), outputs=5)).breaking == ["output width changed from 4 to 5"]
    original = contract((1, 32, 32))
    assert Signature.from_json(original.to_json()) == original



# Token ids: integer inputs, an EmbeddingBag text classifier -------------------------------------------------

TOKENS, VOCABULARY = 12, 50


class TokenBag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(VOCABULARY, 16, mode="mean")
        self.head = torch.nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def token_project(root: Path) -> dict[str, Path]:
    """Token-id sequences (int64) labelled by whether token 7 outnumbers token 9; a baseline trained 5 steps,
    a candidate 200 (TorchScript and torch.export)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCABULARY, size=(1500, TOKENS)).astype(np.int64)
    labels = ((tokens == 7).sum(1) > (tokens == 9).sum(1)).astype(np.int64)
    root.mkdir(parents=True)
    np.savez(root / "golden.npz", inputs=tokens[:1000], target=labels[:1000])
    np.savez(root / "reference.npz", inputs=tokens[1000:], target=labels[1000:])

    def trained(steps: int) -> TokenBag:
        torch.manual_seed(1)
        model = TokenBag()
        optimizer = torch.optim.Adam(model.parameters(), 0.05)
        x, y = torch.from_numpy(tokens[1000:]), torch.from_numpy(labels[1000:])
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.eval()

    better = trained(200)
    program = torch.export.export(better, (torch.from_numpy(tokens[:8]),), dynamic_shapes=({0: torch.export.Dim("n", min=2)},))
    torch.export.save(program, str(root / "candidate.pt2"))
    (root / "release-kit.toml").write_text(textwrap.dedent("""
        [model]
        name = "token-bag"
        task = "classification"
        prediction = "logits"

        [data]
        golden = "golden.npz"
        reference = "reference.npz"
    """) + QUICK)
    return {"baseline": save_scripted(trained(5), root / "v1.pt"), "candidate": save_scripted(better, root / "candidate.pt"),
            "export": root / "candidate.pt2"}


def test_a_token_id_classifier_through_every_stage_with_tracking(tmp_path):
    """Integer inputs reach every stage as stored. The FLOP counter failed on an EmbeddingBag under inference
    mode, and took both latency checks with it (error: a gate that could not pass a better model)."""
    models = token_project(tmp_path / "p")
    result = run_cli(tmp_path / "p", "check", "--candidate", models["candidate"], "--baseline", models["baseline"],
                     "--baseline-version", "1.0.0", "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    checks = checks_by_name(report)
    assert report["verdict"] == "pass" and report["bump"] == "minor", report["bump_reason"]
    assert {c["stage"] for c in report["checks"]} == {"quality", "outliers", "performance", "data"}
    for rows in (1, 64):
        latency = checks[f"performance::latency:batch={rows}"]
        assert latency["status"] in ("pass", "warn"), latency["summary"]
        assert all(latency["details"]["cost"][role]["flops_per_row"] > 0 for role in ("candidate", "baseline"))
    assert checks["outliers::search:robustness"]["status"] == "skip"  # token ids are not perturbed
    assert checks["data::tensor:layout"]["status"] == "pass"
    assert "metadata table" in checks["data::suite"]["summary"], checks["data::suite"]["summary"]
    assert report["contract"]["candidate"]["inputs"] == [{"shape": [None, TOKENS], "dtype": "int64"}]


def test_an_exported_token_id_classifier_is_timed(tmp_path, cli, monkeypatch):
    models = token_project(tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    result = cli("check", "--candidate", models["export"], "--baseline", models["baseline"], "--stage", "performance",
                 "--no-mlflow", "--format", "json")
    latency = checks_by_name(json.loads(result.stdout))["performance::latency:batch=1"]
    assert latency["status"] != "error" and latency["details"]["rounds"] > 0, latency["summary"]

# Bad input: exit 2, one line naming the file and the problem ------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "needles"),
    [
        (lambda g: {"inputs": np.repeat(g["inputs"], 3, axis=1), "target": g["target"]},
         ["candidate model", "failed on input of shape (256, 3, 32, 32)"]),
        (lambda g: {"inputs": g["inputs"], "target": g["target"][:-5]}, ["array 'inputs' has 1500 samples but 'target' has 1495"]),
        (lambda g: {"images": g["inputs"], "target": g["target"]}, ["no array 'inputs'", "arrays: images, target"]),
        (lambda g: {"inputs": g["inputs"]}, ["no array 'target'"]),
        (lambda g: {"inputs.0": g["inputs"], "inputs.2": g["inputs"], "target": g["target"]}, ["from 0 without gaps"]),
        (lambda g: {"inputs": g["inputs"], "target": np.array([{"x": 1}] * len(g["target"]), dtype=object)},
         ["array 'target' is a pickled object array, which is refused"]),
    ],
    ids=["shape-mismatch", "length-mismatch", "missing-inputs", "missing-target", "gap", "pickled-object-array"],
)
def test_bad_tensor_golden_sets_exit_2_with_one_line(tmp_path, shape_example, arrays, needles):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    golden = dict(np.load(root / "data" / "golden.npz"))
    np.savez(root / "data" / "golden.npz", **arrays(golden))
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "report.json")
    assert_one_line_error(result, *needles)
    assert not (root / "report.json").exists()


def test_a_pickled_npz_is_refused_and_never_unpickled(tmp_path, shape_example):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    golden = dict(np.load(root / "data" / "golden.npz"))
    np.savez(root / "data" / "golden.npz", inputs=golden["inputs"], target=golden["target"],
             extra=np.array([Payload()], dtype=object))
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt")
    assert_one_line_error(result, "golden.npz", "array 'extra' is a pickled object array")
    assert not marker.exists()


@pytest.mark.parametrize(("declared", "payload", "needle"), [
    ((1500, 10 ** 9), 0, "declares shape (1500, 1000000000) of float32 (6,000,000,000,000 bytes) but holds 0 bytes"),  # was exit 4
    ((1500, 1, 32, 32), 100, "declares shape (1500, 1, 32, 32) of float32 (6,144,000 bytes) but holds 100 bytes"),
])
def test_an_npz_array_whose_header_claims_more_than_it_holds_is_refused_before_numpy_allocates_it(tmp_path, shape_example, declared,
                                                                                                  payload, needle):
    """numpy allocates the shape an .npy header declares before reading it: a 200-byte entry asked for terabytes
    (MemoryError, exit 4), and a truncated one was called a pickled object array."""
    import io
    import zipfile

    from numpy.lib import format as npy

    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    golden = dict(np.load(root / "data" / "golden.npz"))
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": declared})
    with zipfile.ZipFile(root / "data" / "golden.npz", "w") as archive:
        archive.writestr("inputs.npy", header.getvalue() + golden["inputs"].tobytes()[:payload])
        target = io.BytesIO()
        np.save(target, golden["target"])
        archive.writestr("target.npy", target.getvalue())
    result = run_cli(root, "check", "--candidate", "models/candidate-better.pt", "--report", "report.json")
    assert_one_line_error(result, "golden.npz", f"array 'inputs' {needle}: a truncated or crafted file")
    assert not (root / "report.json").exists()


def test_metadata_with_another_row_count(tmp_path, shape_example):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    meta = pd.read_csv(root / "data" / "golden-meta.csv")
    meta.iloc[:-1].to_csv(root / "data" / "golden-meta.csv", index=False)
    assert_one_line_error(run_cli(root, "check", "--candidate", "models/candidate-better.pt"),
                          "golden-meta.csv", "1499 rows but the golden set has 1500 samples")


def test_table_keys_with_a_tensor_golden_set(tmp_path, shape_example):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    text = (root / "release-kit.toml").read_text().replace('prediction = "logits"', 'prediction = "logits"\nfeatures = ["a"]\ntarget = "y"')
    (root / "release-kit.toml").write_text(text)
    assert_one_line_error(run_cli(root, "check", "--candidate", "models/candidate-better.pt"),
                          "golden.npz", "remove [model] features and target")


def test_cuda_requested_without_a_gpu_is_bad_input(tmp_path, shape_example):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    text = (root / "release-kit.toml").read_text().replace('device = "auto"', 'device = "cuda"')
    (root / "release-kit.toml").write_text(text)
    assert_one_line_error(run_cli(root, "check", "--candidate", "models/candidate-better.pt"), "[inference] device = \"cuda\"")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_golden_inference_on_the_gpu_matches_the_cpu(tmp_path, shape_example, cli, monkeypatch):
    root = shape_project(tmp_path / "p", shape_example, '[gate]\nstages = ["quality"]\n')
    monkeypatch.chdir(root)
    reports = {}
    for device in ("cpu", "cuda"):
        text = (SHAPES / "release-kit.toml").read_text().replace('device = "auto"', f'device = "{device}"')
        (root / "release-kit.toml").write_text(text + '[gate]\nstages = ["quality"]\n[mlflow]\nenabled = false\n')
        result = cli("check", "--candidate", "models/candidate-better.pt", "--format", "json")
        reports[device] = checks_by_name(json.loads(result.stdout))
    for name in ("quality::accuracy", "quality::log_loss"):
        assert reports["cuda"][name]["metrics"][0]["candidate"] == pytest.approx(reports["cpu"][name]["metrics"][0]["candidate"], rel=1e-4)
