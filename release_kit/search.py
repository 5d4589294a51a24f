"""The Hypothesis search behind the outlier stage: find an input that breaks a property, within a budget.

Deterministic (derandomised, no example database) and bounded by seconds as well as examples. What it
finds is kept even when the budget ends mid-shrink: Hypothesis would otherwise call the cut-short shrink
flaky and report nothing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    example: np.ndarray | None  # the (shrunk) counterexample, None when none was found
    tried: int
    seconds: float
    timed_out: bool
    features: tuple[str, ...]

    def words(self) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in zip(self.features, self.example))

    def describe(self) -> dict:
        return {
            "tried": self.tried,
            "seconds": round(self.seconds, 3),
            "stopped_by_time_budget": self.timed_out,
            "counterexample": None if self.example is None else dict(zip(self.features, map(float, self.example))),
        }


@contextmanager
def _scratch_storage() -> Iterator[None]:
    """Hypothesis's storage in a temporary folder for the search's length: Hypothesis caches the constants of
    the loaded modules under ``.hypothesis/`` in the working directory, which would leave a folder in the
    user's project (no example database is kept: ``database=None``)."""
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    previous = storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="release-kit-hypothesis-") as scratch:
        set_hypothesis_home_dir(scratch)
        try:
            yield
        finally:
            set_hypothesis_home_dir(previous)


class _OutOfTime(Exception):
    """Raised in the search's condition past its time budget, to end Hypothesis's search."""


def search(strategy: Any, violates: Callable[[np.ndarray], bool], *, seconds: float, max_examples: int,
           features: list[str] | tuple[str, ...]) -> SearchResult:
    """Hypothesis looks for a row that ``violates``, and shrinks what it finds to a minimal example."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis.errors import HypothesisException, InvalidArgument, NoSuchExample

    from .errors import ReleaseKitError

    started = time.monotonic()
    tried = 0
    timed_out = False
    smallest: np.ndarray | None = None

    def condition(row: np.ndarray) -> bool:
        nonlocal tried, timed_out, smallest
        if time.monotonic() - started > seconds:
            # Past the budget the search ends on the smallest row found: Hypothesis would go on drawing up
            # to max_examples rows (or shrinking) if each were merely declined.
            timed_out = True
            raise _OutOfTime
        tried += 1
        found = violates(row)
        if found:
            row = np.array(row, copy=True)
            if smallest is None or float(np.abs(row).sum()) < float(np.abs(smallest).sum()):
                smallest = row
        return found

    options = settings(max_examples=max_examples, database=None, derandomize=True, deadline=None,
                       suppress_health_check=list(HealthCheck))
    try:
        with _scratch_storage():
            example = find(strategy, condition, settings=options)
    except (NoSuchExample, _OutOfTime):
        example = None
    except InvalidArgument as error:  # a strategy built wrong: a bug to report, never "nothing found"
        raise ReleaseKitError(f"the search's strategy is invalid: {error}") from None
    except HypothesisException:  # a shrink cut short can look flaky to Hypothesis: keep what was found
        example = None
    if example is None:
        example = smallest
    return SearchResult(example, tried, time.monotonic() - started, timed_out, tuple(features))
