"""The tag schema: what is written is what is read back, and every key is one MLflow accepts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from release_kit.tags import GateRunTags, ReleaseTags, RollbackTags, mlflow_key

NAMES = st.text(min_size=1, max_size=60)


@settings(deadline=None)
@given(metrics=st.dictionaries(NAMES.map(lambda n: f"performance.{n}"), st.just("1.5"), max_size=5))
def test_release_tags_round_trip_with_valid_keys(metrics):
    from mlflow.utils.validation import _validate_tag_name

    written = ReleaseTags("1.2.0", release_id="r", model_sha256="m", git_sha="abc", git_dirty=True, verdict="pass",
                          bump="minor", bump_reason="x" * 5000, data={"golden": "d"}, metrics=metrics).to_tags()
    for key in written:
        _validate_tag_name(key)
    read = ReleaseTags.from_tags(written)
    assert read.version == "1.2.0" and read.git_dirty and read.bump == "minor" and len(read.bump_reason) == 4000
    assert read.data == {"golden": "d"}
    assert set(read.metrics) == {mlflow_key(f"release_kit.metric.{name}").removeprefix("release_kit.metric.") for name in metrics}


def test_a_version_release_kit_did_not_release_has_no_record():
    assert ReleaseTags.from_tags({"other": "x"}) is None
    assert GateRunTags.from_tags({"release_kit.model": "m"}) is None


def test_gate_run_and_rollback_tags_round_trip():
    gate = GateRunTags("m", "block", None, "s" * 64, "c" * 64)
    assert GateRunTags.from_tags(gate.to_tags()) == gate
    rollback = RollbackTags("m", "1.1.0", "1.0.0", "champion", "night drift", "ana")
    assert RollbackTags.from_tags(rollback.to_tags()) == rollback


def test_metric_names_of_every_stage_become_valid_keys():
    from mlflow.utils.validation import _validate_metric_name

    for name in ("performance.p50_latency_ratio:batch=1.candidate", "outliers.slice:hour[0, 6)", "checks.test_x.py::test_a[x/y]"):
        _validate_metric_name(mlflow_key(name))
