"""A streamed golden source: a Parquet file, a directory of Parquet files, or a glob, read in record batches."""

from __future__ import annotations

import glob
import hashlib
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, first_line

if TYPE_CHECKING:
    from collections.abc import Generator

    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")
# Names under a golden directory that are not its data, as pyarrow's datasets, Spark and Hive skip them: a
# job's markers and in-flight output (``_SUCCESS``, ``_temporary/``, whose Parquet files a failed write
# leaves behind) and hidden files.
IGNORED_PREFIXES = ("_", ".")


def is_streamable(source: str) -> bool:
    """A directory or a glob (always streamed), or a single Parquet file (streamed when it is large)."""
    if "://" in source:
        return False
    path = Path(source)
    return path.is_dir() or any(ch in source for ch in "*?[") or path.suffix.lower() in PARQUET_SUFFIXES


def _kind(arrow_type) -> str:
    """A column's kind as the checks and their messages name it."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "numbers"
    if pa.types.is_boolean(arrow_type):
        return "booleans"
    is_string_view = getattr(pa.types, "is_string_view", None)  # pyarrow ≥ 16; the floor is 14
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (is_string_view and is_string_view(arrow_type)):
        return "text"
    if pa.types.is_dictionary(arrow_type):  # pandas' category dtype, when its categories are text
        return f"categories of {_kind(arrow_type.value_type)}"
    return str(arrow_type)


@dataclass(frozen=True)
class Footer:
    """What a Parquet file's footer says: its rows, its column names in order, and each column's kind
    ("numbers", "booleans", "text", "categories of text", or the Arrow type's name)."""

    rows: int
    names: tuple[str, ...]
    kinds: dict[str, str]


@dataclass(frozen=True)
class ParquetSource:
    name: str  # as configured
    files: tuple[Path, ...]

    @classmethod
    def resolve(cls, source: str) -> ParquetSource:
        path = Path(source)
        skipped = 0
        if path.is_dir():
            if (path / "_delta_log").is_dir():  # its live files are the log's; the directory keeps removed ones too
                raise InputError(f"{source}: a Delta table (it has a _delta_log/): its directory also holds the files of "
                                 "rows removed or rewritten since; give its current files (a glob, or a copy written from the table)")
            found = [p for p in path.rglob("*") if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file()]
            files = sorted(p for p in found if not any(part.startswith(IGNORED_PREFIXES) for part in p.relative_to(path).parts))
            skipped = len(found) - len(files)
        elif any(ch in source for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"data file not found: {source}")
        if not files:
            aside = f" ({skipped} skipped: a name under it starts with _ or .)" if skipped else ""
            raise InputError(f"{source}: no Parquet files (*.parquet, *.pq) there{aside}")
        wrong = [f for f in files if f.suffix.lower() not in PARQUET_SUFFIXES]
        if wrong:
            raise InputError(f"{source}: {wrong[0]} is not a Parquet file (a streamed golden set is Parquet)")
        return cls(source, tuple(files))

    @cached_property
    def footers(self) -> tuple[Footer, ...]:
        """Each file's row count and columns, from its footer (no data read), read once per source: the row
        count, the column checks and every scan of the same source share them."""
        import pyarrow.parquet as pq

        from ..data import check_unique_columns

        footers = []
        for file in self.files:
            try:
                metadata = pq.read_metadata(file)
                schema = metadata.schema.to_arrow_schema()
            except Exception as error:  # pyarrow's own hierarchy and OSError: an unreadable or corrupt file
                raise InputError(f"{file}: cannot read Parquet data: {first_line(error)}") from None
            check_unique_columns(schema.names, str(file))
            kinds = {field.name: _kind(field.type) for field in schema}
            footers.append(Footer(metadata.num_rows, tuple(schema.names), kinds))
        return tuple(footers)

    def rows(self) -> int:
        """Row count from the files' footers."""
        return sum(footer.rows for footer in self.footers)

    def common_columns(self) -> tuple[str, ...]:
        """The columns every file has, in the first file's order (pandas' stored index aside)."""
        first, *others = (footer.names for footer in self.footers)
        shared = set(first).intersection(*others)
        return tuple(name for name in first if name in shared and not name.startswith("__index_level_"))

    def check_numeric(self, columns, *, boolean_ok: tuple[str, ...] = ()) -> None:
        """Every file stores these columns as numbers (footers only), so that a text column in the 40th file
        fails before any batch is read, naming that file (``boolean_ok``: columns read as classes 0 and 1)."""
        self._check_columns(list(columns))
        for file, footer in zip(self.files, self.footers):
            for name in columns:
                kind = footer.kinds[name]
                if kind != "numbers" and not (kind == "booleans" and name in boolean_ok):
                    raise InputError(f"{file}: golden column '{name}' is stored as {kind}, not as numbers")

    def batches(self, columns: list[str], chunk_rows: int, max_rows: int | None = None) -> Generator[pa.RecordBatch, None, None]:
        """Record batches of at most ``chunk_rows`` rows, in file order, stopping after ``max_rows``.

        Each file's ``ParquetFile.iter_batches`` decodes its columns in the thread that asks for the next
        batch (:func:`batches_read_ahead` moves that to a thread of its own). pyarrow's dataset scanner read
        the same batches with ~2× the CPU (~35 ns a row of 11 float32 columns instead of ~17, measured), CPU
        that the models and the statistics beside it need."""
        self._check_columns(columns)
        seen = 0
        for batch in self._read(columns, chunk_rows):
            if max_rows is not None and seen + batch.num_rows > max_rows:
                batch = batch.slice(0, max_rows - seen)
            if batch.num_rows:
                yield batch
            seen += batch.num_rows
            if max_rows is not None and seen >= max_rows:
                return

    def _check_columns(self, columns: list[str]) -> None:
        """Every file has every column (footers only): a file without one fails before any batch is read."""
        for file, footer in zip(self.files, self.footers):
            missing = [c for c in columns if c not in footer.kinds]
            if missing:
                raise InputError(f"{file}: missing column(s): {', '.join(missing)}")

    def _read(self, columns: list[str], chunk_rows: int) -> Generator[pa.RecordBatch, None, None]:
        """The files' batches, decoded in this thread."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for file in self.files:
            try:
                with pq.ParquetFile(file) as reader:
                    yield from reader.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False)
            except (OSError, pa.ArrowException) as error:  # an unreadable file, corrupt pages
                if isinstance(error, MemoryError):
                    raise
                raise InputError(f"{file}: cannot read Parquet data: {first_line(error)}") from None

    def hashing(self) -> SourceDigest:
        """Start hashing the files (see :class:`SourceDigest`)."""
        return SourceDigest(self)


class SourceDigest:
    """A streamed source's sha256: one digest over every file's name and content hash, in order.

    A run creates it before importing what it needs, opening its store and loading its models, work that
    holds one core: from then on the files are hashed beside that work, by threads of their own (one per core
    but one; hashlib and the reads release the GIL). The scan pauses them (:meth:`pause`): it needs every core
    (measured: the 100,000,000-row scan hashed beside took longer than the hashing it hid). :meth:`result`
    resumes them and takes its share of the files not started yet (measured: the hashing left after that
    scan 1.0 s instead of the whole set's 1.5 s).
    :meth:`close` stops the threads within a block: a run that fails first does not wait for them."""

    # Bytes hashed between two of the thread's Python steps: each step waits for the GIL, which the work
    # beside it (imports, the store's opening) holds up to a switch interval (5 ms) at a time.
    BLOCK_BYTES = 16 << 20

    def __init__(self, source: ParquetSource) -> None:
        import os
        import threading

        self.source = source
        self._hashes: list[str | Exception | None] = [None] * len(source.files)
        self._untaken = iter(range(len(source.files)))
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._stopped = False
        count = max(1, min(len(source.files), (os.cpu_count() or 1) - 1))
        self._threads = [threading.Thread(target=self._hash_files, name=f"release-kit-hash-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def pause(self) -> None:
        """The threads wait after their current block until :meth:`result`."""
        self._running.clear()

    def result(self) -> str:
        """The digest, once every file is hashed (this thread hashes files too)."""
        if self._stopped:
            raise RuntimeError("the digest was closed before its result")
        self._running.set()
        self._hash_files()
        for thread in self._threads:
            thread.join()
        digest = hashlib.sha256()
        for file, content in zip(self.source.files, self._hashes):
            if isinstance(content, OSError):  # removed or made unreadable since the scan read it
                raise InputError(f"{file}: cannot read: {first_line(content)}")
            if isinstance(content, Exception):
                raise content
            digest.update(f"{file.name}\0{content}\n".encode())
        return digest.hexdigest()

    def close(self) -> None:
        """Stop hashing (the files not yet hashed are not read) and end the threads."""
        self._stopped = True
        self._running.set()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> SourceDigest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _hash_files(self) -> None:
        """Hash the files no thread has taken, one at a time, until none is left or hashing stops."""
        from ..data import HashStopped, file_sha256

        while True:
            with self._lock:
                index = next(self._untaken, None)
            if index is None or self._stopped:
                return
            try:
                self._hashes[index] = file_sha256(self.source.files[index], self._between_blocks, self.BLOCK_BYTES)
            except HashStopped:
                return
            except Exception as error:  # kept for result(), which raises it in the run's thread
                self._hashes[index] = error

    def _between_blocks(self) -> bool:
        """A thread's check after each block: waits while paused; False once stopped."""
        self._running.wait()
        return not self._stopped


def batches_read_ahead(batches: Generator[pa.RecordBatch, None, None]) -> Generator[pa.RecordBatch, None, None]:
    """The batches, read by a thread one batch ahead of the caller. The thread ends with the iteration, also
    when the caller stops early or fails, and closes ``batches``; its errors are raised here."""
    import queue
    import threading

    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def read() -> None:
        try:
            with closing(batches):
                for batch in batches:
                    if not offer(batch):
                        return
            offer(end)
        except BaseException as error:  # raised in the caller's thread, not lost with this one
            offer(error)

    reader = threading.Thread(target=read, name="release-kit-read", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()
