"""The pure per-batch reduction that every engine runs: a batch read and checked (:func:`prepare_batch`), both
models run on its rows kept (:func:`run_models`), and the result reduced into mergeable statistics
(:func:`summarize_batch`). No state between batches: the engines only choose where each step runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .source import arrow_kind
from .stats import (
    KEY_COLUMNS, BottomK, ChangeSketch, ColumnCounts, ContractCounts, Moments, PairedChanges, RowVectors, ScanSummary, ScoreHistogram,
    ValueCondition, ValueSet, WorstRows, key_threshold, row_keys, streamed_moments,
)

if TYPE_CHECKING:
    from ..config import ModelSpec
    from ..drift import Bins
    from ..models import LoadedModel
    from ..paired import SliceBins

SUMMARY_PART_ROWS = 131_072  # rows summarized at a time (see summarize_batch)


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
    # The golden set's other columns, of any type, as a golden set read whole has them (the data stage
    # validates every column; declared slices and user checks read any): kept in the sample and counted
    # (nulls, a numeric column's range), never checked, and no row is excluded for them.
    carried: tuple[str, ...] = ()
    # Column → the data stage's ranges and sets whose exceptions are counted over every row (GX's ``mostly``
    # needs the count, not only the column's minimum and maximum).
    value_conditions: dict[str, tuple[ValueCondition, ...]] = field(default_factory=dict)
    # The numeric columns whose mean, standard deviation or sum the data stage's suites expect: their
    # ValueMoments are summed over every row.
    moment_columns: frozenset[str] = frozenset()

    @property
    def columns(self) -> list[str]:
        """The columns the models and the statistics read: numeric, counted and checked."""
        names = dict.fromkeys(c for cols in self.features.values() for c in cols)
        return [*names, self.spec.target]

    @property
    def read_columns(self) -> list[str]:
        """Every column a batch is read with: :attr:`columns`, then the carried ones."""
        columns = self.columns
        return [*columns, *(c for c in self.carried if c not in columns)]


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


@dataclass(frozen=True)
class PreparedBatch:
    """One batch read and checked: its counts over every row, the rows excluded (bad values) and the columns
    of the rows kept, what both models read."""

    rows: int  # rows read, excluded ones included
    counts: ColumnCounts
    bad: dict[str, np.ndarray]  # column → its rows excluded (bad values), only the columns that have some
    excluded_mask: np.ndarray | None
    frame: dict[str, np.ndarray]  # each column, the rows kept
    target: np.ndarray  # float64; int64 for classification
    carried: dict[str, np.ndarray] = field(default_factory=dict)  # the plan's carried columns, the rows kept


@dataclass(frozen=True)
class KeptRows:
    """The rows kept of a batch with both models' outputs: what the statistics of rows reduce."""

    frame: dict[str, np.ndarray]
    target: np.ndarray
    inputs: dict[str, FeatureColumns]  # role → its input matrix, kept as its columns
    outputs: dict[str, np.ndarray]  # role → its predictions
    carried: dict[str, np.ndarray] = field(default_factory=dict)

    def part(self, start: int, stop: int) -> KeptRows:
        """Rows ``start:stop`` (views, no copy)."""
        return KeptRows(
            {name: values[start:stop] for name, values in self.frame.items()}, self.target[start:stop],
            {role: matrix[start:stop] for role, matrix in self.inputs.items()},
            {role: output[start:stop] for role, output in self.outputs.items()},
            {name: values[start:stop] for name, values in self.carried.items()},
        )


@dataclass(frozen=True)
class ScoredBatch:
    """One batch after both models ran on it: what :func:`summarize_batch` reduces."""

    prepared: PreparedBatch
    kept: KeptRows

    @classmethod
    def of(cls, plan: ScanPlan, prepared: PreparedBatch, outputs: dict[str, np.ndarray]) -> ScoredBatch:
        return cls(prepared, KeptRows(prepared.frame, prepared.target, model_inputs(plan, prepared.frame, outputs), outputs,
                                      prepared.carried))


def reduce_batch(plan: ScanPlan, models: dict[str, LoadedModel], table) -> ScanSummary:
    """One batch (a pyarrow RecordBatch or Table) → its mergeable statistics. Pure: no state between batches."""
    return summarize_batch(plan, score_batch(plan, models, table))


def score_batch(plan: ScanPlan, models: dict[str, LoadedModel], table) -> ScoredBatch:
    """Read and check the batch, run both models on the rows kept."""
    prepared = prepare_batch(plan, table)
    return ScoredBatch.of(plan, prepared, run_models(plan, models, prepared.frame, prepared.target))


def prepare_batch(plan: ScanPlan, table) -> PreparedBatch:
    """Read the batch's columns, count them, and exclude the rows with bad values (NaN/inf, impossible
    classes)."""
    spec = plan.spec
    frame = {name: _numbers(table.column(name)) for name in plan.columns if name != spec.target}
    frame[spec.target] = _target(table.column(spec.target), spec)
    if frame[spec.target].dtype.kind == "b":  # labels stored as booleans are classes 0 and 1, as in memory
        frame[spec.target] = frame[spec.target].astype(np.int64)
    counts = ColumnCounts()
    masks = {}  # only the columns that have bad values: most batches have none, and skip every mask pass
    read_as_float32 = {c for cols in plan.features.values() for c in cols}
    float32_max = float(np.finfo(np.float32).max)
    for name, values in frame.items():
        if values.dtype.kind not in "fiu":
            raise InputError(f"golden column '{name}' is not numeric")
        # A feature the models read as float32: a float64 value beyond its range is excluded, as in memory.
        limit = float32_max if name in read_as_float32 and values.dtype.kind == "f" and values.dtype.itemsize > 4 else None
        mask = counts.add(name, values, limit, plan.value_conditions.get(name, ()), name in plan.moment_columns)
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
    carried = {name: table.column(name).to_numpy(zero_copy_only=False) for name in plan.carried if name not in frame}
    for name, values in carried.items():  # counted over every row too (nulls, a numeric column's range); no row excluded
        conditions = plan.value_conditions.get(name, ())
        if values.dtype.kind in "fiu":
            counts.add(name, values, conditions=conditions, moments=name in plan.moment_columns)
        elif values.dtype.kind in "Mm":  # times: GX parses a set's text as times, on the sample
            counts.add_other(name, table.column(name))
        else:
            counts.add_other(name, table.column(name), tuple(c for c in conditions if isinstance(c, ValueSet)))
    excluded_mask = np.logical_or.reduce(list(bad.values())) if bad else None
    if excluded_mask is not None:
        keep = ~excluded_mask
        frame = {name: values[keep] for name, values in frame.items()}
        carried = {name: values[keep] for name, values in carried.items()}
        target = target[keep]
    if spec.task == "classification":
        target = target.astype(np.int64)
    return PreparedBatch(rows, counts, bad, excluded_mask, frame, target, carried)


def _target(column, spec) -> np.ndarray:
    """The target's values; class labels stored as text are their ids in ``[model] classes`` (a null is NaN),
    as when the set is read whole."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (spec.task == "classification" and spec.classes and arrow_kind(column.type).endswith("text")):
        return _numbers(column)
    # Categories and string views as plain text: index_in takes no string view.
    kind = column.type if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else pa.string()
    labels = column if column.type == kind else column.cast(kind)
    ids = pc.index_in(labels, value_set=pa.array(spec.classes, kind))
    unknown = pc.and_(pc.is_null(ids), pc.is_valid(labels))
    if pc.any(unknown).as_py():
        from ..data import unknown_labels

        counted = pc.value_counts(pc.filter(labels, unknown))
        counts = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
        raise InputError(f"golden column '{spec.target}' has {unknown_labels(counts)} in this batch, not in [model] classes "
                         f"({', '.join(spec.classes)})")
    return ids.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _numbers(column) -> np.ndarray:
    """A numeric column's values; a null is NaN (an excluded row, as in memory); booleans are 0 and 1."""
    import pyarrow as pa

    if pa.types.is_boolean(column.type):
        column = column.cast(pa.float64() if column.null_count else pa.float32())
    return column.to_numpy(zero_copy_only=False)


def model_inputs(plan: ScanPlan, frame: dict[str, np.ndarray], roles) -> dict[str, FeatureColumns]:
    """Each role's input matrix, kept as the frame's columns in its feature order."""
    return {role: FeatureColumns(tuple(frame[c] for c in plan.features[role])) for role in roles}


def run_models(plan: ScanPlan, models: dict[str, LoadedModel], frame: dict[str, np.ndarray], target: np.ndarray) -> dict[str, np.ndarray]:
    """Both models on the rows kept (``frame``'s feature columns): role → its predictions."""
    import torch

    from ..models import ModelOutputs, to_predictions

    spec = plan.spec
    rows = len(target)
    n_classes = int(target.max()) + 1 if spec.task == "classification" and rows else None
    # Each model call's input is stacked from the columns just before the call, not the batch's whole
    # matrix first: a call's input (models.table_call_rows) stays in cache between its stacking and both
    # models reading it, where a 1,000,000-row matrix is written to memory and read back (measured: scoring
    # a 1,000,000-row batch of two small MLPs ~9 % faster).
    inputs = model_inputs(plan, frame, models)
    outputs = {role: ModelOutputs(model, rows) for role, model in models.items()}
    # Both models on the same columns read one input, uncopied, the candidate last: a candidate that writes
    # into its input changes what no one reads after it. The baseline reads first; an in-place op of its own
    # (a moved version counter) has the input stacked again for the candidate. A copy for the first reader
    # (its rows × features floats a call) cost ~5 % of the scoring (measured on the scale benchmark's MLPs:
    # 60 against 57 ns per row).
    order = sorted(models, key=lambda role: role == "candidate")
    size = min(model.batch_size for model in models.values())
    with torch.inference_mode():
        for start in range(0, max(rows, 1), size):  # a batch whose rows were all excluded: one empty call
            stacked: dict[tuple[str, ...], torch.Tensor] = {}
            for role in order:
                columns = plan.features[role]
                tensor = stacked.get(columns)
                if tensor is None or tensor._version:
                    stacked[columns] = tensor = _version_tracked(inputs[role].stacked(slice(start, start + size)))
                outputs[role].add(tensor)
    return {role: to_predictions(output.array, spec, role, n_classes) for role, output in outputs.items()}


def _version_tracked(array: np.ndarray):
    """The array as a CPU tensor whose version counter moves when a model writes into it: made outside
    inference mode (an inference tensor has no counter)."""
    import torch

    with torch.inference_mode(False):
        return torch.from_numpy(array)


def summarize_batch(plan: ScanPlan, scored: ScoredBatch) -> ScanSummary:
    """A scored batch → its mergeable statistics. Pure numpy: no model runs here, so the local engine runs it
    on its helper thread while the models score the next batch.

    The rows are summarized in parts of ``SUMMARY_PART_ROWS``: each pass over a part's float64 intermediates
    (1 MiB) stays in the CPU's cache instead of streaming 8 MB arrays through memory, which the models
    running beside it need too (measured: the every-stage scan ~10 % faster)."""
    prepared, kept = scored.prepared, scored.kept
    used = len(kept.target)
    summary: ScanSummary | None = None
    for start in range(0, max(used, 1), SUMMARY_PART_ROWS):
        part = _summarize_rows(plan, kept.part(start, start + SUMMARY_PART_ROWS))
        summary = part if summary is None else summary.merge(part)
    candidate, baseline = kept.outputs["candidate"], kept.outputs.get("baseline")
    scores = None
    if plan.spec.task == "classification" and baseline is not None and baseline.shape == candidate.shape and used:
        # Once per batch, not per part: its counts are 2 × 2 × 8,194 per class, megabytes for many classes.
        scores = ScoreHistogram.of(kept.target, candidate, baseline)
    excluded = {c: int(m.sum()) for c, m in prepared.bad.items()}
    excluded_rows = int(prepared.excluded_mask.sum()) if prepared.excluded_mask is not None else 0
    return replace(summary, rows=prepared.rows, excluded=excluded, excluded_rows=excluded_rows, counts=prepared.counts, scores=scores)


def _summarize_rows(plan: ScanPlan, kept: KeptRows) -> ScanSummary:
    """The statistics of the rows kept (the batch's counts and exclusions are :func:`summarize_batch`'s)."""
    spec, frame, target, inputs = plan.spec, kept.frame, kept.target, kept.inputs
    candidate, baseline = kept.outputs["candidate"], kept.outputs.get("baseline")
    quality: dict[str, Moments] = {}
    classes = candidate.shape[1] if candidate.ndim == 2 else 0
    if baseline is not None and len(target):
        quality = streamed_moments(spec.task, classes, RowVectors(target, candidate, baseline))
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
    # The sample keeps every column as the files store it (the data stage validates it so: an int64 feature
    # is no float32 there), the model columns included; their float32 matrix is stacked from them at the end.
    sampled = {name: values for name, values in arrays.items() if name != "features"}
    sampled.update({f"column:{name}": kept.frame[name] for name in plan.columns})
    sampled.update({f"column:{name}": values for name, values in kept.carried.items()})
    sample = BottomK.of(plan.sample_rows, keys, sampled, below)
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
