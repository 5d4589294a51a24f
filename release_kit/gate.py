"""The library API behind ``release-kit check``: :func:`check` is the one orchestrator.

:func:`prepare` reads and validates every input (config, models, golden data, model outputs, where the run
will be tracked) before any check runs, so bad input fails fast as an
:class:`~release_kit.errors.InputError` and nothing is written; :func:`run` then runs the stages and
decides; :func:`check` does both, with command-line overrides, and logs the run to MLflow. The CLI adds
only parsing and rendering.

    from release_kit import gate
    report = gate.check("release-kit.toml", candidate="models/candidate.pt", baseline="models/v1.pt")
"""

from __future__ import annotations

import datetime as dt
import math
from contextlib import closing, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, find_config, load_config, parse_tolerance
from .context import BatchProbe, GateContext, Predictions, baseline_inputs
from .errors import InputError
from .models import REGISTRY_SCHEMES
from .report import Report

if TYPE_CHECKING:
    from .engine import Listener
    from .scale.sizing import ScanRowBytes


def resolve_config(config: Config | str | Path | None, directory: Path | None = None) -> tuple[Config, Path]:
    """A Config object, a config file, or (None) the one found in ``directory``; and the project dir."""
    directory = Path(directory or Path.cwd())
    if isinstance(config, Config):
        return config, directory
    path = Path(config) if config is not None else find_config(directory)
    if path is None:
        raise InputError(f"no release-kit.toml or [tool.release-kit] in pyproject.toml under {directory}")
    return load_config(path), path.resolve().parent


def files_read(config: Config, config_file: Path | None = None, *, candidate: str | None = None, baseline: str | None = None,
               data: str | None = None) -> dict[Path, str]:
    """The files a gate run with these arguments reads, or writes besides its outputs, each with what it is
    (the config, both models, the golden set, the reference, …): what no output of the run may name. The
    arguments are :func:`check`'s; registry models and SQL sources are not files."""
    named = [
        (config_file, "the config the gate reads"),
        (candidate or config.candidate.path, "the candidate model the gate reads"),
        (None if baseline == "none" else baseline or config.baseline.path, "the baseline model the gate reads"),
        (config.baseline.fallback, "the fallback baseline the gate reads"),
        (data or config.data.golden, "the golden set the gate reads"),
        (config.data.metadata, "the golden set's metadata the gate reads"),
        (config.data.reference, "the reference data the gate reads"),
        (config.data.training, "the training data the gate reads"),
        (config.data.suites, "the expectation suites the gate reads"),
        (config.performance.stored_baseline, "the stored performance baseline the gate reads"),
        (config.performance.save_candidate, "the file the performance stage saves the candidate's measurements in"),
    ]
    files: dict[Path, str] = {}
    for source, role in named:
        if source and "://" not in str(source) and not str(source).startswith(REGISTRY_SCHEMES):
            files.setdefault(Path(source), role)
    return files


def with_overrides(
    config: Config,
    *,
    waivers: tuple[tuple[str, str, str], ...] = (),
    prerelease: str | None = None,
    build: str | None = None,
) -> Config:
    """Command-line waivers (check, reason, by) and version shaping on top of the config, validated alike."""
    from pydantic import ValidationError

    from .config import ReleaseSpec, Waiver

    try:
        extra = [Waiver(check=check, reason=reason, by=by) for check, reason, by in waivers]
        release = config.release
        if prerelease is not None or build is not None:
            release = ReleaseSpec.model_validate({
                **release.model_dump(),
                **({"prerelease": prerelease} if prerelease is not None else {}),
                **({"build": build} if build is not None else {}),
            })
    except ValidationError as error:
        first = error.errors()[0]
        raise InputError(f"--{'waive' if first['loc'][0] in ('check', 'reason', 'by') else first['loc'][0]}: {first['msg']}") from None
    return config.model_copy(update={"waivers": [*config.waivers, *extra], "release": release})


def prepare(
    config: Config,
    project_dir: Path,
    *,
    candidate: str | None = None,
    baseline: str | None = None,
    baseline_version: str | None = None,
    data: str | None = None,
    allow_pickle: bool = False,
    registry: bool = True,
    track: bool = False,
    progress=None,
) -> GateContext:
    """Load and validate every input. Arguments override the config's ``[candidate]``/``[baseline]``/``[data]``.

    ``registry=False``: the registry may not be used; a registry baseline is replaced by ``[baseline]
    fallback``, and without one (or for a registry candidate) :class:`RegistryUnavailable` is raised.
    ``track``: the run will be logged to MLflow, so its store must be writable now, not after the checks.
    """
    from .data import feature_matrix, load_golden
    from .models import inference_device, load_model, table_call_rows, to_predictions
    from .tracking import check_store_writable, released_versions, tracking_uri

    spec = config.model
    candidate_source = candidate or config.candidate.path
    if not candidate_source:
        raise InputError("no candidate model: pass --candidate or set [candidate] path")
    # "none" on the command line: no baseline at all, a first release, whatever the config names.
    baseline_source = None if baseline == "none" else baseline or config.baseline.path
    golden_source = data or config.data.golden
    dataset = None if data else config.data.dataset
    if not golden_source and not dataset:
        raise InputError("no golden data: pass --data or set [data] golden")
    if baseline_version is not None and not _is_semver(baseline_version):
        raise InputError(f"--baseline-version {baseline_version!r} is not a semantic version like 1.2.3")
    if not registry:
        # No baseline named: the released one is the registry's (the alias), which this run may not read.
        implicit = baseline is None and not config.baseline.path and config.mlflow.enabled and bool(config.release.alias)
        candidate_source, baseline_source, baseline_version = _without_registry(
            config, candidate_source, baseline_source, baseline_version, implicit_baseline=implicit
        )

    run_spec = config.run
    streamed = _streamed_source(config, golden_source, dataset)
    # A streamed set is hashed from now on, beside the imports, the store's opening and the models' loading
    # (paused while the scan runs); the threads stop if the run fails before it needs the digest.
    with streamed.hashing() if streamed is not None else nullcontext() as digest:
        golden = None
        if streamed is None:
            golden = load_golden(golden_source, spec, metadata=config.data.metadata, dataset=dataset, max_rows=run_spec.max_rows)
        uri = tracking_uri(config, project_dir) if config.mlflow.enabled and registry else None
        if baseline is None and not config.baseline.path and uri is not None:
            # No baseline named: the released version the alias points at, as a release would move it from.
            from .registry import alias_uri

            baseline_source = alias_uri(uri, spec.name, config.release.alias)
        if uri is not None and (track or any(s and s.startswith(REGISTRY_SCHEMES) for s in (candidate_source, baseline_source))):
            check_store_writable(uri)
        timeout = config.gate.model_timeout_seconds
        candidate_model = load_model(
            "candidate", candidate_source, spec, factory=config.candidate.factory,
            version=config.candidate.version, allow_pickle=allow_pickle, tracking_uri=uri, timeout=timeout,
        )
        baseline_model = None
        if baseline_source:
            baseline_model = load_model(
                "baseline", baseline_source, spec, factory=config.baseline.factory,
                version=baseline_version or config.baseline.version, allow_pickle=allow_pickle, tracking_uri=uri, timeout=timeout,
            )
        models = [m for m in (candidate_model, baseline_model) if m is not None]
        # A baseline released with other input features gets its own columns of the same golden rows.
        recorded = baseline_model.signature.features if baseline_model is not None and baseline_model.signature else None
        baseline_features = list(recorded) if spec.tabular and recorded and list(recorded) != spec.features else None
        baseline_columns = _baseline_columns(config, baseline_features)

        device = inference_device(config.inference.device)
        tabular = golden.tabular if golden is not None else True
        for model in models:  # loaded with the default calls for [model] (models.default_call_rows)
            if config.inference.batch_size:
                model.batch_size = config.inference.batch_size
            elif model.role == "baseline" and baseline_features:  # a table of its own width
                model.batch_size = table_call_rows(model.module, len(baseline_features))
            model.to_device(device)
        scan = reference = suites = None
        if streamed is not None:
            _require_bounds_fit(spec, 1)  # a streamed table's target is one column
            reference = _reference_table(config)
            if "data" in config.gate.stages:
                from .validation import golden_suites

                suites = tuple(golden_suites(config.data, reference, min(streamed.rows(), run_spec.max_rows or streamed.rows())))
            scan, golden, predicted, inputs = _scan(config, streamed, digest, models, baseline_features, progress, reference, suites)
        else:
            _require_bounds_fit(spec, golden.outputs)
            n_classes = int(golden.target.max()) + 1 if spec.task == "classification" else None
            inputs = {"candidate": golden.inputs, "baseline": golden.inputs}
            if baseline_features is not None:
                inputs["baseline"] = (feature_matrix(golden.frame, baseline_features, golden.path),)
            predicted = {}
            for model in models:
                raw = model.raw_outputs(inputs[model.role])
                predicted[model.role] = to_predictions(raw, spec, model.role, n_classes, outputs=golden.outputs)
        for model in models:
            _require_repeatable(model, inputs[model.role], tabular)
        # Only the quality stage reads it: a run of other stages calls no model for it.
        batch_probe = probe_batches(candidate_model, inputs["candidate"], tabular) if "quality" in config.gate.stages else None
        if "performance" in config.gate.stages and baseline_model is not None:
            _check_batch_sizes(config, golden, (candidate_model, baseline_model), baseline_columns)
        shapes = {role: values.shape for role, values in predicted.items()}
        if baseline_model is not None and shapes["candidate"] != shapes["baseline"]:
            raise InputError(
                f"candidate outputs shape {shapes['candidate']} but baseline {shapes['baseline']}: "
                "they do not predict the same thing"
            )
        return GateContext(
            config=config,
            project_dir=project_dir,
            candidate=candidate_model,
            baseline=baseline_model,
            golden=golden,
            predictions=Predictions(predicted["candidate"], predicted.get("baseline")),
            released=released_versions(uri, spec.name, except_file=candidate_model.sha256) if uri is not None else (),
            scan=scan,
            reference=reference,
            suites=suites,
            baseline_columns=baseline_columns,
            batch_probe=batch_probe,
        )


def _streamed_source(config: Config, source: str | None, dataset: str | None):
    """The Parquet source to stream, or None to read the golden set whole: a directory or glob of Parquet
    files, a Parquet file with more rows than ``[run] chunk_rows``, or any Parquet source on Ray."""
    from .data import is_sql
    from .scale.source import ParquetSource, is_streamable

    if dataset is not None or source is None or is_sql(source) or not config.model.tabular or not is_streamable(source):
        return None
    path = Path(source)
    if path.is_file() and config.run.engine == "local":
        from .environment import available_memory_bytes
        from .files import table_bytes

        parquet = ParquetSource.resolve(source)
        if parquet.rows() > config.run.chunk_rows:
            return parquet
        # One batch's rows are read whole, unless that would not fit (a wide table): streamed.
        available = available_memory_bytes()
        return parquet if available is not None and table_bytes(parquet.rows(), len(parquet.footers[0].names)) > available else None
    return ParquetSource.resolve(source)


def _scan(config: Config, source, digest, models, baseline_features, progress, reference, suites):
    """Stream the golden set through both models on the configured engine; the sample stands in for the
    golden set in the stages that need rows, the scan's sums decide the quality metrics over every row, and
    its counts the data stage's ranges (of ``suites``) over every row."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from .data import ExcludedRows, GoldenSet
    from .environment import available_memory_bytes
    from .scale.batches import FeatureColumns, ScanPlan
    from .scale.stats import BottomK
    from .scale.engines import run_local, run_ray
    from .scale.sizing import chunk_rows_that_fit
    from .validation import counted_conditions, moment_columns

    spec, run_spec = config.model, config.run
    roles = {m.role: m for m in models}
    features = {"candidate": tuple(spec.features), "baseline": tuple(baseline_features or spec.features)}
    total = source.rows()
    # The sample carries the columns the models do not read too, whatever stages run, as a golden set read
    # whole has them: the data stage validates every column, declared slices and user checks read any.
    used = {*features["candidate"], *features["baseline"], spec.target}
    carried = tuple(c for c in source.common_columns() if c not in used)
    value_conditions, moments = counted_conditions(list(suites or ())), moment_columns(list(suites or ()))
    if any(footer.kinds.get(spec.target, "").endswith("text") for footer in source.footers):
        value_conditions.pop(spec.target, None)  # class names are counted as their ids: GX compares the names, on the sample
        moments -= {spec.target}
    plan = ScanPlan(spec, {role: features[role] for role in roles}, run_spec.sample_rows,
                    min(total, run_spec.max_rows) if run_spec.max_rows else total, _drift_bins(config, reference),
                    config.outliers.top_n if "outliers" in config.gate.stages else 0, carried=carried,
                    value_conditions=value_conditions, moment_columns=moments)
    source.check_numeric(plan.columns, target=spec.target, labels=spec.task == "classification" and bool(spec.classes))
    source.check_joins(plan.carried)  # the columns no model reads: any type, one per column
    if "outliers" in config.gate.stages and "baseline" in roles:
        plan = _with_slices(config, source, plan, roles)
    chunk_rows = chunk_rows_that_fit(
        source.name, chunk_rows=run_spec.chunk_rows, chunk_rows_set="chunk_rows" in run_spec.model_fields_set,
        sample_rows=run_spec.sample_rows, total_rows=plan.total_rows, row_bytes=_scan_row_bytes(spec, source, plan, roles),
        available=available_memory_bytes(), batch_holders=_batch_holders(run_spec),
    )
    options = {"chunk_rows": chunk_rows, "max_rows": run_spec.max_rows, "progress": progress}
    digest.pause()  # the scan takes every core; the hashing goes on after it
    if run_spec.engine == "ray":
        summary = run_ray(source, plan, roles, address=run_spec.ray_address, workers=run_spec.ray_workers,
                          device=config.inference.device, **options)
    else:
        summary = run_local(source, plan, roles, **options)
    if summary.rows != plan.total_rows:  # an engine that left out or repeated rows: no gate decides on that
        raise RuntimeError(f"{source.name}: the {run_spec.engine} engine read {summary.rows:,} rows, "
                           f"not the {plan.total_rows:,} its files hold")
    if summary.used_rows == 0:
        raise InputError(f"{source.name}: no usable golden row: every row has NaN/inf or impossible values")
    sample = summary.sample.ordered()
    summary = dataclasses.replace(summary, sample=BottomK(summary.sample.k, [], 0))  # its parts let go: the stages read ``sample``
    # Every column at once: one per carried column, added one by one, fragments the frame (pandas warns on
    # the user's stderr from ~100 columns on).
    # The suites check each column as the files store it: an int64 feature as int64, a boolean one (the
    # models' 0 and 1) as booleans. The models' float32 matrix is stacked from those columns, as each batch's.
    stored = {name: {footer.kinds[name] for footer in source.footers} for name in plan.columns}
    features_matrix = FeatureColumns(tuple(sample[f"column:{name}"] for name in spec.features)).stacked()
    columns = {name: sample[f"column:{name}"].astype(bool) if stored[name] == {"booleans"} else sample[f"column:{name}"]
               for name in plan.columns if name != spec.target}
    columns[spec.target] = _target_as_stored(sample[f"column:{spec.target}"], spec, stored[spec.target])
    columns.update({name: sample[f"column:{name}"] for name in plan.carried})
    order = source.common_columns()  # the files' column order, as a golden set read whole has it
    names = [c for c in order if c in columns] + [c for c in columns if c not in order]
    frame = pd.DataFrame({name: columns[name] for name in names}, copy=False)  # the sample's arrays, not a copy
    excluded = ExcludedRows(np.zeros(0, dtype=np.int64), summary.excluded, count=summary.excluded_rows)
    golden = GoldenSet(
        path=source.name, frame=frame, inputs=(features_matrix,), target=sample["target"],
        sha256=digest.result(), excluded=excluded, feature_names=tuple(spec.features),
        sampled_from=summary.used_rows, total_rows=summary.rows, streamed_by=run_spec.engine,
    )
    predicted = {"candidate": sample["candidate"]}
    inputs = {"candidate": golden.inputs}
    if "baseline" in sample:
        predicted["baseline"] = sample["baseline"]
        inputs["baseline"] = (sample["baseline_features"],) if "baseline_features" in sample else golden.inputs
    return summary, golden, predicted, inputs


def _require_bounds_fit(spec, outputs: int) -> None:
    """A ``[[model.bounds]]`` list names one range per output of the target."""
    if isinstance(spec.bounds, list) and len(spec.bounds) != outputs:
        raise InputError(f"[model] bounds lists {len(spec.bounds)} ranges but the target has {outputs} output(s)")


def _batch_holders(run_spec) -> int:
    """The processes on this machine that hold a scan's batches at once: this one (the local engine), a local
    Ray's actors (one per core unless ``ray_workers``), or none (a cluster's workers hold them)."""
    import os

    if run_spec.engine == "local":
        return 1
    return 0 if run_spec.ray_address else run_spec.ray_workers or os.cpu_count() or 1


def _scan_row_bytes(spec, source, plan, models) -> ScanRowBytes:
    """What a golden row takes in a scan's batch and in its sample (see :mod:`.scale.sizing`). The models'
    outputs per row are counted from a call on the set's first rows: a classifier of 1,000 classes adds 16 KB
    a row, more than its features."""
    from .scale.batches import prepare_batch, run_models
    from .scale.sizing import ScanRowBytes

    with closing(source.batches(plan.read_columns, 64, min(64, plan.total_rows))) as batches:  # closed now, not when collected
        first = next(batches, None)
    prepared = prepare_batch(plan, first) if first is not None else None
    width = len(spec.classes) if spec.classes else 2 if spec.task == "classification" else 1
    if prepared is not None and len(prepared.target):
        outputs = run_models(plan, models, prepared.frame, prepared.target)
        width = max(output.shape[1] if output.ndim == 2 else 1 for output in outputs.values())
    stored = source.value_bytes(plan.read_columns)
    output_bytes = len(models) * 8 * width  # float64, each model's
    features = plan.features["candidate"]
    # The sample keeps every column as stored, the target as float64 too, a baseline reading other features
    # its float32 matrix, and each row's key.
    baseline_matrix = 4 * len(plan.features["baseline"]) if plan.features.get("baseline", features) != features else 0
    return ScanRowBytes(batch=math.ceil(sum(stored.values()) + 8 + output_bytes),  # the target as float64 too
                        sample=math.ceil(sum(stored.values()) + 8 + baseline_matrix + output_bytes + 8))


def _target_as_stored(target, spec, kinds: set[str]):
    """A streamed sample's target (class ids) as the files store it (``kinds``: its kind in each file), which
    the data stage's suites check, as they do a golden set read whole: class labels stored as text are their
    names again, booleans booleans."""
    import numpy as np

    if spec.classes and all(kind.endswith("text") for kind in kinds):
        return np.asarray(spec.classes, dtype=object)[target.astype(np.int64)]
    if kinds == {"booleans"}:
        return target.astype(bool)
    return target


def _reference_table(config: Config):
    """The [data] reference table, read once for the data stage and a streamed set's drift bins; None when
    the data stage does not run or the reference is not a table."""
    from .data import is_tensor_source, read_table

    source = config.data.reference
    if "data" not in config.gate.stages or not source or is_tensor_source(source):
        return None
    return read_table(source)


def _drift_bins(config: Config, reference) -> dict:
    """The drift check's bins per feature, fixed by the reference table, so a streamed golden set is counted
    into them on the way through (PSI over every row). Empty when there is none or the drift check cannot
    use it (the data stage reports why)."""
    from .data import is_feature_column
    from .drift import Bins

    features = config.model.features
    if reference is None or any(f not in reference.columns or not is_feature_column(reference[f]) for f in features):
        return {}
    return {f: Bins.of(reference[f].dropna().to_numpy(dtype=float), config.data.drift.bins) for f in features}


def _with_slices(config: Config, source, plan, models):
    """The outlier stage's slices over every streamed row, planned from the golden set's first rows (as the
    in-memory path plans them from a sample of its rows): each feature's bins, so every batch sums its rows
    into the same bins, and the pairs of the features whose slices look worst in those rows, whose joint
    tables every batch adds up too."""
    import dataclasses

    import numpy as np

    from .paired import EDGE_SAMPLE_ROWS, SliceBins, suspicious_pairs
    from .scale.batches import reduce_batch

    rows = min(EDGE_SAMPLE_ROWS, config.run.max_rows or EDGE_SAMPLE_ROWS)  # never a row beyond --max-rows
    first = next(iter(source.batches(plan.columns, rows, rows)), None)
    if first is None:
        return plan
    bins = {}
    for name in plan.features["candidate"]:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: infinite as the models read it, left out
            values = first.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        bins[name] = SliceBins.of(name, values[np.isfinite(values)], config.outliers.quantile_bins)
    spec = config.outliers
    # Only the slices are wanted from these rows: the columns no model reads are left out of the probe.
    fixed = reduce_batch(dataclasses.replace(plan, slice_bins=bins, carried=()), models, first).slices
    pairs = suspicious_pairs(fixed, parse_tolerance(spec.slice_tolerance), spec.min_slice_size, spec.feature_pairs) if fixed else ()
    return dataclasses.replace(plan, slice_bins=bins, slice_pairs=pairs)


def _baseline_columns(config: Config, baseline_features: list[str] | None) -> tuple[int, ...] | None:
    """Where a baseline released with other features finds its own among the candidate's: the stages that run
    both models on new inputs (the benchmark batches, the searches) give it those columns of the same rows.
    A feature the candidate no longer reads has no value in such inputs: bad input while those stages run."""
    if baseline_features is None:
        return None
    features = config.model.features
    gone = [f for f in baseline_features if f not in features]
    running = [stage for stage in ("performance", "outliers") if stage in config.gate.stages]
    if gone and running:
        raise InputError(
            f"the baseline was released reading feature(s) {', '.join(gone)}, which [model] features no longer "
            f"lists: the {' and '.join(running)} stage(s) run both models on the same new inputs, which have no "
            "such column; gate this change with --stage quality --stage data"
        )
    return None if gone else tuple(features.index(f) for f in baseline_features)


# Golden rows (table) or samples (tensor set) each model is called on twice, spread over the set: enough to
# meet a random layer's effect on some rows that reach it (a night hour's power is 0 with or without dropout),
# few enough to cost nothing beside the gate (a tensor model's sample can cost milliseconds on a CPU).
REPEAT_ROWS = 256
REPEAT_SAMPLES = 16


def spread_rows(samples: int, count: int):
    """Up to ``count`` row indices spread evenly over ``samples`` rows, first and last included."""
    import numpy as np

    return np.unique(np.linspace(0, samples - 1, min(samples, count)).astype(np.int64)) if samples else np.zeros(0, np.int64)


def _require_repeatable(model, inputs: tuple, tabular: bool) -> None:
    """The model's outputs for the same golden rows on two calls must agree: a model whose predictions are
    random (a dropout left in training mode: ``torch.export`` keeps the mode the model was exported in)
    gives paired differences and timings no gate can decide on, and would be released as it is.

    The tolerance (1e-4 relative, 1e-6 absolute) admits a GPU kernel's order of additions, not a random
    layer, which moves outputs by its own scale."""
    import numpy as np

    samples = len(inputs[0])
    if not samples:
        return
    rows = spread_rows(samples, REPEAT_ROWS if tabular else REPEAT_SAMPLES)
    picked = tuple(array[rows] for array in inputs)
    first, second = model.raw_outputs(picked), model.raw_outputs(picked)
    if first.shape == second.shape and np.allclose(first, second, rtol=1e-4, atol=1e-6, equal_nan=True):
        return
    change = np.abs(first - second) if first.shape == second.shape else np.full(1, np.inf)
    largest = float(np.nanmax(change)) if not np.isnan(change).all() else float("nan")
    raise InputError(
        f"{model.role} model {model.source} gave other outputs for the same {len(rows)} golden {'rows' if tabular else 'samples'} "
        f"on a second call (largest change {largest:.3g}): its predictions are random, and no gate can decide on them "
        "(a dropout or another random layer left in training mode? torch.export keeps the mode the model was in: call "
        "model.eval() before exporting)"
    )


# Golden rows (samples) the candidate is called on in one batch and again in parts of BATCH_PART_ROWS: over 2
# rows a batch's statistics are far from those over 32, so a layer that uses them moves its outputs by their
# own scale, where another kernel for another batch size moves them by rounding.
ALONE_ROWS = 32
BATCH_PART_ROWS = 2


def probe_batches(model, inputs: tuple, tabular: bool) -> BatchProbe | None:
    """The model's outputs for up to ALONE_ROWS golden rows (spread over the set) in one call against the same
    rows in parts of BATCH_PART_ROWS; a program traced with a fixed batch pads every call to it, so it is
    called in two halves. The model's failure on the parts is recorded, not raised: the quality stage says
    what could not be decided, and the performance stage names a batch size the model refuses."""
    import numpy as np

    from .fixed_batch import fixed_batch_of

    rows = spread_rows(len(inputs[0]), ALONE_ROWS)
    if len(rows) < 2 * BATCH_PART_ROWS:
        return None
    picked = tuple(array[rows] for array in inputs)
    part = len(rows) // 2 if fixed_batch_of(model.module) is not None else BATCH_PART_ROWS
    try:
        together = model.raw_outputs(picked)
        apart = np.concatenate([model.raw_outputs(tuple(a[start:start + part] for a in picked)) for start in range(0, len(rows), part)])
    except InputError as error:  # the model's own failure on a small batch (or its deadline)
        return BatchProbe(len(rows), part, float("nan"), float("nan"), error=str(error))
    finite = np.isfinite(together)
    scale = float(np.abs(together[finite]).max()) if finite.any() else 0.0
    if apart.shape != together.shape:
        return BatchProbe(len(rows), part, float("inf"), scale)
    # NaN in both ways is the same output; NaN in one only is a change beyond any tolerance.
    change = np.where(np.isnan(together) & np.isnan(apart), 0.0, np.nan_to_num(np.abs(together - apart), nan=np.inf))
    return BatchProbe(len(rows), part, float(change.max()) if change.size else 0.0, scale)


def _check_batch_sizes(config: Config, golden, models, baseline_columns: tuple[int, ...] | None) -> None:
    """The performance stage times both models at each ``[performance] batch_sizes``: a model that cannot
    take one of them is bad input, found here with the other input checks (a stage's planning runs no model)."""
    import numpy as np

    from .environment import available_memory_bytes

    per_sample = sum(array[:1].nbytes for array in golden.inputs) + 8  # its inputs, and its index to take them by
    available = available_memory_bytes()
    for rows in config.performance.batch_sizes:
        if available is not None and rows * per_sample > available // 2:  # the machine would be killed or swap
            raise InputError(f"[performance] batch_sizes: a batch of {rows:,} samples needs {rows * per_sample / 2**30:.1f} GiB "
                             f"for its inputs alone, more than half the memory available ({available / 2**30:.1f} GiB)")
        batch = golden.take(np.arange(rows) % len(golden))
        for model in models:
            model.check_batch(baseline_inputs(batch, baseline_columns) if model.role == "baseline" else batch, "benchmark batch")


def registry_allowed(mode: str) -> bool:
    """``--registry``: ``required`` and ``off`` say it; ``auto`` is off in a pull request from a fork,
    which gets no secrets (and so no registry credentials)."""
    if mode not in ("auto", "required", "off"):
        raise InputError(f"registry mode {mode!r} is not auto, required or off")
    if mode == "auto":
        from .github import Event

        return not Event.from_environment().from_fork
    return mode == "required"


def _without_registry(config: Config, candidate: str, baseline: str | None, baseline_version: str | None, *,
                      implicit_baseline: bool = False):
    """The models a run that may not use the registry compares. An implicit baseline (none named, so the
    version under the alias) is the registry's too: without the registry the run cannot tell a first release
    from a model with a released version, and calling it a first release would pass anything."""
    from .errors import RegistryUnavailable
    if candidate.startswith(REGISTRY_SCHEMES):
        raise RegistryUnavailable(f"the candidate {candidate} is in the registry, which this run may not use")
    if implicit_baseline or (baseline is not None and baseline.startswith(REGISTRY_SCHEMES)):
        what = (f"no baseline is named, so it is the version under @{config.release.alias} in the registry"
                if implicit_baseline else f"the baseline {baseline} is in the registry")
        if not config.baseline.fallback:
            raise RegistryUnavailable(
                f"{what}, which this run may not use, and [baseline] has no fallback (--baseline none gates a first release)"
            )
        return candidate, config.baseline.fallback, baseline_version or config.baseline.fallback_version
    return candidate, baseline, baseline_version


def _is_semver(version: str) -> bool:
    import semver

    return semver.Version.is_valid(version)


def run(gate: GateContext, *, listener: Listener | None = None, benchmark_json: Path | None = None) -> Report:
    """Run ``[gate] stages`` and the user checks, decide the verdict and version, and build the report."""
    from .data import content_hashes
    from .engine import run_checks
    from .environment import software
    from .versioning import decide

    config = gate.config
    stages = config.gate.stages
    user_paths = _user_check_paths(config, gate.project_dir)
    results = run_checks(gate, stages, user_paths, rootdir=gate.project_dir, listener=listener, benchmark_json=benchmark_json)
    contract = _contract(gate)
    decision = decide(
        config,
        results,
        has_baseline=gate.baseline is not None,
        identical_predictions=gate.predictions.identical,
        baseline_version=gate.baseline.version if gate.baseline else None,
        contract=contract[1],
        released=gate.released,
    )
    return Report(
        model=config.model.name,
        task=config.model.task,
        verdict=decision.verdict,
        bump=decision.bump,
        bump_reason=decision.reason,
        checks=results,
        candidate=gate.candidate.describe(),
        baseline=gate.baseline.describe() if gate.baseline else None,
        data={"golden": gate.golden.describe(max_rows=config.run.max_rows)},
        released=list(gate.released),
        current_version=decision.current_version,
        next_version=decision.next_version,
        first_release=decision.first_release,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        environment={**software(), "golden_read": gate.golden.streamed_by or "whole"},
        contract=contract[0],
        waivers=decision.waivers,
        policy_sha256=config.policy_sha256(gate.project_dir, str(gate.golden.path), content_hashes(config.data)),
    )


def candidate_signature(gate: GateContext):
    """The candidate's contract: config plus its observed per-row output width."""
    from .signature import of

    predictions = gate.predictions.candidate
    return of(gate.config, gate.golden, 1 if predictions.ndim == 1 else predictions.shape[1])


def _contract(gate: GateContext):
    """(the report's contract section, the comparison) — the comparison is None without a recorded baseline."""
    import json

    from .signature import compare

    from .report import ContractSection

    candidate = candidate_signature(gate)
    mine = json.loads(candidate.to_json())
    if gate.baseline is None or gate.baseline.signature is None:
        return ContractSection(candidate=mine), None
    change = compare(gate.baseline.signature, candidate)
    section = ContractSection(candidate=mine, baseline=json.loads(gate.baseline.signature.to_json()), compared=True,
                              breaking=change.breaking, additive=change.additive)
    return section, change


def _user_check_paths(config: Config, project_dir: Path) -> list[Path]:
    paths = [project_dir / p for p in config.checks.paths]
    explicit = "paths" in config.checks.model_fields_set
    missing = [p for p in paths if not p.exists()]
    if explicit and missing:
        raise InputError(f"check path not found: {missing[0]} (from [checks] paths)")
    return [p for p in paths if p.exists()]


def check(
    config: Config | str | Path | None = None,
    *,
    candidate: str | None = None,
    baseline: str | None = None,
    baseline_version: str | None = None,
    data: str | None = None,
    stages: list[str] | None = None,
    allow_pickle: bool = False,
    log_to_mlflow: bool | None = None,
    registry: str = "auto",
    waivers: tuple[tuple[str, str, str], ...] = (),
    prerelease: str | None = None,
    build: str | None = None,
    listener: Listener | None = None,
    benchmark_json: Path | None = None,
    directory: Path | None = None,
    engine: str | None = None,
    max_rows: int | None = None,
) -> Report:
    """The whole gate, exactly as ``release-kit check`` runs it.

    ``engine`` (``local`` | ``ray``) and ``max_rows`` override ``[run]``; a streamed golden set reports its
    scan's progress to ``listener.rows``, the checks theirs to ``listener.started`` and ``finished``.

    ``config`` is a Config, a file, or None (found in ``directory``). ``registry``: ``auto`` | ``required``
    | ``off`` (see :func:`registry_allowed`); without the registry a registry baseline falls back to
    ``[baseline] fallback`` or raises :class:`~release_kit.errors.RegistryUnavailable`. ``waivers`` are
    (check, reason, by) on top of the config's; ``prerelease``/``build`` shape the version. The run is
    logged to MLflow unless ``log_to_mlflow`` is False, MLflow is disabled, or the registry may not be used.
    """
    resolved, project_dir = resolve_config(config, directory)
    resolved = with_overrides(resolved, waivers=waivers, prerelease=prerelease, build=build)
    if stages:
        resolved = resolved.model_copy(update={"gate": _validated_stages(resolved, stages)})
    if engine is not None or max_rows is not None:
        resolved = resolved.model_copy(update={"run": _validated_run(resolved, engine, max_rows)})
    use_registry = registry_allowed(registry)
    track = resolved.mlflow.enabled and use_registry and log_to_mlflow is not False
    from .github import workflow_commands_stopped

    with workflow_commands_stopped():  # the models and checks/ run here: their output is no runner command
        gate = prepare(
            resolved, project_dir, candidate=candidate, baseline=baseline, baseline_version=baseline_version,
            data=data, allow_pickle=allow_pickle, registry=use_registry, track=track,
            progress=listener.rows if listener is not None else None,
        )
        report = run(gate, listener=listener, benchmark_json=benchmark_json)
    if track:
        from .tracking import log_gate_run, tracking_uri

        report.mlflow = log_gate_run(tracking_uri(resolved, project_dir), resolved.mlflow.experiment, report)
    return report


def _validated_stages(config: Config, stages: list[str]):
    from pydantic import ValidationError

    from .config import GateSpec

    try:
        return GateSpec.model_validate({**config.gate.model_dump(), "stages": list(stages)})
    except ValidationError as error:
        raise InputError(f"--stage: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _validated_run(config: Config, engine: str | None, max_rows: int | None):
    from pydantic import ValidationError

    from .config import RunSpec

    update = {**({"engine": engine} if engine is not None else {}), **({"max_rows": max_rows} if max_rows is not None else {})}
    try:
        return RunSpec.model_validate({**config.run.model_dump(), **update})
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--engine" if first["loc"][0] == "engine" else "--max-rows"
        raise InputError(f"{flag}: {first['msg']}") from None
