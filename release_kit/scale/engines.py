"""The engines: the pure per-batch reduction (:func:`reduce_batch`), run in this process over record batches
(:func:`run_local`) or on Ray Data with an actor pool that holds both models once per actor (:func:`run_ray`).
Both give the same :class:`~release_kit.scale.stats.ScanSummary`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, first_line
from .stats import (
    KEY_COLUMNS, BottomK, ChangeSketch, ColumnCounts, ContractCounts, Moments, PairedChanges, RowVectors, ScanSummary, ScoreHistogram, WorstRows,
    key_threshold, row_keys, streamed_metrics,
)

if TYPE_CHECKING:
    from ..config import ModelSpec
    from ..drift import Bins
    from ..paired import SliceBins
    from ..models import LoadedModel
    from .source import ParquetSource

SUMMARY_PART_ROWS = 131_072  # rows summarized at a time (see summarize_batch)
Progress = Callable[[int, float], None]  # (rows so far, seconds so far)


@dataclass(frozen=True)
class ScanPlan:
    """What each batch needs: the model spec, the columns each model reads, and the sample's size."""

    spec: ModelSpec
    features: dict[str, tuple[str, ...]]  # role → its feature columns, in its order
    sample_rows: int
    total_rows: int = 0  # rows the source holds (from its metadata): sets each batch's share of the sample
    # Feature → its drift bins, fixed by the reference (the data stage's drift check with a table reference).
    drift_bins: dict[str, Bins] = field(default_factory=dict)
    worst_rows: int = 0  # the outlier stage's top_n: the worst rows and the changes' sketch (0: not needed)
    # Feature → its slice bins, fixed from the first rows (the outlier stage's slices over every row), and
    # the pairs of features whose joint tables are summed too.
    slice_bins: dict[str, SliceBins] = field(default_factory=dict)
    slice_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> list[str]:
        names = dict.fromkeys(c for cols in self.features.values() for c in cols)
        return [*names, self.spec.target]


@dataclass(frozen=True)
class FeatureColumns:
    """A feature matrix kept as its columns. Rows taken by index (the sample's, the worst rows') are stacked
    then; the whole matrix only when asked for (``np.asarray``)."""

    columns: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def stacked(self, rows=slice(None)) -> np.ndarray:
        """The rows (a slice or indices) as one float32 (rows, features) matrix: a model's input."""
        return np.stack([c[rows] for c in self.columns], axis=1).astype(np.float32, copy=False)

    def __getitem__(self, rows):
        """A slice stays columns (views); rows by index are stacked."""
        if isinstance(rows, slice):
            return FeatureColumns(tuple(c[rows] for c in self.columns))
        return self.stacked(rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        matrix = self.stacked()
        return matrix if dtype is None else matrix.astype(dtype, copy=False)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


@dataclass
class ScoredBatch:
    """One batch after both models ran on it: what :func:`summarize_batch` reduces."""

    rows: int  # rows read, excluded ones included
    counts: ColumnCounts
    bad: dict[str, np.ndarray]  # column → its rows excluded (bad values), only the columns that have some
    excluded_mask: np.ndarray | None
    frame: dict[str, np.ndarray]  # each column, the rows kept
    target: np.ndarray
    inputs: dict[str, FeatureColumns]  # role → its input matrix, kept as its columns
    outputs: dict[str, np.ndarray]  # role → its predictions

    def part(self, start: int, stop: int) -> ScoredBatch:
        """Rows ``start:stop`` of the rows kept (views, no copy); the batch's counts stay with the batch."""
        target = self.target[start:stop]
        return ScoredBatch(
            len(target), self.counts, self.bad, self.excluded_mask,
            {name: values[start:stop] for name, values in self.frame.items()}, target,
            {role: matrix[start:stop] for role, matrix in self.inputs.items()},
            {role: output[start:stop] for role, output in self.outputs.items()},
        )


def reduce_batch(plan: ScanPlan, models: dict[str, LoadedModel], table) -> ScanSummary:
    """One batch (a pyarrow RecordBatch or Table) → its mergeable statistics. Pure: no state between batches."""
    return summarize_batch(plan, score_batch(plan, models, table))


def score_batch(plan: ScanPlan, models: dict[str, LoadedModel], table) -> ScoredBatch:
    """Read the batch's columns, count and exclude bad values, run both models on the rows kept."""
    from ..models import to_predictions

    spec = plan.spec
    frame = {name: table.column(name).to_numpy(zero_copy_only=False) for name in plan.columns}
    counts = ColumnCounts()
    masks = {}  # only the columns that have bad values: most batches have none, and skip every mask pass
    for name, values in frame.items():
        if values.dtype.kind not in "fiu":
            raise InputError(f"golden column '{name}' is not numeric")
        mask = counts.add(name, values)
        if mask is not None:
            masks[name] = mask
    target = frame[spec.target].astype(np.float64)
    bad = {name: masks[name] for name in plan.features["candidate"] if name in masks}
    bad_target = masks.get(spec.target)
    if spec.task == "classification":
        with np.errstate(invalid="ignore"):
            impossible = (target < 0) | (target != np.floor(target))
        if impossible.any():
            bad_target = impossible if bad_target is None else bad_target | impossible
    if bad_target is not None:
        bad[spec.target] = bad_target
    rows = len(target)
    excluded_mask = np.logical_or.reduce(list(bad.values())) if bad else None
    if excluded_mask is not None:
        keep = ~excluded_mask
        frame = {name: values[keep] for name, values in frame.items()}
        target = target[keep]
    if spec.task == "classification":
        target = target.astype(np.int64)
    n_classes = int(target.max()) + 1 if spec.task == "classification" and len(target) else None
    # Each model call's input is stacked from the columns just before the call, not the batch's whole
    # matrix first: a 65,536-row input stays in cache between its stacking and both models reading it,
    # where a 1,000,000-row matrix is written to memory and read back (measured: scoring a 1,000,000-row
    # batch of two small MLPs ~9 % faster).
    inputs = {role: FeatureColumns(tuple(frame[c] for c in plan.features[role])) for role in models}
    raw: dict[str, list[np.ndarray]] = {role: [] for role in models}
    size = min(model.batch_size for model in models.values())
    for start in range(0, max(len(target), 1), size):  # a batch whose rows were all excluded: one empty call
        stacked: dict[tuple[str, ...], np.ndarray] = {}  # both models on the same columns share one input
        for role, model in models.items():
            columns = plan.features[role]
            if columns not in stacked:
                stacked[columns] = inputs[role].stacked(slice(start, start + size))
            raw[role].append(model.raw_outputs(stacked[columns]))
    outputs = {role: to_predictions(_joined(parts), spec, role, n_classes) for role, parts in raw.items()}
    return ScoredBatch(rows, counts, bad, excluded_mask, frame, target, inputs, outputs)


def summarize_batch(plan: ScanPlan, scored: ScoredBatch) -> ScanSummary:
    """A scored batch → its mergeable statistics. Pure numpy: no model runs here, so the local engine runs it
    for one batch while the models score the next.

    The rows are summarized in parts of ``SUMMARY_PART_ROWS``: each pass over a part's float64 intermediates
    (1 MiB) stays in the CPU's cache instead of streaming 8 MB arrays through memory, which the models
    running beside it need too (measured: the every-stage scan ~10 % faster)."""
    used = len(scored.target)
    summary: ScanSummary | None = None
    for start in range(0, max(used, 1), SUMMARY_PART_ROWS):
        part = _summarize_rows(plan, scored.part(start, start + SUMMARY_PART_ROWS))
        summary = part if summary is None else summary.merge(part)
    candidate, baseline = scored.outputs["candidate"], scored.outputs.get("baseline")
    scores = None
    if plan.spec.task == "classification" and baseline is not None and baseline.shape == candidate.shape and used:
        # Once per batch, not per part: its counts are 2 × 2 × 8,194 per class, megabytes for many classes.
        scores = ScoreHistogram.of(scored.target, candidate, baseline)
    excluded = {c: int(m.sum()) for c, m in scored.bad.items()}
    excluded_rows = int(scored.excluded_mask.sum()) if scored.excluded_mask is not None else 0
    return replace(summary, rows=scored.rows, excluded=excluded, excluded_rows=excluded_rows, counts=scored.counts, scores=scores)


def _summarize_rows(plan: ScanPlan, scored: ScoredBatch) -> ScanSummary:
    """The statistics of the rows kept (the batch's counts and exclusions are :func:`summarize_batch`'s)."""
    spec, frame, target, inputs = plan.spec, scored.frame, scored.target, scored.inputs
    candidate, baseline = scored.outputs["candidate"], scored.outputs.get("baseline")
    quality: dict[str, Moments] = {}
    classes = candidate.shape[1] if candidate.ndim == 2 else 0
    if baseline is not None and len(target):
        vectors = RowVectors(target, candidate, baseline)
        for metric in streamed_metrics(spec.task, classes):
            quality[metric] = Moments.of(vectors(metric))
    arrays = {"features": inputs["candidate"], "target": target, "candidate": candidate}
    if baseline is not None:
        arrays["baseline"] = baseline
        if plan.features["baseline"] != plan.features["candidate"]:
            arrays["baseline_features"] = inputs["baseline"]
    # Drift and slices count the float32 values the models read, as the in-memory checks do: contiguous
    # columns (the input matrix's are strided, and every pass would pay for it).
    values = {name: frame[name].astype(np.float32, copy=False) for name in {*plan.drift_bins, *plan.slice_bins}}
    drift = {name: bins.counts(values[name]) for name, bins in plan.drift_bins.items()}
    below = key_threshold(plan.sample_rows, plan.total_rows) if plan.total_rows else None
    keys = row_keys([frame[c] for c in plan.features["candidate"][:KEY_COLUMNS]], target)
    sample = BottomK.of(plan.sample_rows, keys, arrays, below)
    contract = ContractCounts.of(spec, keys, arrays) if len(target) else None
    changes, slices, pairs = None, {}, {}
    if baseline is not None and (plan.worst_rows or plan.slice_bins) and len(target):
        from ..paired import SliceTables, per_sample_loss

        loss_b = per_sample_loss(spec.task, target, baseline)
        delta = per_sample_loss(spec.task, target, candidate) - loss_b
        if plan.worst_rows:
            changes = _paired_changes(spec.task, plan.worst_rows, delta, target, candidate, baseline, keys, arrays)
        if plan.slice_bins:
            binnings = [bins.binning(values[name]) for name, bins in plan.slice_bins.items()]
            tables = SliceTables(binnings, (delta, delta * delta, loss_b), together=plan.slice_pairs)
            slices = {name: (bins, tables.marginal(name)) for name, bins in plan.slice_bins.items()}
            pairs = {(a, b): tables.pair(a, b) for a, b in plan.slice_pairs}
    return ScanSummary(
        rows=len(target), excluded={}, excluded_rows=0, quality=quality, counts=ColumnCounts(), sample=sample,
        classes=classes, drift=drift, changes=changes, slices=slices, slice_pairs=pairs, contract=contract,
    )


def _paired_changes(task: str, worst_rows: int, delta, target, candidate, baseline, keys, arrays) -> PairedChanges:
    flips = None
    if task == "classification":
        right_c, right_b = candidate.argmax(axis=1) == target, baseline.argmax(axis=1) == target
        flips = np.array([int((right_b & ~right_c).sum()), int((right_c & ~right_b).sum())])
    return PairedChanges(ChangeSketch.of(delta), WorstRows.of(worst_rows, delta, keys, arrays), flips)


def run_local(source: ParquetSource, plan: ScanPlan, models: dict[str, LoadedModel], *, chunk_rows: int,
              max_rows: int | None = None, progress: Progress | None = None) -> ScanSummary:
    """Stream the batches through this process: peak memory is a few batches (read ahead, scored,
    summarized) and the sample, whatever the size.

    Two stages overlap: the models score a batch while a second thread summarizes the one before (numpy
    releases the GIL in its loops, torch in its ops). Models on the CPU get one core fewer than torch would
    take while the scan runs, the core the summarizing thread uses: torch's parallel regions wait for their
    slowest thread, and a thread sharing its core with the summaries is slow. Summaries are merged in batch
    order, so the numbers do not depend on the overlap."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    merged: ScanSummary | None = None
    pending = None

    def collect() -> None:
        nonlocal merged
        summary = pending.result()
        merged = summary if merged is None else merged.merge(summary)
        if progress is not None:
            progress(merged.rows, time.monotonic() - started)

    with _one_core_spared(any(m.device == "cpu" for m in models.values())), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-kit-summarize") as summarizer:
        for batch in source.batches(plan.columns, chunk_rows, max_rows):
            scored = score_batch(plan, models, batch)
            if pending is not None:
                collect()
            pending = summarizer.submit(summarize_batch, plan, scored)
        if pending is not None:
            collect()
    if merged is None:
        raise InputError(f"{source.name}: the golden set has no rows")
    return merged


@contextmanager
def _one_core_spared(cpu_models: bool) -> Iterator[None]:
    """torch's intra-op threads one fewer (at least one) for the block, restored after."""
    import torch

    threads = torch.get_num_threads()
    if not cpu_models or threads < 2:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Scorer:
    """A Ray actor: loads both models once (from bytes shipped by the driver, with the safe loaders) and
    reduces each batch it is given."""

    def __init__(self, plan: ScanPlan, shipped: dict, allow_pickle: bool, timeout: float | None, device: str) -> None:
        import tempfile
        from pathlib import Path

        import ray
        import torch

        from ..models import load_model

        # One intra-op thread per actor: the pool's actors share the machine's cores.
        torch.set_num_threads(1)
        self.plan = plan
        self.directory = tempfile.mkdtemp(prefix="release-kit-ray-")
        self.models = {}
        for role, (name, reference, factory) in shipped.items():
            path = Path(self.directory) / name
            path.write_bytes(ray.get(reference))
            self.models[role] = load_model(role, str(path), plan.spec, factory=factory, allow_pickle=allow_pickle, timeout=timeout)
            self.models[role].to_device(device)  # "cuda" on an actor Ray gave a GPU share

    def __call__(self, batch) -> dict:
        import pickle

        return {"summary": np.array([pickle.dumps(reduce_batch(self.plan, self.models, batch))], dtype=object)}


def run_ray(source: ParquetSource, plan: ScanPlan, models: dict[str, LoadedModel], *, chunk_rows: int,
            max_rows: int | None = None, address: str = "", workers: int | None = None, device: str = "auto",
            progress: Progress | None = None) -> ScanSummary:
    """Ray Data reads the same files; an actor pool (``workers`` actors, each holding both models) reduces the
    batches; the driver merges. ``address`` empty: a local Ray started here; else an existing cluster.
    ``device`` (``[inference] device``): with ``auto`` the actors share the cluster's GPUs when it has any;
    ``cuda`` requires them; ``cpu`` never uses them."""
    import pickle

    try:
        import ray
    except ImportError:
        raise InputError("[run] engine = \"ray\" needs Ray: pip install 'release-kit[ray]'") from None
    started = time.monotonic()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except Exception as error:  # an unreachable cluster, a bad address
            raise InputError(f"[run] ray_address {address!r}: cannot start or reach Ray: {first_line(error)}") from None
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # --max-rows takes the same prefix as the local engine
    context.enable_progress_bars = False
    shipped = {role: (model.file.name, ray.put(model.file.read_bytes()), model.factory) for role, model in models.items()}
    timeout = next(iter(models.values())).timeout
    dataset = ray.data.read_parquet([str(f) for f in source.files], columns=plan.columns)
    if max_rows is not None:
        dataset = dataset.limit(max_rows)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    pool = max(1, workers or int(cpus))
    # The pool's actors may not hold every CPU: Ray Data's file listing and read tasks need one to run
    # (else the execution waits forever). The CPUs are logical; the actors still share the cores.
    per_actor = min(1.0, max(cpus - 1.0, 0.1 * pool) / pool)
    gpus = float(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0.0
    if device == "cuda" and not gpus:
        if started_here:
            ray.shutdown()
        raise InputError("[inference] device = \"cuda\" but the Ray cluster has no GPU (use \"auto\" or \"cpu\")")
    # GPU actors when the cluster has GPUs: each actor a share of them (several actors may share one).
    gpu_share = {"num_gpus": min(1.0, gpus / pool)} if gpus else {}
    scored = dataset.map_batches(
        _Scorer, fn_constructor_args=(plan, shipped, any(m.allow_pickle for m in models.values()), timeout, "cuda" if gpus else "cpu"),
        batch_size=chunk_rows, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=per_actor,
        **gpu_share,
    )
    merged: ScanSummary | None = None
    try:
        for row in scored.iter_rows():
            summary = pickle.loads(row["summary"])  # produced by release-kit's own actors above
            merged = summary if merged is None else merged.merge(summary)
            if progress is not None:
                progress(merged.rows, time.monotonic() - started)
    except Exception as error:
        cause = _input_error_in(error, source.name)
        if cause is not None:
            raise InputError(cause) from None
        raise
    finally:
        if started_here:  # a Ray this run started ends with it (a cluster given by address is left alone)
            ray.shutdown()
    if merged is None:
        raise InputError(f"{source.name}: the golden set has no rows")
    return merged


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Fail fast on a cluster address nothing answers at: ``ray.init`` would retry for minutes."""
    import socket

    target = address.removeprefix("ray://")
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            return
    except (OSError, ValueError) as error:
        raise InputError(f"[run] ray_address {address!r}: nothing answers there ({error})") from None


def _input_error_in(error: BaseException, source: str) -> str | None:
    """A Ray task error whose cause is bad input, as its one line: release-kit's InputError (bad data, a
    failing model), or a read task's OSError / pyarrow error (a corrupt or unreadable file; Ray's error
    does not say which file, so the line names the golden set)."""
    import pyarrow as pa

    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(current, InputError):
            return str(current)
        cause = getattr(current, "cause", None)  # a RayTaskError wraps the task's own exception
        if not isinstance(cause, BaseException) and isinstance(current, (OSError, pa.ArrowException)) \
                and not isinstance(current, MemoryError):
            return f"{source}: cannot read Parquet data: {first_line(current)}"
        current = cause if isinstance(cause, BaseException) else current.__cause__
        seen += 1
    text = str(error)
    marker = "release_kit.errors.InputError: "
    if marker in text:
        return text.split(marker, 1)[1].splitlines()[0]
    return None
