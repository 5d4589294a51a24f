"""Tensor golden sets (issue #16).

1. Golden-set inference throughput of the shape-classifier CNN on 20,000 images (N, 1, 32, 32), through
   ``LoadedModel.raw_outputs`` (batches of 256, the deadline watchdog, output checks) vs a raw batched
   ``torch.inference_mode`` loop over the same tensors. Measured side by side, alternating, median of 5.
   Goal ≥ 0.9× on CPU (and on a GPU, with pinned memory and non-blocking copies, when one is here).
2. The outlier stage's analysis on 1,000,000 samples with 20 metadata columns and 100 classes: newly broken,
   prediction shift, moved region, slices over the metadata, class recall/precision. Predictions given
   (inference is part 1); the robustness search runs within its own time budget ([outliers.search] seconds)
   and is left out. Goal ≤ 3 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _results import median, write_section

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "shape-classifier"))

import shapes  # noqa: E402

IMAGES = 20_000
BATCH = 256
SAMPLES = 1_000_000
COLUMNS = 20
CLASSES = 100


def inference(device: str) -> tuple[float, float, float]:
    """(release-kit images/s, raw loop images/s, ratio) on ``device``."""
    from release_kit.models import LoadedModel

    torch.manual_seed(0)
    module = torch.jit.script(shapes.ShapeCNN(8).eval())
    images = np.random.default_rng(0).random((IMAGES, 1, 32, 32), dtype=np.float32)
    model = LoadedModel("candidate", "bench", "torchscript", Path("bench.pt"), "", module, batch_size=BATCH, timeout=300)
    model.to_device(device)
    tensor = torch.from_numpy(images)

    def ours() -> None:
        model.raw_outputs(images)

    def raw() -> None:
        outputs = []
        with torch.inference_mode():
            for batch in tensor.split(BATCH):
                if device == "cuda":
                    batch = batch.pin_memory().to(device, non_blocking=True)
                outputs.append(model.module(batch).to("cpu", torch.float64))
        torch.cat(outputs).numpy()

    ours(), raw()  # warm up (JIT profiling runs, allocator)
    timings: dict[str, list[float]] = {"ours": [], "raw": []}
    for _ in range(5):
        for name, function in (("ours", ours), ("raw", raw)):
            started = time.perf_counter()
            function()
            if device == "cuda":
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - started)
    ours_rate, raw_rate = IMAGES / median(timings["ours"]), IMAGES / median(timings["raw"])
    return ours_rate, raw_rate, ours_rate / raw_rate


def outlier_context():
    """A GateContext with 1M samples' predictions and metadata, and a regression confined to one class."""
    from release_kit.config import Config
    from release_kit.context import GateContext, Predictions
    from release_kit.data import GoldenSet

    rng = np.random.default_rng(0)
    target = rng.integers(0, CLASSES, SAMPLES)

    def probabilities(accuracy: np.ndarray) -> np.ndarray:
        logits = rng.normal(size=(SAMPLES, CLASSES)).astype(np.float64)
        right = rng.random(SAMPLES) < accuracy
        logits[np.flatnonzero(right), target[right]] += 4.0
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    accuracy = np.full(SAMPLES, 0.9)
    baseline = probabilities(accuracy)
    accuracy[target == 37] = 0.5  # the candidate broke class 37
    candidate = probabilities(accuracy)
    metadata = pd.DataFrame({f"m{j}": rng.normal(size=SAMPLES).astype(np.float32) for j in range(COLUMNS - 2)})
    metadata["site"] = rng.choice(["north", "south", "east", "west"], SAMPLES)
    metadata["camera"] = rng.integers(0, 6, SAMPLES)
    golden = GoldenSet("bench.npz", metadata, (np.zeros((SAMPLES, 1), np.float32),), target, "", tabular=False, input_names=("inputs",))
    config = Config.model_validate({"model": {"name": "bench", "task": "classification", "prediction": "probabilities"}})
    return GateContext(config, HERE, None, None, golden, Predictions(candidate, baseline))


def outlier_analysis(gate) -> list:
    from release_kit.stages import Once, outliers

    losses = Once(lambda: outliers.per_sample_losses(gate))
    return [
        outliers.newly_broken(gate, losses), outliers.prediction_shift(gate), outliers.moved_region(gate),
        outliers.discovered_slices(gate, losses), outliers.class_slices(gate),
    ]


def main() -> None:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        ours, raw, ratio = inference(device)
        rows.append(f"| {device} ({torch.get_num_threads()} threads) | {ours:,.0f} | {raw:,.0f} | {ratio:.2f}× |")
        print(f"inference on {device}: release-kit {ours:,.0f} images/s, raw loop {raw:,.0f} images/s, ratio {ratio:.2f}")

    gate = outlier_context()
    outlier_analysis(gate)  # warm imports out of the figure
    times = []
    for _ in range(3):
        started = time.perf_counter()
        results = outlier_analysis(gate)
        times.append(time.perf_counter() - started)
    seconds = median(times)
    classes = next(r for r in results if r.name == "classes")
    print(f"outlier analysis: {seconds:.2f} s; classes: {classes.summary}")
    worst_ratio = min(float(r.split("|")[4].strip().rstrip("×")) for r in rows)
    write_section(
        "tensor_stages",
        "Tensor golden sets: inference throughput and the outlier stage at 1M samples",
        "Golden-set inference, shape-classifier CNN, 20,000 images (N, 1, 32, 32), batches of 256 "
        "(median of 5, alternating):\n\n| device | release-kit (images/s) | raw `inference_mode` loop (images/s) | ratio |\n"
        "|---|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Goal ≥ 0.9×: {'met' if worst_ratio >= 0.9 else 'NOT met'}. No GPU on this machine: the CUDA row appears when the script runs on one.\n\n"
        f"Outlier stage analysis, {SAMPLES:,} samples × {COLUMNS} metadata columns × {CLASSES} classes (newly broken, "
        f"prediction shift, moved region, metadata slices, class recall/precision; predictions given, robustness "
        f"search excluded: it runs within its own time budget): **{seconds:.2f} s** (median of 3). "
        f"Goal ≤ 3 s: {'met' if seconds <= 3 else 'NOT met'}.  \nInjected regression found: `{classes.summary[:160]}…`",
    )


if __name__ == "__main__":
    main()
