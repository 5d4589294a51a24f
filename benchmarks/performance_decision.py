"""Proof of the performance stage's decision rule on this machine, side by side in one run:

* A/A: the same model as candidate and baseline, the stage with default settings → false-block rate
  (target ≤ 1%);
* power: a candidate with identical outputs and 1.25× the compute (a fifth hidden block whose result is
  multiplied by zero) → block rate (target ≥ 95%);
* both again beside a bursty neighbour (``NEIGHBOURS`` processes, each alternating 5–150 ms of numpy work
  and of sleep, as another job on a shared runner): the rule must hold on a busy machine too;
* under that load, the same A/A rounds decided by the median of the per-round ratios (the stage's rule) and
  by the ratio of each side's median: how far each strays from 1;
* the naive way: pytest-benchmark's ``--benchmark-compare-fail=median:10%`` against a stored run of the
  same model → its false-block rate;
* the stage's wall time per model pair (target ≤ 20 s).

Trials alternate the experiments so that machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _results import write_section

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
NEIGHBOURS = 2  # busy processes beside the loaded trials: as many as this machine's cores
# The loaded trials time this batch size too: a call of ~4 ms, a block of ~10 calls (as a small CNN's at
# batch 64), where a burst of the neighbours' work covers a whole block; at 1 and 64 rows a block holds
# hundreds of calls and its median is unmoved by a burst.
LOADED_BATCH = 8192


def neighbour(stop, seed: int) -> None:
    """Another job on the machine: bursts of numpy work and sleep, each 5–150 ms, until ``stop`` is set."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(600, 600))
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.005, 0.15)
        while time.perf_counter() < end:
            matrix = np.tanh(matrix @ matrix * 1e-3)
        time.sleep(rng.uniform(0.005, 0.15))


class Neighbours:
    """``NEIGHBOURS`` :func:`neighbour` processes for the block."""

    def __enter__(self):
        self.stop = multiprocessing.Event()
        self.processes = [multiprocessing.Process(target=neighbour, args=(self.stop, seed), daemon=True) for seed in range(NEIGHBOURS)]
        for process in self.processes:
            process.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for process in self.processes:
            process.join()


def both_rules(candidate, baseline) -> tuple[float, float]:
    """The stage's ratio (median of the per-round p50 ratios) and the ratio of each side's median p50 (the
    rule stored numbers are compared by), of one live comparison's rounds."""
    from release_kit.timing import ratio_interval

    paired, sides = (ratio_interval(candidate, baseline, 50, paired=rule, confidence=0.95, resamples=200, seed=0).value
                     for rule in (True, False))
    return paired, sides


class Blocks(torch.nn.Module):
    """Linear in, ``blocks`` hidden blocks, linear out; ``extra`` adds one more block whose output is ×0."""

    def __init__(self, blocks: int = 4, width: int = 64, extra: bool = False) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(len(FEATURES), width)
        self.hidden = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(blocks)])
        self.extra = torch.nn.Linear(width, width)
        self.use_extra = extra
        self.out = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        y = self.out(h).squeeze(-1)
        if self.use_extra:
            y = y + 0.0 * torch.relu(self.extra(h)).sum(dim=1)
        return y


NAIVE_TEST = textwrap.dedent(
    """
    import torch
    MODEL = torch.jit.load({model!r})
    X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))

    def test_latency(benchmark):
        with torch.inference_mode():
            benchmark(MODEL, X)
    """
)


def naive_trial(folder: Path, model: Path) -> bool:
    """Store a pytest-benchmark run of the model, run it again, compare with median:10%: True if it 'fails'."""
    test = folder / "test_naive.py"
    test.write_text(NAIVE_TEST.format(model=str(model)))
    storage = folder / "storage"
    common = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), f"--benchmark-storage={storage}",
              "--benchmark-max-time=0.5", "-c", "/dev/null", "--rootdir", str(folder)]
    subprocess.run(common + ["--benchmark-save=base"], capture_output=True, check=True)
    compared = subprocess.run(common + ["--benchmark-compare", "--benchmark-compare-fail=median:10%"], capture_output=True)
    for run in storage.rglob("*.json"):
        run.unlink()
    return compared.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()

    from release_kit import gate
    from release_kit.stages import performance
    from release_kit.timing import Timer, compare

    torch.manual_seed(0)
    base = Blocks().eval()
    heavier = Blocks(extra=True).eval()
    heavier.load_state_dict(base.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rng = np.random.default_rng(0)
        frame = pd.DataFrame(rng.normal(size=(500, 5)), columns=FEATURES).assign(y=rng.normal(size=500))
        frame.to_csv(work / "golden.csv", index=False)
        paths = {"a": work / "a.pt", "b": work / "b.pt"}
        torch.jit.save(torch.jit.script(base), str(paths["a"]))
        torch.jit.save(torch.jit.script(heavier), str(paths["b"]))
        (work / "release-kit.toml").write_text(
            f'[model]\nname = "blocks"\ntask = "regression"\ntarget = "y"\nfeatures = {FEATURES!r}\n'.replace("'", '"')
            + '[data]\ngolden = "golden.csv"\n[mlflow]\nenabled = false\n'
        )
        config, project = gate.resolve_config(work / "release-kit.toml")
        loaded_config = config.model_copy(update={"performance": config.performance.model_copy(update={"batch_sizes": [1, 64, LOADED_BATCH]})})
        outcomes = {"aa": [], "power": [], "aa-load": [], "power-load": [], "naive": []}
        rules: dict[str, list[float]] = {"paired": [], "sides": []}
        seconds = []
        spec = config.performance
        for trial in range(args.trials):
            for kind, candidate in (("aa", paths["a"]), ("power", paths["b"]), ("aa-load", paths["a"]), ("power-load", paths["b"])):
                prepared = gate.prepare(loaded_config if kind.endswith("load") else config, project, candidate=str(candidate),
                                        baseline=str(paths["a"]))
                with Neighbours() if kind.endswith("load") else contextlib.nullcontext():
                    started = time.perf_counter()
                    results = [check.run() for check in performance.checks(prepared)]
                    if not kind.endswith("load"):
                        seconds.append(time.perf_counter() - started)
                    if kind == "aa-load":  # the same pair's rounds, decided both ways
                        torch.set_num_threads(spec.threads)
                        model = prepared.candidate.module
                        batch = torch.from_numpy(frame[FEATURES].to_numpy(np.float32)[rng.integers(0, len(frame), LOADED_BATCH)])
                        measured = compare(Timer(model, batch.clone(), "candidate"), Timer(model, batch.clone(), "baseline"),
                                           rounds=spec.rounds, round_seconds=spec.round_seconds, warmup_seconds=spec.warmup_seconds,
                                           batch_size=LOADED_BATCH, device="cpu")
                        for rule, value in zip(("paired", "sides"), both_rules(*measured)):
                            rules[rule].append(value)
                outcomes[kind].append(any(r.status.value == "fail" for r in results))
            outcomes["naive"].append(naive_trial(work, paths["a"]))
            if (trial + 1) % 10 == 0:
                print(f"{trial + 1} trials: " + ", ".join(f"{kind} blocks {sum(v)}" for kind, v in outcomes.items()), flush=True)
    n = args.trials

    def rate(kind: str) -> str:
        return f"{sum(outcomes[kind]) / n:.1%} ({sum(outcomes[kind])}/{n})"

    def strays(rule: str) -> str:
        values = np.asarray(rules[rule])
        return f"{np.percentile(np.abs(values - 1), 50):.1%} / {np.max(np.abs(values - 1)):.1%} (range {values.min():.2f}–{values.max():.2f})"

    write_section(
        "performance_decision",
        f"Performance stage decision rule ({n} trials each, small MLP, CPU, default settings)",
        "| experiment | rate | target |\n|---|---:|---|\n"
        f"| A/A (same model as candidate and baseline): false blocks | {rate('aa')} | ≤ 1% |\n"
        f"| power (identical outputs, 1.25× compute): blocked | {rate('power')} | ≥ 95% |\n"
        f"| A/A beside {NEIGHBOURS} bursty neighbour processes (5–150 ms of work, then of sleep), batch sizes 1, 64 and {LOADED_BATCH:,}: false blocks | {rate('aa-load')} | ≤ 1% |\n"
        f"| power beside the same neighbours: blocked | {rate('power-load')} | (reported) |\n"
        f"| naive pytest-benchmark `--benchmark-compare-fail=median:10%` vs a stored run of the same model: false blocks | {rate('naive')} | (for comparison) |\n"
        f"| stage wall time per model pair (batch sizes 1 and 64), no neighbours | median {np.median(seconds):.1f} s, max {max(seconds):.1f} s | ≤ 20 s |\n\n"
        f"Beside the neighbours, one A/A comparison per trial (batch {LOADED_BATCH:,}, the stage's rounds) decided two ways, how far the ratio strays "
        f"from 1 (median / largest of {n}): the median of the per-round ratios, the stage's rule, {strays('paired')}; the ratio of "
        f"each side's median, the rule before 2026-12-06, {strays('sides')}.",
    )


if __name__ == "__main__":
    main()
