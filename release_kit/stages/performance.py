"""Performance stage: latency, throughput and peak memory of candidate vs baseline, measured in this
process on the same seeded inputs, interleaved (A B / B A rounds), decided on bootstrap intervals.

A latency check fails only when the interval's lower bound of candidate/baseline exceeds
1 + ``latency_budget``; noisy rounds (IQR/median of the per-round ratios above ``max_spread``) are rerun
within the time budget and reported as inconclusive (a warning) if still noisy.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, first_line
from ..report import CheckResult, MetricDiff, Status
from . import Once, StageCheck, no_baseline

if TYPE_CHECKING:
    from ..context import GateContext
    from ..models import LoadedModel
    from ..timing import Measurement, Ratio

NAME = "performance"
# User checks may use pytest-benchmark's ``benchmark`` fixture while performance is judged.
PYTEST_PLUGINS = ("pytest_benchmark.plugin",)


def checks(gate: GateContext) -> list[StageCheck]:
    import torch

    spec = gate.config.performance
    device = spec.device
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("[performance] device = \"cuda\", but no CUDA device is available (torch.cuda.is_available() is False)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if gate.baseline is None:
        return [StageCheck(f"latency:batch={n}", partial(no_baseline, NAME, f"latency:batch={n}")) for n in spec.batch_sizes]
    stored = _read_stored(spec.stored_baseline) if spec.stored_baseline else None
    # No model runs while planning: gate.prepare already ran both at every batch size measured here.
    models = {role: _on_device(gate, getattr(gate, role), device) for role in ("candidate", "baseline")}
    inputs = {n: _inputs(gate, n, device) for n in spec.batch_sizes}
    cost = Once(partial(_cost, gate, models, inputs[max(spec.batch_sizes)]))
    budget = spec.time_budget_seconds / len(spec.batch_sizes)
    found = []
    if spec.save_candidate:
        _check_writable(spec.save_candidate)
    recorder = CandidateRecorder(spec.save_candidate, gate, device) if spec.save_candidate else None
    for n in spec.batch_sizes:
        if stored is not None:
            measured = Once(partial(_against_stored, gate, models, inputs[n], n, device, stored, budget))
        else:
            measured = Once(partial(_measure, gate, models, inputs[n], n, device, budget))
        if recorder is not None:
            measured = Once(partial(_recorded, recorder, measured))
        found.append(StageCheck(f"latency:batch={n}", partial(latency_check, gate, measured, cost, n)))
        found.append(StageCheck(f"memory:batch={n}", partial(memory_check, gate, measured, n)))
    return found


@dataclass(frozen=True)
class ABResult:
    """One batch size's comparison: both measurements, the p50 and p90 ratio intervals, and what it cost."""

    candidate: Measurement
    baseline: Measurement
    ratio: Ratio  # p50, candidate / baseline
    p90: Ratio
    reruns: int
    seconds: float


class StoredMismatch(Exception):
    """Stored numbers from another machine or another baseline: comparing them would mislead."""


def _read_stored(path: str) -> dict:
    import json

    from ..files import parse_document, read_document

    try:
        data = parse_document(json.loads, read_document(path, "[performance] stored_baseline"), f"[performance] stored_baseline {path}")
    except FileNotFoundError:
        raise InputError(f"[performance] stored_baseline not found: {path}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"[performance] stored_baseline {path}: cannot read: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != STORED_SCHEMA:
        raise InputError(f"[performance] stored_baseline {path}: not a release-kit performance file ({STORED_SCHEMA})")
    return data


def _check_writable(path: str) -> None:
    from pathlib import Path

    folder = Path(path).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"[performance] save_candidate: cannot write to {folder}")


STORED_SCHEMA = "release-kit-performance/1"


def _against_stored(gate: GateContext, models: dict, batch: dict, rows: int, device: str, stored: dict, budget: float):
    """The candidate timed live against the stored baseline numbers, after checking they are comparable."""
    from ..timing import Measurement, Timer, measure, ratio_interval

    spec = gate.config.performance
    here = fingerprint(device, spec.threads)
    differing = sorted(k for k in set(here) | set(stored["fingerprint"]) if k != "platform" and here.get(k) != stored["fingerprint"].get(k))
    if differing:
        first = differing[0]
        raise StoredMismatch(
            f"refusing to compare against numbers stored on another machine: {first} "
            f"{stored['fingerprint'].get(first)!r} there, {here.get(first)!r} here"
        )
    if stored.get("model_sha256") != gate.baseline.sha256:
        raise StoredMismatch("refusing to compare: the stored numbers are of another model file than this baseline")
    if str(rows) not in stored["measurements"]:
        raise StoredMismatch(f"no stored numbers for batch size {rows}")
    baseline = Measurement.from_dict(stored["measurements"][str(rows)])
    started = time.monotonic()
    # The stored file says how many rounds it holds (a file a pull request may carry): the budget ends them
    # all the same, and the stored rounds are paired with the candidate's first ones.
    candidate = measure(Timer(models["candidate"], batch["candidate"], "candidate"), rounds=len(baseline.rounds), round_seconds=spec.round_seconds,
                        warmup_seconds=spec.warmup_seconds, batch_size=rows, device=device, deadline=started + budget)
    from dataclasses import replace

    baseline = replace(baseline, label="baseline", rounds=baseline.rounds[: len(candidate.rounds)])
    # The stored rounds ran in another job: not paired with the candidate's.
    ratio = ratio_interval(candidate, baseline, 50, paired=False, confidence=spec.confidence, resamples=spec.resamples, seed=spec.seed)
    p90 = ratio_interval(candidate, baseline, 90, paired=False, confidence=spec.confidence, resamples=spec.resamples, seed=spec.seed)
    return ABResult(candidate, baseline, ratio, p90, 0, time.monotonic() - started)


class CandidateRecorder:
    """Keeps the candidate's measurements and rewrites the stored-numbers file (atomically) as each arrives,
    so that a later run can use them as ``stored_baseline`` once this candidate is released."""

    def __init__(self, path: str, gate: GateContext, device: str) -> None:
        self.path = path
        self.header = {
            "schema": STORED_SCHEMA,
            "fingerprint": fingerprint(device, gate.config.performance.threads),
            "model_sha256": gate.candidate.sha256,
            "model": gate.candidate.source,
        }
        self.measurements: dict[str, dict] = {}

    def add(self, measurement: Measurement) -> None:
        import json
        from pathlib import Path

        from ..outputs import write_atomic

        self.measurements[str(measurement.batch_size)] = {**measurement.to_dict(), "label": "candidate"}
        write_atomic(Path(self.path), json.dumps({**self.header, "measurements": self.measurements}) + "\n")


def _recorded(recorder: CandidateRecorder, measured: Once):
    result = measured()
    recorder.add(result.candidate)
    return result


def _on_device(gate: GateContext, model: LoadedModel, device: str):
    """The module to time: the loaded one when it is on this device already, else a fresh copy loaded
    there, so that the other stages keep theirs."""
    if device == model.device:
        return model.module
    from ..models import load_model

    fresh = load_model(model.role, str(model.file), gate.config.model, factory=getattr(gate.config, model.role).factory,
                       allow_pickle=model.allow_pickle)
    return fresh.module.to(device) if hasattr(fresh.module, "to") else fresh.module


def _inputs(gate: GateContext, rows: int, device: str) -> dict:
    """Role → its batch of the same golden rows (a baseline released with other features reads its own)."""
    import torch

    rng = np.random.default_rng(gate.config.performance.seed)
    picked = gate.golden.take(rng.integers(0, len(gate.golden), rows))
    return {role: tuple(torch.from_numpy(np.ascontiguousarray(array)).to(device) for array in gate.inputs_for(role, picked))
            for role in ("candidate", "baseline")}


def _measure(gate: GateContext, models: dict, batch: dict, rows: int, device: str, budget: float):
    """Interleaved rounds; rerun with more rounds while the machine is too noisy and time remains."""
    import torch

    from ..timing import Timer, compare, ratio_interval

    spec = gate.config.performance
    previous_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        started = time.monotonic()
        # Each model times its own copy of the batch: one that writes into its input cannot change the other's.
        timers = [Timer(models[role], tuple(t.clone() for t in batch[role]), role) for role in ("candidate", "baseline")]
        # The budget bounds the first rounds too: however many [performance] rounds ask for, the stage ends.
        candidate, baseline = compare(*timers, rounds=spec.rounds, round_seconds=spec.round_seconds,
                                      warmup_seconds=spec.warmup_seconds, batch_size=rows, device=device, deadline=started + budget)
        reruns = 0
        while True:
            ratio = ratio_interval(candidate, baseline, 50, paired=True, confidence=spec.confidence, resamples=spec.resamples, seed=spec.seed)
            took = time.monotonic() - started
            if ratio.spread <= spec.max_spread or took * (reruns + 2) / (reruns + 1) > budget:
                break
            more_c, more_b = compare(*timers, rounds=spec.rounds, round_seconds=spec.round_seconds,
                                     warmup_seconds=spec.warmup_seconds / 4, batch_size=rows, device=device, deadline=started + budget)
            candidate = _joined(candidate, more_c)
            baseline = _joined(baseline, more_b)
            reruns += 1
        p90 = ratio_interval(candidate, baseline, 90, paired=True, confidence=spec.confidence, resamples=spec.resamples, seed=spec.seed)
        return ABResult(candidate, baseline, ratio, p90, reruns, time.monotonic() - started)
    finally:
        torch.set_num_threads(previous_threads)


def _joined(first: Measurement, more: Measurement) -> Measurement:
    from dataclasses import replace

    return replace(first, rounds=first.rounds + more.rounds)


def _cost(gate: GateContext, models: dict, batch: dict) -> dict:
    """Parameter count and FLOPs per row (``torch.utils.flop_counter``) of both models. Facts for the table,
    not for the decision: where the counter cannot follow a model, its FLOPs are unknown (``None``, with the
    reason), and the latency is still decided."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    facts = {}
    for role, module in models.items():
        params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else None
        own = tuple(t.clone() for t in batch[role])  # its own copy, as it is timed
        facts[role] = {"parameters": params, "flops_per_row": None}
        try:
            # no_grad, not inference_mode: under inference mode the counter's dispatch mode fails on some
            # models (an EmbeddingBag over token ids, TorchScript or exported) that run fine without it.
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(*own)
        except Exception as error:  # the model runs in the timed rounds; only the count is lost
            facts[role]["flops_unknown"] = f"{type(error).__name__}: {first_line(error)}"
        else:
            facts[role]["flops_per_row"] = counter.get_total_flops() / len(own[0])
    return facts


def fingerprint(device: str, threads: int) -> dict:
    import torch

    from ..environment import cpu_model

    facts = {"device": device, "torch": torch.__version__, "threads": threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
             "platform": platform.platform()}
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        facts.update(gpu=properties.name, cuda=torch.version.cuda, driver=_driver_version(), gpu_memory_bytes=properties.total_memory,
                     compute_capability=f"{properties.major}.{properties.minor}")
    return facts


def _driver_version() -> str | None:
    """torch does not expose the NVIDIA driver's version; nvidia-smi does, where it is installed."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def latency_check(gate: GateContext, measured: Once, cost: Once, rows: int) -> CheckResult:
    from ..fixed_batch import fixed_batch_of

    spec = gate.config.performance
    try:
        result: ABResult = measured()
        candidate, baseline, ratio, p90, reruns, seconds = (result.candidate, result.baseline, result.ratio, result.p90,
                                                            result.reruns, result.seconds)
    except StoredMismatch as refusal:
        return CheckResult(NAME, f"latency:batch={rows}", Status.ERROR, str(refusal))
    facts = cost()
    limit = 1 + spec.latency_budget
    name = f"latency:batch={rows}"
    ms = lambda m, q: m.percentile(q) / 1e6  # noqa: E731
    table = {
        "title": f"latency at batch {rows} ({candidate.device}, {spec.threads if candidate.device == 'cpu' else 'GPU'} thread(s))",
        "columns": ["model", "p50 ms", "p90 ms", "p99 ms", "rows/s", "cold start ms", "FLOPs/row", "GFLOP/s", "parameters"],
        "rows": [
            [m.label, ms(m, 50), ms(m, 90), ms(m, 99), m.throughput, m.cold_start_ns / 1e6,
             facts[m.label]["flops_per_row"], _giga(_achieved(facts, m)), facts[m.label]["parameters"]]
            for m in (candidate, baseline)
        ] + [["ratio", ratio.value, p90.value, ms(candidate, 99) / ms(baseline, 99), baseline.throughput / candidate.throughput,
              None, None, None, None]],
    }
    details = {
        "table": table,
        "chart": {"title": f"p50 latency at batch {rows}", "labels": ["candidate", "baseline"],
                  "values": [round(ms(candidate, 50), 4), round(ms(baseline, 50), 4)], "y_label": "ms"},
        "p50_ratio": [ratio.value, ratio.low, ratio.high],
        "p90_ratio": [p90.value, p90.low, p90.high],
        "spread": ratio.spread,
        "rounds": len(candidate.rounds),
        "reruns": reruns,
        "seconds": round(seconds, 3),
        "cost": facts,
        "fingerprint": fingerprint(candidate.device, spec.threads),
    }
    if spec.peak_tflops is not None:
        details["peak_fraction"] = {m.label: None if _achieved(facts, m) is None else _achieved(facts, m) / (spec.peak_tflops * 1e12)
                                    for m in (candidate, baseline)}
    metrics = (
        MetricDiff(f"p50_latency_ratio:batch={rows}", ratio.value, 1.0, ratio.value - 1, ratio.low - 1, ratio.high - 1, False, spec.latency_budget),
        MetricDiff(f"p90_latency_ratio:batch={rows}", p90.value, 1.0, p90.value - 1, p90.low - 1, p90.high - 1, False, spec.latency_budget),
        MetricDiff(f"p50_latency_ms:batch={rows}", ms(candidate, 50), ms(baseline, 50), ms(candidate, 50) - ms(baseline, 50)),
    )
    text = (f"p50 {ms(baseline, 50):.3g} → {ms(candidate, 50):.3g} ms, ratio {ratio.value:.3f} "
            f"[{ratio.low:.3f}, {ratio.high:.3f}], p90 ratio {p90.value:.3f}")
    fixed = [f"the {model.role} runs batches of exactly {size}" for model in (gate.candidate, gate.baseline)
             if (size := fixed_batch_of(model.module)) is not None and size != rows]
    if fixed:  # a program traced with a fixed batch: timed as it serves this batch, padded or split
        text += f" ({'; '.join(fixed)}: padded or split)"
    if ratio.low > limit:
        status, verdict = Status.FAIL, f"slower beyond the budget of +{spec.latency_budget:.0%}"
    elif ratio.spread > spec.max_spread:
        status, verdict = Status.WARN, f"inconclusive: rounds vary by {ratio.spread:.0%} (limit {spec.max_spread:.0%}) after {reruns} rerun(s)"
    elif ratio.value > limit:
        status, verdict = Status.WARN, f"may be slower than the budget of +{spec.latency_budget:.0%}; the interval cannot tell"
    else:
        status, verdict = Status.PASS, f"within the budget of +{spec.latency_budget:.0%}"
    return CheckResult(NAME, name, status, f"{text}: {verdict}", metrics=metrics, details=details)


def _achieved(facts: dict, measurement: Measurement) -> float | None:
    """FLOP/s at the median latency (``None``: the FLOPs are unknown)."""
    flops = facts[measurement.label]["flops_per_row"]
    return None if flops is None else flops * measurement.throughput


def _giga(value: float | None) -> float | None:
    return None if value is None else value / 1e9


def memory_check(gate: GateContext, measured: Once, rows: int) -> CheckResult:
    spec = gate.config.performance
    name = f"memory:batch={rows}"
    try:
        result = measured()
        candidate, baseline = result.candidate, result.baseline
    except StoredMismatch as refusal:
        return CheckResult(NAME, name, Status.ERROR, str(refusal))
    if candidate.peak_memory_bytes is None or baseline.peak_memory_bytes is None:
        return CheckResult(NAME, name, Status.SKIP, "peak memory cannot be measured on this platform (needs CUDA or Linux /proc)")
    kind = "weights + peak CUDA allocation" if candidate.device == "cuda" else "weights + peak RSS increase"
    c, b = candidate.peak_memory_bytes, baseline.peak_memory_bytes
    allowed = b * (1 + spec.memory_budget) + spec.memory_slack_bytes
    metrics = (MetricDiff(f"peak_memory_mib:batch={rows}", c / 2**20, b / 2**20, (c - b) / 2**20, tolerance=(allowed - b) / 2**20),)
    text = f"{kind} {_mib(b)} → {_mib(c)} MiB per call"
    budget = f"the budget of +{spec.memory_budget:.0%}"
    if c > allowed:
        return CheckResult(NAME, name, Status.FAIL, f"{text}: beyond {budget} and {_mib(spec.memory_slack_bytes)} MiB of slack", metrics=metrics)
    if c > b * (1 + spec.memory_budget):  # admitted by the slack alone: say so, a small model's growth shows
        return CheckResult(NAME, name, Status.PASS, f"{text}: beyond {budget}, within its {_mib(spec.memory_slack_bytes)} MiB of slack "
                           "([performance] memory_slack_bytes: RSS moves in pages)", metrics=metrics)
    return CheckResult(NAME, name, Status.PASS, f"{text}: within {budget}", metrics=metrics)


def _mib(size: float) -> str:
    """Bytes as MiB with three significant digits: a small model's 0.0011 is not rounded to 0.00."""
    return f"{size / 2**20:.3g}"
