"""How many rows a streamed scan holds at once, its batches' and its sample's, against the memory available:
decided before the scan starts, so that a wide golden set (hundreds of feature columns) scans in smaller
batches, or is refused naming the key to lower, instead of the kernel killing the job (no exit code of ours).

The sample's size is never changed here: the checks that run on it (drift tests, expectation suites, the
slices' discovery) would then decide differently on another machine. The batches' size is lowered when
``[run] chunk_rows`` was left at its default, to a multiple of ``BATCH_ALIGNMENT_ROWS``, which changes no number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..files import byte_size

# Measured (benchmarks/scan_memory.py, RESULTS.md): the peak RSS of `release-kit check` (every default stage,
# tracking on) over batch and sample sizes, per row of each, against the row's bytes as estimated here
# (ScanRowBytes). A batch's rows took up to 2.7× their bytes (read ahead, prepared, scored, summarized, and
# each one's share of the sample), up to 4.2× on a set of 6,000,000 float64 rows; a sample's rows up to 4.4×,
# 5.3× on that set (its parts before a compaction, the compaction, the golden set and the frames built from
# it), 3.4× since its compaction takes a column at a time (2026-12-06, 50 columns). A local Ray of two actors took ~5.6× per batch row (float64), ~2.8× an actor: each actor is a holder.
BATCH_COPIES = 4.5
SAMPLE_COPIES = 5.5
HEADROOM_BYTES = 256 << 20  # for what runs after the scan besides the sample's copies (GX, pytest, MLflow)
MIN_CHUNK_ROWS = 65_536  # the smallest batch a default is lowered to: numpy's passes still pay off there
MIN_SAMPLE_ROWS = 100  # the least [run] sample_rows takes
# A matrix product computes its rows in blocks (8 to 64 rows, by kernel; a batch split among threads, a block
# each), the rows of a tail with other arithmetic: a model's output for a row changed in its last bits (~1e-7,
# measured) in a batch of 1,234 rows against one of 30,000, and a 30,000-row set's MAE by 1.2e-9 relative in
# batches of 2,918. A lowered batch of a multiple of 64 rows, like the default (1,000,000), starts every block
# where the default's do, so every row is scored as at the default size and the numbers do not change.
BATCH_ALIGNMENT_ROWS = 64


@dataclass(frozen=True)
class ScanRowBytes:
    """Bytes one row takes in a batch (its columns as stored, the target as float64, both models' outputs)
    and in the sample (its columns as stored, the target as float64, the outputs, its key)."""

    batch: int
    sample: int


def chunk_rows_that_fit(name: str, *, chunk_rows: int, chunk_rows_set: bool, sample_rows: int, total_rows: int,
                        row_bytes: ScanRowBytes, available: int | None, batch_holders: int = 1) -> int:
    """The batch size to scan ``name`` with: ``chunk_rows``, or, when it was left at its default and the scan
    would not fit in ``available`` bytes, the largest that fits (not below ``MIN_CHUNK_ROWS``). An
    :class:`InputError` naming the key to lower when nothing does. ``batch_holders``: the processes on this
    machine that hold batches at once: 1 for the local engine, a local Ray's actors, none for a cluster's."""
    if available is None:
        return chunk_rows
    sample = min(sample_rows, total_rows) * row_bytes.sample * SAMPLE_COPIES
    per_batch_row = row_bytes.batch * BATCH_COPIES * batch_holders

    def needed(rows: int) -> float:
        return HEADROOM_BYTES + sample + min(rows, total_rows) * per_batch_row

    if needed(chunk_rows) <= available:
        return chunk_rows
    smallest = chunk_rows if chunk_rows_set else min(chunk_rows, MIN_CHUNK_ROWS)
    if not chunk_rows_set:
        room = (available - needed(0)) / per_batch_row if per_batch_row else chunk_rows
        aligned = math.floor(room) // BATCH_ALIGNMENT_ROWS * BATCH_ALIGNMENT_ROWS
        fitting = max(smallest, min(chunk_rows, aligned))
        if needed(fitting) <= available:
            return fitting
    advice = _advice(available - HEADROOM_BYTES, sample, chunk_rows, chunk_rows_set, total_rows, per_batch_row,
                     row_bytes.sample * SAMPLE_COPIES)
    raise InputError(
        f"{name}: streaming it in batches of {min(smallest, total_rows):,} rows of ~{row_bytes.batch:,} bytes with a "
        f"sample of {min(sample_rows, total_rows):,} rows needs ~{byte_size(int(needed(smallest)))}, more than the memory "
        f"available ({byte_size(available)}): {advice}"
    )


def _advice(room: float, sample: float, chunk_rows: int, chunk_rows_set: bool, total_rows: int, per_batch_row: float,
            per_sample_row: float) -> str:
    """What to set so that a scan fits in ``room`` bytes (``sample``: the configured sample's bytes; the bytes a
    row takes in this machine's batches, and in the sample): a smaller explicit chunk_rows when the sample
    fits; else a smaller sample beside batches at the floor; else both."""
    holds_batches = per_batch_row > 0
    if chunk_rows_set and holds_batches and (rows := math.floor((room - sample) / per_batch_row)) >= 1:
        return f"set [run] chunk_rows = {rows} or fewer"
    batch_rows = min(chunk_rows, MIN_CHUNK_ROWS, total_rows) if holds_batches else 0
    fewer = math.floor((room - batch_rows * per_batch_row) / per_sample_row)
    if fewer >= MIN_SAMPLE_ROWS:
        both = f" and chunk_rows = {batch_rows}" if chunk_rows_set and chunk_rows > batch_rows else ""
        return f"set [run] sample_rows = {fewer}{both} or fewer"
    rows, fewer = math.floor(room / 2 / per_batch_row), math.floor(room / 2 / per_sample_row)
    if holds_batches and rows >= 1 and fewer >= MIN_SAMPLE_ROWS:
        return f"set [run] chunk_rows = {rows} and sample_rows = {fewer} or fewer"
    return "run it on a machine with more memory, or with fewer columns"
