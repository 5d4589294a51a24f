"""Proof of the performance stage's decision rule on this machine, side by side in one run:

* A/A: the same model as candidate and baseline, the stage with default settings → false-block rate
  (target ≤ 1%);
* power: a candidate with identical outputs and 1.25× the compute (a fifth hidden block whose result is
  multiplied by zero) → block rate (target ≥ 95%);
* the naive way: pytest-benchmark's ``--benchmark-compare-fail=median:10%`` against a stored run of the
  same model → its false-block rate;
* the stage's wall time per model pair (target ≤ 20 s).

Trials alternate A/A, power and naive so that machine noise hits all three alike.
"""

from __future__ import annotations

import argparse
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
        outcomes = {"aa": [], "power": [], "naive": []}
        seconds = []
        for trial in range(args.trials):
            for kind, candidate in (("aa", paths["a"]), ("power", paths["b"])):
                prepared = gate.prepare(config, project, candidate=str(candidate), baseline=str(paths["a"]))
                started = time.perf_counter()
                results = [check.run() for check in performance.checks(prepared)]
                seconds.append(time.perf_counter() - started)
                outcomes[kind].append(any(r.status.value == "fail" for r in results))
            outcomes["naive"].append(naive_trial(work, paths["a"]))
            if (trial + 1) % 10 == 0:
                print(f"{trial + 1} trials: A/A blocks {sum(outcomes['aa'])}, power blocks {sum(outcomes['power'])}, "
                      f"naive A/A fails {sum(outcomes['naive'])}", flush=True)
    n = args.trials
    aa, power, naive = (sum(outcomes[k]) / n for k in ("aa", "power", "naive"))
    write_section(
        "performance_decision",
        f"Performance stage decision rule ({n} trials each, small MLP, CPU, default settings)",
        "| experiment | rate | target |\n|---|---:|---|\n"
        f"| A/A (same model as candidate and baseline): false blocks | {aa:.1%} ({sum(outcomes['aa'])}/{n}) | ≤ 1% |\n"
        f"| power (identical outputs, 1.25× compute): blocked | {power:.1%} ({sum(outcomes['power'])}/{n}) | ≥ 95% |\n"
        f"| naive pytest-benchmark `--benchmark-compare-fail=median:10%` vs a stored run of the same model: false blocks | {naive:.1%} ({sum(outcomes['naive'])}/{n}) | (for comparison) |\n"
        f"| stage wall time per model pair (batch sizes 1 and 64) | median {np.median(seconds):.1f} s, max {max(seconds):.1f} s | ≤ 20 s |",
    )


if __name__ == "__main__":
    main()
