"""What a streamed scan's batches and sample cost in memory, per row, against the row's bytes as the gate
estimates them before a scan (``release_kit.scale.sizing``): the measurements behind ``BATCH_COPIES`` and
``SAMPLE_COPIES``.

`release-kit check` runs as users run it (a subprocess, every default stage, MLflow tracking on) on a wide
golden set, 50 feature columns × 4,000,000 rows, stored as float32 and as float64. The peak RSS of each
run is read from the kernel (``os.wait4``). Each size is varied from 1,000,000 rows to 250,000, once with the
other held small and once with it at 1,000,000 (the defaults): the peak is the larger of the scan's (batches,
and each batch's share of the sample) and the stages' after it (the sample's copies), so the two differ.

    rate = (peak at 1,000,000 rows − peak at 250,000) / 750,000 rows / a (batch or sample) row's bytes

A row's bytes are the gate's estimate: in a batch, its columns as stored, the target as float64 and both
models' outputs (float64); in the sample, its columns as stored, the target as float64, the outputs and
its key.

    python benchmarks/scan_memory.py     # ~4 minutes on two cores; data kept under benchmarks/.data/
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data" / "wide"
FEATURES = [f"f{i}" for i in range(50)]
ROWS = 4_000_000
FILES = 4
# (chunk_rows, sample_rows), each pair varying one size: the batches beside a small sample and beside the
# default one, the sample beside small batches and beside the default ones.
BATCHES = [(1_000_000, 100), (250_000, 100)]
BATCHES_JOINT = [(1_000_000, 1_000_000), (250_000, 1_000_000)]
SAMPLES = [(65_536, 1_000_000), (65_536, 250_000)]
SAMPLES_JOINT = [(1_000_000, 1_000_000), (1_000_000, 250_000)]


def generated(dtype: str) -> Path:
    """The data, generated (once) in a process of its own. A child's ``ru_maxrss`` counts its parent's peak
    (Linux hands it on): generated here, the data's ~1.3–1.9 GiB were every check's floor, and the peaks did
    not move with the batch size."""
    subprocess.run([sys.executable, __file__, "generate", dtype], check=True, cwd=HERE)
    return DATA / dtype


def generate(dtype: str) -> Path:
    """The golden set (``FILES`` Parquet files) and two 50 → 16 → 1 MLPs (TorchScript), once."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    folder = DATA / dtype
    if (folder / "_done").exists():
        return folder
    (folder / "golden").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=len(FEATURES))
    for index in range(FILES):
        x = rng.normal(size=(ROWS // FILES, len(FEATURES))).astype(dtype)
        y = x.astype(np.float64) @ weights + rng.normal(scale=0.1, size=len(x))
        columns = {name: x[:, j] for j, name in enumerate(FEATURES)}
        pq.write_table(pa.table({**columns, "y": y}), folder / "golden" / f"part-{index}.parquet", row_group_size=100_000)
    for seed, name in enumerate(("baseline.pt", "candidate.pt")):
        torch.manual_seed(seed)
        module = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 1), torch.nn.Flatten(0))
        torch.jit.save(torch.jit.script(module.eval()), str(folder / name))
    (folder / "_done").touch()
    return folder


def row_bytes(dtype: str) -> tuple[int, int]:
    """(a batch row's, a sample row's) bytes, as the gate estimates them for this set and a regressor pair."""
    width = np.dtype(dtype).itemsize
    outputs = 2 * 8
    stored = len(FEATURES) * width + 8  # every column as stored (the target y is float64)
    return stored + 8 + outputs, stored + 8 + outputs + 8


def peak_gib(folder: Path, chunk_rows: int, sample_rows: int) -> float:
    """`release-kit check` with these sizes, as users run it: its peak RSS in GiB."""
    config = f"""
[model]
name = "wide"
task = "regression"
target = "y"
features = {json.dumps(FEATURES)}

[baseline]
path = "{folder / 'baseline.pt'}"
version = "1.0.0"

[data]
golden = "{folder / 'golden'}"

[run]
chunk_rows = {chunk_rows}
sample_rows = {sample_rows}
"""
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "release-kit.toml").write_text(config)
        process = subprocess.Popen([sys.executable, "-m", "release_kit.cli", "check", "--candidate", str(folder / "candidate.pt")],
                                   cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):
            raise SystemExit(f"release-kit check exited {code}: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 2**20


def rate(peaks: dict, sizes: list[tuple[int, int]], row: int) -> float:
    """Memory per row of the size the pair varies (1,000,000 against 250,000 rows), in the row's bytes."""
    return (peaks[sizes[0]] - peaks[sizes[1]]) * 2**30 / 750_000 / row


def main() -> None:
    from _results import write_section

    from release_kit.scale.sizing import BATCH_COPIES, SAMPLE_COPIES

    rows = []
    for dtype in ("float32", "float64"):
        folder = generated(dtype)
        peaks = {sizes: peak_gib(folder, *sizes) for sizes in dict.fromkeys(BATCHES + BATCHES_JOINT + SAMPLES + SAMPLES_JOINT)}
        batch_row, sample_row = row_bytes(dtype)

        rates = [rate(peaks, BATCHES, batch_row), rate(peaks, BATCHES_JOINT, batch_row), rate(peaks, SAMPLES, sample_row),
                 rate(peaks, SAMPLES_JOINT, sample_row)]
        rows.append((dtype, peaks, batch_row, sample_row, rates))
        print(dtype, {k: round(v, 2) for k, v in peaks.items()}, "rates", [round(r, 2) for r in rates], flush=True)
    def pair(peaks, sizes):
        return f"{peaks[sizes[0]]:.2f} / {peaks[sizes[1]]:.2f} GiB"

    lines = ["| columns stored as | batches of 1,000,000 / 250,000 rows: peak RSS beside a 100-row sample; beside the "
             "1,000,000-row sample | batch rate, per a batch row's bytes (estimate) | a sample of 1,000,000 / 250,000 rows: peak "
             "RSS beside 65,536-row batches; beside 1,000,000-row batches | sample rate, per a sample row's bytes (estimate) |",
             "|---|---:|---:|---:|---:|"]
    for dtype, peaks, batch_row, sample_row, rates in rows:
        lines.append(f"| {dtype} | {pair(peaks, BATCHES)}; {pair(peaks, BATCHES_JOINT)} | {rates[0]:.1f}×; {rates[1]:.1f}× ({batch_row} B) "
                     f"| {pair(peaks, SAMPLES)}; {pair(peaks, SAMPLES_JOINT)} | {rates[2]:.1f}×; {rates[3]:.1f}× ({sample_row} B) |")
    covered = all(max(r[:2]) <= BATCH_COPIES and max(r[2:]) <= SAMPLE_COPIES for *_, r in rows)
    body = "\n".join(lines) + (
        f"\n\n`release-kit check` in a subprocess, every default stage, MLflow tracking on; {len(FEATURES)} feature columns × "
        f"{ROWS:,} rows in {FILES} Parquet files; two 50 → 16 → 1 MLPs. The gate estimates a scan's memory before it starts at "
        f"{BATCH_COPIES}× a batch row's bytes per row of `chunk_rows` and {SAMPLE_COPIES}× a sample row's per row of "
        f"`sample_rows` (plus a headroom), lowering a default `chunk_rows` to fit or refusing with the key to lower: "
        f"these rates {'are within' if covered else 'EXCEED'} those factors."
    )
    write_section("scan_memory", f"Streamed scan memory per row: {len(FEATURES)} columns × {ROWS:,} rows", body)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if len(sys.argv) > 1 and sys.argv[1] == "generate":
        generate(sys.argv[2])
    else:
        main()
