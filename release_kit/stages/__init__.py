"""Built-in stages. Each is one module with the same shape:

``NAME``: the stage's name in reports; ``checks(gate) -> list[StageCheck]``: the checks it contributes,
each a named callable returning a :class:`~release_kit.report.CheckResult`. The engine collects every
StageCheck as a pytest item, next to the user's own tests in ``checks/``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from collections.abc import Callable

from ..errors import InputError
from ..report import CheckResult

BUILTIN = {
    "quality": "release_kit.stages.quality",
    "outliers": "release_kit.stages.outliers",
    "data": "release_kit.stages.data",
    "performance": "release_kit.stages.performance",
}


@dataclass(frozen=True)
class StageCheck:
    name: str
    run: Callable[[], CheckResult]


class Once:
    """A computation several checks share (one validation, one measurement): run on first use, then kept."""

    def __init__(self, run: Callable[[], Any]):
        self._run, self._done, self._value = run, False, None

    def __call__(self) -> Any:
        if not self._done:
            self._value, self._done = self._run(), True
        return self._value


def load_stage(name: str) -> ModuleType:
    if name not in BUILTIN:
        raise InputError(f"unknown stage {name!r} (known: {', '.join(BUILTIN)})")
    return importlib.import_module(BUILTIN[name])
