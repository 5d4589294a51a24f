"""The outlier stage on models with known, injected defects."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from release_kit import gate
from release_kit.report import Status

STAGES = '[gate]\nstages = ["quality", "outliers"]\n'


class Defect(torch.nn.Module):
    """Wraps a model and changes its output on one region of the input space."""

    def __init__(self, inner: torch.nn.Module, region: str, amount: float, threshold: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.region = region
        self.amount = amount
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if self.region == "warm":  # temperature above a threshold: a fifth of the golden rows
            mask = x[:, 3] > self.threshold
        elif self.region == "bright-night":  # irradiance > 900 before 6 am: never in real data
            mask = (x[:, 4] > 900.0) & (x[:, 0] < 6.0)
        else:  # "late-sun": after 10 pm with irradiance > 500: never in real data
            mask = (x[:, 0] >= 22.0) & (x[:, 4] > 500.0)
        return torch.where(mask, y + self.amount, y)


@pytest.fixture(scope="module")
def defects(power, tmp_path_factory):
    import power_forecast as pf

    directory = tmp_path_factory.mktemp("defects")
    golden = pd.read_csv(power["golden"])
    warm = float(golden["temperature"].quantile(0.8))
    good = pf.train(pd.read_csv(power["train"]), hidden=48, epochs=400, seed=0)
    v1 = torch.jit.load(str(power["v1"]))
    models = {
        "slice_only": Defect(good, "warm", 0.09, warm),
        "nan_subrange": Defect(v1, "bright-night", float("nan")),
        "divergence": Defect(v1, "late-sun", 3.0),
    }
    paths = {}
    for name, module in models.items():
        paths[name] = directory / f"{name}.pt"
        torch.jit.save(torch.jit.script(module.eval()), str(paths[name]))
    paths["warm_threshold"] = warm
    return paths


def by_name(report) -> dict:
    return {f"{c.stage}::{c.name}": c for c in report.checks}


def test_regression_confined_to_a_fifth_blocks_though_the_overall_metric_does_not(project, power, defects):
    project.config(STAGES)
    report = gate.check(candidate=str(defects["slice_only"]), baseline=str(power["v1"]))
    checks = by_name(report)
    assert checks["quality::mae"].status is not Status.FAIL, checks["quality::mae"].summary
    slices = checks["outliers::slices"]
    assert slices.status is Status.FAIL
    assert slices.summary.startswith(f"temperature > {defects['warm_threshold']:.4g}"), slices.summary
    assert "MAE +" in slices.summary and "(n=" in slices.summary
    # The other failing slices are counted after the first's tolerance, not read as part of it.
    failing = slices.details["failing"]
    assert failing >= 2 and f"; and {failing - 1} more (" in slices.summary, slices.summary
    assert report.verdict.value == "block"
    assert ["outliers::slices"] == [f"{c.stage}::{c.name}" for c in report.blocking]


def test_night_negative_candidate_is_caught_by_slices_and_search(project, power):
    project.config(STAGES)
    report = gate.check(candidate=str(power["night"]), baseline=str(power["v1"]))
    checks = by_name(report)
    assert checks["outliers::slices"].summary.startswith("irradiance ≤ 0 (n=")
    search = checks["outliers::search:contract"]
    assert search.status is Status.FAIL
    example = search.details["search"]["counterexample"]
    assert example["irradiance"] == 0.0  # shrunk to the simplest night input
    assert search.details["candidate_output"] < 0 <= search.details["baseline_output"]
    assert "the baseline does not" in search.summary


def test_nan_on_a_sub_range_only_the_search_finds(project, power, defects):
    project.config(STAGES)
    report = gate.check(candidate=str(defects["nan_subrange"]), baseline=str(power["v1"]))
    checks = by_name(report)
    assert checks["quality::output_contract"].status is Status.PASS  # the golden set never goes there
    search = checks["outliers::search:contract"]
    assert search.status is Status.FAIL, search.summary
    example = search.details["search"]["counterexample"]
    assert example["irradiance"] > 900 and example["hour"] < 6
    assert search.details["candidate_output"] is None or not np.isfinite(search.details["candidate_output"])


def test_divergence_only_a_search_finds(project, power, defects):
    project.config(STAGES + "[outliers.search]\ndivergence = 1.0\n")
    report = gate.check(candidate=str(defects["divergence"]), baseline=str(power["v1"]))
    checks = by_name(report)
    assert checks["quality::mae"].status is Status.PASS
    assert checks["outliers::slices"].status is Status.PASS
    divergence = checks["outliers::search:divergence"]
    assert divergence.status is Status.FAIL
    example = divergence.details["search"]["counterexample"]
    assert example["hour"] >= 22 and example["irradiance"] > 500
    assert abs(divergence.details["candidate_output"] - divergence.details["baseline_output"]) == pytest.approx(3.0, abs=1e-3)


def test_search_is_deterministic(project, power):
    project.config(STAGES)
    first = by_name(gate.check(candidate=str(power["night"]), baseline=str(power["v1"]), log_to_mlflow=False))
    second = by_name(gate.check(candidate=str(power["night"]), baseline=str(power["v1"]), log_to_mlflow=False))
    key = "outliers::search:contract"
    assert first[key].details["search"]["counterexample"] == second[key].details["search"]["counterexample"]
    assert not (project.root / ".hypothesis").exists()  # no example database written


def test_better_candidate_passes_the_stage(project, power):
    project.config(STAGES + '[outliers]\nmonotonic = [{ feature = "irradiance", tolerance = 0.01 }]\n')
    report = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    assert report.verdict.value == "pass", [(c.name, c.summary) for c in report.blocking]
    checks = by_name(report)
    assert checks["outliers::newly_broken"].details["fixed"] > checks["outliers::newly_broken"].details["broke"]
    assert checks["outliers::monotonic:irradiance"].status is Status.PASS


def test_monotonic_break_introduced_by_the_candidate_fails(project, power):
    class Dimmer(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * torch.clamp(1.2 - x[:, 4] / 1000.0, 0.0, 1.0)  # bright → less power

    path = project.root / "dimmer.pt"
    torch.jit.save(torch.jit.script(Dimmer(torch.jit.load(str(power["v1"])))), str(path))
    project.config(STAGES + '[outliers]\nmonotonic = [{ feature = "irradiance" }]\n')
    check = by_name(gate.check(candidate=str(path), baseline=str(power["v1"])))["outliers::monotonic:irradiance"]
    assert check.status is Status.FAIL
    assert "(the baseline did not)" in check.summary and check.details["introduced"] > 0


def test_declared_slices(project, power):
    project.config(STAGES + """
        [[outliers.slices]]
        name = "irradiance bands"
        column = "irradiance"
        bins = [0, 1, 2000]

        [[outliers.slices]]
        column = "hour"
        categories = [12, 13]

        [[outliers.slices]]
        name = "night"
        expr = "irradiance == 0"
    """.replace("\n        ", "\n"))
    checks = by_name(gate.check(candidate=str(power["night"]), baseline=str(power["v1"])))
    bands = checks["outliers::slice:irradiance bands"]
    assert bands.status is Status.FAIL, bands.details
    assert bands.summary.startswith("0 ≤ irradiance < 1 (n=")
    assert bands.details["failing"] == 1  # the daylight band is not worse beyond tolerance
    assert checks["outliers::slice:hour"].status is Status.PASS
    night = checks["outliers::slice:night"]
    assert night.status is Status.FAIL and night.summary.startswith("irradiance == 0 (n=")


def test_prediction_shift_says_its_threshold_and_counts_the_rows_beyond_it(project, power):
    """The rows whose prediction moved beyond median + 5 × MAD of the rows that moved: the summary gives the
    threshold it used and the count of the golden rows beyond it, both as computed here from the two models'
    predictions (a threshold of 0.002 reads differently from one of 2)."""
    import re

    project.config(STAGES)
    golden = pd.read_csv(power["golden"])
    import power_forecast as pf

    x = torch.tensor(golden[pf.FEATURES].to_numpy(np.float32))
    with torch.inference_mode():
        shift = np.abs(torch.jit.load(str(power["better"]))(x).numpy().astype(np.float64)
                       - torch.jit.load(str(power["v1"]))(x).numpy().astype(np.float64)).ravel()
    moved = shift[shift != 0]
    centre = np.median(moved)
    threshold = centre + 5 * 1.4826 * np.median(np.abs(moved - centre))
    check = by_name(gate.check(candidate=str(power["better"]), baseline=str(power["v1"])))["outliers::prediction_shift"]
    assert check.status is Status.WARN, check.summary
    shown = re.match(r"([\d,]+) of ([\d,]+) rows' prediction shifted by more than (\S+) \(median \+ 5 × MAD of the rows "
                     r"that moved\); largest (\S+)", check.summary)
    assert shown, check.summary
    assert float(shown.group(3)) == pytest.approx(threshold, rel=2e-3)
    assert int(shown.group(1).replace(",", "")) == check.details["shifted"] == int((shift > check.details["threshold"]).sum())
    assert int(shown.group(2).replace(",", "")) == len(golden)
    assert float(shown.group(4)) == pytest.approx(shift.max(), rel=2e-3)


class ShiftedWhere(torch.nn.Module):
    """The inner model with a constant added to its prediction where a feature exceeds a cut."""

    def __init__(self, inner: torch.nn.Module, column: int, cut: float, by: float) -> None:
        super().__init__()
        self.inner, self.column, self.cut, self.by = inner, column, cut, by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return torch.where(x[:, self.column] > self.cut, out + self.by, out)


def test_a_constant_shift_is_no_row_shifted_far_beyond_the_others(project, power, tmp_path):
    """Every row that moved, moved by the same 1.5 (a region's offset): none moved far relative to the others,
    so prediction_shift passes (moved_region names the region). The float32 rounding of the sums spread the
    moves by ~1e-7 and a MAD of that made rounding noise "shifted beyond the threshold"."""
    from conftest import save_scripted

    import power_forecast as pf

    project.config(STAGES)
    golden = pd.read_csv(power["golden"])
    column = pf.FEATURES.index("temperature")
    cut = float(golden["temperature"].quantile(0.8))
    candidate = save_scripted(ShiftedWhere(torch.jit.load(str(power["v1"])), column, cut, 1.5), tmp_path / "shifted.pt")
    checks = by_name(gate.check(candidate=str(candidate), baseline=str(power["v1"])))
    shift = checks["outliers::prediction_shift"]
    assert shift.status is Status.PASS, shift.summary
    assert float(shift.summary.split("by more than ")[1].split(" ")[0]) == pytest.approx(1.5, rel=1e-3), shift.summary
    region = checks["outliers::moved_region"]
    assert region.status is Status.WARN and "temperature" in region.summary, region.summary


def test_first_release_skips_what_needs_a_baseline(project, power):
    project.config(STAGES)
    checks = by_name(gate.check(candidate=str(power["better"])))
    for name in ("newly_broken", "prediction_shift", "slices"):
        assert checks[f"outliers::{name}"].status is Status.SKIP
    assert checks["outliers::search:contract"].status is Status.PASS


def test_markdown_has_the_histogram_and_failing_slices(project, power, cli):
    project.config(STAGES)
    result = cli("check", "--candidate", power["night"], "--baseline", power["v1"], "--format", "markdown")
    assert result.exit_code == 1
    assert "```mermaid\nxychart-beta" in result.stdout and "y-axis \"rows\"" in result.stdout
    assert "outliers::slices: regressed slices" in result.stdout
    assert "| slice | n |" in result.stdout


def test_user_property_test_with_release_kit_strategies(project, power):
    project.config(STAGES)
    project.write("checks/test_props.py", """
        import numpy as np
        from hypothesis import given, settings
        from release_kit import strategies as rks

        def test_never_above_peak(candidate, input_domain):
            '''No input in the domain gets more than the plant's peak.'''
            @settings(max_examples=50, database=None, derandomize=True)
            @given(rks.batches(input_domain, max_rows=8))
            def prop(rows):
                assert rows.dtype == np.float32 and rows.shape[1] == 5
                assert (candidate.raw_outputs(rows) <= 6.0).all()
            prop()

        def test_night_is_negative(candidate, input_domain):
            @settings(max_examples=50, database=None, derandomize=True)
            @given(rks.rows(input_domain))
            def prop(row):
                assert candidate.raw_outputs(row[None])[0] >= 0
            prop()
    """)
    checks = by_name(gate.check(candidate=str(power["night"]), baseline=str(power["v1"])))
    assert checks["checks::test_props.py::test_never_above_peak"].status is Status.PASS
    night = checks["checks::test_props.py::test_night_is_negative"]
    assert night.status is Status.FAIL


def binary_project(tmp_path, monkeypatch, golden_rows: int):
    """A binary classification project in ``tmp_path`` (the cwd): its golden CSV of ``golden_rows`` and
    config written; returns the training rows and the golden rows."""
    from conftest import make_classification

    train, golden = make_classification(2000, 2, seed=2), make_classification(golden_rows, 2, seed=12)
    golden.to_csv(tmp_path / "golden.csv", index=False)
    (tmp_path / "release-kit.toml").write_text(
        '[model]\nname = "c"\ntask = "classification"\ntarget = "label"\nfeatures = ["a", "b", "c"]\n'
        'prediction = "logits"\n[data]\ngolden = "golden.csv"\n[mlflow]\nenabled = false\n' + STAGES
    )
    monkeypatch.chdir(tmp_path)
    return train, golden


def test_classification_flips_are_newly_broken(tmp_path, monkeypatch):
    from conftest import save_scripted, train_classifier

    train, _ = binary_project(tmp_path, monkeypatch, 1500)
    weak = save_scripted(train_classifier(train, 2, epochs=3, squash="squeeze"), tmp_path / "weak.pt")
    strong = save_scripted(train_classifier(train, 2, epochs=150, squash="squeeze"), tmp_path / "strong.pt")
    checks = by_name(gate.check(candidate=str(strong), baseline=str(weak)))
    flips = checks["outliers::newly_broken"]
    assert "right to wrong" in flips.details["rule"]
    assert flips.details["fixed"] > flips.details["broke"]
    assert checks["outliers::slices"].status is Status.PASS


class FlippedWhere(torch.nn.Module):
    """A binary classifier (one logit) whose decision is reversed where ``|logit| < margin`` (rows near its
    boundary: about as often right as wrong) or where ``a > cut`` (a region it mostly got right)."""

    def __init__(self, inner: torch.nn.Module, margin: float, cut: float) -> None:
        super().__init__()
        self.inner = inner
        self.margin = margin
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.inner(x)
        flip = (logit.abs() < self.margin) | (x[:, 0] > self.cut)
        return torch.where(flip, -logit, logit)


@pytest.mark.parametrize(("margin", "cut", "status"), [(0.25, 99.0, Status.WARN), (0.0, 1.5, Status.FAIL)])
def test_newly_broken_fails_only_when_significantly_more_rows_broke_than_were_fixed(tmp_path, monkeypatch, margin, cut, status):
    """Flipping the rows nearest the boundary breaks about as many as it fixes: above max_newly_broken, yet
    churn, a warning (it had blocked a retrained model as good as the one before). Flipping a region the
    model mostly got right breaks far more than it fixes: a failure, with the sign test's p."""
    from conftest import save_scripted, train_classifier

    train, golden = binary_project(tmp_path, monkeypatch, 3000)
    model = train_classifier(train, 2, epochs=150, squash="squeeze")
    baseline = save_scripted(model, tmp_path / "baseline.pt")
    candidate = save_scripted(FlippedWhere(model, margin, cut), tmp_path / "candidate.pt")
    check = by_name(gate.check(candidate=str(candidate), baseline=str(baseline)))["outliers::newly_broken"]
    broke, fixed = check.details["broke"], check.details["fixed"]
    assert broke > 0.01 * len(golden), check.summary  # above the default max_newly_broken either way
    assert check.status is status, check.summary
    if status is Status.WARN:
        assert abs(broke - fixed) < 0.25 * (broke + fixed) and check.details["sign_test_p"] >= 0.05
        assert "not significantly more than were fixed" in check.summary and "churn rather than a regression" in check.summary
    else:
        assert broke > 3 * fixed and check.details["sign_test_p"] < 1e-6
        assert "significantly more than were fixed (sign test p=" in check.summary


def test_sign_test_p_is_the_tests_own_when_fewer_rows_broke_than_were_fixed():
    """The summary quotes the p: 33 broken against 49 fixed is p = 0.97 (one-sided), not a rounded 1."""
    from scipy.stats import binomtest

    from release_kit.stages.outliers import sign_test

    assert sign_test(33, 49) == pytest.approx(binomtest(33, 82, 0.5, alternative="greater").pvalue)
    assert 0.96 < sign_test(33, 49) < 0.98
    assert sign_test(49, 33) < 0.05 and sign_test(0, 10) == 1.0 and sign_test(0, 0) == 1.0


# -- bad input: exit 2 with the key named, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('[[outliers.slices]]\ncolumn = "bmi"\nbins = [0, 30, 60]\n', "column 'bmi' is not in the golden set"),
        ('[[outliers.slices]]\ncolumn = "hour"\nbins = [0, 12, 6]\n', "bins must increase"),
        ('[[outliers.slices]]\ncolumn = "hour"\nbins = "0-12"\n', "outliers.slices.0.bins"),
        ('[[outliers.slices]]\ncolumn = "hour"\n', "exactly one of bins, categories or expr"),
        ('[[outliers.slices]]\nexpr = "hour +"\n', "expr 'hour +' is not an expression"),
        ('[[outliers.slices]]\nexpr = "hours == 3"\n', "cannot evaluate expr"),
        ('[[outliers.slices]]\nexpr = "hour * 2"\n', "does not give true/false"),
        ("[outliers.domain]\nhour = { min = 20, max = 3 }\n", "greater than max"),
        ("[outliers.domain]\ntemperature = { min = 500 }\n", "temperature: the range [500"),
        ("[outliers.domain]\nhour = { values = [] }\n", "values is empty"),
        ("[outliers.domain]\nwind = { min = 0, max = 3 }\n", "outliers.domain.wind is not one of [model] features"),
        ('[outliers]\nmonotonic = [{ feature = "wind" }]\n', "monotonic feature 'wind'"),
        ("[outliers]\nk_mad = -1\n", "outliers.k_mad"),
    ],
)
def test_bad_stage_config_is_an_input_error(project, power, cli, extra, needle):
    project.config(STAGES + extra)
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project.root / "r.json").exists()


@pytest.mark.parametrize("expr", ["hour.to_csv('written.csv') == 0", "hour.__class__ == 0", "@pd.read_pickle('x.pkl')", "hour[0] > 1"])
def test_a_slice_expr_from_the_config_cannot_call_or_reach_anything(project, power, cli, expr):
    """pandas evaluates a slice's expr, and its expressions can call any method: a pull request's config could
    write files or read a pickle (run code). Only comparisons of columns and constants are taken."""
    project.config(STAGES + f'[[outliers.slices]]\nexpr = "{expr}"\n')
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2, result.output
    assert "outliers.slices" in result.stderr, result.stderr
    assert "is not allowed" in result.stderr or "is not an expression" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project.root / "written.csv").exists() and not (project.root / "r.json").exists()


@pytest.mark.parametrize(("expr", "needle"), [
    ("hour > 10 ** 10 ** 10", "a power's exponent must be a number of at most 64"),
    ("(hour + 2 ** 64) ** 64 > 0", "a power may not hold another power"),
    ("hour > 'a' * 10 ** 12", "strings and lists may only be compared"),
    ("hour in [1] * 10 ** 12", "strings and lists may only be compared"),
    ("hour > " + " + ".join(["1"] * 600), "at most 1,000 are taken"),
])
def test_a_slice_expr_cannot_hold_the_job_in_constant_folding(project, power, cli, expr, needle):
    """pandas folds an expression's constants in Python: a tower of powers never ended (the job held until it
    timed out) and a repeated string took gigabytes. Refused when the config is read, naming the key."""
    project.config(STAGES + f'[[outliers.slices]]\nexpr = "{expr}"\n')
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2, result.output
    assert "outliers.slices" in result.stderr and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project.root / "r.json").exists()


def test_a_slice_expr_with_a_bounded_power_is_evaluated(project, power):
    project.config(STAGES + '[[outliers.slices]]\nname = "late"\nexpr = "hour ** 2 >= 18 ** 2 and -2 ** 0.5 < 0"\n')
    check = by_name(gate.check(candidate=str(power["better"]), baseline=str(power["v1"])))["outliers::slice:late"]
    assert check.status in (Status.PASS, Status.FAIL, Status.WARN) and "hour ** 2" in check.summary, check.summary
    [row] = check.details["table"]["rows"]  # the slice's one part: its rows are the late hours'
    assert row[1] == int((pd.read_csv(power["golden"])["hour"] >= 18).sum()), row


def test_nan_in_a_slicing_column_is_an_input_error(project, power, cli):
    frame = pd.read_csv(power["golden"])
    frame["site"] = np.where(np.arange(len(frame)) % 50 == 0, np.nan, 1.0)
    frame.to_csv(project.root / "golden.csv", index=False)
    project.config(STAGES + '[[outliers.slices]]\ncolumn = "site"\ncategories = [1]\n', golden=project.root / "golden.csv")
    result = cli("check", "--candidate", power["better"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2
    assert "column 'site' has 60 NaN value(s)" in result.stderr
    assert not (project.root / "r.json").exists()


def test_slice_smaller_than_the_minimum_is_an_explicit_skip(project, power):
    project.config(STAGES + '[[outliers.slices]]\nname = "tiny"\nexpr = "hour == 3 and day_of_year < 20"\n')
    check = by_name(gate.check(candidate=str(power["better"]), baseline=str(power["v1"])))["outliers::slice:tiny"]
    assert check.status is Status.SKIP and "minimum 30 rows" in check.summary


def test_search_disabled_is_a_skip_not_a_pass(project, power):
    project.config(STAGES + "[outliers.search]\nenabled = false\n")
    check = by_name(gate.check(candidate=str(power["night"]), baseline=str(power["v1"])))["outliers::search:contract"]
    assert check.status is Status.SKIP
