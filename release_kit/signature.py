"""A model's contract: what it takes and what it gives. Comparing the candidate's with the baseline's
recorded one decides a major bump (the contract broke) or a minor one (a new optional capability).

The signature is recorded in the registry with each released version (tag ``release_kit.signature``);
a file baseline has none, and the report then says the contract could not be compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any



@dataclass(frozen=True)
class Signature:
    task: str
    features: tuple[str, ...]
    input_dtype: str  # the tensor the model takes: always float32 (N, F) today
    outputs: int  # per-row output width: 1 for regression and binary classification, C for multiclass
    prediction: str | None  # classification: logits | probabilities
    bounds: tuple[float | None, float | None] | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        data: dict[str, Any] = json.loads(text)
        bounds = data.get("bounds")
        return cls(data["task"], tuple(data["features"]), data.get("input_dtype", "float32"), int(data["outputs"]),
                   data.get("prediction"), None if bounds is None else (bounds[0], bounds[1]))


def of(config, outputs: int) -> Signature:
    spec = config.model
    bounds = None if spec.bounds is None else (spec.bounds.min, spec.bounds.max)
    return Signature(spec.task, tuple(spec.features), "float32", outputs, spec.prediction, bounds)


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
    if baseline.input_dtype != candidate.input_dtype:
        breaking.append(f"input dtype changed from {baseline.input_dtype} to {candidate.input_dtype}")
    if baseline.outputs != candidate.outputs:
        breaking.append(f"output width changed from {baseline.outputs} to {candidate.outputs}")
    if baseline.prediction != candidate.prediction:
        breaking.append(f"prediction changed from {baseline.prediction} to {candidate.prediction}")
    bound_change = _bounds_change(baseline.bounds, candidate.bounds)
    if bound_change:
        (additive if bound_change.startswith("widened") else breaking).append(f"output bounds {bound_change}")
    return ContractChange(breaking, additive)


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
