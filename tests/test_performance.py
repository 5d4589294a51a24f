"""The performance stage on real models: A/A, a slower candidate, memory, bad input, pytest-benchmark."""

from __future__ import annotations

import json

import pytest
import torch

from release_kit import gate
from release_kit.report import Status

FAST = """
[gate]
stages = ["performance"]

[performance]
batch_sizes = [32]
rounds = 8
round_seconds = 0.02
warmup_seconds = 0.1
"""


class Slow(torch.nn.Module):
    """The wrapped model plus ~3× its work, all multiplied by zero: identical outputs, much slower."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        waste = self.inner(x) + self.inner(x * 2.0) + self.inner(x * 3.0)
        return y + 0.0 * waste


class Hungry(torch.nn.Module):
    """The wrapped model plus a 64 MiB scratch tensor per call (input-dependent, so the JIT cannot fold it)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(16 * 1024 * 1024) * x[0, 0]
        return self.inner(x) + 0.0 * scratch[-1]


class Heavier(torch.nn.Module):
    """The wrapped model plus 384 KiB of weights it never reads: grown several times over, less than the slack."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("unused", torch.zeros(96 * 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def by_name(report) -> dict:
    return {c.name: c for c in report.checks if c.stage == "performance"}


def wrap(power, project, cls, name):
    path = project.root / name
    torch.jit.save(torch.jit.script(cls(torch.jit.load(str(power["v1"])))), str(path))
    return path


def test_same_model_is_not_blocked(project, power):
    project.config(FAST + 'device = "cpu"\n')  # asserts the CPU fingerprint; "auto" is CUDA on a GPU machine
    checks = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))
    latency = checks["latency:batch=32"]
    assert latency.status is not Status.FAIL, latency.summary
    low, high = latency.details["p50_ratio"][1:]
    assert low < 1.10
    fingerprint = latency.details["fingerprint"]
    assert fingerprint["device"] == "cpu" and fingerprint["threads"] == 1 and fingerprint["torch"] == torch.__version__
    cost = latency.details["cost"]
    assert cost["candidate"] == cost["baseline"]
    assert cost["candidate"]["parameters"] == 5 * 16 + 16 + 16 * 16 + 16 + 16 + 1  # PowerMLP(16)
    assert cost["candidate"]["flops_per_row"] > 0


def _rounds(label, cost, load, rng):
    """A model's rounds of 8 calls: ``cost`` × the round's load (shared by the round's two blocks), a burst on
    this block alone (30 %: 1.5×), and a little per-call noise; in ns."""
    import numpy as np

    from release_kit.timing import Measurement

    blocks = [cost * s * (1.5 if rng.random() < 0.3 else 1.0) * np.exp(rng.normal(0, 0.02, 8)) * 1e6 for s in load]
    return Measurement(label, 64, "cpu", [block.astype(np.int64) for block in blocks], 0, 0, None)


def test_the_live_ratio_pairs_each_rounds_blocks_so_load_changing_between_rounds_cancels():
    """Another job's load changes from round to round (here lognormal, σ 0.5) and hits single blocks in bursts.
    A live A/B's round ran its two blocks back to back, so its ratio is the median of the per-round ratios:
    the same model never blocks and a 1.3× slower one does, where comparing each side's rounds unpaired (as
    for stored numbers, which ran in another job) cannot tell."""
    import numpy as np

    from release_kit.timing import ratio_interval

    blocked = {(cost, paired): 0 for cost in (1.0, 1.3) for paired in (True, False)}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        load = np.exp(rng.normal(0, 0.5, 16))
        for cost in (1.0, 1.3):
            candidate, baseline = _rounds("candidate", cost, load, rng), _rounds("baseline", 1.0, load, rng)
            for paired in (True, False):
                ratio = ratio_interval(candidate, baseline, 50, paired=paired, confidence=0.95, resamples=2000, seed=0)
                blocked[cost, paired] += ratio.low > 1.10
                if paired:
                    assert abs(ratio.value - cost) < 0.03 * cost, (seed, cost, ratio)
    assert blocked[1.0, True] == 0 and blocked[1.3, True] >= 9, blocked
    assert blocked[1.3, False] <= 2, blocked


def test_a_measurements_percentile_is_a_typical_rounds_so_it_agrees_with_the_ratio():
    """A burst of load that slowed one round, in which the timer fitted many more (here cheaper-looking) calls,
    must not move the shown p50: it is the median of the rounds' p50s, the figure the ratio compares."""
    import numpy as np

    from release_kit.timing import Measurement, ratio_interval

    steady = [np.full(100, 10_000 + k, dtype=np.int64) for k in range(5)]
    burst = [np.full(1_000, 30_000, dtype=np.int64), *steady[:-1]]
    candidate, baseline = (Measurement(label, 64, "cpu", rounds, 0, 0, None) for label, rounds in (("candidate", steady),
                                                                                                    ("baseline", burst)))
    assert baseline.percentile(50) == candidate.percentile(50) == 10_002  # pooled: 30,000 against 10,002
    ratio = ratio_interval(candidate, baseline, 50, paired=True, confidence=0.95, resamples=200, seed=0)
    assert abs(candidate.percentile(50) / baseline.percentile(50) - ratio.value) < 0.01


def test_peak_fraction_when_the_device_peak_is_given(project, power):
    project.config(FAST + "peak_tflops = 0.001\n")
    latency = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))["latency:batch=32"]
    fraction = latency.details["peak_fraction"]
    assert 0 < fraction["candidate"] and 0 < fraction["baseline"]


def test_slower_candidate_with_identical_outputs_is_blocked(project, power):
    project.config(FAST)
    slow = wrap(power, project, Slow, "slow.pt")
    report = gate.check(candidate=str(slow), baseline=str(power["v1"]))
    latency = by_name(report)["latency:batch=32"]
    assert latency.status is Status.FAIL, latency.summary
    assert latency.details["p50_ratio"][1] > 1.10
    assert report.bump is None and report.verdict.value == "block"  # schema 1.1
    assert "slower beyond the budget of +10%" in latency.summary


def test_memory_hungry_candidate_is_blocked_on_memory(project, power):
    project.config(FAST + 'device = "cpu"\n')  # the scratch tensor is host memory: the RSS measure's case
    hungry = wrap(power, project, Hungry, "hungry.pt")
    memory = by_name(gate.check(candidate=str(hungry), baseline=str(power["v1"])))["memory:batch=32"]
    assert memory.status is Status.FAIL, memory.summary
    assert memory.metrics[0].candidate > 32  # MiB


def test_growth_within_the_slack_alone_says_so(project, power):
    """A small model's memory growth beyond the budget that the page slack admits passes, and the summary says
    the slack admitted it, with the figures in significant digits (not 0.00 → 0.00 MiB)."""
    project.config(FAST + 'device = "cpu"\n')
    heavier = wrap(power, project, Heavier, "heavier.pt")
    memory = by_name(gate.check(candidate=str(heavier), baseline=str(power["v1"])))["memory:batch=32"]
    assert memory.status is Status.PASS, memory.summary
    growth = memory.metrics[0]
    assert growth.candidate - growth.baseline >= 0.25 and growth.candidate > 1.1 * growth.baseline  # MiB: the 0.375 MiB of weights, less the RSS measurement's page noise
    assert "beyond the budget of +10%, within its 1 MiB of slack" in memory.summary
    assert " 0.00 " not in memory.summary


def test_first_release_skips(project, power):
    project.config(FAST)
    checks = by_name(gate.check(candidate=str(power["v1"])))
    assert [c.status for c in checks.values()] == [Status.SKIP]


def test_markdown_has_the_latency_table_and_chart(project, power, cli):
    project.config(FAST)
    slow = wrap(power, project, Slow, "slow.pt")
    result = cli("check", "--candidate", slow, "--baseline", power["v1"], "--format", "markdown")
    assert result.exit_code == 1
    assert "| model | p50 ms | p90 ms | p99 ms | rows/s | cold start ms | FLOPs/row | GFLOP/s | parameters |" in result.stdout
    assert 'y-axis "ms"' in result.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("batch_sizes = [0]", "performance.batch_sizes.0"),
        ('batch_sizes = [32]\ndevice = "tpu"', "performance.device"),
        ("batch_sizes = []", "performance.batch_sizes"),
    ],
)
def test_bad_performance_config(project, power, cli, extra, needle):
    project.config(FAST.replace("batch_sizes = [32]", extra))
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2 and needle in result.stderr
    assert not (project.root / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_requested_without_cuda_is_an_input_error(project, power, cli):
    project.config(FAST + 'device = "cuda"\n')
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"])
    assert result.exit_code == 2 and "no CUDA device is available" in result.stderr


class NeedsBig(torch.nn.Module):
    """A model that refuses batches of fewer than 100 rows."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 100:
            raise RuntimeError("batches below 100 rows are not supported")
        return self.inner(x)


def test_model_failing_on_the_benchmark_batch_is_an_input_error(project, power, cli):
    path = wrap(power, project, NeedsBig, "needs-big.pt")
    project.config(FAST.replace("batch_sizes = [32]", "batch_sizes = [1]"))
    result = cli("check", "--candidate", path, "--baseline", power["v1"])
    assert result.exit_code == 2
    assert "fails on the benchmark batch of shape (1, 5)" in result.stderr


def test_a_model_that_fails_on_small_batches_leaves_batch_independence_undecided(project, power):
    """Without the performance stage nothing else names the batch it refuses: quality::batch_independence is an
    error (undecided, and the gate blocks), never a pass."""
    path = wrap(power, project, NeedsBig, "needs-big.pt")
    report = gate.check(candidate=str(path), baseline=str(power["v1"]))
    probe = next(c for c in report.checks if c.name == "batch_independence")
    assert probe.status is Status.ERROR and "batches below 100 rows are not supported" in probe.summary
    assert probe.summary.startswith("32 golden rows called in one batch and in batches of 2: cannot decide")
    assert report.verdict.value == "block"


def test_user_benchmark_checks_land_in_the_report(project, power, cli, monkeypatch):
    project.config(FAST)
    # As in a pytest-xdist worker (a team's parallel test of its gate): the check session is still the gate's
    # own, and pytest-benchmark times the user's benchmarks instead of disabling them.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    project.write("checks/test_speed.py", """
        import torch

        def test_candidate_speed(benchmark, candidate, golden):
            rows = torch.from_numpy(golden.features[:64]).to(candidate.device)  # the module is on [inference] device
            benchmark.pedantic(candidate.module, args=(rows,), rounds=5, iterations=3)
    """)
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--format", "json",
                 "--benchmark-json", "bench.json")
    report = json.loads(result.stdout)
    user = next(c for c in report["checks"] if c["stage"] == "checks")
    assert user["status"] == "pass"
    names = {m["name"] for m in user["metrics"]}
    assert {"benchmark_median_s", "benchmark_mean_s"} <= names
    saved = json.loads((project.root / "bench.json").read_text())
    assert saved["benchmarks"][0]["name"] == "test_candidate_speed"


def test_benchmark_json_without_benchmarks_is_an_empty_list_not_a_stale_file(project, power):
    """No user check uses the ``benchmark`` fixture: pytest-benchmark wrote nothing and warned on stderr,
    leaving a file from an earlier run to be read as this one's. The file now lists no benchmarks, and the
    run prints no warning. In a subprocess, as users run it."""
    from conftest import run_cli

    project.config(FAST)
    (project.root / "bench.json").write_text(json.dumps({"benchmarks": [{"name": "an earlier run's"}]}))
    result = run_cli(project.root, "check", "--candidate", power["v1"], "--baseline", power["v1"], "--no-mlflow",
                     "--benchmark-json", "bench.json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((project.root / "bench.json").read_text())["benchmarks"] == []
    assert "Warning" not in result.stderr and "benchmark" not in result.stderr, result.stderr
    # pytest-benchmark's storage lives in the session's scratch folder, not as .benchmarks/ in the project.
    assert not (project.root / ".benchmarks").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_and_memory(project, power):
    project.config(FAST + 'device = "cuda"\n')
    checks = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))
    latency = checks["latency:batch=32"]
    assert latency.status is not Status.FAIL, latency.summary  # the same model against itself, on the GPU
    assert latency.details["fingerprint"]["device"] == "cuda" and latency.details["fingerprint"]["gpu"]
    assert checks["memory:batch=32"].status is not Status.SKIP


def test_stored_baseline_numbers_are_used_only_from_the_same_machine_and_model(project, power):
    project.config(FAST + 'save_candidate = "v1-perf.json"\n')
    gate.check(candidate=str(power["v1"]), baseline=str(power["v1"]))
    stored = json.loads((project.root / "v1-perf.json").read_text())
    assert stored["schema"] == "release-kit-performance/1" and set(stored["measurements"]) == {"32"}

    project.config(FAST + 'stored_baseline = "v1-perf.json"\n')
    same = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))["latency:batch=32"]
    assert same.status is not Status.ERROR, same.summary

    stored["fingerprint"]["cpu"] = "some other CPU"
    (project.root / "other.json").write_text(json.dumps(stored))
    project.config(FAST + 'stored_baseline = "other.json"\n')
    refused = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))
    assert refused["latency:batch=32"].status is Status.ERROR
    assert "another machine: cpu 'some other CPU' there" in refused["latency:batch=32"].summary
    assert refused["memory:batch=32"].status is Status.ERROR

    project.config(FAST + 'stored_baseline = "v1-perf.json"\n')
    other_model = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["better"])))
    assert "another model file" in other_model["latency:batch=32"].summary


def test_a_stored_file_of_many_rounds_ends_at_the_time_budget(project, power):
    """The stored file sets how many rounds the candidate is timed for: one edited to hold 100,000 rounds
    (a pull request can carry it) ran them all. The budget ends the rounds; the stored ones are paired with
    the candidate's first ones."""
    import time

    project.config(FAST + 'save_candidate = "v1-perf.json"\n')
    gate.check(candidate=str(power["v1"]), baseline=str(power["v1"]))
    stored = json.loads((project.root / "v1-perf.json").read_text())
    measurement = stored["measurements"]["32"]
    # 100,000 rounds of a few calls each: the rounds' count is what the budget must end, and a file of full
    # rounds (~100 MB) spent most of this test in json's encoder and decoder.
    measurement["rounds"] = [measurement["rounds"][0][:8]] * 100_000
    (project.root / "many.json").write_text(json.dumps(stored))
    project.config(FAST + 'stored_baseline = "many.json"\ntime_budget_seconds = 1\n')
    started = time.monotonic()
    latency = by_name(gate.check(candidate=str(power["v1"]), baseline=str(power["v1"])))["latency:batch=32"]
    assert time.monotonic() - started < 60
    assert latency.status is not Status.ERROR, latency.summary
    assert 4 <= latency.details["rounds"] < 100_000


def test_unreadable_stored_baseline_is_an_input_error(project, power, cli):
    project.write("bad.json", "{}")
    project.config(FAST + 'stored_baseline = "bad.json"\n')
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"])
    assert result.exit_code == 2 and "not a release-kit performance file" in result.stderr


def test_unwritable_save_candidate_is_an_input_error(project, power, cli):
    project.config(FAST + 'save_candidate = "missing-folder/perf.json"\n')
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--report", "r.json")
    assert result.exit_code == 2 and "save_candidate: cannot write to" in result.stderr
    assert not (project.root / "r.json").exists()


def test_benchmark_json_is_an_output_like_the_others(project, power, cli, monkeypatch):
    """--benchmark-json follows the outputs' rules: a missing folder is created (as for --report), and the
    file is written only when the whole command succeeded (pytest-benchmark wrote it in place when its
    session ended, before the report: a failure after that left it alone). An unwritable path is refused
    before the gate runs (tests/test_pipeline.py)."""
    from release_kit import render

    project.config(FAST)
    result = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--report", "r.json",
                 "--benchmark-json", "missing-folder/bench.json")
    assert result.exit_code == 0, result.output
    assert json.loads((project.root / "missing-folder" / "bench.json").read_text())["benchmarks"] == []

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug after the checks")

    monkeypatch.setattr(render, "render_markdown", broken)
    failed = cli("check", "--candidate", power["v1"], "--baseline", power["v1"], "--format", "markdown",
                 "--benchmark-json", "late.json")
    assert failed.exit_code == 4 and "a bug after the checks" in failed.stderr, failed.output
    assert not (project.root / "late.json").exists()
