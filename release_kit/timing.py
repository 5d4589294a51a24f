"""Timing value objects, in the spirit of ``torch.utils.benchmark``: a :class:`Timer` runs one model on one
input and returns per-call latencies; :class:`Measurement` holds them; :func:`compare` interleaves two
timers and :func:`ratio_interval` decides with a bootstrap over the rounds.

On CUDA each call is bracketed by ``torch.cuda.Event`` pairs and the stream is synchronised before the
times are read; on CPU ``time.perf_counter_ns`` brackets each call. Both run in ``inference_mode``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Measurement:
    label: str
    batch_size: int
    device: str
    rounds: list[np.ndarray]  # per-call latencies in ns, one array per round
    cold_start_ns: int  # the very first call: lazy init, autotuning, allocator growth
    warmup_calls: int
    peak_memory_bytes: int | None  # CUDA: max_memory_allocated; CPU (Linux): RSS high-water increase

    @property
    def calls(self) -> np.ndarray:
        return np.concatenate(self.rounds)

    def percentile(self, q: float) -> float:
        """A typical round's ``q``-th percentile latency: the median over rounds, the figure that
        :func:`ratio_interval`'s per-round ratios compare. Pooling every call instead weighs a round by its
        calls, and a burst of load that slowed a few rounds moved it (seen: "p50 0.0188 → 0.0133 ms" shown
        beside a ratio of 0.959)."""
        return float(np.median(self.round_stat(q)))

    @property
    def median_ns(self) -> float:
        return self.percentile(50)

    @property
    def throughput(self) -> float:
        """Rows per second at the median latency."""
        return self.batch_size / (self.median_ns * 1e-9)

    def round_stat(self, q: float) -> np.ndarray:
        return np.array([np.percentile(r, q) for r in self.rounds])

    def to_dict(self) -> dict:
        return {"label": self.label, "batch_size": self.batch_size, "device": self.device,
                "rounds": [r.tolist() for r in self.rounds], "cold_start_ns": self.cold_start_ns,
                "warmup_calls": self.warmup_calls, "peak_memory_bytes": self.peak_memory_bytes}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        return cls(data["label"], int(data["batch_size"]), data["device"], [np.asarray(r, dtype=np.int64) for r in data["rounds"]],
                   int(data["cold_start_ns"]), int(data["warmup_calls"]), data["peak_memory_bytes"])


class Timer:
    """Times ``fn(*inputs)`` on one device (``inputs``: a tensor, or a tuple of them passed positionally)."""

    def __init__(self, fn: Callable[..., object], inputs: torch.Tensor | tuple[torch.Tensor, ...], label: str) -> None:
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        import functools

        # A partial, not a lambda: the call it adds is C-level, the same for both models, and negligible.
        self.module, self.fn, self.inputs, self.label = fn, functools.partial(fn, *inputs), inputs, label
        self.cuda = inputs[0].is_cuda

    def _once_ns(self) -> int:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.fn()
            end.record()
            torch.cuda.synchronize()
            return int(start.elapsed_time(end) * 1e6)
        started = time.perf_counter_ns()
        self.fn()
        return time.perf_counter_ns() - started

    def cold_start_ns(self) -> int:
        with torch.inference_mode():
            return self._once_ns()

    def warm_up(self, max_seconds: float, min_calls: int = 5) -> tuple[int, float]:
        """Call until the per-call time settles (median of the last 5 within 5% of the 5 before), or the
        time runs out; returns (calls made, settled per-call ns)."""
        times: list[int] = []
        deadline = time.perf_counter() + max_seconds
        with torch.inference_mode():
            while True:
                times.append(self._once_ns())
                if len(times) >= max(min_calls, 10):
                    recent, before = np.median(times[-5:]), np.median(times[-10:-5])
                    if abs(recent - before) <= 0.05 * before or time.perf_counter() > deadline:
                        break
                elif time.perf_counter() > deadline and len(times) >= min_calls:
                    break
        return len(times), float(np.median(times[-5:]))

    def block(self, calls: int) -> np.ndarray:
        """``calls`` back-to-back calls, each timed; per-call ns."""
        out = np.empty(calls, dtype=np.int64)
        with torch.inference_mode():
            if self.cuda:
                events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
                for start, end in events:
                    start.record()
                    self.fn()
                    end.record()
                torch.cuda.synchronize()
                for i, (start, end) in enumerate(events):
                    out[i] = int(start.elapsed_time(end) * 1e6)
            else:
                for i in range(calls):
                    started = time.perf_counter_ns()
                    self.fn()
                    out[i] = time.perf_counter_ns() - started
        return out

    def peak_memory_bytes(self) -> int | None:
        """What the model holds and allocates: its weights and buffers, plus the peak a call adds (CUDA:
        the allocator's peak; CPU: the RSS high-water mark, which sees the large activations)."""
        weights = weight_bytes(self.module)
        with torch.inference_mode():
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                self.fn()
                torch.cuda.synchronize()
                return weights + int(torch.cuda.max_memory_allocated() - before)
            activations = _rss_peak_increase(self.fn)
            return None if activations is None else weights + activations


def weight_bytes(module: object) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once (tied weights share one)."""
    seen: set[int] = set()
    total = 0
    for method in ("parameters", "buffers"):
        tensors = getattr(module, method, None)
        for tensor in tensors() if callable(tensors) else ():
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in seen:
                seen.add(pointer)
                total += tensor.untyped_storage().nbytes()
    return total


def _rss_peak_increase(call: Callable[[], object]) -> int | None:
    """Linux: reset the RSS high-water mark (``/proc/self/clear_refs`` ← 5), call, read ``VmHWM``."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_bytes("VmRSS")
        call()
        return max(0, _status_bytes("VmHWM") - before)
    except OSError:
        return None


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


MIN_ROUNDS = 4  # rounds a measurement makes whatever its deadline (a comparison: two of each order)


def _seconds_left(deadline: float | None) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value), 0 past it; infinite without one."""
    return math.inf if deadline is None else max(0.0, deadline - time.monotonic())


def measure(timer: Timer, *, rounds: int, round_seconds: float, warmup_seconds: float, batch_size: int, device: str,
            deadline: float | None = None) -> Measurement:
    """One model alone (against stored numbers): warm up, then ``rounds`` blocks, ending past ``deadline``
    (a ``time.monotonic()`` value) after at least ``MIN_ROUNDS``, as :func:`compare` does."""
    cold = timer.cold_start_ns()
    calls_made, per_call = timer.warm_up(min(warmup_seconds, _seconds_left(deadline) / 2))
    calls = int(np.clip(round_seconds * 1e9 / max(per_call, 1.0), 1, 10_000))
    blocks = []
    for index in range(rounds):
        if index >= MIN_ROUNDS and not _seconds_left(deadline):
            break
        blocks.append(timer.block(calls))
    return Measurement(timer.label, batch_size, device, blocks, cold, calls_made, timer.peak_memory_bytes())


def compare(candidate: Timer, baseline: Timer, *, rounds: int, round_seconds: float, warmup_seconds: float, batch_size: int, device: str,
            deadline: float | None = None) -> tuple[Measurement, Measurement]:
    """Warm both up, then ``rounds`` rounds of A B / B A blocks on the same input. Past ``deadline`` (a
    ``time.monotonic()`` value) the warm-up ends and so do the rounds, at an even count of at least
    ``MIN_ROUNDS``: the measurements say how many were made."""
    cold = {t.label: t.cold_start_ns() for t in (candidate, baseline)}
    warm = {t.label: t.warm_up(min(warmup_seconds, _seconds_left(deadline) / 2)) for t in (candidate, baseline)}
    calls = {label: int(np.clip(round_seconds * 1e9 / max(per_call, 1.0), 1, 10_000)) for label, (_, per_call) in warm.items()}
    samples: dict[str, list[np.ndarray]] = {candidate.label: [], baseline.label: []}
    for index in range(rounds):
        if index >= MIN_ROUNDS and index % 2 == 0 and not _seconds_left(deadline):
            break
        order = (candidate, baseline) if index % 2 == 0 else (baseline, candidate)
        for timer in order:
            samples[timer.label].append(timer.block(calls[timer.label]))
    return tuple(
        Measurement(t.label, batch_size, device, samples[t.label], cold[t.label], warm[t.label][0], t.peak_memory_bytes())
        for t in (candidate, baseline)
    )


@dataclass(frozen=True)
class Ratio:
    """candidate / baseline of a latency statistic, with a bootstrap interval over the rounds."""

    value: float
    low: float
    high: float
    spread: float  # IQR / median of the per-round ratios (unpaired: of each side's rounds, combined): how noisy the machine was


def ratio_interval(candidate: Measurement, baseline: Measurement, q: float, *, paired: bool, confidence: float, resamples: int,
                   seed: int) -> Ratio:
    """candidate / baseline of the rounds' ``q``-th percentile latencies, with a bootstrap interval.

    ``paired`` (a live A/B, :func:`compare`: round i's two blocks ran back to back): the median of the
    per-round ratios, resampled by round. Load that changes between rounds (another job on the machine)
    slows both blocks of a round alike and cancels in their ratio, where it stays in each side's median
    (measured with a bursty neighbour process, a CNN against itself: the ratio of medians ranged
    0.47–2.16 over 30 runs and blocked one, the median of ratios 0.77–1.52, none). Unpaired (numbers stored by
    an earlier run): the ratio of the two medians, each side's rounds resampled on its own."""
    c, b = candidate.round_stat(q), baseline.round_stat(q)
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    if paired:
        per_round = c / b
        q25, q50, q75 = np.percentile(per_round, [25, 50, 75])
        boot = np.median(per_round[rng.integers(0, len(per_round), size=(resamples, len(per_round)))], axis=1)
        value, spread = float(q50), float((q75 - q25) / q50)
    else:
        boot = (np.median(c[rng.integers(0, len(c), size=(resamples, len(c)))], axis=1)
                / np.median(b[rng.integers(0, len(b), size=(resamples, len(b)))], axis=1))
        value = float(np.median(c) / np.median(b))
        spread = math.hypot(*(float(np.subtract(*np.percentile(side, [75, 25])) / np.median(side)) for side in (c, b)))
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return Ratio(value, float(low), float(high), spread)
