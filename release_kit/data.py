"""Golden data: a table (CSV, Parquet, SQL) with the model's feature columns and the target, or tensors
(.npz, .safetensors, a dataset factory) holding the model's inputs and the target, with an optional
metadata table of the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CLASS_LABELS_HINT
from .errors import InputError, first_line
from .files import (
    check_unique_columns, file_sha256, require_regular_file, require_room_for_items, require_room_for_rows, require_room_to_read,
    require_room_to_unpack,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .config import DataSpec, ModelSpec
    from .report import DatasetRef

SUFFIXES = (".csv", ".parquet", ".pq")
# A CSV file compressed as a pipeline exports it (golden.csv.gz): pandas infers the codec from the suffix.
CSV_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
TENSOR_SUFFIXES = (".npz", ".safetensors")


@dataclass(frozen=True)
class ExcludedRows:
    """Golden rows no model can be judged on: a feature or the target is NaN or infinite, or a
    classification target is not a class id. The data stage reports them (and blocks); the other stages
    run on the remaining rows and say how many they left out."""

    rows: np.ndarray  # row numbers in the file (0-based, header excluded); none kept when streamed
    columns: dict[str, int]  # column → number of rows with a bad value there
    count: int | None = None  # how many rows, when ``rows`` does not list them all

    def __len__(self) -> int:
        return len(self.rows) if self.count is None else self.count

    def note(self) -> str:
        """The sentence other stages append to a summary ("" when nothing was excluded)."""
        if not len(self):
            return ""
        return f" ({len(self)} golden row(s) with NaN/inf or impossible values left out; see data::golden_rows)"


@dataclass(frozen=True)
class GoldenSet:
    path: Path | str  # a file, a SQL source "URL#table", or a dataset factory "package.module:function"
    # The usable rows (index reset), aligned with inputs and target: a table's columns, or a tensor set's
    # metadata (a frame without columns when there is none).
    frame: pd.DataFrame
    # The model's positional inputs, each (N, ...): a table's float32 (N, F) features in [model] features
    # order, or a tensor set's arrays (floating ones as float32, integer ones as stored).
    inputs: tuple[np.ndarray, ...]
    # Regression: float64 (N,) or (N, K) for K outputs. Classification: int64 class ids (N,).
    target: np.ndarray
    sha256: str
    all_rows: pd.DataFrame | None = None  # every row as read, for the data stage (None: same as frame)
    excluded: ExcludedRows | None = None
    tabular: bool = True
    input_names: tuple[str, ...] = ("features",)  # the arrays' names in the file ("inputs", "inputs.0", …)
    feature_names: tuple[str, ...] = ()  # a table's feature columns, in the model's order
    # A streamed golden set: frame, inputs and target are a uniform sample of ``sampled_from`` usable rows
    # out of ``total_rows`` read.
    sampled_from: int | None = None
    total_rows: int | None = None
    streamed_by: str | None = None  # the engine that streamed it ("local" | "ray"); None: read whole

    def __post_init__(self) -> None:
        import numpy as np

        if isinstance(self.inputs, np.ndarray):  # one array: a table's feature matrix
            object.__setattr__(self, "inputs", (self.inputs,))

    def __len__(self) -> int:
        return len(self.target)

    @property
    def features(self) -> np.ndarray:
        """A table's float32 (N, F) feature matrix (tensor sets have inputs, not features)."""
        if not self.tabular:
            raise AttributeError("a tensor golden set has inputs, not a feature table")
        return self.inputs[0]

    @property
    def outputs(self) -> int:
        """Outputs per sample the target asks of a regressor: K for an (N, K) target, else 1."""
        return self.target.shape[1] if self.target.ndim == 2 else 1

    def take(self, rows) -> tuple[np.ndarray, ...]:
        """The inputs of these samples, for a model call."""
        return tuple(array[rows] for array in self.inputs)

    def slice_columns(self) -> list[tuple[str, np.ndarray]]:
        """Per-row columns to slice and localise changes by: a table's features; a tensor set's metadata
        columns that are numeric, or categorical with at most 255 values. Columns with NaN are left out."""
        import numpy as np
        import pandas as pd

        if self.tabular:
            return [(name, self.inputs[0][:, j]) for j, name in enumerate(self.feature_names)]
        columns = []
        for name in self.frame.columns:
            column = self.frame[name]
            if column.isna().any():
                continue
            if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
                columns.append((str(name), column.to_numpy(dtype=np.float64)))
            elif column.nunique() <= 255:
                columns.append((str(name), column.astype(str).to_numpy(dtype=object)))
        return columns

    @property
    def read(self) -> pd.DataFrame:
        """Every row as read from the source."""
        return self.frame if self.all_rows is None else self.all_rows

    @property
    def note(self) -> str:
        """What a stage appends to its summary: rows left out, and a streamed set's sampling."""
        text = self.excluded.note() if self.excluded is not None else ""
        if self.sampled_from is not None and self.sampled_from > len(self):
            text += f" (on a uniform sample of {len(self):,} of {self.sampled_from:,} rows)"
        return text

    @property
    def rows_read(self) -> int:
        return self.total_rows if self.total_rows is not None else len(self.read)

    def describe(self, max_rows: int | None = None) -> DatasetRef:
        """The report's record of the set; ``max_rows``: the prefix the gate read (None: every row)."""
        from .report import DatasetRef

        used = self.sampled_from if self.sampled_from is not None else len(self)
        return DatasetRef(path=str(self.path), rows=self.rows_read, sha256=self.sha256, used_rows=used,
                          excluded_rows=0 if self.excluded is None else len(self.excluded), max_rows=max_rows)


def is_sql(source: str | Path) -> bool:
    return "://" in str(source)


# URLs of files, not of databases: read from local paths only (a mounted bucket is one).
FILE_URL_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "adl", "wasb", "wasbs", "hdfs", "http", "https", "ftp", "file")


def split_sql(source: str) -> tuple[str, str]:
    """``sqlite:///data/golden.db#golden`` → (connection URL, table)."""
    scheme = str(source).partition("://")[0].lower()
    if scheme in FILE_URL_SCHEMES:
        raise InputError(f"{source}: data sets are read from local paths, not from {scheme}:// URLs: copy the files to a "
                         "directory (or mount the bucket) and give its path")
    url, _, table = str(source).rpartition("#")
    if not url or not table:
        raise InputError(f"SQL data source {source!r} needs a table: write it as URL#table")
    return url, table


def _read_sql(source: str) -> pd.DataFrame:
    import pandas as pd
    import sqlalchemy

    url, table = split_sql(source)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise InputError(f"SQLite database not found: {url.removeprefix('sqlite:///')}")
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            _require_room_for_table(connection, table, source)
            return pd.read_sql_table(table, connection)
    except ValueError as error:  # pandas: table not found
        raise InputError(f"{source}: {error}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        raise InputError(f"{source}: cannot read SQL table: {first_line(error)}") from None


def _require_room_for_table(connection, table: str, source: str) -> None:
    """A SQL table is read whole: its rows (``COUNT(*)``) and columns must fit in the memory available, at
    ~8 bytes a value (:func:`files.table_bytes`), checked before pandas reads it."""
    import sqlalchemy

    try:
        columns = sqlalchemy.inspect(connection).get_columns(table)
    except sqlalchemy.exc.NoSuchTableError:
        return  # pandas' reader names the table
    rows = connection.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(sqlalchemy.table(table))).scalar_one()
    require_room_for_rows(int(rows), len(columns), source)


def fingerprint(source: str | Path, frame: pd.DataFrame) -> str:
    """Content hash of a file, or of a Parquet set's files (as a streamed golden set's); for a SQL table (no
    file to hash), a hash of the rows as read."""
    if not is_sql(source):
        return file_fingerprint(source, streamed=False)
    import pandas as pd

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def file_fingerprint(source: str | Path, *, streamed: bool) -> str:
    """A golden file's or Parquet set's content hash as the gate records it: a streamed source's (even one
    Parquet file) over its files' names and hashes, else the file's sha256."""
    from .scale.source import ParquetSource, is_parquet_set

    if streamed or is_parquet_set(source):
        with ParquetSource.resolve(str(source)).hashing() as digest:
            return digest.result()
    return file_sha256(Path(source))


def content_hashes(spec: DataSpec) -> dict[str, str]:
    """The contents of the tables beside the golden set that the checks decide by, ``[data] reference`` (the
    profile's and drift's baseline), ``training`` and ``metadata``, by key: each file's or Parquet set's hash,
    a SQL table's rows read again (:func:`fingerprint`), so that a table changed in its database between the
    check and the release is seen as a file changed on disk is. One the run cannot read (a gate without the
    data stage reads no reference) is recorded so, not an error after the gate ran."""
    hashes = {}
    for key in ("reference", "training", "metadata"):
        source = getattr(spec, key)
        if source:
            try:
                hashes[key] = fingerprint(source, read_table(source)) if is_sql(source) else file_fingerprint(source, streamed=False)
            except (InputError, OSError):
                hashes[key] = "unreadable"
    return hashes


def _require_room_for_parquet(path: Path) -> None:
    """A Parquet file read whole: its footer's rows must fit (see :func:`files.require_room_for_rows`)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
    except Exception:  # noqa: BLE001  not Parquet after all: pandas' reader says so
        return
    require_room_for_rows(metadata.num_rows, metadata.num_columns, str(path))


def read_table(path: Path | str) -> pd.DataFrame:
    import lzma
    import zipfile

    import pandas as pd

    if is_sql(path):
        return _numpy_numbers(_unique_columns(_read_sql(str(path)), str(path)))
    from .scale.source import ParquetSource, is_parquet_set

    if is_parquet_set(path):  # a reference or training set kept as a job wrote it: read whole, as the golden set's files are
        source = ParquetSource.resolve(str(path))
        require_room_for_rows(source.rows(), len(source.footers[0].names), str(path))
        return _numpy_numbers(source.read_whole())
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    require_regular_file(path, "data file")
    suffix = path.suffix.lower()
    csv = suffix == ".csv" or (suffix in CSV_COMPRESSIONS and path.with_suffix("").suffix.lower() == ".csv")
    if not csv and suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported data format {suffix or '(no suffix)'!r} (use .csv (or .csv.gz, .bz2, .xz, "
                         ".zst, .zip), .parquet, or a directory or glob of Parquet files)")
    if csv:
        require_room_to_read(path, "data file")
    else:
        _require_room_for_parquet(path)
    try:
        if csv:
            frame = pd.read_csv(path)
            # pandas renames a repeated header (a, a → a, a.1): the header as written is checked.
            header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
            check_unique_columns([name for name in header if name != ""], str(path))
            return frame
        return _numpy_numbers(_unique_columns(pd.read_parquet(path), str(path)))
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the data file is empty") from None
    except ImportError as error:  # a codec pandas reads through an optional package (.zst: zstandard)
        raise InputError(f"{path}: cannot read data: {first_line(error)}") from None
    except (OSError, ValueError, EOFError, lzma.LZMAError, zipfile.BadZipFile, pd.errors.ParserError) as error:
        raise InputError(f"{path}: cannot read data: {first_line(error)}") from None
    except Exception as error:  # pyarrow raises its own hierarchy for corrupt Parquet files
        if type(error).__module__.startswith("pyarrow"):
            raise InputError(f"{path}: cannot read Parquet data: {error}") from None
        raise


def _unique_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The frame, if no column name is repeated."""
    check_unique_columns(frame.columns, source)
    return frame


def _numpy_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas' nullable numbers (Int64, Float64, pyarrow-backed numbers: what pandas writes into a Parquet
    file's metadata and reads back) as numpy numbers, as pandas reads the same columns from a file without that
    metadata: integers with no missing value as integers, else float64 with NaN for a missing value, which
    the checks count as they count any NaN. Decimals (pandas reads a Parquet decimal column as Python
    ``Decimal`` objects) are float64 too, as a streamed set's are. Booleans and text are left as they are."""
    import numpy as np
    import pandas as pd

    for name in frame.columns:
        column = frame[name]
        dtype = column.dtype
        if dtype == object and pd.api.types.infer_dtype(column, skipna=True) == "decimal":
            frame[name] = column.astype(np.float64)
            continue
        if not isinstance(dtype, pd.api.extensions.ExtensionDtype) or not pd.api.types.is_numeric_dtype(dtype) \
                or pd.api.types.is_bool_dtype(dtype):
            continue
        if pd.api.types.is_integer_dtype(dtype) and not column.isna().any():
            frame[name] = column.to_numpy(dtype=dtype.numpy_dtype)
        else:
            frame[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return frame


def is_tensor_source(source: str | Path) -> bool:
    return Path(str(source)).suffix.lower() in TENSOR_SUFFIXES


def load_golden(
    source: Path | str | None, spec: ModelSpec, *, metadata: str | None = None, dataset: str | None = None,
    max_rows: int | None = None,
) -> GoldenSet:
    """The golden set from a table, a tensor file (with its optional ``metadata`` table) or a ``dataset``
    factory; which one must agree with ``[model]``: a table needs features and target, tensors neither.
    ``max_rows``: only the first rows (samples)."""
    if dataset is not None:
        if spec.tabular:
            raise InputError("[data] dataset: a dataset's items are tensors, so [model] takes no features or target")
        return _load_dataset_golden(dataset, spec, metadata, max_rows)
    if source is None:
        raise InputError("no golden data: pass --data or set [data] golden")
    tensors = not is_sql(source) and is_tensor_source(source)
    if tensors and spec.tabular:
        raise InputError(f"{source}: a tensor golden set holds the inputs and the target; remove [model] features and target")
    if not tensors and not spec.tabular:
        raise InputError(f"{source}: a table golden set needs [model] features and target (or use a .npz/.safetensors file)")
    if metadata is not None and not tensors:
        raise InputError("[data] metadata: only a tensor golden set takes a metadata table (a table's own columns are its metadata)")
    if tensors:
        path = Path(source)
        arrays = read_tensors(path)
        return _tensor_golden(path, arrays, spec, metadata, file_sha256(path) if path.is_file() else "", max_rows)
    return _load_table_golden(source, spec, max_rows)


def _missing_columns(path, missing: list[str], present) -> InputError:
    """The error for columns a table lacks; when its header read as one column holding another separator
    (an export with ``;`` or tabs), it says so."""
    text = f"{path}: missing column(s): {', '.join(missing)}"
    if len(present) == 1:
        separator = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")) if sep in str(present[0])), None)
        if separator:
            text += f" (its header is one column, {str(present[0])[:60]!r}: CSV files are read comma-separated, not by {separator})"
    return InputError(text)


def _load_table_golden(path: Path | str, spec: ModelSpec, max_rows: int | None = None) -> GoldenSet:
    """Read the golden set. A missing or non-numeric column is an input error; rows with NaN/inf (or, for
    classification, a target that is no class id) are set aside in ``excluded`` for the data stage."""
    import numpy as np

    path = path if is_sql(path) else Path(path)
    frame = read_table(path)
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.head(max_rows)
    if frame.empty:
        raise InputError(f"{path}: the golden set has no rows")
    missing = [column for column in [*spec.features, spec.target] if column not in frame.columns]
    if missing:
        raise _missing_columns(path, missing, frame.columns)
    for column in spec.features:
        _require_numeric(_as_number(frame[column]), path, f"feature column '{column}'")
    target_column = frame[spec.target]
    if _is_boolean(target_column):
        # Classes 0 and 1; a missing label (pandas' nullable booleans, or booleans with None) is NaN: an
        # excluded row, as a missing number is.
        target_column = target_column.astype("float64")
    elif spec.task == "classification" and spec.classes and is_text(target_column):
        target_column = class_ids(target_column, spec.classes, f"{path}: target column '{spec.target}'")
    _require_numeric(target_column, path, f"target column '{spec.target}'", hint=CLASS_LABELS_HINT if is_text(target_column) else None)

    with np.errstate(over="ignore"):  # a value beyond float32's range is infinite as the models read it: excluded below
        features = _numbers_of(frame, spec.features)
    target = target_column.to_numpy(dtype=np.float64)
    bad = {column: ~np.isfinite(features[:, i]) for i, column in enumerate(spec.features)}
    bad_target = ~np.isfinite(target)
    if spec.task == "classification":
        with np.errstate(invalid="ignore"):
            bad_target |= (target < 0) | (target != np.floor(target))
    bad[spec.target] = bad_target
    excluded_mask = np.logical_or.reduce(list(bad.values()))
    excluded = ExcludedRows(np.flatnonzero(excluded_mask), {c: int(m.sum()) for c, m in bad.items() if m.any()})
    if excluded_mask.all():
        column = max(excluded.columns, key=excluded.columns.get)
        raise InputError(f"{path}: no usable golden row: every row has NaN/inf or impossible values (e.g. column '{column}')")
    keep = ~excluded_mask
    usable = frame[keep].reset_index(drop=True) if excluded_mask.any() else frame
    target = target[keep]
    if spec.task == "classification":
        target = target.astype(np.int64)
    return GoldenSet(
        path=path, frame=usable, inputs=(np.ascontiguousarray(features[keep]),), target=target,
        sha256=fingerprint(path, frame), all_rows=frame if excluded_mask.any() else None, excluded=excluded,
        feature_names=tuple(spec.features),
    )


def is_feature_column(column) -> bool:
    """Numbers, or booleans (0 and 1): what a feature column may hold, the golden set's and the reference's."""
    import pandas as pd

    return _is_boolean(column) or pd.api.types.is_numeric_dtype(column)


def _as_number(column):
    """A feature column as the models read it: booleans are 0 and 1 (a missing one NaN, an excluded row),
    as a boolean target's classes are; other columns as they are."""
    return column.astype("float64") if _is_boolean(column) else column


def _numbers_of(frame, columns: list[str]):
    """The columns as one float32 (rows, columns) matrix, booleans as 0 and 1; the frame keeps them as stored."""
    import numpy as np

    booleans = {c: _as_number(frame[c]) for c in columns if _is_boolean(frame[c])}
    return (frame[columns].assign(**booleans) if booleans else frame[columns]).to_numpy(dtype=np.float32)


def _is_boolean(column) -> bool:
    """Booleans: numpy's or pandas' nullable dtype, or objects that are all True/False where not missing."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return True
    if not pd.api.types.is_object_dtype(column):
        return False
    present = column.dropna()
    return len(present) > 0 and all(isinstance(value, (bool, np.bool_)) for value in present)


def is_text(column) -> bool:
    """Text, object or category values: what class labels stored as names are read as."""
    import pandas as pd

    dtype = column.dtype
    return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)


UNKNOWN_LABELS_SHOWN = 3


def unknown_labels(counts: dict[str, int]) -> str:
    """Labels that are no class, the most frequent first: "the labels 'eel' (4 rows), 'Ant' (1 row)"."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{label!r} ({count:,} row{'s' if count != 1 else ''})" for label, count in ordered[:UNKNOWN_LABELS_SHOWN])
    more = f" and {len(ordered) - UNKNOWN_LABELS_SHOWN} more" if len(ordered) > UNKNOWN_LABELS_SHOWN else ""
    return f"the label{'s' if len(ordered) > 1 else ''} {shown}{more}"


def class_ids(column: pd.Series, classes: list[str], where: str) -> pd.Series:
    """Class labels as their ids, the positions of ``[model] classes`` (float64; a missing label is NaN, an
    excluded row). A label that is not a class is an input error naming it: a typo or a class the
    config forgot would otherwise drop rows from every metric."""
    import pandas as pd

    labels = column.astype("string")
    ids = labels.map({name: float(i) for i, name in enumerate(classes)}, na_action="ignore").astype("float64")
    unknown = ids.isna() & labels.notna()
    if unknown.any():
        counts = labels[unknown].value_counts()
        raise InputError(f"{where} has {unknown_labels(dict(zip(counts.index, counts.tolist())))}, not in [model] classes "
                         f"({', '.join(classes)})")
    return pd.Series(ids.to_numpy(), index=column.index, name=column.name)


def _require_numeric(column, path, what: str, hint: str | None = None) -> None:
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(column):  # booleans were made 0 and 1 (features) or classes (target)
        raise InputError(f"{path}: {what} is not numeric{_first_not_number(column)}" + (f" ({hint})" if hint else ""))


def _first_not_number(column) -> str:
    """Where a text column first holds a value that is no number: "; data row 12 holds 'n/a'" (from 1); the
    value says why (a decimal comma, a unit, a placeholder, class names)."""
    import pandas as pd

    present = column.dropna()
    not_numbers = pd.to_numeric(present, errors="coerce").isna().to_numpy()
    if not not_numbers.any():
        return ""
    position = int(not_numbers.argmax())
    value = str(present.iloc[position])
    shown = value if len(value) <= 40 else value[:40] + "…"
    return f"; data row {column.index.get_loc(present.index[position]) + 1:,} holds {shown!r}"


def feature_matrix(frame: pd.DataFrame, columns: list[str], path) -> np.ndarray:
    """float32 (N, F) in ``columns`` order; every column present, numeric and finite."""
    import numpy as np

    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise _missing_columns(path, missing, frame.columns)
    for column in columns:
        _require_numeric(_as_number(frame[column]), path, f"feature column '{column}'")
    with np.errstate(over="ignore"):  # a value beyond float32's range is infinite as the models read it: refused below
        features = _numbers_of(frame, columns)
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        column = columns[int(np.argmax(~np.isfinite(features[bad_rows][0])))]
        raise InputError(
            f"{path}: feature column '{column}' has NaN or infinite values "
            f"({int(bad_rows.sum())} row(s), first at row {int(np.argmax(bad_rows))})"
        )
    return features


# -- tensor golden sets --------------------------------------------------------------------------------


def _check_npz_headers(path: Path) -> None:
    """Each array's header against the bytes its entry holds, before numpy reads one: numpy allocates the
    shape a header declares first, so a 200-byte entry declaring (3000, 10⁹) int64 asked for 21.8 TiB
    (exit 4), and one declaring less than gigabytes got them. An object array is named as refused (it would
    be unpickled), a truncated one as truncated."""
    import zipfile

    import numpy as np
    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as entry:
                    version = npy.read_magic(entry)
                    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read_header(entry, max_header_size=10_000)
                    header_bytes = entry.tell()
                if dtype.hasobject:
                    raise InputError(f"{path}: array {name!r} is a pickled object array, which is refused (unpickling can run "
                                     "code); store numbers")
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                held = info.file_size - header_bytes
                if declared != held:
                    raise InputError(f"{path}: array {name!r} declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but "
                                     f"holds {held:,} bytes: a truncated or crafted file")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: cannot read .npz file: {first_line(error)}") from None


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` (never unpickled) or ``.safetensors`` file, by name."""
    import numpy as np

    if not path.exists():
        raise InputError(f"data file not found: {path}")
    require_regular_file(path, "data file")
    if path.suffix.lower() == ".npz":
        require_room_to_unpack(path, "data file")
        _check_npz_headers(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {}
                for name in archive.files:
                    try:
                        arrays[name] = archive[name]
                    except ValueError as error:  # an object array: loading it would unpickle
                        raise InputError(
                            f"{path}: array {name!r} is a pickled object array, which is refused (unpickling can run "
                            f"code); store numbers ({first_line(error, 80)})"
                        ) from None
                return arrays
        except InputError:
            raise
        except (OSError, ValueError, EOFError) as error:
            raise InputError(f"{path}: cannot read .npz file: {first_line(error)}") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise InputError(f"{path}: cannot read .safetensors file: {first_line(error)}") from None
    import torch

    # numpy has no bfloat16: such arrays are widened to float32, which holds every bfloat16 value exactly.
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in tensors.items()}


def input_arrays(arrays: dict[str, np.ndarray], source) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """``inputs`` alone, or ``inputs.0``, ``inputs.1``, … (contiguous from 0), in positional order."""
    numbered = sorted((name for name in arrays if name.startswith("inputs.")), key=lambda n: (len(n), n))
    if "inputs" in arrays and numbered:
        raise InputError(f"{source}: has both 'inputs' and {numbered[0]!r}: use one array 'inputs' or numbered 'inputs.0', 'inputs.1', …")
    if "inputs" in arrays:
        names = ["inputs"]
    else:
        names = [f"inputs.{k}" for k in range(len(numbered))]
        if not numbered or sorted(numbered) != sorted(names):
            have = ", ".join(sorted(arrays)) or "none"
            raise InputError(f"{source}: no array 'inputs' (or 'inputs.0', 'inputs.1', … from 0 without gaps); arrays: {have}")
    return tuple(names), tuple(arrays[name] for name in names)


def as_model_input(array: np.ndarray, name: str, source) -> np.ndarray:
    import numpy as np

    if array.ndim == 0:
        raise InputError(f"{source}: array {name!r} is a single number, not one sample per row")
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype.kind in "iub":
        return np.ascontiguousarray(array)
    raise InputError(f"{source}: array {name!r} has dtype {array.dtype}, not numbers")


def _tensor_golden(source, arrays: dict[str, np.ndarray], spec: ModelSpec, metadata: str | None, sha256: str,
                   max_rows: int | None = None) -> GoldenSet:
    import numpy as np
    import pandas as pd

    if max_rows is not None:
        arrays = {name: array[:max_rows] if array.ndim else array for name, array in arrays.items()}

    names, raw_inputs = input_arrays(arrays, source)
    if "target" not in arrays:
        raise InputError(f"{source}: no array 'target'; arrays: {', '.join(sorted(arrays))}")
    inputs = tuple(as_model_input(array, name, source) for name, array in zip(names, raw_inputs))
    target = arrays["target"]
    if target.dtype.kind not in "iufb":
        raise InputError(f"{source}: array 'target' has dtype {target.dtype}, not numbers")
    n = len(target) if target.ndim else 0
    for name, array in zip(names, inputs):
        if len(array) != n:
            raise InputError(f"{source}: array {name!r} has {len(array)} samples but 'target' has {n}")
    if n == 0:
        raise InputError(f"{source}: the golden set has no samples")
    if spec.task == "classification" and target.ndim != 1:
        raise InputError(f"{source}: a classification 'target' must be (N,) class ids, not shape {target.shape}")
    if target.ndim > 2:
        raise InputError(f"{source}: a regression 'target' must be (N,) or (N, K), not shape {target.shape}")
    target = target.astype(np.float64)

    bad: dict[str, np.ndarray] = {}
    for name, array in zip(names, inputs):
        if array.dtype.kind == "f":
            bad[name] = ~np.isfinite(array.reshape(n, -1)).all(axis=1)
    bad_target = ~np.isfinite(target.reshape(n, -1)).all(axis=1)
    if spec.task == "classification":
        with np.errstate(invalid="ignore"):
            bad_target |= (target < 0) | (target != np.floor(target))
    bad["target"] = bad_target
    excluded_mask = np.logical_or.reduce(list(bad.values()))
    excluded = ExcludedRows(np.flatnonzero(excluded_mask), {c: int(m.sum()) for c, m in bad.items() if m.any()})
    if excluded_mask.all():
        raise InputError(f"{source}: no usable golden sample: every sample has NaN/inf or impossible values")

    frame = _metadata(metadata, n, max_rows) if metadata is not None else pd.DataFrame(index=pd.RangeIndex(n))
    keep = ~excluded_mask
    if excluded_mask.any():
        inputs = tuple(np.ascontiguousarray(array[keep]) for array in inputs)
        target = target[keep]
        usable = frame[keep].reset_index(drop=True)
    else:
        usable = frame
    if spec.task == "classification":
        target = target.astype(np.int64)
    return GoldenSet(
        path=source, frame=usable, inputs=inputs, target=target, sha256=sha256,
        all_rows=frame if excluded_mask.any() else None, excluded=excluded, tabular=False, input_names=names,
    )


def _metadata(source: str, n: int, max_rows: int | None = None) -> pd.DataFrame:
    frame = read_table(source)
    if max_rows is not None:
        frame = frame.head(max_rows)
    if len(frame) != n:
        raise InputError(f"{source}: the metadata table has {len(frame)} rows but the golden set has {n} samples (same rows, same order)")
    return frame.reset_index(drop=True)


DATASET_BATCH_ITEMS = 1024  # items a dataset factory's DataLoader collates at a time


def _load_dataset_golden(reference: str, spec: ModelSpec, metadata: str | None, max_rows: int | None = None) -> GoldenSet:
    """A golden set from the user's ``torch.utils.data.Dataset`` of (inputs, target[, meta])."""
    import numpy as np
    import torch

    from .factories import call_factory

    dataset = call_factory(reference, "[data] dataset")
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InputError(f"[data] dataset {reference} returned {type(dataset).__name__}, not a map-style torch Dataset")
    try:
        items = len(dataset)
    except Exception as error:  # the user's __len__ failed
        raise InputError(f"[data] dataset {reference}: len() failed: {type(error).__name__}: {first_line(error)}") from None
    if max_rows is not None and max_rows < items:  # only the items gated on are read
        dataset, items = torch.utils.data.Subset(dataset, range(max_rows)), max_rows
    loader = torch.utils.data.DataLoader(dataset, batch_size=DATASET_BATCH_ITEMS, shuffle=False)
    inputs: list[list[np.ndarray]] = []
    targets, metas = [], []
    try:
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise InputError(f"[data] dataset {reference}: items must be (inputs, target) or (inputs, target, meta)")
            parts = batch[0] if isinstance(batch[0], (tuple, list)) else [batch[0]]
            inputs.append([torch.as_tensor(part).numpy() for part in parts])
            targets.append(torch.as_tensor(batch[1]).numpy())
            if len(batch) == 3:
                metas.append({key: np.asarray(value) for key, value in dict(batch[2]).items()})
            if len(targets) == 1:  # the first batch tells what an item takes: the whole set must fit
                rows = len(targets[0])
                taken = sum(a.nbytes for a in inputs[0]) + targets[0].nbytes + sum(a.nbytes for a in (metas[0] if metas else {}).values())
                # Twice: the batches are held while they are joined into one array per input.
                require_room_for_items(items, 2 * taken / max(rows, 1), f"[data] dataset {reference}")
    except InputError:
        raise
    except Exception as error:  # the user's dataset code failed
        raise InputError(f"[data] dataset {reference} failed: {type(error).__name__}: {first_line(error)}") from None
    if not targets:
        raise InputError(f"[data] dataset {reference} is empty")
    width = len(inputs[0])
    arrays = {("inputs" if width == 1 else f"inputs.{k}"): np.concatenate([b[k] for b in inputs]) for k in range(width)}
    arrays["target"] = np.concatenate(targets)
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    golden = _tensor_golden(reference, arrays, spec, metadata, digest.hexdigest(), max_rows)
    if metas and metadata is None:
        import pandas as pd

        frame = pd.DataFrame({key: np.concatenate([m[key] for m in metas]) for key in metas[0]})
        frame = frame.head(len(golden.target) + (len(golden.excluded) if golden.excluded is not None else 0))
        keep = np.ones(len(frame), dtype=bool)
        if golden.excluded is not None:
            keep[golden.excluded.rows] = False
        from dataclasses import replace

        golden = replace(golden, frame=frame[keep].reset_index(drop=True), all_rows=frame if not keep.all() else None)
    return golden
