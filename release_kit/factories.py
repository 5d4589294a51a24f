"""User factories named ``"package.module:function"`` in the config: a model's architecture for a safetensors
state dict, a golden ``torch.utils.data.Dataset``. They are the user's code, named by the user's config."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import InputError, first_line


def resolve_factory(reference: str) -> Callable[[], Any]:
    """``"package.module:function"`` → the function (imported from the working directory too)."""
    import sys

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InputError(f"factory {reference!r} is not of the form 'package.module:function'")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import factory module {module_name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InputError(f"factory {reference!r}: {module_name} has no callable {attribute!r}")
    return function


def call_factory(reference: str, what: str) -> Any:
    """Resolve and call a factory; its failure is bad input naming ``what`` (e.g. ``[data] dataset``)."""
    function = resolve_factory(reference)
    try:
        return function()
    except InputError:
        raise
    except Exception as error:  # the user's factory code failed
        raise InputError(f"{what} {reference} failed: {type(error).__name__}: {first_line(error)}") from None
