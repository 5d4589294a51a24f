"""ModelPool overhead (issue #15): ``pool.get(ref).predict(x)`` vs calling the loaded module directly, p50/p99
per call at batch 1 and 64, alternating in blocks; and cold-load and alias-swap times for the power example's
models from the embedded store.

Two direct calls: what a hand-written server does per request (enter inference mode, wrap the request's
array, call, convert back), and the bare call inside an inference-mode context held across calls (a floor no
server reaches, since each request enters the context on its own thread).
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
sys.path.append(str(HERE.parent / "examples" / "shape-classifier"))  # after power-forecast: both have a build.py

CALLS = 2_000


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def overheads(pool, reference: str, module, x: np.ndarray) -> tuple[str, float, float]:
    """Table cells (the three calls' p50 / p99, the pool's p50 overhead against both direct calls), and the
    pool's p50 overhead against the per-request call in µs and as a ratio."""
    tensor = torch.from_numpy(x)
    calls = CALLS if x[0].size < 100 else CALLS // 10  # the CNN takes milliseconds a call
    bare, direct, pooled = [], [], []
    for _ in range(10):  # alternating blocks
        with torch.inference_mode():
            for _ in range(calls // 10):
                t = time.perf_counter_ns()
                module(tensor).double().numpy()
                bare.append(time.perf_counter_ns() - t)
        for _ in range(calls // 10):
            t = time.perf_counter_ns()
            with torch.inference_mode():
                module(torch.from_numpy(x)).double().numpy()
            direct.append(time.perf_counter_ns() - t)
        for _ in range(calls // 10):
            t = time.perf_counter_ns()
            pool.get(reference).predict(x)
            pooled.append(time.perf_counter_ns() - t)
    (b50, b99), (d50, d99), (p50, p99) = percentiles(bare), percentiles(direct), percentiles(pooled)
    cells = (
        f"{b50 / 1e3:.1f} / {b99 / 1e3:.1f} µs | {d50 / 1e3:.1f} / {d99 / 1e3:.1f} µs "
        f"| {p50 / 1e3:.1f} / {p99 / 1e3:.1f} µs | {p50 / d50 - 1:+.1%} | {p50 / b50 - 1:+.1%} |"
    )
    return cells, (p50 - d50) / 1e3, p50 / d50 - 1


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
    pool.get("power-forecast@champion")
    cold = time.perf_counter() - started
    # The shape example's CNN (untrained weights time the same as trained ones): 32×32 images.
    import shapes

    cnn = directory / "shape-cnn.pt"
    shapes.save_torchscript(shapes.ShapeCNN(width=8).eval(), cnn)
    publish(cnn, "shape-classifier", "1.0.0", tracking_uri=uri, alias="champion")
    torch.set_num_threads(1)
    rows, at_64 = [], []
    for reference, shape in (("power-forecast@champion", (5,)), ("shape-classifier@champion", (1, 32, 32))):
        module = pool.get(reference).loaded.module
        for batch in (1, 64):
            x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
            cells, added, ratio = overheads(pool, reference, module, x)
            rows.append(f"| {reference.split('@')[0]} | {batch} | {cells}")
            print(rows[-1])
            if batch == 64:
                at_64.append(f"{reference.split('@')[0]} {added:+.2f} µs ({ratio:+.1%})")
    connect(uri).set_registered_model_alias("power-forecast", "champion", "2")
    started = time.perf_counter()
    pool.refresh()
    swap = time.perf_counter() - started
    write_section(
        "serving",
        "ModelPool: overhead per call, cold load, alias swap",
        "The power example's TorchScript MLP and the shape example's CNN (32×32 images) from the embedded store, "
        "1 thread; p50 / p99 of 2,000 calls each (200 for the CNN), "
        "alternating blocks. *Per request* is what a hand-written server does for each request: "
        "`with torch.inference_mode(): module(torch.from_numpy(x)).double().numpy()`; *held context* is the bare "
        "`module(tensor).double().numpy()` inside one inference-mode context held across calls, a floor no server "
        "reaches (each request enters the context on its own thread). The pool's call also looks the reference "
        "up, checks the output (a tensor of real numbers, one row per sample) and copies it out.\n\n"
        "| model | batch | direct, held context (p50 / p99) | direct, per request (p50 / p99) "
        "| `pool.get(ref).predict(x)` (p50 / p99) | p50 overhead vs per request | vs held context |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nAt batch 64 (goal ≤ 5 %) the pool adds, at p50, against the per-request call: {'; '.join(at_64)}."
        + f"\n\nCold load of a version (registry lookup, download, sha256 check, safe load): {cold * 1e3:.0f} ms. "
        f"Alias swap (`refresh()`: re-resolve, load and warm the new version, switch): {swap * 1e3:.0f} ms.",
    )


if __name__ == "__main__":
    main()
