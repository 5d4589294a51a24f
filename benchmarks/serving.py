"""ModelPool overhead (issue #15): ``pool.get(ref).predict(x)`` vs calling the loaded module directly on the
same tensor, p50/p99 per call at batch 1 and 64, alternating in blocks; and cold-load and alias-swap times for
the power example's models from the embedded store.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _results import write_section

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "power-forecast"))

CALLS = 2_000


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    import build

    from release_kit.registry import publish
    from release_kit.serving import ModelPool
    from release_kit.tracking import connect, embedded_uri

    directory = Path(tempfile.mkdtemp(prefix="release-kit-serving-bench-"))
    paths = build.build(directory, register=False)
    uri = embedded_uri(directory)
    publish(paths["v1"], "power-forecast", "1.0.0", tracking_uri=uri, alias="champion")
    publish(paths["better"], "power-forecast", "1.1.0", tracking_uri=uri)
    pool = ModelPool(uri, refresh_seconds=0)
    started = time.perf_counter()
    model = pool.get("power-forecast@champion")
    cold = time.perf_counter() - started
    torch.set_num_threads(1)
    rows = []
    for batch in (1, 64):
        x = np.random.default_rng(0).random((batch, 5), dtype=np.float32)
        tensor = torch.from_numpy(x)
        direct, pooled = [], []
        for _ in range(10):  # alternating blocks
            with torch.inference_mode():
                for _ in range(CALLS // 10):
                    t = time.perf_counter_ns()
                    model.loaded.module(tensor).double().numpy()
                    direct.append(time.perf_counter_ns() - t)
            for _ in range(CALLS // 10):
                t = time.perf_counter_ns()
                pool.get("power-forecast@champion").predict(x)
                pooled.append(time.perf_counter_ns() - t)
        (d50, d99), (p50, p99) = percentiles(direct), percentiles(pooled)
        rows.append(f"| {batch} | {d50 / 1e3:.1f} / {d99 / 1e3:.1f} µs | {p50 / 1e3:.1f} / {p99 / 1e3:.1f} µs | {p50 / d50 - 1:+.0%} |")
        print(rows[-1])
    connect(uri).set_registered_model_alias("power-forecast", "champion", "2")
    started = time.perf_counter()
    pool.refresh()
    swap = time.perf_counter() - started
    write_section(
        "serving",
        "ModelPool: overhead per call, cold load, alias swap",
        "The power example's TorchScript model from the embedded store, 1 thread; p50 / p99 of 2,000 calls each, "
        "alternating blocks. The pool's call resolves the alias (a dict lookup), checks the batch and its output, "
        "and converts to float64 ndarrays; the direct call is `module(tensor).double().numpy()`.\n\n"
        "| batch | direct module call (p50 / p99) | `pool.get(...).predict(x)` (p50 / p99) | p50 overhead |\n|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\nThe pool adds a fixed ~7 µs per call (reference lookup under a lock, input and output checks, an "
        "inference-mode context per call); against this 12 µs model that is far above the 5% goal, which it meets "
        "for models that take 140 µs or more per call."
        + f"\n\nCold load of a version (registry lookup, download, sha256 check, safe load): {cold * 1e3:.0f} ms. "
        f"Alias swap (`refresh()`: re-resolve, load and warm the new version, switch): {swap * 1e3:.0f} ms.",
    )


if __name__ == "__main__":
    main()
