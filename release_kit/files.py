"""Files the gate reads and does not trust: their content hashes, read in blocks, whether they fit in the
memory available once unpacked, their column names, and documents (JSON, TOML) read whole and parsed.

Below every reader (the tables, the streamed Parquet sets, the models, the registry's downloads), which
import it and nothing else of each other for it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

# A JSON or TOML document read whole (a report, an expectation suite, a config, stored timings) is parsed into
# Python objects several times its text's size; one larger than this is no document release-kit wrote or a
# person edits, and is refused before it is read, where reading it could take the job's memory.
DOCUMENT_MAX_BYTES = 256 << 20


def read_document(path: Path, what: str) -> str:
    """A document's text, UTF-8. Only a regular file of at most :data:`DOCUMENT_MAX_BYTES` is read: a FIFO or
    a device (``--report /dev/zero``) would be read forever. A missing file raises ``FileNotFoundError`` (each
    caller names what is missing); anything else wrong is an InputError naming ``what`` and the path."""
    try:
        # Opened without blocking: opening a FIFO blocks until something writes to it.
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise InputError(f"cannot read {what} {path}: not a regular file")
    with os.fdopen(handle, "rb") as stream:
        try:
            data = stream.read(DOCUMENT_MAX_BYTES + 1)
        except OSError as error:
            raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(data) > DOCUMENT_MAX_BYTES:
        raise InputError(f"cannot read {what} {path}: it holds more than {byte_size(DOCUMENT_MAX_BYTES)}, which no {what} needs")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"cannot read {what} {path}: {error}") from None


def require_regular_file(path: Path, what: str) -> None:
    """``path`` (links followed) must be a regular file: a device (a model committed as a link to
    ``/dev/zero``) or a FIFO is read forever, where the gate would hold its job until the job's timeout."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise InputError(f"{what} {path} is not a regular file (a device, FIFO or socket is never read to its end)")


def parse_document(parse: Callable[[str], Any], text: str | bytes, what: str) -> Any:
    """``parse(text)`` (``json.loads``, ``tomllib.loads``), where a document nested deeper than Python's
    recursion limit (``[[[[…]]]]``, a few hundred KB) is an InputError naming ``what``, not a crash: both
    parsers recurse per level. The parser's own errors propagate for the caller to word."""
    try:
        return parse(text)
    except RecursionError:
        raise InputError(f"cannot read {what}: it is nested too deeply") from None


def file_sha256(path: Path, between_blocks: Callable[[], bool] | None = None, block_bytes: int = 1 << 20) -> str:
    """The file's sha256, read ``block_bytes`` at a time. ``between_blocks`` is called after each block (it may
    wait); once it returns False the hash is abandoned (:class:`HashStopped`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
            if between_blocks is not None and not between_blocks():
                raise HashStopped(str(path))
    return digest.hexdigest()


class HashStopped(Exception):
    """A hash abandoned half-way: its run ended first."""


def require_room_to_unpack(path: Path, what: str) -> None:
    """A zip archive (a TorchScript or torch.export model, a ``.npz`` data set) may hold compressed entries,
    which torch and numpy read too: a 585 KiB file unpacked to 600 MB of weights, and to any size a job the
    kernel kills (no exit code of ours). One whose entries unpack to more than the memory available is
    refused before it is read; ``what`` names the file in the error ("candidate model", "data file")."""
    import zipfile

    from .environment import available_memory_bytes

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # its reader says what is wrong with it
    available = available_memory_bytes()
    if available is not None and unpacked > available:
        raise InputError(f"{what} {path} unpacks to {byte_size(unpacked)} ({byte_size(path.stat().st_size)} on disk), "
                         f"more than the memory available ({byte_size(available)})")


# A compressed CSV's decoder by suffix (zstandard is optional: without it such a file is not read at all).
_STREAM_DECODERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma", ".zst": "zstandard"}


def require_room_to_read(path: Path, what: str) -> None:
    """A file read whole (a CSV, compressed or not) must fit in the memory available once unpacked: a
    compressed one is decompressed in blocks and counted, stopping past the limit (its header's size can
    lie, or wrap at 4 GiB), a zip by its entries' sizes; one that would not fit is refused before it is
    read, instead of the job being killed by the kernel (no exit code of ours)."""
    import importlib

    from .environment import available_memory_bytes

    available = available_memory_bytes()
    if available is None:
        return
    suffix = path.suffix.lower()
    if suffix == ".zip":
        require_room_to_unpack(path, what)
        return
    decoder = _STREAM_DECODERS.get(suffix)
    on_disk = path.stat().st_size
    if decoder is None:
        if on_disk > available:
            raise InputError(f"{what} {path} holds {byte_size(on_disk)}, more than the memory available ({byte_size(available)})")
        return
    try:
        module = importlib.import_module(decoder)
    except ImportError:
        return  # the reader says what is missing
    unpacked = 0
    try:
        opened = module.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True) if decoder == "zstandard" else module.open(path, "rb")
        with opened as stream:
            while unpacked <= available and (block := stream.read(1 << 20)):
                unpacked += len(block)
    except Exception:  # noqa: BLE001  a corrupt or truncated file, in each decoder's own error: the reader says what is wrong
        return
    if unpacked > available:
        raise InputError(f"{what} {path} unpacks to more than the memory available ({byte_size(available)}; {byte_size(on_disk)} on disk)")


def byte_size(size: int) -> str:
    """A size in the errors that name one: GiB from 1 GiB up, else MiB."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def table_bytes(rows: int, columns: int) -> int:
    """What a table takes read whole into pandas: ~8 bytes a value, whatever a Parquet file's compression (a
    column of one repeated value is a few bytes on disk)."""
    return rows * columns * 8


def require_room_for_rows(rows: int, columns: int, name: str) -> None:
    """A table read whole (Parquet, from its footers; SQL, from ``COUNT(*)``): refused before it is read when
    it would take more than the memory available (:func:`table_bytes`), where the kernel would kill the job
    (no exit code of ours)."""
    _require_room(table_bytes(rows, columns), f"{name}: {rows:,} rows of {columns} columns")


def require_room_for_items(items: int, item_bytes: float, name: str) -> None:
    """A data set read item by item (a dataset factory's) whose items, at what its first items take, would
    need more than the memory available: refused before the rest are read."""
    _require_room(int(items * item_bytes), f"{name}: {items:,} items")


def _require_room(needed: int, what: str) -> None:
    from .environment import available_memory_bytes

    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InputError(f"{what} take ~{byte_size(needed)} read whole, more than the memory available ({byte_size(available)})")


def check_unique_columns(names, source: str) -> None:
    """InputError naming ``source`` if a column name is repeated: which one is meant would be a guess."""
    seen: set = set()
    repeated = list(dict.fromkeys(name for name in names if name in seen or seen.add(name)))
    if repeated:
        raise InputError(f"{source}: column name(s) repeated: {', '.join(map(str, repeated))}")
