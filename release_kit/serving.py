"""Serving released versions: a pool that loads model versions from the registry on demand, by the model and
version a request names, and follows aliases through releases and rollbacks without a restart.

    from release_kit.serving import ModelPool

    pool = ModelPool(tracking_uri=None, device="auto", max_models=8, max_bytes="4GiB", refresh_seconds=30)
    model = pool.get("power-forecast@champion")     # or "power-forecast/1.1.0", "models:/power-forecast/3"
    outputs = model.predict(inputs)                 # ndarray/tensor (or a tuple of them) in, ndarray out
    model.version, model.semver, model.sha256

Only the gate's safe loaders run (no pickle unless ``allow_pickle=True``); a file whose sha256 differs from
its version's ``release_kit.model_sha256`` tag is refused, and so is a version whose release verdict was not
pass (unless ``allow_blocked=True``). Loads are shared: many threads asking for one version load it once.
Least-recently-used versions are evicted beyond ``max_models`` or ``max_bytes``; a request already running
on an evicted or replaced version finishes on it (it holds the model). Aliases are re-resolved every
``refresh_seconds`` (and on :meth:`ModelPool.refresh`): a new target is loaded and warmed before the alias
switches, so no request waits for a load or fails during a release or rollback.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

_FLOAT32 = np.dtype(np.float32)
_REFERENCE = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[A-Za-z_][\w-]*)|/(?P<version>[^/@]+))$")
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str) -> int:
    """``4GiB``, ``500MB``, ``1024`` → bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise InputError(f"max_bytes {value!r} is not a size like '4GiB' or '500MB'")
    return int(float(match["number"]) * _UNITS[(match["unit"] or "B").lower()])


class ModelNotFound(InputError):
    """The reference names no registered version (an unknown model, alias, semver or number)."""


class ModelRefused(InputError):
    """The version exists but is not served: its file fails its release's sha256, it has no sha256 to check,
    or its release verdict was not pass."""


@dataclass(frozen=True)
class Reference:
    """What a request names: a model and an alias, a release semver, or a registry version number."""

    name: str
    alias: str | None = None
    semver: str | None = None
    number: str | None = None

    @classmethod
    @functools.lru_cache(maxsize=1024)  # a server parses the same few references on every request
    def parse(cls, text: str) -> Reference:
        match = _REFERENCE.match(text.strip())
        if not match:
            raise InputError(f"model reference {text!r} is not NAME@ALIAS, NAME/SEMVER or models:/NAME/NUMBER")
        name, alias, version = match["name"], match["alias"], match["version"]
        if version is None:
            return cls(name, alias=alias)
        if text.strip().startswith("models:/") and version.isdigit():
            return cls(name, number=version)
        import semver

        if not semver.Version.is_valid(version):
            raise InputError(f"model reference {text!r}: {version!r} is neither a release semver nor a registry number")
        return cls(name, semver=version)


@dataclass
class ServedModel:
    """One loaded version. :meth:`predict` is thread-safe."""

    name: str
    version: str  # the registry's version number
    semver: str | None  # the release's semantic version
    sha256: str
    bytes: int
    loaded: Any = field(repr=False)  # the LoadedModel
    last_used: float = field(default_factory=time.time)

    def predict(self, inputs) -> Any:
        """A batch (ndarray or tensor, or a tuple of them for several inputs) → the model's outputs as an ndarray."""
        self.last_used = time.time()
        if type(inputs) is np.ndarray and inputs.dtype is _FLOAT32:  # the common case goes as it is
            return self.loaded.raw_outputs(inputs, shared=False)  # the caller's own array, as with the model itself
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        arrays = tuple(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a) for a in arrays)
        arrays = tuple(a.astype(np.float32) if a.dtype.kind == "f" and a.dtype != np.float32 else a for a in arrays)
        return self.loaded.raw_outputs(arrays if len(arrays) > 1 else arrays[0], shared=False)


class ModelPool:
    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        device: str = "auto",
        max_models: int = 8,
        max_bytes: int | str = "4GiB",
        refresh_seconds: float = 30.0,
        allow_pickle: bool = False,
        allow_blocked: bool = False,
        directory: str | Path | None = None,
        factories: Mapping[str, str] | None = None,
        outputs: Mapping[str, int | str] | None = None,
    ) -> None:
        from .config import names_an_output
        from .models import inference_device
        from .tracking import embedded_uri

        if max_models < 1:
            raise InputError("max_models must be at least 1")
        self.tracking_uri = tracking_uri or _default_uri(directory, embedded_uri)
        self.device = inference_device(device)
        self.max_models = max_models
        self.max_bytes = parse_bytes(max_bytes)
        self.refresh_seconds = refresh_seconds
        self.allow_pickle = allow_pickle
        self.allow_blocked = allow_blocked
        # Registered model name → the factory ("package.module:function") that builds the module a released
        # state dict (safetensors, torch.save) is loaded into, as [model] factory does for the gate.
        self.factories = dict(factories or {})
        # Registered model name → the prediction among its several outputs (a dict's key, a tuple's index),
        # as [model] output names it for the gate.
        self.outputs = dict(outputs or {})
        for model_name, output in self.outputs.items():
            if not names_an_output(output):
                raise InputError(f"outputs[{model_name!r}] must be a tuple's index (0, 1, …) or a dict's key, not {output!r}")
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ServedModel] = {}  # (name, number) → model
        # Reference text → its model, read without the lock (a served call counts microseconds). Cleared
        # whenever an alias moves or a model is evicted; ``_generation`` counts the clears, so a lookup that
        # raced with one does not put a stale answer back.
        self._resolved: dict[str, ServedModel] = {}
        self._generation = 0
        self._loading: dict[tuple[str, str], Future] = {}
        self._aliases: dict[tuple[str, str], str] = {}  # (name, alias) → number
        self._semvers: dict[tuple[str, str], str] = {}  # (name, semver) → number (releases never move)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- the contract ------------------------------------------------------------------------------
    def get(self, reference: str) -> ServedModel:
        """The loaded model for ``reference``, loading it (once, whatever the number of threads) if needed."""
        model = self._resolved.get(reference)
        if model is None:
            generation = self._generation
            ref = Reference.parse(reference)
            model = self._model(ref.name, self._number(ref))
            with self._lock:
                if generation == self._generation and (model.name, model.version) in self._models:
                    self._resolved[reference] = model
        return model

    def loaded(self) -> dict:
        """What is resident (bytes, last use, device) and what each followed alias points at."""
        with self._lock:
            models = [
                {"name": m.name, "version": m.version, "semver": m.semver, "sha256": m.sha256, "bytes": m.bytes,
                 "last_used": m.last_used, "device": self.device}
                for m in self._models.values()
            ]
            aliases = {f"{name}@{alias}": number for (name, alias), number in self._aliases.items()}
        return {"models": models, "aliases": aliases, "bytes": sum(m["bytes"] for m in models),
                "max_bytes": self.max_bytes, "max_models": self.max_models}

    def refresh(self) -> dict[str, str]:
        """Re-resolve every followed alias now; a moved alias switches only after its new target is loaded
        and warmed. Returns the aliases that moved (``name@alias`` → new number)."""
        with self._lock:
            followed = list(self._aliases.items())
        moved = {}
        for (name, alias), number in followed:
            current = self._resolve_alias(name, alias)
            if current != number:
                self._model(name, current, warm=True)  # loaded and warmed before the switch
                with self._lock:
                    self._aliases[name, alias] = current
                    self._forget_resolved()
                moved[f"{name}@{alias}"] = current
        return moved

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._models.clear()
            self._forget_resolved()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- resolution --------------------------------------------------------------------------------
    def _number(self, ref: Reference) -> str:
        if ref.number is not None:
            return ref.number
        if ref.semver is not None:
            key = (ref.name, ref.semver)
            if key not in self._semvers:
                self._semvers[key] = self._resolve_semver(ref.name, ref.semver)
            return self._semvers[key]
        key = (ref.name, ref.alias)
        with self._lock:
            number = self._aliases.get(key)
        if number is None:
            number = self._resolve_alias(ref.name, ref.alias)
            with self._lock:
                number = self._aliases.setdefault(key, number)
            self._start_refresher()
        return number

    def _client(self):
        from .tracking import connect

        return connect(self.tracking_uri)

    def _resolve_alias(self, name: str, alias: str) -> str:
        from mlflow.exceptions import MlflowException

        from .tracking import call_store

        try:
            return str(call_store(self.tracking_uri, self._client().get_model_version_by_alias, name, alias).version)
        except MlflowException as error:
            raise ModelNotFound(f"model {name}@{alias} not found in the registry at {self.tracking_uri}: {error.message}") from None

    def _resolve_semver(self, name: str, semver: str) -> str:
        from .registry import find_versions
        from .tags import VERSION_TAG

        found = find_versions(self._client(), self.tracking_uri, name, VERSION_TAG, semver)
        if not found:
            raise ModelNotFound(f"model {name}/{semver}: no version of {name} was released as {semver}")
        return str(found[0].version)

    # -- loading -----------------------------------------------------------------------------------
    def _model(self, name: str, number: str, *, warm: bool = False) -> ServedModel:
        key = (name, number)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                model.last_used = time.time()
                return model
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            return future.result()
        try:
            model = self._load(name, number, warm=warm)
        except BaseException as error:
            with self._lock:
                del self._loading[key]
            future.set_exception(error)
            raise
        with self._lock:
            self._models[key] = model
            del self._loading[key]
            self._evict(keep=key)
        future.set_result(model)
        return model

    def _load(self, name: str, number: str, *, warm: bool) -> ServedModel:
        from .files import file_sha256
        from .models import FactoryNeeded, load_model
        from .registry import fetch_model
        from .tags import MODEL_SHA256_TAG
        from .timing import weight_bytes
        from .tracking import call_store

        from mlflow.exceptions import MlflowException

        try:
            version = call_store(self.tracking_uri, self._client().get_model_version, name, number)
        except MlflowException as error:
            raise ModelNotFound(f"model {name} version {number} not found in the registry at {self.tracking_uri}: {error.message}") from None
        tags = version.tags
        verdict = tags.get("release_kit.verdict")
        if verdict is not None and verdict != "pass" and not self.allow_blocked:
            raise ModelRefused(f"model {name} version {number}: its release verdict was {verdict}, not pass (allow_blocked=True to serve it)")
        expected = tags.get(MODEL_SHA256_TAG)
        if not expected:
            raise ModelRefused(f"model {name} version {number} has no {MODEL_SHA256_TAG} tag: its file cannot be verified")
        fetched = fetch_model(f"models:/{name}/{number}", tracking_uri=self.tracking_uri)
        actual = file_sha256(fetched.path)
        if actual != expected:
            raise ModelRefused(f"model {name} version {number}: the file's sha256 {actual[:12]}… differs from the release's {expected[:12]}…: refused")
        # No per-call deadline: a server bounds its requests itself, and the watchdog costs microseconds a call.
        try:
            loaded = load_model(f"{name}/{number}", str(fetched.path), factory=self.factories.get(name), allow_pickle=self.allow_pickle,
                                version=fetched.semver, timeout=None)
        except FactoryNeeded as needed:  # named for the pool, which has no config to set it in
            factory = f"ModelPool(factories={{{name!r}: 'package.module:function'}})"
            raise ModelRefused(f"model {name} version {number} is a state dict (safetensors): give the pool the factory that builds its module, {factory}"
                               if needed.kind == "safetensors" else
                               f"model {name} version {number} is a pickle: a state dict needs the factory that builds its module, {factory}; "
                               "a whole pickled model runs code from the file as it loads, allow_pickle=True trusts it") from None
        loaded.output = self.outputs.get(name)
        loaded.to_device(self.device)
        model = ServedModel(name, number, fetched.semver, actual, weight_bytes(loaded.module) or fetched.path.stat().st_size, loaded)
        if warm:
            _warm(model, tags)
        return model

    def _evict(self, keep: tuple[str, str]) -> None:
        """Least recently used first, beyond max_models or max_bytes (never the model just loaded)."""
        evicted = False
        while len(self._models) > 1 and (
            len(self._models) > self.max_models or sum(m.bytes for m in self._models.values()) > self.max_bytes
        ):
            oldest = min((key for key in self._models if key != keep), key=lambda key: self._models[key].last_used)
            self._models.pop(oldest)
            evicted = True
        if evicted:
            self._forget_resolved()
            if self.device == "cuda":
                import torch

                torch.cuda.empty_cache()

    def _forget_resolved(self) -> None:
        """Under the lock: the next lookup of every reference resolves again."""
        self._resolved = {}
        self._generation += 1

    # -- alias following ---------------------------------------------------------------------------
    def _start_refresher(self) -> None:
        with self._lock:
            if self._refresher is not None or self.refresh_seconds <= 0:
                return
            self._refresher = threading.Thread(target=self._refresh_loop, name="release-kit-alias-refresh", daemon=True)
            self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # a registry hiccup: the aliases keep their targets until the next round
                continue


def _warm(model: ServedModel, tags: dict[str, str]) -> None:
    """One call on zeros of the recorded input shape (batch 1), so the first request after a switch does
    not pay for lazy initialisation (TorchScript profiling runs, allocator growth)."""
    from .signature import Signature
    from .tags import SIGNATURE_TAG

    recorded = tags.get(SIGNATURE_TAG)
    if not recorded:
        return
    try:
        signature = Signature.from_json(recorded)
    except (ValueError, KeyError, TypeError):
        return
    arrays = tuple(np.zeros((1, *[d or 1 for d in spec.shape[1:]]), dtype=spec.dtype) for spec in signature.inputs)
    if arrays:
        for _ in range(3):
            model.predict(arrays if len(arrays) > 1 else arrays[0])


def _default_uri(directory, embedded_uri) -> str:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(Path(directory or Path.cwd()))
