"""Golden data: a CSV or Parquet file with the model's feature columns and the target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .config import ModelSpec

SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class GoldenSet:
    path: Path | str  # a file, or a SQL source "URL#table"
    frame: pd.DataFrame
    features: np.ndarray  # float32 (N, F), columns in the model's feature order
    target: np.ndarray  # float64 for regression, int64 class ids for classification
    sha256: str

    def __len__(self) -> int:
        return len(self.target)

    def describe(self) -> dict:
        return {"path": str(self.path), "rows": len(self), "sha256": self.sha256}


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
        raise InputError(f"{source}: cannot read SQL table: {str(error).splitlines()[0]}") from None


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
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot read data: {first_line}") from None
    except Exception as error:  # pyarrow raises its own hierarchy for corrupt Parquet files
        if type(error).__module__.startswith("pyarrow"):
            raise InputError(f"{path}: cannot read Parquet data: {error}") from None
        raise


def load_golden(path: Path | str, spec: ModelSpec) -> GoldenSet:

    path = path if is_sql(path) else Path(path)
    frame = read_table(path)
    if frame.empty:
        raise InputError(f"{path}: the golden set has no rows")
    missing = [column for column in [*spec.features, spec.target] if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")

    features = feature_matrix(frame, spec.features, path)
    target = _target(frame[spec.target], path, spec)
    return GoldenSet(path=path, frame=frame, features=features, target=target, sha256=fingerprint(path, frame))


def feature_matrix(frame: pd.DataFrame, columns: list[str], path) -> np.ndarray:
    """float32 (N, F) in ``columns`` order; every column present, numeric and finite."""
    import numpy as np
    import pandas as pd

    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s): {', '.join(missing)}")
    for column in columns:
        if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            raise InputError(f"{path}: feature column '{column}' is not numeric")
    features = frame[columns].to_numpy(dtype=np.float32)
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        column = columns[int(np.argmax(~np.isfinite(features[bad_rows][0])))]
        raise InputError(
            f"{path}: feature column '{column}' has NaN or infinite values "
            f"({int(bad_rows.sum())} row(s), first at row {int(np.argmax(bad_rows))})"
        )
    return features


def _target(column: pd.Series, path: Path, spec: ModelSpec) -> np.ndarray:
    import numpy as np
    import pandas as pd

    name = spec.target
    if pd.api.types.is_bool_dtype(column):
        column = column.astype("int64")
    if not pd.api.types.is_numeric_dtype(column):
        raise InputError(f"{path}: target column '{name}' is not numeric")
    values = column.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        count = int((~np.isfinite(values)).sum())
        raise InputError(f"{path}: target column '{name}' has {count} NaN or infinite value(s)")
    if spec.task == "regression":
        return values
    labels = values.astype(np.int64)
    if (labels != values).any() or (labels < 0).any():
        raise InputError(f"{path}: classification target '{name}' must hold class ids 0, 1, 2, …")
    return labels
