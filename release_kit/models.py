"""Loading candidate and baseline models and turning their outputs into predictions.

Formats are recognised by content, not by suffix alone, so that a pickled model renamed to ``.pt``
cannot slip through: unpickling runs arbitrary code, so it needs the user's explicit ``--allow-pickle``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .files import byte_size, file_sha256, require_regular_file, require_room_to_unpack
from .operators import audit_exported_program, audit_scripted_module, audit_torchscript_archive
from .factories import resolve_factory
from .errors import EXIT_INPUT, InputError, first_line
from .signature import Signature

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .config import ModelSpec
    from .report import ModelRef, RegistryRef

class FactoryNeeded(InputError):
    """A model file of weights (safetensors, or a pickle that may be a state dict) with no factory named to
    build the module they go into. ``kind``: the file's."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# "state_dict": a torch.save'd state dict (a pickle) with a factory, read by torch's weights-only unpickler.
ModelKind = Literal["torchscript", "torch.export", "safetensors", "state_dict", "pickle"]
REGISTRY_SCHEMES = ("models:/", "runs:/")
# A table's rows per model call (unless [inference] batch_size says): as many as keep the call's widest
# activation, rows × its width in float32, within CALL_ACTIVATION_BYTES, a power of two in CALL_ROWS. Few
# calls amortise each call's cost, above all beside the streamed scan's statistics thread, which the
# models' thread hands the GIL to and takes it back from around every call; small activations stay in the
# core's cache. Measured on this 2-core machine, 100,000,000 rows side by side: a 10 → 32 → 1 MLP pair
# scanned beside the quality statistics in calls of 32,768 rows (its widest activation 4 MiB) took
# 0.85–0.88× the time of calls of 8,192 (the models' thread's CPU per 1,000,000 rows 87–90 ms against
# 96–98; 85–89 ms in either alone), and alone 1.01–1.06×; a 10 → 256 → 256 → 1 pair in calls of 32,768
# took 1.2× the time of 8,192 (activations of 32 MiB against 8), and the small pair's calls of 65,536 rows
# (8 MiB) were no faster in the scan than 8,192.
CALL_ACTIVATION_BYTES = 4 << 20
CALL_ROWS = (1_024, 32_768)
TENSOR_BATCH_SAMPLES = 256  # images and sequences: activations grow with the sample, so smaller batches


def table_call_rows(module: object, features: int) -> int:
    """Rows per call of a model on a table of ``features`` columns (see CALL_ACTIVATION_BYTES). Its layers'
    widths are read from its 1-D parameters (biases, norms), the input's from ``features``; a model that
    shows none (no bias, an opaque callable) is taken as its input's width. The same model and table get the
    same calls in every engine and path, so the numbers do not depend on where it runs."""
    widths = [features]
    parameters = getattr(module, "parameters", None)
    if callable(parameters):
        try:
            widths += [p.numel() for p in parameters() if p.dim() == 1]
        except (AttributeError, TypeError, RuntimeError):  # a "parameters" that lists no tensors: the input's width
            pass
    rows = CALL_ACTIVATION_BYTES // (4 * max(widths))
    low, high = CALL_ROWS
    return max(low, min(high, 1 << max(rows, 1).bit_length() - 1))


def default_call_rows(module: object, spec: ModelSpec | None) -> int:
    """Samples per call where ``[inference] batch_size`` is unset: :func:`table_call_rows` for a table,
    TENSOR_BATCH_SAMPLES for tensors. Without a spec (a server's pool, which knows no golden set) by the
    model's layers alone: a served request is split only when it is larger than that."""
    if spec is None:
        return table_call_rows(module, 1)
    return table_call_rows(module, len(spec.features)) if spec.tabular else TENSOR_BATCH_SAMPLES


def inference_device(requested: str) -> str:
    """``[inference] device``: ``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda`` without one
    is bad input (a gate that silently ran elsewhere would measure and decide something else)."""
    import torch

    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise InputError("[inference] device = \"cuda\" but torch sees no CUDA device here (use \"auto\" or \"cpu\")")
    return "cuda" if available else "cpu"


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
    registry: RegistryRef | None = field(default=None)
    # The contract recorded when this model was released (registry models only).
    signature: Signature | None = None
    # The user trusted this file's pickled parts (--allow-pickle): a reload (e.g. onto the GPU) may too.
    allow_pickle: bool = False
    # Every call through raw_outputs (the gate's, the search's, user checks') must return within this.
    timeout: float | None = None
    batch_size: int = TENSOR_BATCH_SAMPLES  # samples per model call: see default_call_rows
    factory: str | None = None  # a safetensors model's factory, to load it again elsewhere (a Ray actor)
    device: str = "cpu"  # where golden-set inference runs ([inference] device)
    output: int | str | None = None  # [model] output: the prediction among several outputs

    def describe(self) -> ModelRef:
        from .report import ModelRef

        return ModelRef(
            source=self.source, sha256=self.sha256, kind=self.kind, file=str(self.file), version=self.version,
            registry=self.registry, signature=None if self.signature is None else json.loads(self.signature.to_json()),
        )

    def raw_outputs(self, inputs: np.ndarray | tuple[np.ndarray, ...], *, timeout: float | None = None, shared: bool = True) -> np.ndarray:
        """Run the model on samples in batches of ``batch_size``, in inference mode; returns float64 outputs.

        ``inputs`` is one array (N, ...) or a tuple of them, passed positionally. Each call must return
        within ``timeout`` seconds (default: the model's, ``[gate] model_timeout_seconds``). ``shared``: the
        arrays are read again after the call (the golden set: by the other model, by later stages), so each
        call gets a copy: a model that writes into its input tensor changes nothing but that copy.
        """
        import torch

        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        rows, size = len(arrays[0]), self.batch_size
        with torch.inference_mode():
            if rows <= size:  # one call, the served case: no list, no concatenation (a call counts microseconds)
                return self._checked_output(self._call(self._batch(arrays, shared), self.deadline(timeout)))
            outputs = ModelOutputs(self, rows, timeout=timeout)
            for start in range(0, rows, size):
                outputs.add(tuple(a[start : start + size] for a in arrays), shared=shared)
        return outputs.array

    def deadline(self, timeout: float | None = None) -> contextlib.AbstractContextManager | None:
        """The guard of this model's calls on this thread: each must return within ``timeout`` seconds (default:
        the model's). Reusable. None where the model has none: a server's calls, which bound their requests
        themselves and count microseconds."""
        seconds = self.timeout if timeout is None else timeout
        return None if seconds is None else call_deadline(seconds, f"{self.role} model {self.source}")

    def _call(self, batch: tuple, deadline: contextlib.AbstractContextManager | None) -> Any:
        """One model call, within its ``deadline`` (:meth:`deadline`); the model's own failure is bad input."""
        try:
            if deadline is None:
                return self.module(*batch)
            with deadline:
                return self.module(*batch)
        except InputError:
            raise
        except Exception as error:  # the model's own code failed on this input
            raise InputError(f"{self.role} model {self.source} failed on input of shape {_shapes(batch)}: {first_line(error)}") from None

    def _batch(self, arrays: tuple[np.ndarray, ...], shared: bool = True) -> tuple:
        """Tensors on the model's device: on CUDA through pinned memory, copied without blocking. On the CPU
        a ``shared`` array (read again after the call) is copied: torch would hand the model its memory,
        and a model may write into its input (a candidate could so change what the baseline reads). A CPU
        tensor is passed as it is: its owner decides what the model may write into."""
        import numpy as np
        import torch

        contiguous = _private_copy if shared and self.device == "cpu" else np.ascontiguousarray
        if len(arrays) == 1:  # the common case, without a generator's cost (a served call counts microseconds)
            array = arrays[0]
            tensors = (array if type(array) is torch.Tensor else torch.from_numpy(contiguous(array)),)
        else:
            tensors = tuple(array if type(array) is torch.Tensor else torch.from_numpy(contiguous(array)) for array in arrays)
        if self.device == "cpu":
            return tensors
        return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)

    def to_device(self, device: str) -> None:
        """Move the model for golden-set inference (``cuda`` or ``cpu``)."""
        if device != self.device and hasattr(self.module, "to"):
            try:
                self.module = self.module.to(device)
            except Exception as error:  # e.g. an exported program pinned to its device
                raise InputError(f"{self.role} model {self.source} cannot move to {device}: {first_line(error)}") from None
        self.device = device

    def check_batch(self, inputs: np.ndarray | tuple[np.ndarray, ...], why: str) -> None:
        """Call the model once on exactly these samples (a batch it will be timed on); a failure is bad input."""
        import torch

        batch = self._batch(inputs if isinstance(inputs, tuple) else (inputs,))
        try:
            with torch.inference_mode(), self.deadline() or contextlib.nullcontext():
                self.module(*batch)
        except InputError:
            raise
        except Exception as error:  # the model's own code failed on this batch size
            raise InputError(f"{self.role} model {self.source} fails on the {why} of shape {_shapes(batch)}: {first_line(error)}") from None

    def _checked_output(self, result: Any) -> np.ndarray:
        import torch

        tensor, numpy_holds_it = self._output_tensor(result)
        if numpy_holds_it and tensor.is_cpu and not tensor.requires_grad:
            return tensor.numpy().astype(float)  # numpy's cast to float64: a copy, a microsecond cheaper than torch's
        return tensor.detach().to("cpu", torch.float64).numpy()

    def _output_tensor(self, result: Any) -> tuple[Any, bool]:
        """A call's result checked to be predictions (a tensor of real numbers, not 0-d), and whether numpy
        holds its dtype as it is."""
        import torch

        if not isinstance(result, torch.Tensor):
            result = self._prediction_among(result)
            if not isinstance(result, torch.Tensor):
                raise InputError(f"{self.role} model {self.source} returned {type(result).__name__}, not a tensor")
        numpy_holds_it = (_PREDICTION_DTYPES or _prediction_dtypes()).get(result.dtype)
        if numpy_holds_it is None:
            what = f"complex numbers ({result.dtype}); predictions must be real" if result.is_complex() else f"{result.dtype}, not numbers"
            raise InputError(f"{self.role} model {self.source} returned {what}")
        if result.ndim == 0:
            raise InputError(f"{self.role} model {self.source} returned a single number (a 0-d tensor), not one prediction per row")
        return result, numpy_holds_it


    def _prediction_among(self, result: Any) -> Any:
        """The prediction among a model's several outputs: ``[model] output``'s index in a tuple or list, or
        its key in a dict (a Hugging Face ``ModelOutput`` is one); the only one where there is one. Anything
        else is bad input naming what the model returned and the key to set."""
        chosen = self.output
        if isinstance(result, Mapping):
            keys = list(result)
            if isinstance(chosen, str) and chosen in result:
                return result[chosen]
            if chosen is None and len(keys) == 1:
                return result[keys[0]]
            named = ", ".join(repr(str(key)) for key in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            wrong = "" if chosen is None else f" ({chosen!r} is not one of them)"
            example = "logits" if "logits" in result else str(keys[0])
            raise InputError(f"{self.role} model {self.source} returned a dict of {named}{wrong}: name the prediction's key "
                             f"in [model] output, e.g. output = {example!r} (served: ModelPool(outputs=...))")
        if isinstance(result, (tuple, list)):
            if isinstance(chosen, int) and chosen < len(result):
                return result[chosen]
            if chosen is None and len(result) == 1:
                return result[0]
            wrong = "" if chosen is None else f" ({chosen!r} is no index of it)"
            raise InputError(f"{self.role} model {self.source} returned a {type(result).__name__} of {len(result)} outputs{wrong}: "
                             f"name the prediction's index in [model] output (0 to {len(result) - 1}; served: ModelPool(outputs=...))")
        return result


class ModelOutputs:
    """A model's float64 outputs for ``rows`` samples, filled by consecutive calls (:meth:`add`, inside
    ``torch.inference_mode()``). Each call's output is cast straight into its place: no float64 copy per
    call and no concatenation at the end (measured: both small MLPs of the scale benchmark on a
    1,000,000-row batch, 122 calls each, in 33-37 ms; 40-43 ms when each call went through
    :meth:`LoadedModel.raw_outputs` and the outputs were joined)."""

    def __init__(self, model: LoadedModel, rows: int, *, timeout: float | None = None) -> None:
        self.model, self.rows = model, rows
        self.filled = 0
        self._array: np.ndarray | None = None
        # Made once for every call (they follow one another on this thread), and the first output checked in
        # full, the others by their type, dtype and ndim: the streamed scan makes ~250 calls a batch on the models'
        # thread, its critical path, where each step of Python also waits for the GIL beside the statistics.
        self._deadline = model.deadline(timeout)
        self._dtype = None  # the dtype of the outputs that passed every check

    def add(self, inputs: np.ndarray | torch.Tensor | tuple[np.ndarray, ...], *, shared: bool = True) -> None:
        """Call the model on the next samples (one array, or a tuple of arrays passed positionally; a CPU
        tensor as it is); ``shared``: as :meth:`LoadedModel.raw_outputs`'s (False: nothing reads them after
        this call)."""
        import numpy as np
        import torch

        model = self.model
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        samples = len(arrays[0])
        batch = model._batch(arrays, shared)
        tensor = model._call(batch, self._deadline)
        # Checked in full on the first call, and on a later one that returns another kind of output.
        if type(tensor) is not torch.Tensor or tensor.dtype is not self._dtype or not tensor.ndim:
            tensor, _ = model._output_tensor(tensor)
            self._dtype = tensor.dtype
        if self._array is None:
            self._array = np.empty((self.rows, *tensor.shape[1:]))
        if tensor.shape[0] != samples or tensor.shape[1:] != self._array.shape[1:] or self.filled + samples > self.rows:
            raise InputError(f"{model.role} model {model.source} returned outputs of shape {tuple(tensor.shape)} for input of shape "
                             f"{_shapes(batch)}, not one row per sample of shape {self._array.shape[1:]}")
        # torch casts any real dtype (bfloat16 and the float8 formats too) and copies from any device.
        torch.from_numpy(self._array[self.filled : self.filled + samples]).copy_(tensor.detach() if tensor.requires_grad else tensor)
        self.filled += samples

    @property
    def array(self) -> np.ndarray:
        """The outputs, once every row is filled."""
        if self._array is None or self.filled != self.rows:
            raise ValueError(f"{self.model.role} model: {self.filled} of {self.rows} rows filled")
        return self._array


# Filled on first use (torch is imported lazily); a module-level dict, because a served call counts nanoseconds.
_PREDICTION_DTYPES: dict = {}


def _prediction_dtypes() -> dict:
    """The output dtypes that are predictions (real floating point, integers, booleans) → whether numpy holds
    them as they are (not bfloat16 or the float8 formats)."""
    import torch

    floats = {dtype for dtype in vars(torch).values() if isinstance(dtype, torch.dtype) and dtype.is_floating_point}
    native = {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool}
    _PREDICTION_DTYPES.update({dtype: dtype in native for dtype in floats | native})
    return _PREDICTION_DTYPES


def _private_copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy, whatever the array's layout."""
    import numpy as np

    return np.array(array, order="C")


def _shapes(batch: tuple) -> str:
    """``(64, 5)``; ``(64, 1, 32, 32) and (64, 3) int64`` for several inputs (dtypes other than float32 named)."""
    import torch

    return " and ".join(f"{tuple(t.shape)}" + ("" if t.dtype == torch.float32 else f" {str(t.dtype).removeprefix('torch.')}") for t in batch)


# A hung model gets this long to notice the interrupt before the process ends (it may be stuck in native code).
_DEADLINE_GRACE_SECONDS = 5.0


class _Watchdog:
    """One thread for the process that guards one model call at a time (calls run on the main thread).

    Arming and disarming take a lock and wake nobody (but a thread idle since the process's first call, or
    one sleeping past a shorter new deadline, or in the grace wait of the call that ends): the thread sleeps
    until the earliest deadline it knows, then looks again. A thread per call cost ~1 ms each, 10% of a
    CNN's golden-set inference; waking the thread twice per call cost its share of the GIL at every call.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._call = 0  # the guarded call's number; 0: none
        self._deadline = 0.0
        self._guard: _Deadline | None = None
        self._fired = 0  # the number of the call that was interrupted
        self._sleeping_until: float | None = None  # None: waiting for a call
        threading.Thread(target=self._watch, name="release-kit-model-deadline", daemon=True).start()

    def arm(self, seconds: float, guard: _Deadline) -> int:
        with self._condition:
            self._call += 1
            self._deadline, self._guard = time.monotonic() + seconds, guard
            if self._sleeping_until is None or self._sleeping_until > self._deadline:
                self._condition.notify()
            return self._call

    def disarm(self, call: int) -> bool:
        """End the guard of ``call``; whether its deadline fired."""
        with self._condition:
            self._deadline = 0.0 if self._call == call else self._deadline
            if self._fired == call:
                self._condition.notify()  # its grace wait ends now
            return self._fired == call

    def _watch(self) -> None:
        with self._condition:
            while True:
                if not self._deadline:
                    self._sleeping_until = None
                    self._condition.wait()
                    continue
                now = time.monotonic()
                if now < self._deadline:
                    self._sleeping_until = self._deadline
                    self._condition.wait(self._deadline - now)
                    continue
                call, guard = self._call, self._guard
                self._fired = call
                # A real SIGINT to the main thread: it also breaks a blocking system call (a sleep, a read),
                # which _thread.interrupt_main() would wait out.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                grace_end = now + _DEADLINE_GRACE_SECONDS
                while self._deadline and self._call == call and time.monotonic() < grace_end:
                    self._condition.wait(grace_end - time.monotonic())
                if self._deadline and self._call == call:  # stuck in native code: end the process
                    sys.stderr.write(f"release-kit: error: {guard.message()}\n")
                    sys.stderr.flush()
                    os._exit(EXIT_INPUT)


_watchdog: _Watchdog | None = None


def call_deadline(seconds: float | None, what: str) -> contextlib.AbstractContextManager:
    """End a model call that runs longer than ``seconds`` with an :class:`InputError` naming ``what``.

    A watchdog thread interrupts the main thread; a call stuck in native code that cannot be interrupted
    ends the process with the same one line and exit code 2. Only the main thread can be interrupted, so
    elsewhere (and with ``seconds`` None) the call runs unguarded.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return _Deadline(seconds, what)


class _Deadline:
    """The guard of a model's calls (see :func:`call_deadline`), entered once per call, one call after the
    other on the thread that made it. A class rather than a generator, the SIGINT handler looked up once, and
    its message written only when the deadline fires: the streamed scan guards ~250 calls per batch on the
    models' thread, its critical path (measured: 5.1 µs per call as a generator context made per call, 1.0 µs as
    this, made once)."""

    __slots__ = ("seconds", "what", "call", "ignored")

    def __init__(self, seconds: float, what: str) -> None:
        global _watchdog
        if _watchdog is None:
            _watchdog = _Watchdog()
        self.seconds, self.what = seconds, what
        # A process started with SIGINT ignored (a background job of a non-interactive shell, some CI runners)
        # would never see the watchdog's interrupt: for each call, SIGINT raises KeyboardInterrupt again.
        self.ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN

    def message(self) -> str:
        return f"{self.what} did not return within {self.seconds:g} s ([gate] model_timeout_seconds)"

    def __enter__(self) -> None:
        if self.ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.call = _watchdog.arm(self.seconds, self)

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            fired = _watchdog.disarm(self.call)
        finally:
            if self.ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Fired: the watchdog's interrupt, or a call that returned anyway (its code caught the interrupt)
        # but still overran. Any other error of the call is its own.
        if fired and (kind is None or issubclass(kind, KeyboardInterrupt)):
            raise InputError(self.message()) from None
        return False


def load_model(
    role: str,
    source: str,
    spec: ModelSpec | None = None,
    *,
    factory: str | None = None,
    version: str | None = None,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
    timeout: float | None = None,
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
        require_regular_file(path, f"{role} model")

    kind = detect_kind(path)
    factory = factory or (spec.factory if spec is not None else None)
    if kind == "pickle" and factory and not allow_pickle:
        # The most common checkpoint, torch.save(model.state_dict()), beside the code that builds the model:
        # torch's weights-only unpickler reads tensors and containers and refuses any other global, so it runs
        # no code from the file and needs no --allow-pickle. (With it, the file is unpickled as trusted.)
        kind = "state_dict"
    if kind == "pickle" and not allow_pickle:
        raise FactoryNeeded(
            f"{role} model {path} is a pickled model; unpickling can run arbitrary code, so it is refused "
            "(save it with torch.jit.save, torch.export.save or safetensors; for a state dict name its factory in "
            f"[model] factory or [{role}] factory; or pass --allow-pickle)", kind
        )
    if kind in ("torchscript", "torch.export", "state_dict", "pickle"):
        require_room_to_unpack(path, f"{role} model")
    # Loading runs code: a factory's, an exported program's, a TorchScript __setstate__ trusted with
    # --allow-pickle (which torch.jit.load runs holding the GIL: the deadline cannot end that one). So it gets
    # a model call's deadline, from after torch's import: the deadline is the file's, not the process's.
    import torch  # noqa: F401

    with call_deadline(timeout, f"loading the {role} model {source}"):
        module = _LOADERS[kind](path, role, factory, allow_pickle)
    return LoadedModel(
        factory=factory,
        batch_size=default_call_rows(module, spec),
        output=spec.output if spec is not None else None,
        role=role,
        source=source,
        kind=kind,
        file=path,
        sha256=file_sha256(path),
        module=module,
        version=version,
        registry=registry,
        signature=signature,
        allow_pickle=allow_pickle,
        timeout=timeout,
    )


# The first bytes of a pickle (protocol 2 and later) and of torch.save's legacy format, which is one.
_PICKLE_MAGIC = b"\x80"


def detect_kind(path: Path) -> ModelKind:
    """The model format, read from the file's content (a suffix proves nothing)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise InputError(f"cannot read model {path}: {error.strerror or error}") from None
    if not head:
        raise InputError(f"model file {path} is empty")
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        if head.startswith(_PICKLE_MAGIC) and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle"  # torch.save's legacy (non-zip) format is a plain pickle
        raise InputError(f"cannot read model {path}: not a model file release-kit can read (TorchScript, torch.export or safetensors)") from None
    except OSError as error:
        raise InputError(f"cannot read model {path}: {error.strerror or error}") from None
    parts = {part for name in names for part in name.split("/")[1:2]}
    if "archive_format" in parts or "models" in parts:
        return "torch.export"
    if "code" in parts:
        return "torchscript"
    if "data.pkl" in parts:
        return "pickle"
    raise InputError(f"cannot read model {path}: unrecognised archive (no TorchScript code, no export program)")


def _load_torchscript(path: Path, role: str, factory: str | None, allow_pickle: bool) -> Callable:
    import torch

    if not allow_pickle:
        audit_torchscript_archive(path, role)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError subclasses with multi-line C++ traces
        raise InputError(f"cannot load {role} TorchScript model {path}: {first_line(error)}") from None
    if not allow_pickle:
        audit_scripted_module(module, role, path)
    return module.eval()


def _load_export(path: Path, role: str, factory: str | None, allow_pickle: bool) -> Callable:
    import torch

    if not allow_pickle:
        inspect_export_archive(path, role)
    try:
        with contextlib.nullcontext() if allow_pickle else _weights_only_torch_load(), _deserializing_errors() as cause:
            program = torch.export.load(str(path))
    except Exception as error:
        # torch logs why it could not deserialize (a traceback on stderr) and raises "check the warnings above".
        reason = first_line(cause[0]) if cause else first_line(error)
        raise InputError(f"cannot load {role} torch.export program {path}: {reason}") from None
    if not allow_pickle:
        audit_exported_program(program, role, path)
    from .environment import available_memory_bytes
    from .fixed_batch import FixedBatch, traced_batch, traced_input_bytes

    # Exported modules refuse .eval(); they were traced in the mode they were exported in.
    size = traced_batch(program)
    if size is None:
        return program.module()
    # Every call is padded to the traced batch: a file's claim of a billion rows would take the job's memory.
    per_call, available = traced_input_bytes(program), available_memory_bytes()
    if per_call is not None and available is not None and per_call > available // 4:
        raise InputError(f"{role} model {path} was traced with a fixed batch of {size:,} samples, {byte_size(per_call)} of inputs per "
                         f"call, more than a quarter of the memory available ({byte_size(available)}): export it with a dynamic batch")
    return FixedBatch(program.module(), size)


@contextlib.contextmanager
def _deserializing_errors():
    """While ``torch.export.load`` runs: the error it logs with its traceback (a multi-line warning on stderr
    where errors are one line) kept out of the log and handed to the caller instead, as a list of at most
    one exception."""
    import logging

    caught: list[BaseException] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[1] is not None:
                caught[:] = [record.exc_info[1]]
                return False
            return True

    logger, keep = logging.getLogger("torch.export"), Keep()
    logger.addFilter(keep)
    try:
        yield caught
    finally:
        logger.removeFilter(keep)


def _refuse_pickled(role: str, path: Path, entry: str, why: str) -> InputError:
    return InputError(
        f"{role} model {path} holds a pickled record ({entry}: {why}); unpickling can run arbitrary code, "
        "so it is refused (pass --allow-pickle to trust this file)"
    )


# Entries of a torch.export archive that hold no code: JSON, raw tensor bytes, version stamps. Sample
# inputs are a torch.save file, loaded here with weights_only=True before torch may try anything else.
_EXPORT_PLAIN = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")


def inspect_export_archive(path: Path, role: str) -> None:
    """Refuse a ``torch.export`` archive that would make ``torch.export.load`` unpickle anything.

    torch unpickles weights and constants whose config says ``use_pickle``, custom and opaque objects,
    legacy ``.pt`` weight files, and the sample inputs when they do not load as plain tensors: each is
    a way for a crafted file to run code. Anything this does not recognise is refused too.
    """
    import io

    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename
                _, _, entry = name.partition("/")
                if info.is_dir() or entry in _EXPORT_PLAIN or entry.startswith("extra/"):
                    continue
                if entry.startswith("models/") and entry.endswith(".json"):
                    continue
                if entry.startswith(("data/weights/", "data/constants/")):
                    folder, _, file = entry.rpartition("/")
                    if file.endswith("_config.json"):
                        _inspect_payload_config(archive.read(name), role, path, entry)
                        continue
                    if file.startswith(("weight_", "tensor_")) and not file.endswith(".pt"):
                        continue
                    raise _refuse_pickled(role, path, entry, "not a raw tensor file")
                if entry.startswith("data/sample_inputs/"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                    except Exception as error:  # refused by the weights-only unpickler
                        raise _refuse_pickled(role, path, entry, f"not plain tensors: {first_line(error, 120)}") from None
                    continue
                raise _refuse_pickled(role, path, entry, "an entry release-kit does not know to be safe")
    except zipfile.BadZipFile as error:
        raise InputError(f"cannot read {role} torch.export program {path}: {error}") from None


def _inspect_payload_config(raw: bytes, role: str, path: Path, entry: str) -> None:
    try:
        config = json.loads(raw)
        payloads = config.get("config", {})
        items = payloads.items()
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise InputError(f"cannot read {role} torch.export program {path}: {entry} is not a payload config") from None
    for fqn, meta in items:
        if not isinstance(meta, dict):
            raise InputError(f"cannot read {role} torch.export program {path}: {entry} entry {fqn!r} is malformed")
        name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            raise _refuse_pickled(role, path, entry, f"{fqn} is stored with use_pickle")
        if not name.startswith(("weight_", "tensor_")):
            raise _refuse_pickled(role, path, entry, f"{fqn} is a pickled object ({name})")


@contextmanager
def _weights_only_torch_load():
    """While loading an untrusted archive, every ``torch.load`` is weights-only, whatever its caller asks:
    torch's export loader falls back to full unpickling when the weights-only load fails."""
    import torch

    original = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = original


def _load_safetensors(path: Path, role: str, factory: str | None, allow_pickle: bool) -> Callable:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not factory:
        raise FactoryNeeded(
            f"{role} model {path} is a safetensors state dict: name a factory "
            "('package.module:function') in [model] factory or [" + role + "] factory", "safetensors"
        )
    module = _factory_module(factory, role, path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputError(f"cannot load {role} safetensors file {path}: {first_line(error)}") from None
    return _with_weights(module, state, role, path, factory)


def _load_state_dict(path: Path, role: str, factory: str | None, allow_pickle: bool) -> Callable:
    import torch

    module = _factory_module(factory, role, path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for a global outside torch's allowlist, RuntimeError for a bad archive
        # torch's first paragraph offers to load the file anyway; the one after it says why ("Trying to load
        # unsupported GLOBAL posix.system whose module posix is blocked.", or "WeightsUnpickler error: …").
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Weights only load failed") else first_line(error)
        raise InputError(f"cannot load {role} state dict {path} with torch's weights-only loader: {why[:300]}") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        held = f"a dict of {', '.join(map(repr, list(state)[:6]))}" if isinstance(state, Mapping) else f"a {type(state).__name__}"
        raise InputError(f"{role} model {path} holds {held}, not a state dict of tensors: save model.state_dict() itself "
                         "(or safetensors) for factory " + str(factory))
    return _with_weights(module, state, role, path, factory)


def _factory_module(factory: str, role: str, path: Path):
    """A fresh module from the project's ``factory``, to take a state dict's weights."""
    import torch

    try:
        module = resolve_factory(factory)()
    except InputError:
        raise
    except Exception as error:  # the user's factory code failed
        raise InputError(f"factory {factory} for {role} model {path} failed: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"factory {factory} for {role} model {path} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _with_weights(module, state: Mapping, role: str, path: Path, factory: str):
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        # torch says which keys are missing, unexpected or of another size on the lines after its first
        # ("Error(s) in loading state_dict for SeqReg:"): those are what the user needs, on one line.
        reasons = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        reason = "; ".join(reasons)[:500] if reasons else first_line(error)
        raise InputError(f"{role} weights {path} do not fit factory {factory}: {reason}") from None
    return module.eval()


def _load_pickle(path: Path, role: str, factory: str | None, allow_pickle: bool) -> Callable:
    import torch

    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:
        raise InputError(f"cannot load pickled {role} model {path}: {first_line(error)}") from None
    if isinstance(module, Mapping) and factory:  # a state dict, trusted
        return _with_weights(_factory_module(factory, role, path), module, role, path, factory)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{role} model {path} unpickled to {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


_LOADERS: dict[ModelKind, Callable[[Path, str, str | None, bool], Callable]] = {
    "torchscript": _load_torchscript,
    "torch.export": _load_export,
    "safetensors": _load_safetensors,
    "state_dict": _load_state_dict,
    "pickle": _load_pickle,
}


def to_predictions(raw: np.ndarray, spec: ModelSpec, role: str, n_classes_seen: int | None = None, *, outputs: int = 1) -> np.ndarray:
    """Shape-check raw outputs for the task and normalise them.

    Regression → (N,) values, or (N, K) for a target of K ``outputs``. Classification → (N, C) class probabilities; binary models may output
    (N,) or (N, 1) (the positive class), multiclass (N, C). Non-finite values are kept: the output
    contract reports them, they are not an input error.
    """
    import numpy as np

    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if spec.task == "regression" and outputs > 1:
        if raw.ndim != 2 or raw.shape[1] != outputs:
            raise InputError(f"{role} model output shape {_shape(raw)} does not fit the target's {outputs} outputs (expected (N, {outputs}))")
        return raw
    if spec.task == "regression":
        if raw.ndim != 1:
            raise InputError(
                f"{role} model output shape {_shape(raw)} does not fit a regression model "
                "(expected (N,) or (N, 1))"
            )
        return raw
    if raw.ndim not in (1, 2):
        raise InputError(f"{role} model output shape {_shape(raw)} does not fit a classification model")
    if spec.prediction == "probabilities":
        _require_probabilities(raw, role)
    elif raw.ndim == 2 and raw.shape[1] > 1:
        _refuse_probabilities_as_logits(raw, role)
    if raw.ndim == 1:
        positive = raw if spec.prediction == "probabilities" else _sigmoid(raw)
        probabilities = np.stack([1.0 - positive, positive], axis=1)
    else:
        probabilities = raw if spec.prediction == "probabilities" else _softmax(raw)
    if spec.classes is not None and len(spec.classes) != probabilities.shape[1]:
        raise InputError(
            f"{role} model outputs {probabilities.shape[1]} class(es) but [model] classes names {len(spec.classes)} "
            f"({', '.join(spec.classes)}): output i is the class classes[i]"
        )
    if n_classes_seen is not None and n_classes_seen > probabilities.shape[1]:
        raise InputError(
            f"{role} model outputs {probabilities.shape[1]} class(es) but the target has class id "
            f"{n_classes_seen - 1}"
        )
    return probabilities


# How far a probability may pass 0 or 1, and a row's probabilities their sum of 1, by float32 rounding (a
# softmax over thousands of classes sums within ~1e-5 of 1): beyond that the outputs are not probabilities.
PROBABILITY_SLACK = 1e-6
PROBABILITY_SUM_SLACK = 1e-3


def _require_probabilities(raw: np.ndarray, role: str) -> None:
    """Outputs declared ``prediction = "probabilities"`` must be: in [0, 1], and a (N, C) row summing to 1.
    A model that outputs logits under that setting had its scores read as probabilities: metrics of
    nonsense, and a crash where they were binned. Non-finite rows are the output contract's to report."""
    import numpy as np

    rows = raw[:, None] if raw.ndim == 1 else raw
    finite, outside, unsummed = _off_distribution(rows, summed=raw.ndim == 2)
    bad = outside | unsummed
    if not bad.any():
        return
    what = " and ".join(text for text, mask in (("values outside [0, 1]", outside), ("a sum other than 1", unsummed)) if mask.any())
    example = ", ".join(f"{value:.3g}" for value in finite[np.flatnonzero(bad)[0]][:6]) + (", …" if rows.shape[1] > 6 else "")
    raise InputError(
        f"{role} model outputs are not class probabilities, as [model] prediction = \"probabilities\" says: "
        f"{int(bad.sum()):,} of {len(rows):,} rows have {what} (e.g. [{example}]); a model that outputs scores "
        'before a sigmoid or softmax (logits) needs prediction = "logits"'
    )


def _off_distribution(rows: np.ndarray, *, summed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The finite rows of a (N, C) output, and per row whether it has a value outside [0, 1] and (``summed``)
    whether it sums to other than 1, both beyond float32 rounding."""
    import numpy as np

    finite = rows[np.isfinite(rows).all(axis=1)]
    outside = ((finite < -PROBABILITY_SLACK) | (finite > 1 + PROBABILITY_SLACK)).any(axis=1)
    unsummed = np.abs(finite.sum(axis=1) - 1) > PROBABILITY_SUM_SLACK if summed else np.zeros(len(finite), bool)
    return finite, outside, unsummed


# Rows a (N, C) output must hold, every one a probability distribution, to be read as probabilities under
# prediction = "logits": logits fall there by chance far less often than once in this many rows.
PROBABILITY_ROWS_EVIDENCE = 8


def _refuse_probabilities_as_logits(raw: np.ndarray, role: str) -> None:
    """(N, C) outputs every row of which is in [0, 1] and sums to 1 are probabilities: a softmax on top of them
    (``prediction = "logits"``) flattens every row toward 1/C and misstates log loss and AUC, silently."""

    finite, outside, unsummed = _off_distribution(raw, summed=True)
    if len(finite) < PROBABILITY_ROWS_EVIDENCE or outside.any() or unsummed.any():
        return
    raise InputError(
        f"{role} model outputs are class probabilities (every one of {len(finite):,} rows in [0, 1], summing to 1), "
        'but [model] prediction = "logits" would put them through a softmax again: set prediction = "probabilities"'
    )


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
