"""Config parsing and validation beyond the CLI's bad-input cases."""

from __future__ import annotations

import re

import pytest

from release_kit.config import Config, load_config, parse_tolerance
from release_kit.errors import InputError

MINIMAL = {"model": {"name": "m", "task": "regression", "target": "y", "features": ["a", "b"]}}


def with_model(**changes):
    return {"model": {**MINIMAL["model"], **changes}}


def test_defaults():
    config = Config.model_validate(MINIMAL)
    assert config.primary_metric == "mae"
    assert config.gate.stages == ["quality", "outliers", "performance", "data"]  # the whole pipeline by default
    assert config.mlflow.enabled and config.mlflow.tracking_uri is None
    assert config.release.initial_version == "1.0.0"


@pytest.mark.parametrize(
    ("value", "expected"), [(0.02, (0.02, False)), ("5%", (0.05, True)), (" 2.5 % ", (0.025, True)), ("0.1", (0.1, False))]
)
def test_tolerance_forms(value, expected):
    assert parse_tolerance(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["-1%", -0.1, "lots", "%"])
def test_bad_tolerances(value):
    with pytest.raises(ValueError):
        parse_tolerance(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_model(task="ranking"), "model.task"),
        (with_model(task="classification"), "prediction"),
        (with_model(prediction="logits"), "classification only"),
        (with_model(features=["a", "a"]), "duplicate feature"),
        (with_model(features=["a", "y"]), "also listed in features"),
        (with_model(bounds={"min": 2, "max": 1}), "greater than max"),
        ({**MINIMAL, "quality": {"tolerance": {"accuracy": 0.1}}}, "do not apply to regression"),
        ({**MINIMAL, "quality": {"tolerance": {"mape": 0.1}}}, "unknown metric 'mape'"),
        ({**MINIMAL, "quality": {"primary": "roc_auc"}}, "do not apply"),
        ({**MINIMAL, "baseline": {"version": "one"}}, "semantic version"),
        ({**MINIMAL, "quality": {"confidence": 1.5}}, "quality.confidence"),
        (with_model(output=-1), "config key 'model.output': must be a tuple's index (0, 1, …) or a dict's key"),
        (with_model(output=True), "config key 'model.output': must be"),
        (with_model(output=""), "config key 'model.output': must be"),
        ({**MINIMAL, "release": {"tag_format": "release-{model}"}}, "has no {version}: every release would be given the same tag"),
        ({**MINIMAL, "release": {"tag_format": "{model.__class__}-{version}"}}, "may use only {model} and {version}, as they are"),
        ({**MINIMAL, "release": {"tag_format": "v{version:>9}"}}, "may use only {model} and {version}, as they are"),
        ({**MINIMAL, "release": {"tag_format": "v{version"}}, "config key 'release.tag_format'"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path, data, message):
    path = tmp_path / "release-kit.toml"
    path.write_text(_to_toml(data))
    with pytest.raises(InputError, match=re.escape(message)):
        load_config(path)


def test_pyproject_without_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n')
    with pytest.raises(InputError, match=r"no \[tool.release-kit\]"):
        load_config(path)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "sub" / "release-kit.toml"
    path.parent.mkdir()
    path.write_text(_to_toml({**MINIMAL, "data": {"golden": "g.csv"}, "baseline": {"path": "models:/m@champion"}}))
    config = load_config(path)
    assert config.data.golden == str(tmp_path / "sub" / "g.csv")
    assert config.baseline.path == "models:/m@champion"


def _to_toml(data: dict, prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(_to_toml(value, f"{prefix}{key}."))
        else:
            scalars.append(f"{key} = {_value(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix and scalars else ""
    return head + "\n".join(scalars) + "\n" + "".join(tables)


def _value(value) -> str:
    import json

    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def test_the_settings_digest_covers_check_and_suite_contents_and_survives_an_unreadable_file(tmp_path):
    """policy_sha256 moves with a user check's or a suite's content, not with a cache or a hidden file, and
    a file the run cannot read is recorded so: the digest is taken after the gate ran, where a crash is exit 4."""
    import os

    config = Config.model_validate({**MINIMAL, "data": {"suites": str(tmp_path / "checks" / "expectations")}})
    (tmp_path / "checks" / "expectations").mkdir(parents=True)
    check = tmp_path / "checks" / "test_a.py"
    check.write_text("def test_a():\n    assert 1\n")
    suite = tmp_path / "checks" / "expectations" / "s.json"
    suite.write_text("{}")
    first = config.policy_sha256(tmp_path, None, {})
    (tmp_path / "checks" / "__pycache__").mkdir()
    (tmp_path / "checks" / "__pycache__" / "x.py").write_text("cache")
    (tmp_path / "checks" / ".hidden.py").write_text("hidden")
    assert config.policy_sha256(tmp_path, None, {}) == first
    suite.write_text('{"expectations": []}')
    assert config.policy_sha256(tmp_path, None, {}) != first
    if os.geteuid() != 0:  # root reads mode-0 files
        check.chmod(0)
        try:
            assert config.policy_sha256(tmp_path, None, {}) != first
        finally:
            check.chmod(0o644)
    # The reference's, training set's and metadata's contents count, each as data.content_hashes takes them;
    # none set, the digest is as before those counted.
    from release_kit.data import content_hashes

    reference = tmp_path / "reference.csv"
    reference.write_text("a,b\n1,2\n")
    with_reference = Config.model_validate({**MINIMAL, "data": {**config.data.model_dump(), "reference": str(reference)}})
    before = with_reference.policy_sha256(tmp_path, None, content_hashes(with_reference.data))
    assert before != with_reference.policy_sha256(tmp_path, None, {})
    reference.write_text("a,b\n1,3\n")
    assert with_reference.policy_sha256(tmp_path, None, content_hashes(with_reference.data)) != before
    reference.unlink()  # a gate without the data stage need not have it: recorded, not an error
    assert content_hashes(with_reference.data) == {"reference": "unreadable"}
