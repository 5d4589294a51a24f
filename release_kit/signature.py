"""A model's contract: what it takes and what it gives. Comparing the candidate's with the baseline's
recorded one decides a major bump (the contract broke) or a minor one (a new optional capability).

The signature is recorded in the registry with each released version (tag ``release_kit.signature``);
a file baseline has none, and the report then says the contract could not be compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any



Shape = tuple[int | None, ...]  # None: the free batch dimension


@dataclass(frozen=True)
class InputSpec:
    shape: Shape  # (None, F) for a table; (None, C, H, W) for images; …
    dtype: str

    def words(self) -> str:
        return "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + f") {self.dtype}"


Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Signature:
    task: str
    features: tuple[str, ...]  # a table's feature columns; () for tensor inputs
    input_dtype: str  # the first input's dtype (kept for signatures recorded before ``inputs``)
    outputs: int  # per-row output width: 1 for regression and binary classification, C for multiclass, K outputs
    prediction: str | None  # classification: logits | probabilities
    bounds: Bounds | tuple[Bounds, ...] | None  # one range, or one per output
    inputs: tuple[InputSpec, ...] = ()  # every positional input, with the batch dimension free

    def __post_init__(self) -> None:
        if not self.inputs and self.features:  # a table model's one input, when not spelled out
            object.__setattr__(self, "inputs", (InputSpec((None, len(self.features)), self.input_dtype),))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        data: dict[str, Any] = json.loads(text)
        features = tuple(data["features"])
        dtype = data.get("input_dtype", "float32")
        # Recorded before tensor inputs: no "inputs", and __post_init__ derives the table's one input.
        inputs = tuple(InputSpec(tuple(None if d is None else int(d) for d in item["shape"]), str(item["dtype"]))
                       for item in data.get("inputs") or ())
        return cls(data["task"], features, dtype, int(data["outputs"]), data.get("prediction"), _bounds(data.get("bounds")), inputs)


def _bounds(raw):
    if raw is None:
        return None
    if raw and isinstance(raw[0], (list, tuple)):
        return tuple((low, high) for low, high in raw)
    return (raw[0], raw[1])


def of(config, golden, outputs: int) -> Signature:
    """The candidate's contract: the config's task and bounds, the golden inputs' shapes, the output width."""
    spec = config.model
    if spec.bounds is None:
        bounds = None
    elif isinstance(spec.bounds, list):
        bounds = tuple((b.min, b.max) for b in spec.bounds)
    else:
        bounds = (spec.bounds.min, spec.bounds.max)
    inputs = tuple(InputSpec((None, *array.shape[1:]), str(array.dtype)) for array in golden.inputs)
    return Signature(spec.task, tuple(spec.features or ()), inputs[0].dtype, outputs, spec.prediction, bounds, inputs)


@dataclass(frozen=True)
class ContractChange:
    breaking: list[str]  # any → major
    additive: list[str]  # any (and nothing breaking) → minor


def compare(baseline: Signature, candidate: Signature) -> ContractChange:
    breaking: list[str] = []
    additive: list[str] = []
    if baseline.task != candidate.task:
        breaking.append(f"task changed from {baseline.task} to {candidate.task}")
    old, new = list(baseline.features), list(candidate.features)
    removed = [f for f in old if f not in new]
    added = [f for f in new if f not in old]
    if removed:
        breaking.append(f"input feature(s) removed or renamed: {', '.join(removed)}")
    if added:
        breaking.append(f"required input feature(s) added: {', '.join(added)}")
    if not removed and not added and old != new:
        breaking.append("input features reordered")
    if old == new and baseline.inputs and candidate.inputs and baseline.inputs != candidate.inputs:
        # (A change of features already says how a table's one input changed.)
        old_in = ", ".join(i.words() for i in baseline.inputs)
        new_in = ", ".join(i.words() for i in candidate.inputs)
        breaking.append(f"inputs changed from {old_in} to {new_in}")
    elif baseline.input_dtype != candidate.input_dtype:
        breaking.append(f"input dtype changed from {baseline.input_dtype} to {candidate.input_dtype}")
    if baseline.outputs != candidate.outputs:
        breaking.append(f"output width changed from {baseline.outputs} to {candidate.outputs}")
    if baseline.prediction != candidate.prediction:
        breaking.append(f"prediction changed from {baseline.prediction} to {candidate.prediction}")
    old_bounds, new_bounds = _per_output(baseline), _per_output(candidate)
    for k, (old_b, new_b) in enumerate(zip(old_bounds, new_bounds)):
        bound_change = _bounds_change(old_b, new_b)
        if bound_change:
            which = f"output {k} bounds" if len(old_bounds) > 1 else "output bounds"
            (additive if bound_change.startswith("widened") else breaking).append(f"{which} {bound_change}")
    return ContractChange(breaking, additive)


def _per_output(signature: Signature) -> list:
    """The bounds of each output (one shared range repeated), so that both sides compare output by output."""
    bounds = signature.bounds
    width = max(signature.outputs, 1)
    if bounds is not None and bounds and isinstance(bounds[0], tuple):
        return list(bounds) + [None] * (width - len(bounds))
    return [bounds] * width


def _bounds_change(old, new) -> str | None:
    if old == new:
        return None
    old_low, old_high = old or (None, None)
    new_low, new_high = new or (None, None)
    looser_low = new_low is None or (old_low is not None and new_low <= old_low)
    looser_high = new_high is None or (old_high is not None and new_high >= old_high)
    text = f"[{_b(old_low, '−∞')}, {_b(old_high, '+∞')}] → [{_b(new_low, '−∞')}, {_b(new_high, '+∞')}]"
    # The policy: widened bounds are a new capability (minor); any other change of the range alters what
    # callers were promised (major).
    return f"widened {text}" if looser_low and looser_high else f"changed {text}"


def _b(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"
