"""A streamed golden source: a Parquet file, a directory of Parquet files, or a glob, read in record batches."""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import CLASS_LABELS_HINT
from ..errors import InputError, first_line

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    import pandas as pd
    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes
# A column's bytes read at a time while its batches are decoded (see _read). Each column read holds one:
# measured on local disks, as fast as 1 MiB, and a 2,000-column file peaked at 1.75 GiB RSS against 2.27.
READ_BUFFER_BYTES = 1 << 16
# Names under a golden directory that are not its data, as pyarrow's datasets, Spark and Hive skip them: a
# job's markers and in-flight output (``_SUCCESS``, ``_temporary/``, whose Parquet files a failed write
# leaves behind) and hidden files.
IGNORED_PREFIXES = ("_", ".")
# What a directory or glob of Parquet files may hold, said when a file breaks it.
DIRECTORY_RULE = "a Parquet directory holds Parquet files only, but names starting with _ or .; a glob such as dir/*.parquet picks files"
GLOB_RULE = "a glob of a Parquet set matches Parquet files only"
# Hadoop's checksum of each file it writes (``part-0.parquet.crc``; hidden, ``.part-0.parquet.crc``, by Spark).
CHECKSUM_SUFFIXES = (".crc",)
# Table formats whose directory keeps the files of rows removed or rewritten since (old snapshots, file
# versions): which files are live is their log's or snapshot's, so reading every file would count rows twice.
TABLE_FORMATS = (
    ("_delta_log", "a Delta table (it has a _delta_log/)"),
    ("metadata/*.metadata.json", "an Iceberg table (it has metadata/*.metadata.json)"),
    (".hoodie", "a Hudi table (it has a .hoodie/)"),
)
# A Hive partition's value for a null key, as Spark and pyarrow write it.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def is_glob(source: str) -> bool:
    """A path with a wildcard in it (glob's own: *, ?, [)."""
    return any(ch in source for ch in "*?[")


def is_parquet_set(source: str | Path) -> bool:
    """A directory or a glob of Parquet files (not a URL)."""
    text = str(source)
    return "://" not in text and (Path(text).is_dir() or is_glob(text))


def is_streamable(source: str) -> bool:
    """A directory or a glob (always streamed), or a single Parquet file (streamed when it is large)."""
    return is_parquet_set(source) or ("://" not in source and Path(source).suffix.lower() in PARQUET_SUFFIXES)


def arrow_kind(arrow_type) -> str:
    """A column's kind as the checks and their messages name it."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numbers"  # decimals (a warehouse's NUMERIC, Spark's DecimalType) are read as float64
    if pa.types.is_boolean(arrow_type):
        return "booleans"
    is_string_view = getattr(pa.types, "is_string_view", None)  # pyarrow ≥ 16; the floor is 14
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (is_string_view and is_string_view(arrow_type)):
        return "text"
    if pa.types.is_dictionary(arrow_type):  # pandas' category dtype, when its categories are text
        return f"categories of {arrow_kind(arrow_type.value_type)}"
    return str(arrow_type)


@dataclass(frozen=True)
class Footer:
    """What a Parquet file's footer says: its rows, its column names in order, and each column's kind
    ("numbers", "booleans", "text", "categories of text", or the Arrow type's name), its Hive partition
    columns (``key=value`` directories in its path) included, after the stored ones."""

    rows: int
    names: tuple[str, ...]
    kinds: dict[str, str]
    value_bytes: dict[str, float]  # each stored column's bytes a value once read (see _value_bytes)
    types: dict[str, pa.DataType]  # each stored column's Arrow type, to join with the other files' (see check_joins)


def _value_bytes(metadata, schema) -> dict[str, float]:
    """Bytes a value of each stored column takes once read: a fixed-width type's width, a text column's
    stored bytes per row in the first row group plus its offset."""
    stored: dict[str, float] = {}
    if metadata.num_row_groups and metadata.num_rows:
        group = metadata.row_group(0)
        for index in range(group.num_columns):
            chunk = group.column(index)
            name = chunk.path_in_schema.split(".")[0]
            stored[name] = stored.get(name, 0.0) + chunk.total_uncompressed_size / max(group.num_rows, 1)
    sizes = {}
    for field in schema:
        try:
            width = field.type.bit_width
        except ValueError:  # text, lists: no fixed width
            width = 0
        sizes[field.name] = max(width, 8) / 8 if width else stored.get(field.name, 0.0) + 8.0
    return sizes


def hive_partition(directories: tuple[str, ...]) -> dict[str, str]:
    """The ``key=value`` directory names, as Hive, Spark and pyarrow write them (one ``=``, the value URL-decoded)."""
    from urllib.parse import unquote

    pairs = (name.split("=") for name in directories if name.count("=") == 1)
    return {key: unquote(value) for key, value in pairs}


def infer_partition_types(values: dict[str, set[str]]) -> dict[str, str]:
    """Each partition key's Arrow type, from its values over every file: ``int64`` when every value casts
    to one, else ``double`` when every value casts to a finite one, else ``string``. The casts are Arrow's,
    the same that :func:`typed_partitions` applies to every batch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = {}
    for key, found in values.items():
        text = pa.array(sorted(found - {HIVE_NULL}), pa.string())
        types[key] = "string"
        for candidate in ("int64", "double") if len(text) else ():  # only null partitions: no number seen
            try:
                cast = text.cast(candidate)
            except pa.ArrowInvalid:
                continue
            if candidate == "int64" or pc.all(pc.is_finite(cast)).as_py() is not False:
                types[key] = candidate
                break
    return types


def typed_partitions(batch: pa.RecordBatch, types: dict[str, str]) -> pa.RecordBatch:
    """A batch whose partition columns arrived as text with their types: the null partition null, numbers cast."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = [name for name in types if name in batch.schema.names]
    for name in present:
        index = batch.schema.get_field_index(name)
        column = batch.column(index)
        column = pc.if_else(pc.equal(column, HIVE_NULL), pa.scalar(None, pa.string()), column)
        batch = batch.set_column(index, name, column.cast(types[name]))
    return batch


def _decimals_as_floats(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch whose decimal columns are float64, as the models, statistics and suites take numbers (a
    decimal's 16-digit rounding is below what any of them resolves)."""
    import pyarrow as pa

    for index, field in enumerate(batch.schema):
        if pa.types.is_decimal(field.type):
            batch = batch.set_column(index, field.name, batch.column(index).cast(pa.float64()))
    return batch


def _files_under(directory: Path) -> tuple[list[Path], int]:
    """Every name under the directory that is not a directory (broken links included), but those starting
    with ``_`` or ``.``, whose directories are not entered (a job's ``_temporary/``, an NFS ``.snapshot/``);
    and how many skipped names may have held data (directories, ``*.parquet`` files). Links to directories
    are followed, as Spark and pyarrow's datasets follow them, each real directory once: a link back up the
    tree is no loop."""
    def unlisted(error: OSError) -> None:  # os.walk would skip the directory, and its rows, silently
        raise InputError(f"cannot list {error.filename}: {error.strerror}")

    found, skipped = [], 0
    seen = {os.path.realpath(directory)}
    for root, directories, names in os.walk(directory, followlinks=True, onerror=unlisted):
        entered = []
        for name in directories:
            real = os.path.realpath(os.path.join(root, name))
            if name.startswith(IGNORED_PREFIXES):
                skipped += 1
            elif real not in seen:
                seen.add(real)
                entered.append(name)
        directories[:] = entered
        for name in names:
            if not name.startswith(IGNORED_PREFIXES):
                found.append(Path(root, name))
            elif Path(name).suffix.lower() in PARQUET_SUFFIXES:
                skipped += 1
    return found, skipped


def _data_file(path: Path, rule: str) -> bool:
    """Whether a path a directory or glob holds is one of its Parquet files (False: a directory). Named
    ``*.parquet``/``*.pq``, or, as Hive and Impala name theirs (``000000_0``), starting with Parquet's magic
    bytes. Anything else is bad input, never skipped: a file left out is rows the gate silently never saw."""
    if path.is_dir():
        return False
    if not path.is_file():
        raise InputError(f"{path} is not a file that can be read (a broken link?)")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with path.open("rb") as file:
            if file.read(4) == PARQUET_MAGIC:
                return True
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    raise InputError(f"{path} is not a Parquet file ({rule})")


@dataclass(frozen=True)
class ParquetSource:
    name: str  # as configured
    files: tuple[Path, ...]
    # The directory whose ``key=value`` subdirectories are Hive partition columns: the golden directory, or
    # a glob's leading directory; None for one file.
    base: Path | None = None

    @classmethod
    def resolve(cls, source: str) -> ParquetSource:
        path = Path(source)
        skipped = 0
        base = None
        if path.is_dir():
            base = path
            for pattern, table in TABLE_FORMATS:
                if any(path.glob(pattern)):
                    raise InputError(f"{source}: {table}: its directory also holds the files of rows removed or rewritten "
                                     "since; give its current files (a glob, or a copy written from the table)")
            found, skipped = _files_under(path)
            files = [entry for entry in sorted(found)
                     if entry.suffix.lower() not in CHECKSUM_SUFFIXES and _data_file(entry, DIRECTORY_RULE)]
        elif is_glob(source):
            matched = sorted(Path(p) for p in glob.glob(source, recursive=True))
            files = [p for p in matched if _data_file(p, GLOB_RULE)]
            leading = []
            for part in path.parts:
                if is_glob(part):
                    break
                leading.append(part)
            base = Path(*leading) if leading else Path()
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"data file not found: {source}")
        if not files:
            aside = f" ({skipped} skipped: a name under it starts with _ or .)" if skipped else ""
            raise InputError(f"{source}: no Parquet files (*.parquet, *.pq) there{aside}")
        return cls(source, tuple(files), base)

    def absolute(self) -> ParquetSource:
        """The same files by absolute paths: what a reader in another process (a Ray task, whose working
        directory is not this one) is given."""
        base = None if self.base is None else Path(os.path.abspath(self.base))
        return ParquetSource(self.name, tuple(Path(os.path.abspath(file)) for file in self.files), base)

    @cached_property
    def footers(self) -> tuple[Footer, ...]:
        """Each file's row count and columns, from its footer (no data read), read once per source: the row
        count, the column checks and every scan of the same source share them."""
        import pyarrow.parquet as pq

        from ..files import check_unique_columns

        footers = []
        types = self.partition_types
        for file, partition in zip(self.files, self.partitions):
            try:
                metadata = pq.read_metadata(file)
                schema = metadata.schema.to_arrow_schema()
            except Exception as error:  # pyarrow's own hierarchy and OSError: an unreadable or corrupt file
                raise InputError(f"{file}: cannot read Parquet data: {first_line(error)}") from None
            check_unique_columns(schema.names, str(file))
            grouped = sum(metadata.row_group(index).num_rows for index in range(metadata.num_row_groups))
            if grouped != metadata.num_rows:  # the scan reads the row groups, the row count is the footer's word
                raise InputError(f"{file}: its footer says {metadata.num_rows:,} rows but its row groups hold {grouped:,}: "
                                 "a corrupt or tampered Parquet file")
            both = next((key for key in partition if key in schema.names), None)
            if both is not None:  # Ray Data would take the file's, pyarrow's datasets the path's: neither is sure
                raise InputError(f"{file}: column '{both}' is stored in the file and is a partition of its path "
                                 f"({both}={partition[both]}): which is the golden value is ambiguous")
            kinds = {field.name: arrow_kind(field.type) for field in schema}
            kinds.update({key: f"text in its path ({key}={value})" if types[key] == "string" else "numbers"
                          for key, value in partition.items()})
            footers.append(Footer(metadata.num_rows, (*schema.names, *partition), kinds, _value_bytes(metadata, schema),
                                  {field.name: field.type for field in schema}))
        return tuple(footers)

    @cached_property
    def partitions(self) -> tuple[dict[str, str], ...]:
        """Each file's Hive partition values by key (URL-decoded; the null partition as HIVE_NULL): the
        ``key=value`` directories between the base directory and the file, columns not stored in it."""
        if self.base is None:
            return tuple({} for _ in self.files)
        partitions = tuple(hive_partition(Path(os.path.relpath(file.parent, self.base)).parts) for file in self.files)
        # Every file under the same keys, as Hive and pyarrow lay a partitioned set out: a file under others
        # lacks columns the rest have.
        for file, partition in zip(self.files, partitions):
            if list(partition) != list(partitions[0]):
                keys = [", ".join(f"{key}=" for key in p) or "none" for p in (partitions[0], partition)]
                raise InputError(f"{file}: its Hive partition directories ({keys[1]}) are not the first file's "
                                 f"({keys[0]}, {self.files[0]}): a partitioned set has the same keys in every path")
        return partitions

    @cached_property
    def partition_types(self) -> dict[str, str]:
        """Each Hive partition column's Arrow type (see :func:`infer_partition_types`); empty when there are none."""
        values: dict[str, set[str]] = {}
        for partition in self.partitions:
            for key, value in partition.items():
                values.setdefault(key, set()).add(value)
        return infer_partition_types(values)

    def read_whole(self) -> pd.DataFrame:
        """Every row of every file as one frame (a reference or training set, which fits in memory), with the
        first file's columns, which every file must have; types that differ between files are promoted."""
        import pandas as pd
        import pyarrow as pa

        columns = [name for name in self.footers[0].names if not name.startswith("__index_level_")]
        self.check_joins(columns)
        tables = [pa.Table.from_batches([batch]) for batch in self.batches(columns, 1 << 20)]
        if not tables:
            return pd.DataFrame({name: [] for name in columns})
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def rows(self) -> int:
        """Row count from the files' footers."""
        return sum(footer.rows for footer in self.footers)

    def common_columns(self) -> tuple[str, ...]:
        """The columns every file has, in the first file's order (pandas' stored index aside)."""
        first, *others = (footer.names for footer in self.footers)
        shared = set(first).intersection(*others)
        return tuple(name for name in first if name in shared and not name.startswith("__index_level_"))

    def value_bytes(self, columns) -> dict[str, float]:
        """Bytes a value of each column takes once read, from the first file's footer (a partition column's: 8)."""
        return {name: self.footers[0].value_bytes.get(name, 8.0) for name in columns}

    def check_numeric(self, columns, *, target: str, labels: bool = False) -> None:
        """Every file stores these columns as numbers or booleans (0 and 1), as types that join, from the footers
        only, so that a text column in the 40th file fails before any batch is read, naming that file. With
        ``labels`` the ``target`` may be text too (class labels, mapped through ``[model] classes``)."""
        self._check_columns(list(columns))
        for file, footer in zip(self.files, self.footers):
            for name in columns:
                kind = footer.kinds[name]
                if kind in ("numbers", "booleans") or (name == target and labels and kind.endswith("text")):
                    continue
                hint = f" ({CLASS_LABELS_HINT})" if name == target and kind.endswith("text") else ""
                raise InputError(f"{file}: golden column '{name}' is stored as {kind}, not as numbers{hint}")
        self.check_joins(columns)  # after the kinds: text where numbers belong is said as such

    def batches(self, columns: list[str], chunk_rows: int, max_rows: int | None = None, *,
                files: range | None = None) -> Generator[pa.RecordBatch, None, None]:
        """Record batches of ``chunk_rows`` rows (the last one fewer), in file order, stopping after ``max_rows``.
        ``files``: only the batches that start in these files (a Ray read task's share), the last one read on
        into the files after them until it is whole.

        The batches are cut at every ``chunk_rows``-th row of the set, across the files' and row groups'
        boundaries, whoever reads them: a model's output for a row can depend on its batch's size (a matrix
        product's tail rows take another kernel), so the same rows in any layout of files, read by either
        engine, are scored in the same batches and give the same numbers. Many small files (a partitioned
        set's) are scored in full batches too, not one small batch each.

        Each file's ``ParquetFile.iter_batches`` decodes its columns in the thread that asks for the next
        batch (:func:`batches_read_ahead` moves that to a thread of its own). pyarrow's dataset scanner read
        the same batches with ~2× the CPU (~35 ns a row of 11 float32 columns instead of ~17, measured), CPU
        that the models and the statistics beside it need."""
        self._check_columns(columns)
        stop = self.rows() if max_rows is None else min(self.rows(), max_rows)
        start = 0
        if files is not None:  # the rows from the first batch boundary in the first file to the last batch's end
            starts = self._file_starts
            start = -(-starts[files.start] // chunk_rows) * chunk_rows
            stop = min(stop, -(-starts[files.stop] // chunk_rows) * chunk_rows)
        if start < stop:
            yield from cut_batches(self._rows(start, stop, columns, chunk_rows), chunk_rows)

    @cached_property
    def _file_starts(self) -> tuple[int, ...]:
        """Each file's first row in the set, then the set's row count (from the footers)."""
        return (0, *itertools.accumulate(footer.rows for footer in self.footers))

    def _check_columns(self, columns: list[str]) -> None:
        """Every file has every column (footers only): a file without one fails before any batch is read."""
        for file, footer in zip(self.files, self.footers):
            missing = [c for c in columns if c not in footer.kinds]
            if missing:
                raise InputError(f"{file}: missing column(s): {', '.join(missing)}")

    def check_joins(self, columns) -> None:
        """The types the files store each column as join into one, as :func:`joined_batches` joins them (footers
        only); else the first file whose type does not join the files' before it is named, before any batch is
        read. Each distinct type is joined once, however many files store it."""
        for name in columns:
            self._check_joins(name)

    def _check_joins(self, name: str) -> None:
        import pyarrow as pa

        first: dict[pa.DataType, Path] = {}
        for file, footer in zip(self.files, self.footers):
            if name in footer.types:
                first.setdefault(footer.types[name], file)
        if len(first) < 2:
            return
        joined = None
        for kind, file in first.items():  # in file order
            plain = kind.value_type if pa.types.is_dictionary(kind) else kind
            try:
                joined = plain if joined is None else pa.unify_schemas(
                    [pa.schema([(name, joined)]), pa.schema([(name, plain)])], promote_options="permissive").field(name).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise InputError(f"{file}: column '{name}' is stored as {kind}, which does not join the "
                                 f"{joined} of the files before it ({self.files[0]}): store it as one type in "
                                 "every file") from None

    def _rows(self, start: int, stop: int, columns: list[str], chunk_rows: int) -> Generator[pa.RecordBatch, None, None]:
        """Rows ``start:stop`` of the set in batches of at most ``chunk_rows``, decoded in this thread."""
        starts = self._file_starts
        for index in range(len(self.files)):
            first, last = max(start, starts[index]), min(stop, starts[index + 1])
            if first < last:
                yield from self._file_rows(index, columns, chunk_rows, first - starts[index], last - starts[index])

    def _file_rows(self, index: int, columns: list[str], chunk_rows: int, first: int,
                   stop: int) -> Generator[pa.RecordBatch, None, None]:
        """Rows ``first:stop`` of one file in batches of at most ``chunk_rows``, its
        Hive partition columns typed, decoded in this thread. The row groups before ``first`` are skipped
        unread; the rows before it in its row group are decoded and dropped (Parquet pages are read in order)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        file, partition = self.files[index], self.partitions[index]
        stored = [c for c in columns if c not in partition]
        try:
            # Read as it is decoded, 64 KiB at a time: pyarrow's defaults decode a row group whole and keep
            # every row group read pre-buffered until the file closes, so memory grew with the file
            # (a 20,000,000-row file of 1,000,000-row groups: Arrow held 1.1 GiB, now 0.14) and its
            # reading slowed (memory faulted in: 3.2 s against 0.4 s for 20,000,000 rows in one row group).
            # pyarrow's dataset scanner (Ray Data's Parquet reader) holds a row group whole however it is told
            # to buffer: the Ray engine's read tasks read with this method too.
            with pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER_BYTES) as reader:
                decimals = any(pa.types.is_decimal(reader.schema_arrow.field(name).type) for name in stored)
                group, position = 0, 0  # the first row group to read, and the file's row it starts at
                while group < reader.metadata.num_row_groups and position + reader.metadata.row_group(group).num_rows <= first:
                    position += reader.metadata.row_group(group).num_rows
                    group += 1
                groups = range(group, reader.metadata.num_row_groups)
                for batch in reader.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=stored, use_threads=False):
                    end = position + batch.num_rows
                    if end > first:
                        if position < first or end > stop:
                            batch = batch.slice(max(first - position, 0), min(end, stop) - max(first, position))
                        if len(stored) < len(columns):
                            arrays = {name: batch.column(name) for name in stored}
                            arrays.update({key: pa.repeat(pa.scalar(partition[key], pa.string()), batch.num_rows)
                                           for key in columns if key in partition})
                            batch = typed_partitions(pa.RecordBatch.from_arrays([arrays[c] for c in columns], names=columns),
                                                     self.partition_types)
                        yield _decimals_as_floats(batch) if decimals else batch
                    position = end
                    if position >= stop:
                        return
            # The pages ended before the rows the footer counts (the row counts every engine checks its scan
            # against): the file's fault, not the engine's.
            raise InputError(f"{file}: its footer counts {self.footers[index].rows:,} rows but its data ends at row {position:,}: "
                             "a corrupt or tampered Parquet file")
        except (OSError, pa.ArrowException) as error:  # an unreadable file, corrupt pages
            if isinstance(error, MemoryError):
                raise
            raise InputError(f"{file}: cannot read Parquet data: {first_line(error)}") from None

    def hashing(self) -> SourceDigest:
        """Start hashing the files (see :class:`SourceDigest`)."""
        return SourceDigest(self)


class SourceDigest:
    """A streamed source's sha256: one digest over every file's path under the golden directory and content
    hash, in order.

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
            # The path under the base directory: a Hive partition's directory names are its rows' values.
            name = file.name if self.source.base is None else Path(os.path.relpath(file, self.source.base)).as_posix()
            digest.update(f"{name}\0{content}\n".encode())
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
        from ..files import HashStopped, file_sha256

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


def cut_batches(batches: Iterator[pa.RecordBatch], rows: int) -> Generator[pa.RecordBatch, None, None]:
    """``batches`` cut into batches of ``rows`` rows (the last one fewer), joined across their boundaries;
    a batch that already is one is passed on without a copy."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            take = min(rows - count, batch.num_rows - start)
            held.append(batch if take == batch.num_rows else batch.slice(start, take))
            count += take
            start += take
            if count == rows:
                yield joined_batches(held)
                held, count = [], 0
    if held:
        yield joined_batches(held)


def joined_batches(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of ``parts``' rows. Files may store a column as different types (float32 in one, float64 in
    the next): each is promoted as Arrow promotes them (to float64 there), as Ray Data joins its blocks; a
    column stored as categories in one file and as plain values in another is joined as plain values."""
    import pyarrow as pa

    if len(parts) == 1:
        return parts[0]
    failed = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
    try:
        schema = pa.unify_schemas([part.schema for part in parts], promote_options="permissive")
    except failed:
        parts = [_without_categories(part) for part in parts]
        try:
            schema = pa.unify_schemas([part.schema for part in parts], promote_options="permissive")
        except failed as error:
            raise InputError(f"the golden files store a column as types that do not join: {first_line(error)}") from None
    try:
        parts = [part if part.schema == schema else
                 pa.RecordBatch.from_arrays([part.column(field.name).cast(field.type) for field in schema], schema=schema)
                 for part in parts]
    except failed as error:
        raise InputError(f"the golden files store a column as types that do not join: {first_line(error)}") from None
    return pa.Table.from_batches(parts, schema).combine_chunks().to_batches()[0]


def _without_categories(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its dictionary-encoded (categorical) columns as their plain values."""
    import pyarrow as pa

    arrays = [column.dictionary_decode() if pa.types.is_dictionary(column.type) else column for column in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


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
