"""Built-in stages, and the one protocol they follow (:class:`Stage`), declared here once.

A stage is a module with:

- ``NAME``: the stage's name in reports (``quality::mae``);
- ``checks(gate) -> list[StageCheck]``: its *plan*. Planning is cheap: it validates the stage's config
  against the inputs (bad config or data is an :class:`~release_kit.errors.InputError`, exit 2, before
  any check runs) and builds shared lazy values (:class:`Once`), but runs no model (input checks that need
  a model call belong in :func:`release_kit.gate.prepare`). A check's callable does the work and returns a
  :class:`~release_kit.report.CheckResult`, never raising for a finding; its details' ``table`` and
  ``chart`` are :class:`~release_kit.report.Table` and :class:`~release_kit.report.Chart` values;
- optionally ``PYTEST_PLUGINS``: pytest plugins the stage's checks need in the gate's session.

The engine collects every StageCheck as a pytest item, next to the user's own tests in ``checks/``. What
stages share lives here: :func:`no_baseline` (the first-release skip) and :func:`example_rows` (the details
table of golden rows).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError
from ..report import CheckResult, Status, Table

if TYPE_CHECKING:
    from ..context import GateContext

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


class Stage(Protocol):
    """The shape of a stage module (see the module docstring)."""

    NAME: str

    def checks(self, gate: GateContext) -> list[StageCheck]: ...


def no_baseline(stage: str, name: str, measured: str = "") -> CheckResult:
    """The first release's skip: there is nothing to compare with (``measured``: what was still measured)."""
    prefix = f"{measured}; " if measured else ""
    return CheckResult(stage, name, Status.SKIP, f"{prefix}no baseline to compare against (first release)")


def example_rows(gate: GateContext, rows, title: str) -> Table:
    """A details table of golden rows: features, truth and both models' predictions."""
    features = gate.config.model.features
    columns = ["row", *features, "truth", "baseline", "candidate"]
    baseline = gate.predictions.baseline
    body = []
    for row in map(int, rows):
        body.append([
            row, *map(float, gate.golden.features[row]), float(gate.golden.target[row]),
            None if baseline is None else _scalar(baseline[row]), _scalar(gate.predictions.candidate[row]),
        ])
    return Table(title, columns, body)


def _scalar(value):
    """A regression prediction as a float; class probabilities as the highest class's probability."""
    return float(value) if value.ndim == 0 else float(value.max())


def load_stage(name: str) -> ModuleType:
    if name not in BUILTIN:
        raise InputError(f"unknown stage {name!r} (known: {', '.join(BUILTIN)})")
    return importlib.import_module(BUILTIN[name])
