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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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


@runtime_checkable
class Stage(Protocol):
    """The shape of a stage module (see the module docstring): :func:`load_stage` holds each to it."""

    NAME: str

    def checks(self, gate: GateContext) -> list[StageCheck]: ...


def no_baseline(stage: str, name: str, measured: str = "") -> CheckResult:
    """The first release's skip: there is nothing to compare with (``measured``: what was still measured)."""
    prefix = f"{measured}; " if measured else ""
    return CheckResult(stage, name, Status.SKIP, f"{prefix}no baseline to compare against (first release)")


# A tensor set's details table shows at most this many metadata columns (the table must fit a page).
EXAMPLE_METADATA_COLUMNS = 6


def example_rows(gate: GateContext, rows, title: str) -> Table:
    """A details table of golden rows: a table's features (a tensor set's sample index and metadata), the
    truth and both models' predictions."""
    golden = gate.golden
    baseline = gate.predictions.baseline
    if golden.tabular:
        columns = ["row", *golden.feature_names]
    else:
        metadata = [str(c) for c in golden.frame.columns[:EXAMPLE_METADATA_COLUMNS]]
        columns = ["sample", *metadata]
    body = []
    for row in map(int, rows):
        described = list(map(float, golden.features[row])) if golden.tabular else [_cell(golden.frame.iloc[row, k]) for k in range(len(columns) - 1)]
        body.append([
            row, *described, _scalar(golden.target[row], gate),
            None if baseline is None else _scalar(baseline[row], gate), _scalar(gate.predictions.candidate[row], gate),
        ])
    return Table(title, [*columns, "truth", "baseline", "candidate"], body)


def streamed_rows(gate: GateContext, arrays: dict, rows, title: str) -> Table:
    """Like :func:`example_rows`, for rows a streamed scan kept outside the sample (``features``, ``target``,
    ``candidate``, ``baseline`` arrays), with each row's loss change when ``delta`` is given."""
    changes = "delta" in arrays
    body = [
        [*map(float, arrays["features"][row]), _scalar(arrays["target"][row], gate),
         _scalar(arrays["baseline"][row], gate) if "baseline" in arrays else None, _scalar(arrays["candidate"][row], gate),
         *([float(arrays["delta"][row])] if changes else [])]
        for row in map(int, rows)
    ]
    return Table(title, [*gate.golden.feature_names, "truth", "baseline", "candidate", *(["loss change"] if changes else [])], body)


def _scalar(value, gate: GateContext):
    """A regression prediction as a float (several outputs as a list); class probabilities of a tensor set as
    "class (probability)", of a table as the highest class's probability."""
    if value.ndim == 0:
        if gate.config.model.task == "classification" and not gate.golden.tabular:
            return gate.config.model.class_name(int(value))
        return float(value)
    if gate.config.model.task == "regression":
        return "[" + ", ".join(f"{float(v):.4g}" for v in value) + "]"
    if gate.golden.tabular:
        return float(value.max())
    best = int(value.argmax())
    return f"{gate.config.model.class_name(best)} ({float(value[best]):.2f})"


def _cell(value):
    return value.item() if hasattr(value, "item") else value


def load_stage(name: str) -> Stage:
    if name not in BUILTIN:
        raise InputError(f"unknown stage {name!r} (known: {', '.join(BUILTIN)})")
    module = importlib.import_module(BUILTIN[name])
    if not isinstance(module, Stage):  # a module that lacks NAME or checks is a bug here, not the user's input
        raise TypeError(f"{module.__name__} does not follow the stage protocol (NAME, checks)")
    return module
