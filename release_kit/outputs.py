"""Files a command writes: checked before any work starts, written only at the end, atomically.

A command names its outputs up front (:class:`Outputs`); :meth:`Outputs.check` refuses, as an input error,
any path that could not be written (a missing or read-only folder, a directory in the way), so a gate never
runs for minutes and then fails to save its result, and nothing is written half-way. :func:`write_atomic`
replaces a file in one rename and keeps an existing file's mode (a new one gets the umask's).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
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


def check_writable(path: Path, what: str) -> None:
    """Refuse now (InputError naming ``what``) a path that could not be written later (missing folders
    are created when it is written)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path} ({what}): it is a directory")
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


class Outputs:
    """The files one command will write: declared first, checked together, written together at the end."""

    def __init__(self) -> None:
        self._declared: dict[Path, str] = {}
        self._pending: list[tuple[Path, str, str]] = []

    def declare(self, path: Path | None, what: str) -> None:
        """A file this command will write (None: an option not given)."""
        if path is not None:
            self._declared[Path(path)] = what

    def check(self) -> None:
        for path, what in self._declared.items():
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
