"""Serving released versions: the ModelPool against the embedded store, and the example FastAPI server on
127.0.0.1 driven by a real HTTP client through a release and a rollback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port, run_cli

NAME = "power-forecast"


@pytest.fixture
def registry(tmp_path, power):
    """An embedded store with v1.0.0 (@champion) and 1.1.0 published, as files a release would register."""
    from release_kit.registry import publish
    from release_kit.tracking import embedded_uri

    uri = embedded_uri(tmp_path)
    publish(power["v1"], NAME, "1.0.0", tracking_uri=uri, alias="champion")
    publish(power["better"], NAME, "1.1.0", tracking_uri=uri)
    return uri


ROWS = np.random.default_rng(0).random((4, 5), dtype=np.float32) * [23, 365, 1, 30, 900]


def test_routing_by_alias_semver_and_number(registry, power):
    import torch

    from release_kit.serving import ModelPool

    with ModelPool(registry, refresh_seconds=0) as pool:
        champion = pool.get(f"{NAME}@champion")
        assert (champion.version, champion.semver) == ("1", "1.0.0")
        assert pool.get(f"{NAME}/1.1.0").semver == "1.1.0"
        assert pool.get(f"models:/{NAME}/1") is champion
        with torch.inference_mode():
            expected = torch.jit.load(str(power["v1"]))(torch.from_numpy(ROWS.astype(np.float32))).double().numpy()
        np.testing.assert_allclose(champion.predict(ROWS), expected.reshape(-1), rtol=1e-6)
        assert {m["semver"] for m in pool.loaded()["models"]} == {"1.0.0", "1.1.0"}


def test_many_threads_load_a_version_once(registry, monkeypatch):
    from release_kit import serving

    loads = []
    original = serving.ModelPool._load

    def counting(self, *args, **kwargs):
        loads.append(args)
        time.sleep(0.2)  # a slow load: the other threads must wait for it, not start their own
        return original(self, *args, **kwargs)

    monkeypatch.setattr(serving.ModelPool, "_load", counting)
    pool = serving.ModelPool(registry, refresh_seconds=0)
    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.get(f"{NAME}/1.1.0"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len({id(m) for m in got}) == 1


def test_eviction_by_bytes_keeps_running_requests_working(registry):
    from release_kit.serving import ModelPool

    pool = ModelPool(registry, refresh_seconds=0)
    first = pool.get(f"{NAME}/1.0.0")
    pool.max_bytes = first.bytes  # room for one model
    second = pool.get(f"{NAME}/1.1.0")
    assert [m["semver"] for m in pool.loaded()["models"]] == ["1.1.0"]
    assert first.predict(ROWS).shape == (4,)  # an evicted version still answers whoever holds it
    assert second.predict(ROWS).shape == (4,)


def test_eviction_is_least_recently_used_and_forgets_the_evicted_reference(registry, power):
    from release_kit.registry import publish
    from release_kit.serving import ModelPool

    publish(power["v1"], NAME, "1.2.0", tracking_uri=registry)
    pool = ModelPool(registry, refresh_seconds=0, max_models=2)
    old, newer = pool.get(f"{NAME}/1.0.0"), pool.get(f"{NAME}/1.1.0")
    old.predict(ROWS)  # 1.0.0 is now the more recently used
    pool.get(f"{NAME}/1.2.0")
    assert sorted(m["semver"] for m in pool.loaded()["models"]) == ["1.0.0", "1.2.0"]
    assert pool.get(f"{NAME}/1.0.0") is old
    again = pool.get(f"{NAME}/1.1.0")  # evicted: loaded anew, not the forgotten object
    assert again is not newer and again.semver == "1.1.0"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_eviction_frees_device_memory(registry):
    import gc

    import torch

    from release_kit.serving import ModelPool

    pool = ModelPool(registry, device="cuda", refresh_seconds=0)
    first = pool.get(f"{NAME}/1.0.0")
    assert first.predict(ROWS).shape == (4,)
    before = torch.cuda.memory_allocated()
    pool.max_bytes = first.bytes  # room for one model: loading the next evicts this one
    pool.get(f"{NAME}/1.1.0")
    del first
    gc.collect()
    assert [m["device"] for m in pool.loaded()["models"]] == ["cuda"]
    assert torch.cuda.memory_allocated() <= before  # the evicted weights were released, the new ones took their place


def _tamper(registry: str, number: str) -> None:
    """Append bytes to a registered version's model file in the embedded store's artifacts."""
    from release_kit.tracking import connect

    version = connect(registry).get_model_version(NAME, number)
    store = Path(registry.removeprefix("sqlite:///")).parent
    files = [p for p in store.rglob("*.pt") if version.run_id in str(p)]
    assert files, list(store.rglob("*"))
    files[0].write_bytes(files[0].read_bytes() + b"tampered")


def test_a_tampered_model_file_is_refused(registry):
    from release_kit.serving import ModelPool, ModelRefused

    _tamper(registry, "2")
    with pytest.raises(ModelRefused, match="differs from the release's"):
        ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.1.0")


def test_a_blocked_version_is_refused_unless_asked_for(registry):
    from release_kit.serving import ModelPool, ModelRefused
    from release_kit.tracking import connect

    connect(registry).set_model_version_tag(NAME, "2", "release_kit.verdict", "block")
    with pytest.raises(ModelRefused, match="verdict was block"):
        ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.1.0")
    assert ModelPool(registry, refresh_seconds=0, allow_blocked=True).get(f"{NAME}/1.1.0").semver == "1.1.0"


def test_released_state_dicts_are_served_through_the_factory_the_pool_is_given(registry, power, tmp_path):
    """A release of safetensors weights, or of a torch.save'd state dict, is a module's weights: the pool
    loads it into the module its factory builds (the state dict with torch's weights-only unpickler), and
    without one refuses it naming the argument, rather than an error about a config the server has none of."""
    import torch
    from safetensors.torch import load_file

    from release_kit.registry import publish
    from release_kit.serving import ModelPool, ModelRefused

    torch.save(load_file(str(power["v1_safetensors"])), tmp_path / "v1.pth")
    publish(power["v1_safetensors"], NAME, "1.2.0", tracking_uri=registry)
    publish(tmp_path / "v1.pth", NAME, "1.3.0", tracking_uri=registry)
    with pytest.raises(ModelRefused, match=r"is a state dict \(safetensors\): give the pool the factory .*ModelPool\(factories="):
        ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.2.0")
    with pytest.raises(ModelRefused, match=r"is a pickle: a state dict needs the factory that builds its module, ModelPool\(factories="):
        ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.3.0")
    pool = ModelPool(registry, refresh_seconds=0, factories={NAME: "power_forecast:baseline_factory"})
    expected = pool.get(f"{NAME}/1.0.0").predict(ROWS)  # the same weights, scripted
    for version, kind in (("1.2.0", "safetensors"), ("1.3.0", "state_dict")):
        served = pool.get(f"{NAME}/{version}")
        assert served.loaded.kind == kind
        np.testing.assert_allclose(served.predict(ROWS), expected, rtol=1e-5)


def test_a_released_model_returning_a_dict_is_served_on_the_output_the_pool_names(registry, power, tmp_path):
    import torch

    from conftest import DictOutput, save_scripted
    from release_kit.errors import InputError
    from release_kit.registry import publish
    from release_kit.serving import ModelPool

    publish(save_scripted(DictOutput(torch.jit.load(str(power["v1"]))), tmp_path / "dict.pt"), NAME, "1.2.0", tracking_uri=registry)
    with pytest.raises(InputError, match=r"returned a dict of 'hidden', 'prediction': .*\(served: ModelPool\(outputs=\.\.\.\)\)"):
        ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.2.0").predict(ROWS)
    for wrong in (-1, "", True):  # -1 would have read the last output
        with pytest.raises(InputError, match=rf"outputs\['{NAME}'\] must be a tuple's index \(0, 1, …\) or a dict's key, not "):
            ModelPool(registry, refresh_seconds=0, outputs={NAME: wrong})
    pool = ModelPool(registry, refresh_seconds=0, outputs={NAME: "prediction"})
    np.testing.assert_array_equal(pool.get(f"{NAME}/1.2.0").predict(ROWS), pool.get(f"{NAME}/1.0.0").predict(ROWS))


def test_a_pool_on_a_live_mlflow_server(power, mlflow_server):
    from release_kit.registry import publish
    from release_kit.serving import ModelPool
    from release_kit.tracking import connect

    name = "served-live"
    publish(power["v1"], name, "1.0.0", tracking_uri=mlflow_server, alias="champion")
    publish(power["better"], name, "1.1.0", tracking_uri=mlflow_server)
    with ModelPool(mlflow_server, refresh_seconds=0) as pool:
        assert pool.get(f"{name}@champion").semver == "1.0.0"
        connect(mlflow_server).set_registered_model_alias(name, "champion", "2")
        assert pool.refresh() == {f"{name}@champion": "2"}
        assert pool.get(f"{name}@champion").semver == "1.1.0"
        assert pool.get(f"{name}/1.0.0").predict(ROWS).shape == (4,)


@pytest.mark.parametrize("reference", ["power-forecast", "power-forecast/one", "models:/power-forecast@"])
def test_bad_references_are_input_errors(reference):
    from release_kit.errors import InputError
    from release_kit.serving import Reference

    with pytest.raises(InputError):
        Reference.parse(reference)


def _post(url: str, body: dict, version: str) -> tuple[int, dict]:
    """A real HTTP request (urllib: the standard library's client)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    request = urllib.request.Request(f"{url}?{urllib.parse.urlencode({'version': version})}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextmanager
def serving(tmp_path: Path, tracking_uri: str, **settings: str):
    """The example server on 127.0.0.1 (uvicorn, one worker), its base URL once /health answers."""
    import urllib.request

    port = free_port()
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **settings}
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=ROOT / "examples" / "serving", env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_example_server_evicts_under_a_small_max_bytes_and_refuses_a_tampered_file(tmp_path, registry, power):
    import json
    import urllib.request

    from release_kit.registry import publish
    from release_kit.serving import ModelPool

    from conftest import EXAMPLE

    publish(power["v1"], NAME, "1.2.0", tracking_uri=registry)  # version 3, its file tampered below
    _tamper(registry, "3")
    publish(power["v1_safetensors"], NAME, "1.3.0", tracking_uri=registry)  # weights: served through FACTORIES
    one_model = ModelPool(registry, refresh_seconds=0).get(f"{NAME}/1.0.0").bytes
    body = {"inputs": ROWS.tolist()}
    with serving(tmp_path, registry, MAX_BYTES=str(one_model), FACTORIES=f"{NAME}=power_forecast:baseline_factory",
                 PYTHONPATH=str(EXAMPLE)) as url:
        predict = f"{url}/v1/models/{NAME}/predict"

        def loaded() -> list[str]:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
                return [m["semver"] for m in json.loads(response.read())["models"]]

        assert _post(predict, body, "1.0.0")[1]["version"] == "1.0.0" and loaded() == ["1.0.0"]
        assert _post(predict, body, "1.1.0")[1]["version"] == "1.1.0" and loaded() == ["1.1.0"]  # 1.0.0 evicted
        status, answer = _post(predict, body, "1.0.0")  # loaded again on demand
        assert (status, answer["version"], loaded()) == (200, "1.0.0", ["1.0.0"])
        status, answer = _post(predict, body, "1.2.0")
        assert status == 403 and "differs from the release's" in answer["detail"], answer
        assert _post(predict, body, "9.9.9")[0] == 404 and _post(predict, body, "nope")[0] == 404
        assert loaded() == ["1.0.0"]  # the refused file never entered the pool
        status, answer = _post(predict, body, "1.3.0")  # 1.0.0's weights, in the factory's module
        scripted = _post(predict, body, "1.0.0")[1]["outputs"]
        assert (status, answer["version"]) == (200, "1.3.0") and np.allclose(answer["outputs"], scripted, rtol=1e-5), answer


def test_the_example_server_refuses_a_malformed_factories_setting_as_it_starts(tmp_path):
    """A FACTORIES item that is not name=package.module:function stops the server at its start, naming the
    item, rather than being dropped and every release of that model refused later for want of a factory."""
    result = subprocess.run([sys.executable, "-c", "import server"], cwd=ROOT / "examples" / "serving", capture_output=True, text=True,
                            env={**os.environ, "FACTORIES": "power=power_forecast:build, shapes", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"},
                            timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == "FACTORIES: 'shapes' is not name=package.module:function", result.stderr


def test_the_example_server_follows_a_release_and_a_rollback_under_load(tmp_path, power, monkeypatch):
    """A model team's repository with 1.0.0 as @champion; while 8 clients call the server by alias, the real
    `release-kit release` registers 1.1.0 and moves the alias, then the real `rollback` moves it back."""

    from project_repo import Repo

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = Repo(tmp_path, power)
    repo.publish_v1()
    report = repo.report()  # the check job's report; the release job below is the command users run
    with serving(tmp_path, repo.uri, REFRESH_SECONDS="1") as url:
        body = {"inputs": ROWS.tolist()}
        predict = f"{url}/v1/models/{NAME}/predict"
        assert _post(predict, body, "1.0.0")[1]["version"] == "1.0.0"
        assert _post(predict, body, "1.1.0")[0] == 404  # not released yet
        assert _post(predict, body, "nope")[0] == 404

        responses: list[tuple[float, int, str | None]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set() and len(responses) < 500_000:  # bounded by time; the count only as a backstop
                try:
                    status, answer = _post(predict, body, "champion")
                except OSError as error:  # a refused or dropped connection is an error too
                    status, answer = 599, {"error": str(error)}
                responses.append((time.monotonic(), status, answer.get("version")))

        clients = [threading.Thread(target=client) for _ in range(8)]
        started = time.monotonic()
        for thread in clients:
            thread.start()
        time.sleep(2)
        release_started = time.monotonic()
        released = run_cli(tmp_path, "release", "--report", report)
        assert released.returncode == 0, released.stderr
        release_returned = time.monotonic()  # the alias moved at some point before this
        assert repo.champion() == "1.1.0"
        time.sleep(4)
        rollback_started = time.monotonic()
        rollback = run_cli(tmp_path, "rollback", "--to", "1.0.0", "--reason", "load test", "--by", "ci")
        assert rollback.returncode == 0, rollback.stderr
        rolled_back = time.monotonic()
        # At least 12 s of load in all, and the refresh period plus a load after the rollback (bounded).
        time.sleep(max(4.0, 12 - (time.monotonic() - started)))
        stop.set()
        for thread in clients:
            thread.join(timeout=30)

    assert len(responses) > 100
    assert all(status == 200 for _, status, _ in responses), {s for _, s, _ in responses}
    assert {version for _, _, version in responses} <= {"1.0.0", "1.1.0"}
    assert all(v == "1.0.0" for t, _, v in responses if t < release_started)
    refresh = 1.0
    # The switch is observed within the refresh period (plus the load and warm-up of the new version).
    new = [t for t, _, v in responses if t > release_started and v == "1.1.0"]
    assert new, (len(responses), round(release_returned - release_started, 2))
    assert min(new) - release_returned <= refresh + 3
    assert all(v == "1.1.0" for t, _, v in responses if min(new) + 0.5 < t < rollback_started)
    after = [(round(t - rollback_started, 2), v) for t, _, v in responses if t > rollback_started]
    assert any(v == "1.0.0" for _, v in after), (len(responses), round(rolled_back - rollback_started, 2), after[:3], after[-3:])
    back = min(t for t, _, v in responses if t > rollback_started and v == "1.0.0")
    assert back - rolled_back <= refresh + 3
    assert all(v == "1.0.0" for t, _, v in responses if t > back + 0.5)


@pytest.mark.parametrize(("size", "expected"), [("4GiB", 4 * 2**30), ("500MB", 500_000_000), (1024, 1024), ("1.5 KiB", 1536)])
def test_pool_sizes(size, expected):
    from release_kit.serving import parse_bytes

    assert parse_bytes(size) == expected


@pytest.mark.parametrize("size", ["four gigs", "4 GiBs", "-1GB"])
def test_a_bad_pool_size_is_an_input_error(size):
    from release_kit.errors import InputError
    from release_kit.serving import ModelPool

    with pytest.raises(InputError, match="is not a size"):
        ModelPool("sqlite:///unused.db", max_bytes=size)


def test_a_pool_of_no_models_is_an_input_error():
    from release_kit.errors import InputError
    from release_kit.serving import ModelPool

    with pytest.raises(InputError, match="max_models must be at least 1"):
        ModelPool("sqlite:///unused.db", max_models=0)
