"""Classification through the whole gate: binary (N,) and (N, 1), multiclass (N, C); logits and probabilities."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import churn_model, make_classification, save_scripted, train_classifier

CONFIG = churn_model("{prediction}") + """
[baseline]
version = "2.3.0"

[data]
golden = "golden.csv"

[gate]
stages = ["quality"]  # this file tests the quality stage's classification metrics

[mlflow]
enabled = false
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    directory = tmp_path_factory.mktemp("classification")
    out = {}
    for classes in (2, 3):
        train = make_classification(3000, classes, seed=classes)
        golden = make_classification(2000, classes, seed=10 + classes)
        golden_path = directory / f"golden{classes}.csv"
        golden.to_csv(golden_path, index=False)
        out[classes] = (train, golden_path)
    return directory, out


@pytest.mark.parametrize(
    ("classes", "squash", "prediction"),
    [
        (2, "squeeze", "logits"),  # binary logits, shape (N,)
        (2, "sigmoid", "probabilities"),  # binary probabilities, shape (N, 1)
        (3, "none", "logits"),  # multiclass logits (N, 3)
        (3, "softmax", "probabilities"),  # multiclass probabilities (N, 3)
    ],
)
def test_better_trained_classifier_passes_and_undertrained_is_blocked(tmp_path, monkeypatch, cli, datasets, classes, squash, prediction):
    _, data = datasets
    train, golden = data[classes]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction=prediction).replace("golden.csv", str(golden)))
    weak = save_scripted(train_classifier(train, classes, epochs=2, squash=squash), tmp_path / "weak.pt")
    strong = save_scripted(train_classifier(train, classes, epochs=150, squash=squash), tmp_path / "strong.pt")

    passed = cli("check", "--candidate", strong, "--baseline", weak, "--format", "json")
    assert passed.exit_code == 0, passed.output
    report = json.loads(passed.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert set(names) == {"output_contract", "batch_independence", "accuracy", "f1", "roc_auc", "log_loss"}
    assert all(c["status"] == "pass" for c in report["checks"]), [c["summary"] for c in report["checks"]]
    log_loss = names["log_loss"]["metrics"][0]
    assert log_loss["ci_high"] < 0  # significantly better
    assert (report["bump"], report["next_version"]) == ("minor", "2.4.0")

    blocked = cli("check", "--candidate", weak, "--baseline", strong, "--format", "json")
    assert blocked.exit_code == 1
    assert json.loads(blocked.stdout)["verdict"] == "block"


def test_class_count_mismatch_is_an_input_error(tmp_path, monkeypatch, cli, datasets):
    _, data = datasets
    train, golden = data[3]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction="logits").replace("golden.csv", str(golden)))
    binary = save_scripted(train_classifier(make_classification(500, 2, 1), 2, epochs=5, squash="squeeze"), tmp_path / "bin.pt")
    result = cli("check", "--candidate", binary)
    assert result.exit_code == 2
    assert "outputs 2 class(es) but the target has class id 2" in result.stderr


def test_non_integer_labels_are_golden_rows_that_block(tmp_path, monkeypatch, cli, datasets):
    """A label that is no class id is an impossible value in a golden row: the data stage names it and
    blocks (exit 1, with a report); the quality stage runs on the other rows."""
    import pandas as pd

    _, data = datasets
    train, golden = data[2]
    frame = pd.read_csv(golden)
    frame["label"] = frame["label"].astype(float)
    frame.loc[0, "label"] = 0.5
    frame.to_csv(tmp_path / "bad.csv", index=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction="logits").replace("golden.csv", "bad.csv"))
    model = save_scripted(train_classifier(train, 2, epochs=5, squash="squeeze"), tmp_path / "m.pt")
    result = cli("check", "--candidate", model, "--format", "json")
    assert result.exit_code == 1, result.output
    checks = {f"{c['stage']}::{c['name']}": c for c in json.loads(result.stdout)["checks"]}
    assert checks["data::golden_rows"]["status"] == "fail" and checks["data::golden_rows"]["details"]["rows"] == [0]
    assert checks["data::golden_rows"]["details"]["columns"] == {"label": 1}


@pytest.mark.parametrize(("classes", "squash", "needle"), [
    (3, "none", "have values outside [0, 1] and a sum other than 1"),  # logits under "probabilities"
    (3, "sigmoid", "have a sum other than 1"),  # one sigmoid per class: each in [0, 1], rows not summing to 1
    (2, "squeeze", "have values outside [0, 1]"),  # a binary model's logit
])
@pytest.mark.parametrize("layout", ["csv", "streamed"])
def test_scores_declared_as_probabilities_are_bad_input_naming_the_setting(tmp_path, monkeypatch, cli, datasets, classes, squash,
                                                                          needle, layout):
    """prediction = "probabilities" with a model whose outputs are not (the most common slip: logits) read the
    scores as probabilities: log loss of nonsense read whole, and exit 4 streamed, where the scores were binned
    (bincount of negative bins). It is bad input, naming the model and the setting; the baseline too."""
    _, data = datasets
    train, golden = data[classes]
    monkeypatch.chdir(tmp_path)
    if layout == "streamed":
        import pandas as pd

        (tmp_path / "golden").mkdir()
        pd.read_csv(golden).to_parquet(tmp_path / "golden" / "part-0.parquet")
        golden = tmp_path / "golden"
    config = CONFIG.format(prediction="probabilities").replace("golden.csv", str(golden))
    (tmp_path / "release-kit.toml").write_text(config + ("\n[run]\nchunk_rows = 512\n" if layout == "streamed" else ""))
    scores = save_scripted(train_classifier(train, classes, epochs=20, squash=squash), tmp_path / "scores.pt")
    fitting = save_scripted(train_classifier(train, classes, epochs=20, squash="softmax" if classes > 2 else "sigmoid"), tmp_path / "p.pt")
    for candidate, baseline, role in ((scores, fitting, "candidate"), (fitting, scores, "baseline")):
        result = cli("check", "--candidate", candidate, "--baseline", baseline)
        assert result.exit_code == 2, result.output[-2000:]
        assert f'{role} model outputs are not class probabilities, as [model] prediction = "probabilities" says' in result.stderr
        assert needle in result.stderr and 'needs prediction = "logits"' in result.stderr and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / ".release-kit").exists()
    assert cli("check", "--candidate", fitting, "--baseline", fitting).exit_code == 0


def test_probabilities_declared_as_logits_are_bad_input_naming_the_setting(tmp_path, monkeypatch, cli, datasets):
    """A multiclass model that ends in a softmax, under prediction = "logits": a second softmax flattened every
    row toward 1/C and misstated log loss, silently. Every row a distribution is no chance of logits: exit 2."""
    _, data = datasets
    train, golden = data[3]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction="logits").replace("golden.csv", str(golden)))
    softmax = save_scripted(train_classifier(train, 3, epochs=20, squash="softmax"), tmp_path / "softmax.pt")
    logits = save_scripted(train_classifier(train, 3, epochs=20, squash="none"), tmp_path / "logits.pt")
    result = cli("check", "--candidate", softmax, "--baseline", logits)
    assert result.exit_code == 2, result.output[-2000:]
    assert 'candidate model outputs are class probabilities' in result.stderr and 'set prediction = "probabilities"' in result.stderr


def test_nan_probabilities_fail_the_contract_not_the_metrics(tmp_path, monkeypatch, cli, datasets):
    import torch

    class SometimesNaN(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x[:, 0]
            return torch.where(x[:, 1] > 1.5, torch.full_like(out, float("nan")), out)

    _, data = datasets
    _, golden = data[2]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction="logits").replace("golden.csv", str(golden)))
    path = save_scripted(SometimesNaN(), tmp_path / "nan.pt")
    result = cli("check", "--candidate", path, "--baseline", path, "--format", "json")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["output_contract"]["status"] == "fail"
    assert "non-finite" in checks["output_contract"]["summary"]
    assert checks["roc_auc"]["status"] == "warn"  # could not decide: never a pass, never silently skipped
    assert "non-finite" in checks["roc_auc"]["summary"]


# Class labels stored as text, named by [model] classes ----------------------------------------------------

NAMES = ["low", "mid", "high"]


def labelled(frame, names=NAMES):
    """The frame with each class id replaced by its name (a missing label stays missing)."""
    return frame.assign(label=frame["label"].map(dict(enumerate(names))))


def test_text_labels_are_the_classes_named_in_the_config(tmp_path, monkeypatch, cli, datasets):
    """A golden set whose labels are names gives the numbers of the same set with class ids, read whole (CSV)
    and streamed (Parquet files, one of them with pandas' category dtype)."""
    import pandas as pd

    _, data = datasets
    train, golden = data[3]
    ids = pd.read_csv(golden)
    ids.to_csv(tmp_path / "ids.csv", index=False)
    names = labelled(ids)
    names.to_csv(tmp_path / "names.csv", index=False)
    (tmp_path / "names").mkdir()
    names.iloc[:1000].to_parquet(tmp_path / "names" / "part-0.parquet")
    names.iloc[1000:].assign(label=names["label"].iloc[1000:].astype("category")).to_parquet(tmp_path / "names" / "part-1.parquet")
    monkeypatch.chdir(tmp_path)
    config = CONFIG.format(prediction="logits").replace('[data]\ngolden = "golden.csv"', '[data]\ngolden = "ids.csv"')
    (tmp_path / "release-kit.toml").write_text(config.replace('prediction = "logits"\n', f'prediction = "logits"\nclasses = {NAMES}\n'))
    weak = save_scripted(train_classifier(train, 3, epochs=2, squash="none"), tmp_path / "weak.pt")
    strong = save_scripted(train_classifier(train, 3, epochs=150, squash="none"), tmp_path / "strong.pt")

    def metrics(data: str) -> dict:
        result = cli("check", "--candidate", strong, "--baseline", weak, "--data", data, "--format", "json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        return {m["name"]: (m["candidate"], m["baseline"], m["ci_low"], m["ci_high"]) for c in report["checks"] for m in c["metrics"]}

    expected = metrics("ids.csv")
    assert set(expected) >= {"accuracy", "f1", "log_loss"}
    for data in ("names.csv", "names"):
        found = metrics(data)
        assert found.keys() == expected.keys()
        for name, values in expected.items():
            assert found[name] == pytest.approx(values, rel=1e-9), (data, name)


def refused_check(tmp_path, monkeypatch, cli, train, frame, classes: list[str], data: str) -> str:
    """A check of ``frame``, written as table.csv and as a Parquet directory table/ (``data`` picks one), with
    ``[model] classes``: asserts exit 2 with nothing written, and returns the one line it printed."""
    frame.to_csv(tmp_path / "table.csv", index=False)
    (tmp_path / "table").mkdir()
    frame.to_parquet(tmp_path / "table" / "part-0.parquet")
    monkeypatch.chdir(tmp_path)
    config = CONFIG.format(prediction="logits").replace('prediction = "logits"\n', f'prediction = "logits"\nclasses = {classes}\n')
    (tmp_path / "release-kit.toml").write_text(config)
    model = save_scripted(train_classifier(train, 3, epochs=5, squash="none"), tmp_path / "m.pt")
    result = cli("check", "--candidate", model, "--data", data, "--report", "report.json")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and not (tmp_path / "report.json").exists(), line
    return line


@pytest.mark.parametrize("data", ["table.csv", "table"])
def test_a_label_outside_the_classes_is_an_input_error(tmp_path, monkeypatch, cli, datasets, data):
    import pandas as pd

    _, sets = datasets
    train, golden = sets[3]
    frame = labelled(pd.read_csv(golden))
    frame.loc[[7, 8], "label"] = "medium"
    frame.loc[9, "label"] = "Low"  # every label that is no class is named, with its rows: not only the first
    line = refused_check(tmp_path, monkeypatch, cli, train, frame, NAMES, data)
    assert "'label'" in line and "the labels 'medium' (2 rows), 'Low' (1 row)" in line, line
    assert "not in [model] classes (low, mid, high)" in line, line


@pytest.mark.parametrize("names", [["low", "mid"], ["low", "mid", "high", "extra"]])
@pytest.mark.parametrize("data", ["table.csv", "table"])
def test_classes_that_do_not_name_each_output_are_an_input_error(tmp_path, monkeypatch, cli, datasets, names, data):
    """[model] classes names the model's outputs in order: a list of another length than the outputs is bad
    config (exit 2), even when every label in the golden set is among the names."""
    import pandas as pd

    _, sets = datasets
    train, golden = sets[3]
    frame = pd.read_csv(golden)
    frame = frame[frame["label"] < 2] if len(names) == 2 else frame
    line = refused_check(tmp_path, monkeypatch, cli, train, frame, names, data)
    assert f"model outputs 3 class(es) but [model] classes names {len(names)}" in line, line


def test_text_labels_without_classes_say_how_to_name_them(tmp_path, monkeypatch, cli, datasets):
    import pandas as pd

    _, sets = datasets
    train, golden = sets[3]
    labelled(pd.read_csv(golden)).to_csv(tmp_path / "names.csv", index=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release-kit.toml").write_text(CONFIG.format(prediction="logits").replace("golden.csv", "names.csv"))
    model = save_scripted(train_classifier(train, 3, epochs=5, squash="none"), tmp_path / "m.pt")
    result = cli("check", "--candidate", model)
    assert result.exit_code == 2 and "target column 'label' is not numeric" in result.stderr, result.output
    assert "list them in [model] classes" in result.stderr


@pytest.mark.parametrize("golden_set", ["golden.csv", "golden"])  # read whole, and streamed (Parquet files)
def test_text_labels_through_every_stage_with_tracking(tmp_path, datasets, golden_set):
    """As users run it: the CLI in a subprocess, the default stages (the data stage profiling a reference
    whose labels are names too, and whose feature c is booleans, as the golden set's), the embedded MLflow
    store; the data stage checks the labels and c as stored, read whole or streamed."""
    import pandas as pd

    from conftest import QUICK, run_cli

    _, sets = datasets
    train, golden = sets[3]
    train = train.assign(c=train["c"] > 0)
    golden = labelled(pd.read_csv(golden)).assign(c=lambda frame: frame["c"] > 0)
    golden.to_csv(tmp_path / "golden.csv", index=False)
    (tmp_path / "golden").mkdir()
    for index, part in enumerate((golden.iloc[:1000], golden.iloc[1000:])):
        part.to_parquet(tmp_path / "golden" / f"part-{index}.parquet")
    labelled(train).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "release-kit.toml").write_text(churn_model("logits") + f"classes = {NAMES}\n" + textwrap.dedent(f"""
        [data]
        golden = "{golden_set}"
        reference = "train.csv"
    """) + QUICK)
    weak = save_scripted(train_classifier(train, 3, epochs=2, squash="none"), tmp_path / "weak.pt")
    strong = save_scripted(train_classifier(train, 3, epochs=150, squash="none"), tmp_path / "strong.pt")
    result = run_cli(tmp_path, "check", "--candidate", strong, "--baseline", weak, "--baseline-version", "1.0.0",
                     "--report", "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    checks = {f"{c['stage']}::{c['name']}": c for c in report["checks"]}
    assert {c["stage"] for c in report["checks"]} == {"quality", "outliers", "performance", "data"}
    assert report["verdict"] == "pass" and report["bump"] == "minor", report["bump_reason"]
    assert checks["data::golden_rows"]["status"] == "pass"
    assert report["environment"]["golden_read"] == ("whole" if golden_set == "golden.csv" else "local")
    stored = {name: c for name, c in checks.items() if name.startswith(("data::golden/label:", "data::golden/c:"))}
    assert len(stored) >= 4 and all(c["status"] == "pass" for c in stored.values()), {n: c["summary"] for n, c in stored.items()}
    assert checks["data::drift"]["status"] in ("pass", "warn"), checks["data::drift"]["summary"]
    classes = checks["outliers::classes"]
    assert classes["status"] == "pass" and {row[0] for row in classes["details"]["table"]["rows"]} == {"0 (low)", "1 (mid)", "2 (high)"}
    # The summary names the largest drop only where a class dropped ("recall of class 1 rose" is no drop).
    least = min(row[5] for row in classes["details"]["table"]["rows"])
    assert ("largest drop: " in classes["summary"]) == (least < 0), classes["summary"]
    assert ("none dropped; the least rise: " in classes["summary"]) == (least >= 0), classes["summary"]
    assert report["mlflow"]["run_id"] and (tmp_path / ".release-kit" / "mlflow.db").is_file()
