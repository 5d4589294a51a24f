"""The engines that run the per-batch reduction (:mod:`.batches`): in this process over record batches
(:func:`run_local`) or on Ray Data with an actor pool that holds both models once per actor
(:func:`run_ray`). Both give the same :class:`~release_kit.scale.stats.ScanSummary`."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import InputError, first_line
from .batches import PreparedBatch, ScanPlan, ScoredBatch, prepare_batch, reduce_batch, run_models, summarize_batch

if TYPE_CHECKING:
    from collections.abc import Generator

    import pyarrow as pa

    from ..models import LoadedModel
    from .source import ParquetSource
    from .stats import ScanSummary

Progress = Callable[[int, int, float], None]  # (rows so far, rows to scan in all, seconds so far)
# Ray read tasks at most (Ray Data's default parallelism for a read): thousands of small files are read a
# few per task, not a task each.
READ_TASKS = 200


def run_local(source: ParquetSource, plan: ScanPlan, models: dict[str, LoadedModel], *, chunk_rows: int,
              max_rows: int | None = None, progress: Progress | None = None) -> ScanSummary:
    """Stream the batches through this process: peak memory is a few batches (read ahead, prepared, scored,
    summarized) and the sample, whatever the size.

    The models have this thread to themselves: a second thread reads and prepares the next batch (its counts
    and exclusions) and summarizes the one before (numpy releases the GIL in its loops, torch in its ops).
    Models on the CPU get one core fewer than torch would take while the scan runs, the core the second
    thread uses: torch's parallel regions wait for their slowest thread, and a thread sharing its core with
    the summaries is slow. When that thread costs more than the models (costly statistics, cheap or GPU
    models), a third takes over its reading, one batch ahead (:class:`_Reading`). Summaries are merged in
    batch order, so the numbers do not depend on the overlap."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import closing

    started = time.monotonic()
    merged: ScanSummary | None = None
    pending = None

    def collect() -> None:
        nonlocal merged
        summary = pending.result()
        merged = summary if merged is None else merged.merge(summary)
        if progress is not None:
            progress(merged.rows, plan.total_rows, time.monotonic() - started)

    with closing(_Reading(source.batches(plan.read_columns, chunk_rows, max_rows))) as reading, \
            _one_core_spared(any(m.device == "cpu" for m in models.values())), _scan_process_settings(), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-kit-scan") as helper:

        def prepared_next() -> PreparedBatch | None:
            spent = time.thread_time()
            batch = reading.next()
            prepared = None if batch is None else prepare_batch(plan, batch)
            reading.helper_spent(time.thread_time() - spent)
            return prepared

        def summarized(scored: ScoredBatch) -> ScanSummary:
            spent = time.thread_time()
            summary = summarize_batch(plan, scored)
            reading.helper_spent(time.thread_time() - spent)
            return summary

        upcoming = helper.submit(prepared_next)
        while (prepared := upcoming.result()) is not None:
            upcoming = helper.submit(prepared_next)  # queued before the summary: the models wait on it first
            scoring = time.thread_time()
            scored = ScoredBatch.of(plan, prepared, run_models(plan, models, prepared.frame, prepared.target))
            reading.observe(time.thread_time() - scoring)
            if pending is not None:
                collect()
            pending = helper.submit(summarized, scored)
        if pending is not None:
            collect()
    if merged is None:
        raise InputError(f"{source.name}: the golden set has no rows")
    return merged


class _Reading:
    """A local scan's batches: read by the helper thread that prepares them, until the helper is seen to need
    more CPU per batch than the models' thread; from then on by a thread of their own, one batch ahead.

    Reading on the helper keeps the scan to two threads, which suits two cores while the helper's work (read,
    prepare, summarize) costs less than the models': a third thread took the models' core part of the time
    (measured on two cores: the quality statistics' scan ~7 % faster without it). A helper that costs more
    is the scan's bottleneck, and its reading moves to a third thread, which uses the time the models' thread
    spends waiting (measured: every stage's statistics' scan ~12 % slower with the reading left on the
    helper). The two are compared by CPU time, which another process busy on the machine does not inflate
    as it does the waits."""

    # The first batches are not counted: the models' first calls are slow, and so are the helper's first
    # summaries (its memory is new to it).
    WARMUP_BATCHES = 5
    OBSERVED_BATCHES = 8  # batches observed before deciding, once
    # The helper's CPU time over the models' thread's, past which the reading moves. Measured on two cores
    # (the benchmark's two small MLPs): 0.75-1.03 with the quality statistics, 1.35-1.47 with every stage's.
    BEHIND = 1.2

    def __init__(self, batches: Generator[pa.RecordBatch, None, None]) -> None:
        self.batches = batches
        self.ahead: Generator[pa.RecordBatch, None, None] | None = None
        self.read_ahead = False  # set by the models' thread; acted on by the helper, the only one that reads
        self.seen = 0
        self.observing = False
        self.helper_cpu = self.models_cpu = 0.0

    def next(self) -> pa.RecordBatch | None:
        """The next batch, None at the end (the helper thread only)."""
        if self.read_ahead and self.ahead is None:
            from .source import batches_read_ahead

            self.ahead = batches_read_ahead(self.batches)
        return next(self.ahead if self.ahead is not None else self.batches, None)

    def helper_spent(self, seconds: float) -> None:
        """CPU seconds of one of the helper's tasks (the helper thread only)."""
        if self.observing:
            self.helper_cpu += seconds

    def observe(self, models_cpu: float) -> None:
        """CPU seconds of the models' thread scoring one batch (that thread only)."""
        self.seen += 1
        if self.seen == self.WARMUP_BATCHES:
            self.observing = True  # the helper's tasks from now on: about two a batch, as the models' batches
        elif self.observing:
            self.models_cpu += models_cpu
            if self.seen == self.WARMUP_BATCHES + self.OBSERVED_BATCHES:
                self.observing = False
                self.read_ahead = self.helper_cpu > self.BEHIND * self.models_cpu

    def close(self) -> None:
        """End the reading thread, if any, then the batches (once the helper no longer reads)."""
        if self.ahead is not None:
            self.ahead.close()
        self.batches.close()


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


SCAN_SWITCH_INTERVAL = 0.0002  # seconds: Python's GIL switch interval while a local scan runs (default 0.005)
_settings_lock = threading.Lock()
_settings_scans = 0  # local scans running in this process
_restored_interval = 0.005  # the interval they found, restored when the last ends
_froze_objects = False  # whether the first froze the objects it found (gc.freeze), unfrozen by the last


@contextmanager
def _scan_process_settings() -> Iterator[None]:
    """Two process-wide settings for the block, restored when the last scan of the process ends:

    - Python's GIL switch interval ``SCAN_SWITCH_INTERVAL``. The models' thread takes the GIL back after each
      torch call; with the default it could wait up to 5 ms for the helper's Python steps between numpy's
      loops to give it up (measured: the 100,000,000-row scan ~7 % faster, and ~4 % less CPU).
    - The objects that exist when it starts frozen (``gc.freeze``): a full collection, which the scan's own
      objects trigger now and then, then traverses only the scan's, not the ~250,000 of torch, pyarrow and
      the rest (measured: about one a scan of the scale benchmark, ~120 ms of CPU while it holds the GIL,
      which stops both threads). Left as it is where the process froze some itself or turned the
      collector off."""
    global _settings_scans, _restored_interval, _froze_objects
    with _settings_lock:
        if _settings_scans == 0:
            _restored_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_restored_interval, SCAN_SWITCH_INTERVAL))
            _froze_objects = gc.isenabled() and not gc.get_freeze_count()
            if _froze_objects:
                gc.freeze()
        _settings_scans += 1
    try:
        yield
    finally:
        with _settings_lock:
            _settings_scans -= 1
            if _settings_scans == 0:
                sys.setswitchinterval(_restored_interval)
                if _froze_objects:
                    gc.unfreeze()


class ShippedModel(NamedTuple):
    """A model as the driver ships it to the actors: its file's bytes in Ray's object store, and what the
    actor checks and says of it (the sha256 the run loaded, the source the user named), and the rows of its
    calls (the driver's: the same calls give the same numbers)."""

    name: str
    reference: Any  # ray.ObjectRef of the file's bytes
    factory: str | None
    source: str
    sha256: str
    batch_size: int


class _Scorer:
    """A Ray actor: loads both models once (from bytes shipped by the driver, with the safe loaders) and
    reduces each batch it is given."""

    def __init__(self, plan: ScanPlan, shipped: dict[str, ShippedModel], allow_pickle: bool, timeout: float | None, device: str) -> None:
        import shutil
        import tempfile
        from pathlib import Path

        import ray
        import torch

        from ..models import load_model

        # One intra-op thread per actor: the pool's actors share the machine's cores.
        torch.set_num_threads(1)
        self.plan = plan
        self.models = {}
        directory = tempfile.mkdtemp(prefix="release-kit-ray-")
        try:  # the files are only read by the loaders: removed once loaded, not left on every worker
            for role, model in shipped.items():
                path = Path(directory) / model.name
                path.write_bytes(ray.get(model.reference))
                loaded = load_model(role, str(path), plan.spec, factory=model.factory, allow_pickle=allow_pickle, timeout=timeout)
                if loaded.sha256 != model.sha256:
                    raise InputError(f"{role} model {model.source} changed while the run read it (sha256 {loaded.sha256[:12]}…, "
                                     f"not the {model.sha256[:12]}… the run loaded first)")
                loaded.source = model.source  # its errors name the user's file, as in the local engine
                loaded.batch_size = model.batch_size
                loaded.to_device(device)  # "cuda" on an actor Ray gave a GPU share
                self.models[role] = loaded
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def __call__(self, batch) -> dict:
        """One batch, as :func:`read_task` wrapped it (``batch_size=1``: one row)."""
        import pickle

        return {"summary": np.array([pickle.dumps(reduce_batch(self.plan, self.models, unwrapped_batch(batch)))], dtype=object)}


def read_task(source: ParquetSource, columns: list[str], chunk_rows: int, max_rows: int | None, files) -> Iterator[pa.Table]:
    """A Ray read task: the batches that start in the files whose indices ``files`` holds (a pyarrow table of
    a run of them), cut where the local engine cuts them (:meth:`ParquetSource.batches`), each wrapped as one
    row (:func:`wrapped_batch`)."""
    indices = files.column("file").to_pylist()
    runs = [0, *(k for k in range(1, len(indices)) if indices[k] != indices[k - 1] + 1), len(indices)]
    for begin, end in zip(runs, runs[1:]):  # Ray gives a task a run of consecutive files: one run, read through
        for batch in source.batches(columns, chunk_rows, max_rows, files=range(indices[begin], indices[end - 1] + 1)):
            yield wrapped_batch(batch)


def wrapped_batch(batch: pa.RecordBatch) -> pa.Table:
    """The batch as one row: each column a list of its values (not copied). Ray Data joins and slices the
    rows of a task's output to fit its block size (128 MiB by default: a 1,000,000-row batch of 17 float64
    columns is more) and bundles an actor's input rows where they fall, so a batch of many rows reached the
    actors cut elsewhere than the local engine cuts it (seen with a small block size: 7,196-row bundles cut
    into 7,000 and 196), and a model's output for a row can depend on its batch's size. One row is never cut."""
    import pyarrow as pa

    offsets = pa.array([0, batch.num_rows], pa.int64())
    return pa.Table.from_arrays([pa.LargeListArray.from_arrays(offsets, column) for column in batch.columns], names=batch.schema.names)


def unwrapped_batch(table: pa.Table) -> pa.RecordBatch:
    """The batch :func:`wrapped_batch` wrapped (its values not copied)."""
    import pyarrow as pa

    columns = [next((chunk for chunk in column.chunks if len(chunk)), column.chunk(0)).flatten() for column in table.columns]
    return pa.RecordBatch.from_arrays(columns, names=table.column_names)


def _restore_environment(before: dict[str, str]) -> None:
    """The process's environment as it was before ``ray.init``, which sets variables there and leaves them
    after ``ray.shutdown`` (RAY_AUTH_MODE=token, PYTHONBREAKPOINT): a later run in this process would join a
    cluster without token authentication as if it had it, and its subprocesses would inherit them."""
    for name in [name for name in os.environ if name not in before]:
        del os.environ[name]
    os.environ.update(before)


def actor_pool_size(cpus: float, workers: int | None, *, local: bool) -> int:
    """The actors of a Ray run on ``cpus`` logical CPUs: ``workers`` ([run] ray_workers) when set. Else a local
    Ray started by the run has a CPU per core for the actors and one more for the reads (its cores are shared
    anyway), and a cluster leaves a third of its CPUs to the read tasks: a read costs ~28 ns a row against
    ~56-85 ns to score it with two small models and the statistics, so one reading CPU feeds two or three
    scoring ones, and with one the scan would be read-bound past three workers."""
    if workers:
        return workers
    return max(1, int(cpus) - 1 if local else int(cpus * 2 / 3))


def run_ray(source: ParquetSource, plan: ScanPlan, models: dict[str, LoadedModel], *, chunk_rows: int,
            max_rows: int | None = None, address: str = "", workers: int | None = None, device: str = "auto",
            progress: Progress | None = None) -> ScanSummary:
    """Ray tasks read the same files with the local engine's reader; an actor pool (``workers`` actors, each
    holding both models, see :func:`actor_pool_size`) reduces the batches; the driver merges. ``address``
    empty: a local Ray started here; else an existing cluster.
    ``device`` (``[inference] device``): with ``auto`` the actors share the cluster's GPUs when it has any;
    ``cuda`` requires them; ``cpu`` never uses them."""
    import gc
    import pickle

    try:
        import ray
    except ImportError:
        raise InputError("[run] engine = \"ray\" needs Ray: pip install 'release-kit[ray]'") from None
    started = time.monotonic()
    started_here = not ray.is_initialized()
    environment = dict(os.environ)
    if started_here:
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:
                # With RAY_AUTH_MODE unset, Ray starts a local Ray with token authentication and says so on
                # stderr, with how to turn it off. That is what a local run wants (only this user's processes
                # join it): the note is not shown. Set, Ray does as it says without a word.
                if os.environ.get("RAY_AUTH_MODE") is None:
                    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                # One logical CPU beyond the actors' for the read tasks, which need a whole one (logical
                # CPUs are scheduling tokens: the actors still share the cores).
                ray.init(num_cpus=(workers or os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
        except Exception as error:  # an unreachable cluster, a bad address, a token the cluster refused
            _restore_environment(environment)
            hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token, RAY_AUTH_TOKEN or "
                    "~/.ray/auth_token, in this environment)") if address and os.environ.get("RAY_AUTH_MODE") != "token" else ""
            raise InputError(f"[run] ray_address {address!r}: cannot start or reach Ray: {first_line(error)}{hint}") from None
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # --max-rows takes the same prefix as the local engine
    context.enable_progress_bars = False
    cpus = float(ray.cluster_resources().get("CPU", 1))
    pool = actor_pool_size(cpus, workers, local=started_here and not address)
    # The pool's actors may not hold every CPU: the read tasks need a whole one beside them, else the
    # execution waits forever. The CPUs are logical; the actors still share the cores.
    spare = cpus - 1.0
    gpus = float(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0.0
    refused = None
    if spare < 0.1 * pool:
        refused = (f"[run] the Ray cluster has {cpus:g} CPU(s): {pool} actor(s) and the read tasks need at least "
                   f"{1 + 0.1 * pool:g} (lower [run] ray_workers, or use a cluster with more CPUs)")
    elif device == "cuda" and not gpus:
        refused = "[inference] device = \"cuda\" but the Ray cluster has no GPU (use \"auto\" or \"cpu\")"
    if refused is not None:
        if started_here:
            ray.shutdown()
            _restore_environment(environment)
        raise InputError(refused)
    per_actor = min(1.0, spare / pool)
    shipped = {role: ShippedModel(model.file.name, ray.put(model.file.read_bytes()), model.factory, model.source, model.sha256,
                                 model.batch_size)
               for role, model in models.items()}
    timeout = next(iter(models.values())).timeout
    # The files are read by Ray tasks with the local engine's reader (only the plan's columns,
    # 64 KiB of each at a time, Hive partition columns typed): Ray Data's own Parquet reader holds a row group
    # whole (measured: 376 MiB of Arrow memory for a 3,000,000-row group of 252 MiB, against 53), reads with
    # ~2× the CPU, and drops the files its extensions do not name.
    # One block of file indices per read task, at most READ_TASKS of them: each task reads the batches that
    # start in its files, cut at every chunk_rows-th row of the set as the local engine cuts them (a model's
    # output for a row can depend on its batch's size), so both engines score the same batches and give the
    # same numbers. Each batch travels as one row (wrapped_batch), which the actors take whole. A task reads its
    # last batch on into the next files; no other operator joins blocks: Ray Data's strict repartition ran
    # as tasks needing a CPU each, and while a read task, paused by backpressure, held the only CPU the
    # actors left, the scan stalled 10-20 s (seen in 5 of 11 runs here).
    files = ray.data.from_items([{"file": index} for index in range(len(source.files))],
                                override_num_blocks=min(len(source.files), READ_TASKS))
    dataset = files.map_batches(partial(read_task, source.absolute(), plan.read_columns, chunk_rows, max_rows), batch_size=None,
                                batch_format="pyarrow", num_cpus=1)
    # GPU actors when the cluster has GPUs: each actor a share of them (several actors may share one).
    gpu_share = {"num_gpus": min(1.0, gpus / pool)} if gpus else {}
    with warnings.catch_warnings():
        # Deprecated since Ray 2.60 with no replacement for these actor options yet: the extra pins Ray below
        # 2.64, which removes it, and a user is not told about a choice that is release-kit's.
        warnings.filterwarnings("ignore", message="`ray_remote_args_fn` is deprecated")
        scored = dataset.map_batches(
            _Scorer, fn_constructor_args=(plan, shipped, any(m.allow_pickle for m in models.values()), timeout, "cuda" if gpus else "cpu"),
            batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=per_actor,
            ray_remote_args_fn=_actors_not_restarted, **gpu_share,
        )
    merged: ScanSummary | None = None
    bad_input = None
    try:
        for row in _quiet_ray_data(scored.iter_rows()):
            summary = pickle.loads(row["summary"])  # produced by release-kit's own actors above
            merged = summary if merged is None else merged.merge(summary)
            if progress is not None:
                progress(merged.rows, plan.total_rows, time.monotonic() - started)
    except Exception as error:
        bad_input = _input_error_in(error, source.name)
        if bad_input is None:
            raise
        # Raised below, once the execution is released: Ray's error (its traceback) would keep it alive.
    finally:
        if started_here:  # a Ray this run started ends with it (a cluster given by address is left alone)
            ray.shutdown()
            _restore_environment(environment)
        else:
            # Ray Data keeps the pool's actors, and the CPUs they hold, until a reference cycle around its
            # execution is collected (ray-project/ray#42366): on a cluster that outlives this run, the next
            # run's actors would wait for them.
            del scored, dataset
            gc.collect()
    if bad_input is not None:
        raise InputError(bad_input)
    if merged is None:
        raise InputError(f"{source.name}: the golden set has no rows")
    return merged


def _quiet_ray_data(rows: Iterator[Any]) -> Iterator[Any]:
    """The rows of a Ray Data execution without its notes on stderr: its plan and timing, that progress bars
    are off, that a small golden set has fewer blocks than actors. The run shows its own progress and says
    what went wrong; Ray Data's errors still show."""
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
            yield from rows
    finally:
        data_logger.setLevel(level)


def _actors_not_restarted() -> dict[str, int]:
    """The pool's actors are not restarted when they die (Ray Data's default restarts one and retries its batch
    without end): a model that kills its process would kill every restart, and the gate would hang instead of
    failing. Given as a function: Ray Data has no parameter for these actor options, and deprecates passing
    them as keywords (since 2.60)."""
    return {"max_restarts": 0, "max_task_retries": 0}


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Fail fast on a cluster address nothing answers at: ``ray.init`` would retry for minutes."""
    import socket

    target = address.removeprefix("ray://")
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"[run] ray_address {address!r}: not host:port (its port {port!r} is not a port number), \"auto\" or empty")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            return
    except OSError as error:
        raise InputError(f"[run] ray_address {address!r}: nothing answers there ({error})") from None


def _input_error_in(error: BaseException, source: str) -> str | None:
    """A Ray task error whose cause is bad input, as its one line: release-kit's InputError (bad data, a
    corrupt or unreadable file, a failing model), or an OSError / pyarrow error raised in Ray Data's own
    steps (its error does not say which file, so the line names the golden set)."""
    import pyarrow as pa

    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        # A RayTaskError wraps the task's own exception as its cause, and may be an instance of the cause's
        # class too (its text Ray's traceback): the cause's own text is the line.
        cause = getattr(current, "cause", None)
        if isinstance(current, InputError) and not isinstance(cause, BaseException):
            return str(current)
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
