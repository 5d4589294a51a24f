"""Shared fixtures: real models trained in seconds, real files, a project directory per test."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# pytest-xdist's workers share the machine's cores, so each worker's torch, and the CLI processes it starts,
# get their share of intra-op threads (a user's OMP_NUM_THREADS is kept). Two workers each running two
# OpenMP threads on two cores made the suite's torch work several times slower: the example's models, 5 s to
# train alone, took 18 s beside the other worker's training (measured). Read by torch when it is imported.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import torch  # noqa: E402  (after the thread count above)

# The suite may itself run on a GitHub Actions runner (release-kit's CI): the gate it tests would then stop
# the runner's workflow commands around each run and say so on stderr. The tests of that set it themselves.
os.environ.pop("GITHUB_ACTIONS", None)
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "power-forecast"
sys.path.insert(0, str(EXAMPLE))

import power_forecast as pf  # noqa: E402  (the example's own module)

# The modules that take a worker longest, costliest first (measured 2026-12-07: 132 s down to 20 s). Each
# module runs whole on one worker (--dist loadfile), and xdist by default hands them out by their count of
# tests: the one-test demo (45 s) went last and the other worker sat idle through it. Handed out costliest
# first (the Makefile's --no-loadscope-reorder keeps this order), the two workers end within seconds of each
# other. Any module not named keeps its place after these.
COSTLIEST_MODULES = ("test_scale.py", "test_pipeline.py", "test_release.py", "test_trust.py", "test_tensors.py",
                     "test_serving.py", "test_demo.py", "test_classification.py", "test_outliers.py", "test_bad_input.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(COSTLIEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order kept

# The example's [model] section, shared by the test configs (braces doubled for str.format).
POWER_MODEL = """
[model]
name = "power-forecast"
task = "regression"
target = "power_kw"
features = ["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"]
bounds = {{ min = 0.0, max = 6.0 }}
"""



def churn_model(prediction: str = "logits") -> str:
    """The ``[model]`` table of the classifiers ``make_classification`` and ``train_classifier`` make."""
    return f"""
[model]
name = "churn"
task = "classification"
target = "label"
features = ["a", "b", "c"]
prediction = "{prediction}"
"""


POWER_CONFIG = POWER_MODEL + """
[baseline]
version = "1.0.0"

[data]
golden = "{golden}"

[mlflow]
enabled = false
{gate}{extra}
"""
# The defaults, made quicker: fewer timing rounds and a shorter search (the code paths are the same).
# QUICK times the models briefly, and its latency budget lets through all but a 10× slowdown: the tests
# that take it are not about the latency verdict (tests/test_performance.py is, with its own settings), and 4
# rounds of 10 ms beside the other test worker once measured two networks of one size 1.3× apart.
QUICK = """
[performance]
rounds = 4
round_seconds = 0.01
warmup_seconds = 0.05
time_budget_seconds = 2
latency_budget = 9.0

[outliers.search]
seconds = 1
"""


def run_cli(cwd: Path, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as users run it: without an inherited MLFLOW_TRACKING_URI, nor what a Ray
    started in the test process set in its environment (``ray.init`` sets RAY_AUTH_MODE=token there, and a
    CLI inheriting it would join a cluster as one with token authentication)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "PYTHONBREAKPOINT")}
    return subprocess.run([sys.executable, "-m", "release_kit.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**environment, **(env or {})}, timeout=timeout)


# Unit-level tests of one stage narrow the gate to quality unless they name their own [gate]; the default
# (every stage, tracking on) is exercised end to end in test_pipeline.py and test_demo.py.
QUALITY_ONLY = '[gate]\nstages = ["quality"]\n'



@pytest.fixture(scope="session")
def power(tmp_path_factory) -> dict[str, Path]:
    """The example's golden data and models (v1 baseline, better and night-negative candidates)."""
    import build

    directory = tmp_path_factory.mktemp("power")
    paths = build.build(directory, register=False)
    v1 = torch.jit.load(str(paths["v1"]))
    module = pf.baseline_factory()
    module.load_state_dict(v1.state_dict())
    pf.save_safetensors(module, directory / "models" / "v1.safetensors")
    return {
        **paths,
        "golden": directory / "data" / "golden.csv",
        "train": directory / "data" / "train.csv",
        "v1_safetensors": directory / "models" / "v1.safetensors",
    }


@pytest.fixture
def project(tmp_path, power, monkeypatch):
    """A project directory (the cwd) with a release-kit.toml for the power example; ``project.config(extra)``."""

    class Project:
        root = tmp_path

        def config(self, extra: str = "", golden: Path | None = None) -> Path:
            path = tmp_path / "release-kit.toml"
            extra = textwrap.dedent(extra)
            gate = "" if "[gate]" in extra else QUALITY_ONLY
            path.write_text(POWER_CONFIG.format(golden=golden or power["golden"], extra=extra, gate=gate))
            return path

        def write(self, name: str, text: str) -> Path:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
            return path

    monkeypatch.chdir(tmp_path)
    instance = Project()
    instance.config()
    return instance


@pytest.fixture
def cli():
    """Run the CLI in process: ``cli("check", "--candidate", ...)`` → click Result (stdout/stderr apart)."""
    from release_kit.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


class TinyClassifier(torch.nn.Module):
    def __init__(self, features: int, outputs: int, squash: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, outputs)
        self.squash = squash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.squash == "sigmoid":
            out = torch.sigmoid(out)
        elif self.squash == "softmax":
            out = torch.softmax(out, dim=1)
        elif self.squash == "squeeze":
            out = out.squeeze(-1)
        return out


def make_classification(rows: int, classes: int, seed: int) -> pd.DataFrame:
    weights = np.random.default_rng(classes).normal(size=(3, classes)) * 2  # one concept per class count
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    logits = x @ weights
    label = np.array([rng.choice(classes, p=np.exp(l) / np.exp(l).sum()) for l in logits])
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": label})


def train_classifier(frame: pd.DataFrame, classes: int, *, epochs: int, squash: str) -> torch.nn.Module:
    """Logistic regression trained with cross-entropy; ``squash`` chooses the output form."""
    torch.manual_seed(0)
    x = torch.tensor(frame[["a", "b", "c"]].to_numpy(np.float32))
    y = torch.tensor(frame["label"].to_numpy())
    binary = classes == 2 and squash in ("sigmoid", "squeeze")
    model = TinyClassifier(3, 1 if binary else classes, "none")
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):
        optimiser.zero_grad()
        out = model(x)
        if binary:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        optimiser.step()
    model.squash = squash
    return model.eval()


class DictOutput(torch.nn.Module):
    """A Hugging Face-style output: the prediction beside other tensors, in a dict."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = self.inner(x)
        return {"hidden": x, "prediction": prediction}


def save_scripted(model: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_binaries() -> Path | None:
    """The directory of Debian's PostgreSQL server programs (initdb, pg_ctl), or None."""
    import glob
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A PostgreSQL server of its own, in a temporary directory on 127.0.0.1, started with initdb and pg_ctl
    (as the ``postgres`` user when the tests run as root: PostgreSQL refuses to run as root). Yields a
    function that creates a fresh database and returns its URL."""
    import pwd
    import shutil

    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1+ default PostgreSQL driver, for the MLflow server)
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'release-kit[postgres]')")
    import tempfile

    prefix: list[str] = []
    # Not under pytest's basetemp: that is private to this user, and the server may run as another.
    root = Path(tempfile.mkdtemp(prefix="release-kit-postgres-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to run PostgreSQL as 'postgres'")
        prefix = ["runuser", "-u", "postgres", "--"]
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    port = free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(f"{command[0]} failed: {result.stdout[-1000:]} {result.stderr[-1000:]}")

    run(str(binaries / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "--encoding=UTF8", "--no-sync")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    created = []

    def database(name: str) -> str:
        run(str(binaries / "createdb") if (binaries / "createdb").exists() else "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", name)
        created.append(name)
        return f"postgresql://mlflow@127.0.0.1:{port}/{name}"

    yield database
    subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _mlflow_server(root: Path, backend: str):
    """Run `mlflow server` on 127.0.0.1 with ``backend`` as its store and proxied artifacts; yield its URL.

    Without the server's job execution: it runs GenAI jobs (scorers, trace roll-ups) release-kit never asks
    for, in seven consumer processes that each import MLflow (~14 s of CPU per server on two cores, measured),
    and that outlived a terminated server. The server has a session of its own, so that stopping it stops
    every process it started."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend,
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )

    def stop() -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("mlflow server exited: " + (root / "server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        stop()
        pytest.fail("mlflow server did not become healthy in 90 s")
    try:
        yield url
    finally:
        stop()


# A server takes ~6 s to start (its store's migrations), so each one below is started once per session, on
# first use, and shared by the modules that ask for it. The tests that share one use model names and
# experiments of their own, or the same ones idempotently (the release tests each publish 1.0.0 first).
@pytest.fixture(scope="session")
def backend_servers(tmp_path_factory):
    """Servers by store ("sqlite", or "postgresql" with the database URL's factory), started on first use and
    stopped at the end of the session."""
    started: dict[str, str] = {}
    with contextlib.ExitStack() as stack:

        def server(store: str, database=None) -> str:
            if store not in started:
                root = tmp_path_factory.mktemp(f"mlflow-{store}")
                backend = database(f"mlflow_{root.name.replace('-', '_').lower()}") if database else f"sqlite:///{root / 'server.db'}"
                started[store] = stack.enter_context(_mlflow_server(root, backend))
            return started[store]

        yield server


@pytest.fixture(scope="session")
def mlflow_server(backend_servers):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts (the one the tests on
    both stores share)."""
    return backend_servers("sqlite")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mlflow_backends(request, backend_servers):
    """A server on SQLite and, as a second parameter, on a PostgreSQL database (a shared tracking server's
    production setup): for the tests of check, release, concurrent releases, history and rollback."""
    database = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return backend_servers(request.param, database)
