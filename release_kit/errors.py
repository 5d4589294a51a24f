"""Errors a user can act on.

Every problem with the user's input (config, model file, data) is an :class:`InputError`: the CLI prints its
message as one line and exits 2, with no traceback unless ``--debug``.
"""

from __future__ import annotations


class ReleaseKitError(Exception):
    """Base class of release-kit's own errors."""


class InputError(ReleaseKitError):
    """Bad config, model or data supplied by the user (exit code 2)."""


class RegistryUnavailable(ReleaseKitError):
    """The run may not use the model registry (``--registry off``, or a fork's pull request without
    credentials) and a model needs it: the gate is skipped (exit code 3), which never counts as a pass."""
