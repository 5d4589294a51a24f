"""A ``torch.export`` program traced with a fixed batch size, callable on any number of samples.

``torch.export.export(model, (example,))`` without ``dynamic_shapes`` fixes every dimension of the example,
the batch too: the program then refuses any other number of rows ("Guard failed: x.size()[0] == 64"). Such
programs are common (they are what static-shape runtimes take), and the gate calls a model on a golden set
of any size, on one row in the search and in the performance stage's batch 1, and a server on each request.
:class:`FixedBatch` calls the program in batches of exactly its size: the last is padded with copies of its
last sample and their outputs are dropped, as a static-batch inference server does. A sample's outputs
then depend on its own inputs only, which a model in eval mode guarantees."""

from __future__ import annotations

from typing import Any

import torch


def _traced_inputs(program: torch.export.ExportedProgram) -> list[torch.Tensor] | None:
    """The user inputs as the program was traced (fake tensors with its shapes); None when one is no tensor."""
    names = set(program.graph_signature.user_inputs)
    values = [node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder" and node.name in names]
    return values if all(isinstance(value, torch.Tensor) for value in values) else None


def traced_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size the program is fixed to: the leading dimension of its every tensor input, when that
    is one static size; None when any input's is dynamic (a SymInt), the inputs disagree, or one has no
    dimension."""
    values = _traced_inputs(program)
    if not values or any(value.ndim == 0 or type(value.shape[0]) is not int for value in values):
        return None
    sizes = {value.shape[0] for value in values}
    return sizes.pop() if len(sizes) == 1 and min(sizes) > 0 else None


def traced_input_bytes(program: torch.export.ExportedProgram) -> int | None:
    """Bytes of one call's inputs as the program was traced (every dimension static), None when any is
    dynamic: what each padded batch of a :class:`FixedBatch` allocates."""
    values = _traced_inputs(program)
    if values is None or any(type(d) is not int for value in values for d in value.shape):
        return None
    return sum(value.numel() * value.element_size() for value in values)


class FixedBatch(torch.nn.Module):
    """The program's module, called on any number of samples in batches of exactly ``size``."""

    def __init__(self, program: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.program = program
        self.size = size

    def forward(self, *inputs: torch.Tensor) -> Any:
        rows = inputs[0].shape[0] if inputs else self.size
        if rows == self.size:
            return self.program(*inputs)
        if rows == 0:  # the output's structure and trailing shape, no row of it
            return _rows(self.program(*(t.new_zeros((self.size, *t.shape[1:])) for t in inputs)), 0, self.size)
        parts = []
        for start in range(0, rows, self.size):
            batch = [t[start : start + self.size] for t in inputs]
            kept = batch[0].shape[0]
            if kept < self.size:
                batch = [torch.cat([t, t[-1:].expand(self.size - kept, *t.shape[1:])]) for t in batch]
            parts.append(_rows(self.program(*batch), kept, self.size))
        return _joined(parts, self.size)


def fixed_batch_of(module: object) -> int | None:
    """The batch size a loaded model's module is called in, where it is a :class:`FixedBatch`."""
    return module.size if isinstance(module, FixedBatch) else None


def _rows(output: Any, kept: int, size: int) -> Any:
    """The first ``kept`` samples of each per-sample tensor of an output (a tensor, or tuples, lists and
    dicts of them); what is not per sample (another leading size, a scalar) as it is."""
    if isinstance(output, torch.Tensor):
        return output[:kept] if output.ndim and output.shape[0] == size else output
    if isinstance(output, (tuple, list)):
        return type(output)(_rows(o, kept, size) for o in output)
    if isinstance(output, dict):
        return {key: _rows(value, kept, size) for key, value in output.items()}
    return output


def _joined(parts: list[Any], size: int) -> Any:
    """The batches' outputs joined sample by sample; what is not per sample, the first batch's."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        per_sample = first.ndim and all(p.ndim and p.shape[1:] == first.shape[1:] for p in parts) and (
            len(parts) == 1 or first.shape[0] == size)
        return torch.cat(parts) if per_sample else first
    if isinstance(first, (tuple, list)):
        return type(first)(_joined([p[i] for p in parts], size) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: _joined([p[key] for p in parts], size) for key in first}
    return first
