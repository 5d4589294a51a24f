"""Errors a user can act on, and the exit codes they map to.

Every problem with the user's input (config, model file, data) is an :class:`InputError`: the CLI prints its
message as one line and exits 2, with no traceback unless ``--debug``. Anything else that escapes is a bug in
release-kit (exit 4), never "blocked" (exit 1): only a gate decision blocks.
"""

from __future__ import annotations

import re

EXIT_PASS, EXIT_BLOCK, EXIT_INPUT, EXIT_SKIPPED, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # the shell's code for a SIGINT (Ctrl-C): no decision, so never 1


class ReleaseKitError(Exception):
    """Base class of release-kit's own errors."""


class InputError(ReleaseKitError):
    """Bad config, model or data supplied by the user (exit code 2)."""


class RegistryUnavailable(ReleaseKitError):
    """The run may not use the model registry (``--registry off``, or a fork's pull request without
    credentials) and a model needs it: the gate is skipped (exit code 3), which never counts as a pass."""


# TorchScript wraps the real error under a fixed first line and a C++/TorchScript traceback; the cause is
# the last "SomethingError: message" line.
_TORCHSCRIPT_WRAPPER = "The following operation failed in the TorchScript interpreter."
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


# Control characters but tab and line feed (C0, DEL, C1), and the bidirectional overrides and isolates that
# reorder what a reader sees ("Trojan Source").
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible_controls(text: str) -> str:
    """``text`` with its control characters written out (``\\x1b``, ``\\u202e``): a value from a golden file,
    a model or a report is untrusted, and an escape sequence printed raw is a command to the terminal that
    shows it (clear the screen, retitle the window, write the clipboard) or hides text from the reader."""
    return _CONTROLS.sub(lambda found: f"\\x{ord(found[0]):02x}" if ord(found[0]) < 0x100 else f"\\u{ord(found[0]):04x}", text)


def one_line(error: BaseException | str) -> str:
    """An error or reason release-kit prints, as one line: it may quote a column name or a check's name that
    holds a line break, and on a runner a line of its own starting with "::" would be a workflow command.
    Its control characters are written out (:func:`visible_controls`)."""
    return " ".join(visible_controls(str(error)).splitlines())


def first_line(error: BaseException, limit: int = 300) -> str:
    """The one line of an exception a user should read: its first line, or for TorchScript's interpreter
    errors the underlying cause; the exception's type when it has no message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    line = lines[0]
    if line.strip() == _TORCHSCRIPT_WRAPPER or "Traceback of TorchScript" in text:
        causes = [m for m in map(_ERROR_LINE.match, lines) if m]
        if causes:
            line = f"{causes[-1][1]}: {causes[-1][2]}"
    return line.strip()[:limit]
