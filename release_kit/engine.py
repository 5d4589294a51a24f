"""The engine: built-in stage checks and the user's ``checks/`` run as one in-process pytest session.

The :class:`GatePlugin` owns collection (so pytest never wanders the user's tree), adds each built-in
:class:`~release_kit.stages.StageCheck` as a :class:`StageItem`, provides the fixtures user checks use
(``gate``, ``candidate``, ``baseline``, ``golden``, ``predictions``, ``record_metric``), and turns every item's
outcome into a :class:`~release_kit.report.CheckResult`.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from collections.abc import Callable

import pytest

from .errors import InputError, ReleaseKitError
from .report import CheckResult, MetricDiff, Status
from .stages import StageCheck, load_stage

if TYPE_CHECKING:
    from .context import GateContext

USER_STAGE = "checks"
_RESULT = pytest.StashKey[CheckResult]()


class Listener(Protocol):
    """Progress callbacks, e.g. a terminal progress bar."""

    def rows(self, count: int, total: int, seconds: float) -> None:
        """A streamed golden set's scan: ``count`` of its ``total`` rows through both models, in ``seconds``."""

    def started(self, total: int) -> None:
        """The checks are about to run: ``total`` of them."""

    def finished(self, result: CheckResult) -> None:
        """One check ended."""


class StageCheckFailed(Exception):
    """Raised inside pytest so that a failing built-in check is a failing item there too."""


class StageCollector(pytest.Collector):
    def collect(self):  # items are added by the plugin, this node only groups them
        return []


class StageItem(pytest.Item):
    def __init__(self, *, check: StageCheck, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.stage = stage

    def runtest(self) -> None:
        started = time.perf_counter()
        result = self.check.run()
        result = _with_duration(result, time.perf_counter() - started)
        self.stash[_RESULT] = result
        if result.status is Status.SKIP:
            pytest.skip(result.summary)
        if result.status.blocks:
            raise StageCheckFailed(result.summary)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, StageCheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.stage}::{self.name}"


def _with_duration(result: CheckResult, seconds: float) -> CheckResult:
    from dataclasses import replace

    return replace(result, duration_s=round(seconds, 6))


class GatePlugin:
    def __init__(
        self,
        context: GateContext,
        planned: list[tuple[str, list[StageCheck]]],
        user_paths: list[Path],
        listener: Listener | None,
    ):
        self.context = context
        self.planned = planned
        self.user_paths = user_paths
        self.listener = listener
        self.results: dict[str, CheckResult] = {}
        self._recorded: dict[str, list[MetricDiff]] = {}
        self._order: list[str] = []

    # -- fixtures offered to user checks ---------------------------------------------------------
    @pytest.fixture(scope="session")
    def gate(self) -> GateContext:
        """Everything the gate knows: config, models, golden set, predictions."""
        return self.context

    @pytest.fixture(scope="session")
    def candidate(self):
        """The candidate :class:`~release_kit.models.LoadedModel`."""
        return self.context.candidate

    @pytest.fixture(scope="session")
    def baseline(self):
        """The baseline :class:`~release_kit.models.LoadedModel`; skips the test when there is none."""
        if self.context.baseline is None:
            pytest.skip("no baseline (first release)")
        return self.context.baseline

    @pytest.fixture(scope="session")
    def golden(self):
        """The golden :class:`~release_kit.data.GoldenSet`."""
        return self.context.golden

    @pytest.fixture(scope="session")
    def predictions(self):
        """:class:`~release_kit.context.Predictions` of both models on the golden set, computed once."""
        return self.context.predictions

    @pytest.fixture(scope="session")
    def input_domain(self):
        """The model's input domain for Hypothesis (:mod:`release_kit.strategies`): golden ranges + config."""
        from .strategies import domain_from_data

        config = self.context.config
        if not self.context.golden.tabular:
            pytest.skip("input_domain is a table's feature ranges; this golden set holds tensors")
        return domain_from_data(config.model.features, self.context.golden.features, config.outliers.domain)

    @pytest.fixture
    def record_metric(self, request) -> Callable[..., MetricDiff]:
        """Record a number into this check's report entry: ``record_metric("night_mae", 0.1, 0.12)``."""
        recorded = self._recorded.setdefault(request.node.nodeid, [])

        def record(
            name: str,
            candidate: float,
            baseline: float | None = None,
            *,
            higher_is_better: bool = False,
            ci: tuple[float, float] | None = None,
        ) -> MetricDiff:
            delta = None if baseline is None else float(candidate) - float(baseline)
            diff = MetricDiff(
                name, float(candidate), None if baseline is None else float(baseline), delta,
                None if ci is None else float(ci[0]), None if ci is None else float(ci[1]),
                higher_is_better=higher_is_better,
            )
            recorded.append(diff)
            return diff

        return record

    # -- collection ----------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        session.perform_collect([str(path) for path in self.user_paths])
        return True

    def pytest_collection_modifyitems(self, session: pytest.Session, config, items: list) -> None:
        stage_items = []
        for stage, stage_checks in self.planned:
            collector = StageCollector.from_parent(session, name=stage, nodeid=f"release-kit/{stage}")
            stage_items += [
                StageItem.from_parent(collector, name=check.name, check=check, stage=stage) for check in stage_checks
            ]
        items[:0] = stage_items

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.listener:
            self.listener.started(len(session.items))

    def pytest_collectreport(self, report) -> None:
        if report.failed:  # a user check file that does not import: an error, never a silent gap
            name = report.nodeid or "checks"
            self._finish(name, CheckResult(USER_STAGE, name, Status.ERROR, f"cannot collect: {_first_line(report)}"))

    # -- outcomes ------------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if isinstance(item, StageItem):
            if call.when == "call" and _RESULT in item.stash:
                self._finish(item.nodeid, item.stash[_RESULT])
            elif report.failed:  # the check itself raised: it could not run
                self._finish(item.nodeid, CheckResult(item.stage, item.name, Status.ERROR, f"error: {_excinfo_line(call)}"))
            return report
        self._user_outcome(item, call, report)
        return report

    def _user_outcome(self, item: pytest.Item, call: pytest.CallInfo, report) -> None:
        nodeid = item.nodeid
        name = _user_check_name(item)
        metrics = tuple(self._recorded.get(nodeid, ())) + _benchmark_metrics(item)
        previous = self.results.get(nodeid)
        if call.when == "setup":
            if report.failed:
                result = CheckResult(USER_STAGE, name, Status.ERROR, f"error in setup: {_excinfo_line(call)}")
            elif report.skipped:
                result = CheckResult(USER_STAGE, name, Status.SKIP, _skip_reason(report))
            else:
                return
        elif call.when == "call":
            if report.passed:
                result = CheckResult(USER_STAGE, name, Status.PASS, _doc_line(item) or "passed", metrics)
            elif report.skipped:
                result = CheckResult(USER_STAGE, name, Status.SKIP, _skip_reason(report), metrics)
            elif call.excinfo is not None and call.excinfo.errisinstance(AssertionError):
                result = CheckResult(USER_STAGE, name, Status.FAIL, _excinfo_line(call), metrics)
            else:
                result = CheckResult(USER_STAGE, name, Status.ERROR, f"error: {_excinfo_line(call)}", metrics)
            result = _with_duration(result, call.duration)
        else:
            if not report.failed or previous is None:
                return
            result = CheckResult(USER_STAGE, name, Status.ERROR, f"error in teardown: {_excinfo_line(call)}", metrics)
        self._finish(nodeid, result, replace=previous is not None)

    def _finish(self, nodeid: str, result: CheckResult, replace: bool = False) -> None:
        if nodeid not in self.results:
            self._order.append(nodeid)
        self.results[nodeid] = result
        if self.listener and not replace:
            self.listener.finished(result)

    def ordered_results(self) -> list[CheckResult]:
        return [self.results[nodeid] for nodeid in self._order]


def _benchmark_metrics(item: pytest.Item) -> tuple[MetricDiff, ...]:
    """A user check that used pytest-benchmark's ``benchmark`` fixture: its timing statistics (seconds)."""
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(getattr(fixture, "stats", None), "stats", None)
    if stats is None:
        return ()
    return tuple(
        MetricDiff(f"benchmark_{name}_s", float(getattr(stats, name))) for name in ("median", "mean", "stddev", "min", "max")
    )


def _doc_line(item: pytest.Item) -> str:
    doc = (getattr(getattr(item, "obj", None), "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _user_check_name(item: pytest.Item) -> str:
    """``checks/sub/test_x.py::test_a[x/y]`` → ``test_x.py::test_a[x/y]``: only the path is shortened."""
    path, separator, rest = item.nodeid.partition("::")
    return f"{path.rsplit('/', 1)[-1]}{separator}{rest}"


def _excinfo_line(call: pytest.CallInfo) -> str:
    if call.excinfo is None:
        return "unknown error"
    text = call.excinfo.exconly().strip().removeprefix("AssertionError: ")
    line = text.splitlines()[0] if text else call.excinfo.typename
    return line[:300]


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return "skipped"


def _first_line(report) -> str:
    text = str(report.longrepr).strip().splitlines()
    relevant = [line for line in text if line.startswith("E ")] or text or ["unknown error"]
    return relevant[-1].removeprefix("E ").strip()[:300]


@contextlib.contextmanager
def _own_session():
    """The check session is the gate's own, also when the gate runs inside a pytest-xdist worker (a team's
    test of its release config, run in parallel): pytest-benchmark reads the worker's environment variable,
    takes the session for a worker, and disables the user's benchmarks, which then time nothing."""
    worker = os.environ.pop("PYTEST_XDIST_WORKER", None)
    try:
        yield
    finally:
        if worker is not None:
            os.environ["PYTEST_XDIST_WORKER"] = worker


@contextlib.contextmanager
def _forget_user_modules(user_paths: list[Path]):
    """Unload check modules after the session: the next gate run in this process (another project's
    ``checks/test_x.py``) must import its own files, not reuse these from ``sys.modules``."""
    import sys

    before = set(sys.modules)
    roots = [path.resolve() for path in user_paths]
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None)
            if file and any(Path(file).resolve().is_relative_to(root) for root in roots):
                del sys.modules[name]


def _benchmark_document(written: Path) -> str:
    """pytest-benchmark's JSON as its session wrote it to ``written``; for a session that ran no benchmark
    (it writes nothing at all) an empty list, so that a file from an earlier run is never left to be read as
    this one's, and a CI step that uploads it finds it."""
    import json
    from datetime import UTC, datetime

    import pytest_benchmark

    if written.is_file():
        return written.read_text(encoding="utf-8")
    document = {"machine_info": {}, "commit_info": {}, "benchmarks": [],
                "datetime": datetime.now(UTC).isoformat(), "version": pytest_benchmark.__version__}
    return json.dumps(document, indent=4) + "\n"


def run_checks(
    gate: GateContext,
    stages: list[str],
    user_paths: list[Path],
    *,
    rootdir: Path,
    listener: Listener | None = None,
    benchmark_json: Path | None = None,
) -> list[CheckResult]:
    """Run the built-in stages and user checks through pytest in this process; return every result.

    Stages plan their checks before the session starts, so an unknown stage or a stage's bad config is an
    :class:`InputError` (exit 2) and not a failed check. ``benchmark_json``: where pytest-benchmark's JSON is
    written when the session ends, atomically, as every output (its folders created).
    """
    import tempfile

    from .outputs import check_writable, write_atomic

    if benchmark_json is not None:
        check_writable(Path(benchmark_json), "benchmark_json")  # before the checks run, not after
    modules = [load_stage(stage) for stage in stages]
    planned = [(module.NAME, module.checks(gate)) for module in modules]
    if gate.golden.excluded is not None and len(gate.golden.excluded) and "data" not in stages:
        # Unusable golden rows block whatever stages were chosen: the other stages left them out.
        from functools import partial

        from .stages.data import golden_rows

        planned.append(("data", [StageCheck("golden_rows", partial(golden_rows, gate))]))
    plugins = dict.fromkeys(p for module in modules for p in getattr(module, "PYTEST_PLUGINS", ()))
    if benchmark_json:
        plugins["pytest_benchmark.plugin"] = None
    plugin = GatePlugin(gate, planned, user_paths, listener)
    args = [
        "-c", os.devnull,  # the user's own pytest config (addopts, plugins) is not the gate's
        # Nor are whatever pytest plugins happen to be installed (hypothesis's alone costs ~0.8 s of imports).
        "--disable-plugin-autoload",
        "--rootdir", str(rootdir),
        "-p", "no:cacheprovider",
        # Its teardown runs gc.collect() twice per session: most of a quick gate's time in a big process.
        "-p", "no:unraisableexception",
        "--import-mode=importlib",
        "--continue-on-collection-errors",
        "-q",
        *([] if user_paths else ["--noconftest"]),
        # The plugins the selected stages declare; pytest-benchmark's too when its JSON is asked for.
        *[arg for plugin in plugins for arg in ("-p", plugin)],
        # With no benchmark run it writes nothing and warns on stderr; the file is written below instead.
        *(["-W", "ignore::pytest_benchmark.logger.PytestBenchmarkWarning"] if benchmark_json else []),
        *[str(path) for path in user_paths],
    ]
    output = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="release-kit-checks-") as scratch:
        # pytest-benchmark writes its file in place (not atomically) and creates no folder: a scratch file,
        # written to the path asked for below like any other output.
        written = Path(scratch) / "benchmark.json"
        if benchmark_json:
            args.append(f"--benchmark-json={written}")
        if "pytest_benchmark.plugin" in plugins:
            # Its storage (for --benchmark-autosave, never used here) is made at the session's start: in the
            # scratch folder, not as an empty .benchmarks/ in the user's project.
            args.append(f"--benchmark-storage=file://{Path(scratch) / 'storage'}")
        with contextlib.redirect_stdout(output), _forget_user_modules(user_paths), _own_session():
            exit_code = pytest.main(args, plugins=[plugin])
        document = _benchmark_document(written) if benchmark_json else None
    if exit_code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED):
        lines = [line for line in output.getvalue().splitlines() if line.strip()]
        detail = lines[-1] if lines else f"pytest exit code {int(exit_code)}"
        if exit_code is pytest.ExitCode.USAGE_ERROR:
            raise InputError(f"cannot run checks: {detail}")
        raise ReleaseKitError(f"the check session stopped: {detail}")
    if benchmark_json is not None and document is not None:
        try:
            write_atomic(Path(benchmark_json), document)
        except OSError as error:
            raise InputError(f"cannot write {benchmark_json} (benchmark_json): {error.strerror or error}") from None
    return plugin.ordered_results()
