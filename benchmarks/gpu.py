"""The CUDA paths, measured on a GPU (run where one is; without one this script says so and writes nothing).

1. Tensor golden-set inference (the shape-classifier CNN, 20,000 images): ``LoadedModel.raw_outputs`` on
   CUDA (pinned memory, non-blocking copies) vs a raw ``inference_mode`` loop doing the same copies.
2. A streamed Parquet golden set (``ROWS`` rows × 10 features, the scale benchmark's data and MLP pair):
   the local engine with both models on CUDA vs a raw loop that reads the same batches and runs both models
   on CUDA; side by side, alternating, median of ``ROUNDS``.
3. The Ray engine on the same files with 2 actors sharing the GPU (``device = "auto"``): wall time, and the
   exact metrics equal to the local engine's.

    python benchmarks/gpu.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _results import median, write_section

ROWS = 10_000_000
ROUNDS = 3


def streamed(folder, device: str = "cuda") -> dict:
    from scale import CHUNK, _plan_and_models, raw_loop

    from release_kit.scale.engines import run_local, run_ray
    from release_kit.scale.stats import paired_diff

    source, plan, loaded = _plan_and_models(folder)
    for model in loaded.values():
        model.to_device(device)

    # On the GPU the raw loop makes release-kit's calls (32,768 rows for these MLPs): a larger call should be
    # the faster there (fewer launches and copies; not measured yet), so the CPU raw loop's 8,192 could
    # flatter the engine.
    call_rows = min(model.batch_size for model in loaded.values())

    def raw() -> None:
        raw_loop(source, plan, loaded, device=device, call_rows=call_rows)

    def metrics(summary) -> dict:
        return {m: np.array(list(paired_diff(m, s, 0.95).__dict__.values())[:5], dtype=float) for m, s in summary.quality.items()}

    local_summary = run_local(source, plan, loaded, chunk_rows=CHUNK)  # warm: page cache, CUDA context, kernels
    raw()
    timings: dict[str, list[float]] = {"raw": [], "local": []}
    ratios = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        raw()
        timings["raw"].append(time.perf_counter() - started)
        started = time.perf_counter()
        local_summary = run_local(source, plan, loaded, chunk_rows=CHUNK)
        timings["local"].append(time.perf_counter() - started)
        ratios.append(timings["raw"][-1] / timings["local"][-1])
    started = time.perf_counter()
    ray_summary = run_ray(source, plan, loaded, chunk_rows=CHUNK, workers=2, device="auto")
    ray_seconds = time.perf_counter() - started
    ours, theirs = metrics(local_summary), metrics(ray_summary)
    same = ray_summary.rows == local_summary.rows and all(np.allclose(ours[m], theirs[m], rtol=1e-9, atol=0) for m in ours)
    return {"raw": median(timings["raw"]), "local": median(timings["local"]), "ratios": sorted(ratios),
            "ray": ray_seconds, "same": same, "rows": local_summary.rows}


def main() -> None:
    if not torch.cuda.is_available():  # `make bench` runs every script: on a CPU machine this one has nothing to do
        print("no CUDA device here: nothing measured, the gpu section of RESULTS.md left as it was")
        return
    from scale import generate
    from tensor_stages import inference

    gpu = torch.cuda.get_device_name(0)
    ours, raw, ratio = inference("cuda")
    print(f"tensor inference on {gpu}: release-kit {ours:,.0f} images/s, raw loop {raw:,.0f} images/s, ratio {ratio:.2f}")
    figures = streamed(generate(ROWS))
    print(figures)
    ratio_streamed = median(figures["ratios"])
    write_section(
        "gpu",
        f"CUDA paths on {gpu}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}); this section is written only where a GPU is (`benchmarks/gpu.py`).\n\n"
        "| part | release-kit | raw loop | ratio |\n|---|---:|---:|---:|\n"
        f"| tensor golden set: shape-classifier CNN, 20,000 images, batches of 256, pinned memory and non-blocking copies (median of 5, alternating) "
        f"| {ours:,.0f} images/s | {raw:,.0f} images/s | {ratio:.2f}× |\n"
        f"| streamed Parquet: {figures['rows']:,} rows × 10 features, both MLPs (10 → 32 → 1) on CUDA, local engine with the quality statistics "
        f"(median of {ROUNDS}, alternating) | {figures['local']:.2f} s | {figures['raw']:.2f} s | {ratio_streamed:.2f}× "
        f"(rounds {figures['ratios'][0]:.2f}–{figures['ratios'][-1]:.2f}) |\n\n"
        f"Ray engine on the same files, 2 actors sharing the GPU (`device = \"auto\"`, local Ray started by the run): "
        f"{figures['ray']:.1f} s ({figures['ray'] / figures['local']:.2f}× the local engine's wall time, Ray's start included); "
        f"exact metrics equal to the local engine's to 1e-9 relative: {'yes' if figures['same'] else 'NO'}.",
    )


if __name__ == "__main__":
    main()
