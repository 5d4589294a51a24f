"""Golden data: a CSV or Parquet file with the model's feature columns and the target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, first_line

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .config import ModelSpec
    from .report import DatasetRef

SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class ExcludedRows:
    """Golden rows no model can be judged on: a feature or the target is NaN or infinite, or a
    classification target is not a class id. The data stage reports them (and blocks); the other stages
    run on the remaining rows and say how many they left out."""

    rows: np.ndarray  # row numbers in the file (0-based, header excluded)
    columns: dict[str, int]  # column → number of rows with a bad value there

    def __len__(self) -> int:
        return len(self.rows)

    def note(self) -> str:
        """The sentence other stages append to a summary ("" when nothing was excluded)."""
        if not len(self):
            return ""
        return f" ({len(self)} golden row(s) with NaN/inf or impossible values left out; see data::golden_rows)"


@dataclass(frozen=True)
class GoldenSet:
    path: Path | str  # a file, or a SQL source "URL#table"
    frame: pd.DataFrame  # the usable rows (index reset), aligned with features and target
    features: np.ndarray  # float32 (N, F), columns in the model's feature order
    target: np.ndarray  # float64 for regression, int64 class ids for classification
    sha256: str
    all_rows: pd.DataFrame | None = None  # every row as read, for the data stage (None: same as frame)
    excluded: ExcludedRows | None = None

    def __len__(self) -> int:
        return len(self.target)

    @property
    def read(self) -> pd.DataFrame:
        """Every row as read from the source."""
        return self.frame if self.all_rows is None else self.all_rows

    @property
    def note(self) -> str:
        return self.excluded.note() if self.excluded is not None else ""

    def describe(self) -> DatasetRef:
        from .report import DatasetRef

        return DatasetRef(path=str(self.path), rows=len(self.read), sha256=self.sha256, used_rows=len(self),
                          excluded_rows=0 if self.excluded is None else len(self.excluded))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_sql(source: str | Path) -> bool:
    return "://" in str(source)


def split_sql(source: str) -> tuple[str, str]:
    """``sqlite:///data/golden.db#golden`` → (connection URL, table)."""
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
            return pd.read_sql_table(table, connection)
    except ValueError as error:  # pandas: table not found
        raise InputError(f"{source}: {error}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        raise InputError(f"{source}: cannot read SQL table: {first_line(error)}") from None


def fingerprint(source: str | Path, frame: pd.DataFrame) -> str:
    """Content hash of a file; for a SQL table (no file to hash), a hash of the rows as read."""
    if not is_sql(source):
        return file_sha256(Path(source))
    import pandas as pd

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def read_table(path: Path | str) -> pd.DataFrame:
    import pandas as pd

    if is_sql(path):
        return _read_sql(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported data format {suffix or '(no suffix)'!r} (use .csv or .parquet)")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the data file is empty") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: cannot read data: {first_line(error)}") from None
    except Exception as error:  # pyarrow raises its own hierarchy for corrupt Parquet files
        if type(error).__module__.startswith("pyarrow"):
            raise InputError(f"{path}: cannot read Parquet data: {error}") from None
        raise


def load_golden(path: Path | str, spec: ModelSpec) -> GoldenSet:
    """Read the golden set. A missing or non-numeric column is an input error; rows with NaN/inf (or, for
    classification, a target that is no class id) are set aside in ``excluded`` for the data stage."""
    import numpy as np
    import pandas as pd

    path = path if is_sql(path) else Path(path)
    frame = read_table(path)
    if frame.empty:
        raise InputError(f"{path}: the golden set has no rows")
    missing = [column for column in [*spec.features, spec.target] if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")
    for column in spec.features:
        _require_numeric(frame[column], path, f"feature column '{column}'")
    target_column = frame[spec.target]
    if pd.api.types.is_bool_dtype(target_column):
        target_column = target_column.astype("int64")
    _require_numeric(target_column, path, f"target column '{spec.target}'")

    features = frame[spec.features].to_numpy(dtype=np.float32)
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
        path=path, frame=usable, features=np.ascontiguousarray(features[keep]), target=target,
        sha256=fingerprint(path, frame), all_rows=frame if excluded_mask.any() else None, excluded=excluded,
    )


def _require_numeric(column, path, what: str) -> None:
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise InputError(f"{path}: {what} is not numeric")


def feature_matrix(frame: pd.DataFrame, columns: list[str], path) -> np.ndarray:
    """float32 (N, F) in ``columns`` order; every column present, numeric and finite."""
    import numpy as np

    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")
    for column in columns:
        _require_numeric(frame[column], path, f"feature column '{column}'")
    features = frame[columns].to_numpy(dtype=np.float32)
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        column = columns[int(np.argmax(~np.isfinite(features[bad_rows][0])))]
        raise InputError(
            f"{path}: feature column '{column}' has NaN or infinite values "
            f"({int(bad_rows.sum())} row(s), first at row {int(np.argmax(bad_rows))})"
        )
    return features
