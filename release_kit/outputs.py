"""Files a command writes: checked before any work starts, written only at the end, atomically.

A command names its outputs up front (:class:`Outputs`); :meth:`Outputs.check` refuses, as an input error,
any path that could not be written (a missing or read-only folder, a directory in the way), two outputs
that name one file, and an output that names a file the command reads (a typo that would replace the
golden set with a report) or lies in a directory it reads whole, so a gate never runs for minutes and then
fails to save its result, and nothing is written half-way. :func:`write_atomic`
replaces a file in one rename and keeps an existing file's mode (a new one gets the umask's); a device or
a pipe (``/dev/stdout``, ``/dev/null``, a FIFO) is written through instead: a rename would put a regular
file in the device's place (as root, ``/dev/null`` itself) or fail in ``/dev``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_stream(path: Path) -> bool:
    """Whether ``path`` (links followed) is a device, a pipe or a socket: written through, not replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    if is_stream(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """The lock file ``path`` held (``flock``, exclusive) for the block: processes on this machine that take
    it run the block one at a time. Its folders are created."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(path: Path, what: str) -> None:
    """Refuse now (InputError naming ``what``) a path that could not be written later (missing folders
    are created when it is written)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path} ({what}): it is a directory")
    if is_stream(path):
        if not os.access(path, os.W_OK):
            raise InputError(f"cannot write {path} ({what}): permission denied")
        return
    if path.exists():
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path} ({what}): permission denied")
        return
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path} ({what}): {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path} ({what}): permission denied in {folder}")


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same file on disk (through links too), or, for a file not
    written yet, the same absolute path."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.abspath(first) == os.path.abspath(second)


class Outputs:
    """The files one command will write: declared first, checked together, written together at the end."""

    def __init__(self) -> None:
        self._declared: dict[Path, str] = {}
        self._pending: list[tuple[Path, str, str]] = []

    def declare(self, path: Path | None, what: str) -> None:
        """A file this command will write (None: an option not given). Two outputs that name one file are
        an input error: one would overwrite the other."""
        if path is None:
            return
        for declared, other in self._declared.items():
            if same_file(declared, Path(path)):
                raise InputError(f"{other} and {what} both name {path}: one would overwrite the other")
        self._declared[Path(path)] = what

    def check(self, reads: dict[Path, str] | None = None) -> None:
        """Every output writable, and none of them one of the files the command ``reads`` (file → what it
        is, as the error names it) nor inside one of its directories."""
        for path, what in self._declared.items():
            for read, role in (reads or {}).items():
                if same_file(path, read):
                    raise InputError(f"{what} names {path}, {role}: it would be overwritten")
                if Path(read).is_dir() and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(read)):
                    # A file in a directory of golden Parquet files or of suites is read as one by the next run.
                    raise InputError(f"{what} names {path}, inside {role}: the next run would read it as one of them")
            check_writable(path, what)

    def add(self, path: Path | None, text: str) -> None:
        if path is None:
            return
        what = self._declared.get(Path(path), str(path))
        self._pending.append((Path(path), text, what))

    def write(self) -> None:
        for path, text, what in self._pending:
            try:
                write_atomic(path, text)
            except OSError as error:
                raise InputError(f"cannot write {path} ({what}): {error.strerror or error}") from None
        self._pending.clear()
