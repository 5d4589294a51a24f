"""Loading candidate and baseline models and turning their outputs into predictions.

Formats are recognised by content, not by suffix alone, so that a pickled model renamed to ``.pt``
cannot slip through: unpickling runs arbitrary code, so it needs the user's explicit ``--allow-pickle``.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from collections.abc import Callable

from .data import file_sha256
from .errors import InputError
from .signature import Signature

if TYPE_CHECKING:
    import numpy as np

    from .config import ModelSpec

ModelKind = Literal["torchscript", "torch.export", "safetensors", "pickle"]
REGISTRY_SCHEMES = ("models:/", "runs:/")
PREDICT_BATCH_ROWS = 65_536


@dataclass
class LoadedModel:
    """A model ready to predict, and where it came from."""

    role: str  # "candidate" | "baseline"
    source: str
    kind: ModelKind
    file: Path
    sha256: str
    module: Callable[..., Any]
    version: str | None = None
    registry: dict[str, Any] | None = field(default=None)
    # The contract recorded when this model was released (registry models only).
    signature: Signature | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "signature": None if self.signature is None else json.loads(self.signature.to_json()),
            "source": self.source,
            "kind": self.kind,
            "file": str(self.file),
            "sha256": self.sha256,
            "version": self.version,
            "registry": self.registry,
        }

    def raw_outputs(self, features: np.ndarray) -> np.ndarray:
        """Run the model on float32 rows in batches, in inference mode; returns float64 outputs."""
        import numpy as np
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, max(len(features), 1), PREDICT_BATCH_ROWS):
                batch = torch.from_numpy(np.ascontiguousarray(features[start : start + PREDICT_BATCH_ROWS]))
                try:
                    result = self.module(batch)
                except Exception as error:  # the model's own code failed on this input
                    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise InputError(
                        f"{self.role} model {self.source} failed on input of shape {tuple(batch.shape)} "
                        f"({batch.shape[1]} features in [model] features order): {message}"
                    ) from None
                if isinstance(result, (tuple, list)) and len(result) == 1:
                    result = result[0]
                if not isinstance(result, torch.Tensor):
                    raise InputError(
                        f"{self.role} model {self.source} returned {type(result).__name__}, not a tensor"
                    )
                outputs.append(result.detach().to("cpu", torch.float64).numpy())
        return np.concatenate(outputs, axis=0)


def load_model(
    role: str,
    source: str,
    spec: ModelSpec,
    *,
    factory: str | None = None,
    version: str | None = None,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
) -> LoadedModel:
    registry = signature = None
    if source.startswith(REGISTRY_SCHEMES):
        from .registry import fetch_model

        fetched = fetch_model(source, tracking_uri=tracking_uri)
        path, registry = fetched.path, fetched.describe()
        version = version or fetched.semver
        if fetched.signature:
            try:
                signature = Signature.from_json(fetched.signature)
            except (ValueError, KeyError, TypeError) as error:
                raise InputError(f"{role} model {source}: unreadable release_kit.signature tag: {error}") from None
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{role} model file not found: {path}")
        if path.is_dir():
            raise InputError(f"{role} model path is a directory, not a model file: {path}")

    kind = detect_kind(path)
    if kind == "pickle" and not allow_pickle:
        raise InputError(
            f"{role} model {path} is a pickled model; unpickling can run arbitrary code, so it is refused "
            "(save it with torch.jit.save, torch.export.save or safetensors, or pass --allow-pickle)"
        )
    module = _LOADERS[kind](path, role, factory or spec.factory)
    return LoadedModel(
        role=role,
        source=source,
        kind=kind,
        file=path,
        sha256=file_sha256(path),
        module=module,
        version=version,
        registry=registry,
        signature=signature,
    )


def detect_kind(path: Path) -> ModelKind:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        if suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin"):
            return "pickle"  # torch.save's legacy (non-zip) format is a plain pickle
        raise InputError(f"cannot read model {path}: not a TorchScript, torch.export or safetensors file") from None
    except OSError as error:
        raise InputError(f"cannot read model {path}: {error}") from None
    parts = {part for name in names for part in name.split("/")[1:2]}
    if suffix == ".pt2" or "archive_format" in parts or "models" in parts:
        return "torch.export"
    if "code" in parts:
        return "torchscript"
    if "data.pkl" in parts:
        return "pickle"
    raise InputError(f"cannot read model {path}: unrecognised archive (no TorchScript code, no export program)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_torchscript(path: Path, role: str, factory: str | None) -> Callable:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError subclasses with multi-line C++ traces
        raise InputError(f"cannot load {role} TorchScript model {path}: {_first_line(error)}") from None
    return module.eval()


def _load_export(path: Path, role: str, factory: str | None) -> Callable:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise InputError(f"cannot load {role} torch.export program {path}: {_first_line(error)}") from None
    # Exported modules refuse .eval(); they were traced in the mode they were exported in.
    return program.module()


def _load_safetensors(path: Path, role: str, factory: str | None) -> Callable:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not factory:
        raise InputError(
            f"{role} model {path} is a safetensors state dict: name a factory "
            "('package.module:function') in [model] factory or [" + role + "] factory"
        )
    module = resolve_factory(factory)()
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputError(f"cannot load {role} safetensors file {path}: {_first_line(error)}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"{role} weights {path} do not fit factory {factory}: {_first_line(error)}") from None
    return module.eval()


def _load_pickle(path: Path, role: str, factory: str | None) -> Callable:
    import torch

    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:
        raise InputError(f"cannot load pickled {role} model {path}: {_first_line(error)}") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{role} model {path} unpickled to {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


_LOADERS: dict[ModelKind, Callable[[Path, str, str | None], Callable]] = {
    "torchscript": _load_torchscript,
    "torch.export": _load_export,
    "safetensors": _load_safetensors,
    "pickle": _load_pickle,
}


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


def to_predictions(raw: np.ndarray, spec: ModelSpec, role: str, n_classes_seen: int | None = None) -> np.ndarray:
    """Shape-check raw outputs for the task and normalise them.

    Regression → (N,) values. Classification → (N, C) class probabilities; binary models may output
    (N,) or (N, 1) (the positive class), multiclass (N, C). Non-finite values are kept: the output
    contract reports them, they are not an input error.
    """
    import numpy as np

    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if spec.task == "regression":
        if raw.ndim != 1:
            raise InputError(
                f"{role} model output shape {_shape(raw)} does not fit a regression model "
                "(expected (N,) or (N, 1))"
            )
        return raw
    if raw.ndim == 1:
        scores = raw
        positive = scores if spec.prediction == "probabilities" else _sigmoid(scores)
        probabilities = np.stack([1.0 - positive, positive], axis=1)
    elif raw.ndim == 2:
        probabilities = raw if spec.prediction == "probabilities" else _softmax(raw)
    else:
        raise InputError(f"{role} model output shape {_shape(raw)} does not fit a classification model")
    if n_classes_seen is not None and n_classes_seen > probabilities.shape[1]:
        raise InputError(
            f"{role} model outputs {probabilities.shape[1]} class(es) but the target has class id "
            f"{n_classes_seen - 1}"
        )
    return probabilities


def _shape(array: np.ndarray) -> str:
    return "(" + ", ".join("N" if i == 0 else str(d) for i, d in enumerate(array.shape)) + ")"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    import numpy as np

    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x - x.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
