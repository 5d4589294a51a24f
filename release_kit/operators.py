"""Which operators a model program may run.

A TorchScript or ``torch.export`` file is a program, not only weights, and the operators it may name are
every one registered in the process. Nearly all compute on tensors, but a few reach outside: ``aten::save``
writes any file, ``aten::from_file`` maps one (``shared=True``: writes into it, so a model can rewrite a
Python source in the job's environment and run code in the next process), RPC and c10d operators talk to
other processes, and custom classes (``torch.classes``) run whatever their library registered. A
TorchScript ``__setstate__`` even runs inside ``torch.jit.load``, holding the GIL throughout, where no
deadline can stop it: an archive whose source defines one is refused (torch's own packed weights restore
their state natively, through custom classes, with no ``__setstate__`` in the archive's source).

So a model file may name only the operators of tensor computation: the namespaces in
``ALLOWED_NAMESPACES`` less ``REFUSED_OPERATORS``, and custom classes of ``ALLOWED_CLASS_NAMESPACES``
(packed weights, profiler ranges). A TorchScript archive is read as text before it is loaded: every
source file under ``code/`` (each method, ``__setstate__`` included) and the class references of its
pickled state. After loading, the graphs themselves are checked again: the module's methods with their
calls inlined (all that ``forward`` reaches) and each submodule's methods, and for an exported program
every node of every (sub)graph. Loading a file that fails either check is an input error;
``--allow-pickle`` (the user trusts the file) skips them.
"""

from __future__ import annotations

import ast
import pickletools
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

ALLOWED_NAMESPACES = frozenset({
    "aten", "prim", "prims", "rngprims", "higher_order",
    "quantized", "_quantized", "quantization", "quantized_decomposed", "sparse",  # quantized and sparse kernels
    "mkldnn", "mkldnn_prepacked", "onednn", "mkl", "prepacked",  # CPU back ends' kernels (prepacked: XNNPACK)
    "profiler",  # record_function's ranges: events for a profiler, when one runs
    "torchvision",  # detection models' kernels (nms, roi_align, …), registered when torchvision is imported
})
# Operators of an allowed namespace that act outside the tensors: files, other processes.
REFUSED_OPERATORS = frozenset({
    "aten::save", "aten::from_file", "prim::rpc_async", "prim::rpc_sync", "prim::rpc_remote",
})
ALLOWED_CLASS_NAMESPACES = frozenset({"quantized", "sparse", "rnn", "mkldnn", "onednn", "xnnpack", "profiler"})
# Names under ``torch.`` in TorchScript source that resolve to a refused operator (torch.save → aten::save).
_REFUSED_BUILTINS = frozenset(name.partition("::")[2] for name in REFUSED_OPERATORS)
_OUTSIDE = "it acts outside the model's tensors (files or other processes)"
_CUSTOM_CLASS = "__torch__.torch.classes."


def operator_refusal(name: str) -> str | None:
    """Why a model may not run the operator ``namespace::name`` (``None``: it may)."""
    namespace, _, _ = name.partition("::")
    if name.split(".")[0] in REFUSED_OPERATORS:  # an overload ("aten::from_file.out") is the operator too
        return _OUTSIDE
    if namespace not in ALLOWED_NAMESPACES:
        return (f"operators of the '{namespace}' namespace are not among those release-kit runs from a model file "
                "(tensor computation: aten, prim, quantized, …)")
    return None


def class_refusal(qualified_name: str) -> str | None:
    """Why a model may not hold an object of this TorchScript class (``None``: it may): custom C++ classes
    outside ``ALLOWED_CLASS_NAMESPACES``; a model's own TorchScript classes are code checked like the rest."""
    if not qualified_name.startswith(_CUSTOM_CLASS):
        return None
    namespace = qualified_name[len(_CUSTOM_CLASS):].split(".")[0]
    if namespace in ALLOWED_CLASS_NAMESPACES:
        return None
    return f"custom class torch.classes.{namespace} runs native code release-kit does not allow from a model file"


def _refused(role: str, path: Path, what: str, why: str) -> InputError:
    return InputError(
        f"{role} model {path} calls {what}: {why}, so it is refused (pass --allow-pickle to trust this file)"
    )


# -- TorchScript, before it is loaded -------------------------------------------------------------------


# The most an archive's source or state entry may hold: a real model's are kilobytes to a few megabytes
# (the tensors are entries of their own), and a compressed entry could unpack to any size.
MAX_AUDITED_BYTES = 256 * 2**20


def audit_torchscript_archive(path: Path, role: str) -> None:
    """Refuse a TorchScript archive whose code or state names an operator or class outside the allowed set."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                entry = info.filename.partition("/")[2]
                source = entry.startswith("code/") and entry.endswith(".py")
                if not (source or entry.endswith((".pkl", ".debug_pkl"))):
                    continue
                if info.file_size > MAX_AUDITED_BYTES:
                    raise InputError(f"cannot read {role} TorchScript model {path}: {entry} unpacks to {info.file_size:,} bytes, "
                                     f"more than a model's source or state holds ({MAX_AUDITED_BYTES:,})")
                if source:
                    _audit_source(archive.read(info).decode("utf-8", errors="replace"), role, path, entry)
                else:
                    _audit_pickled_classes(archive.read(info), role, path, entry)
    except zipfile.BadZipFile as error:
        raise InputError(f"cannot read {role} TorchScript model {path}: {error}") from None


def _audit_source(source: str, role: str, path: Path, entry: str) -> None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:  # deep nesting: RecursionError
        why = error.msg if isinstance(error, SyntaxError) else type(error).__name__
        raise InputError(f"cannot read {role} TorchScript model {path}: {entry} is not TorchScript source ({why})") from None
    for chain in _name_chains(tree):
        why = _chain_refusal(chain)
        if why is not None:
            raise _refused(role, path, f"{'.'.join(chain)} ({entry})", why)
    if any(isinstance(node, ast.FunctionDef) and node.name == "__setstate__" for node in ast.walk(tree)):
        # torch.jit.load runs it holding the GIL throughout: no other thread runs, so no deadline can end a
        # __setstate__ that never returns, and the gate's job would hang until the CI runner kills it.
        raise InputError(f"{role} model {path} runs code of its own while it is loaded (a TorchScript __setstate__, {entry}), "
                         "which torch.jit.load runs where no deadline can stop it, so it is refused (pass --allow-pickle to trust this file)")


def _name_chains(tree: ast.AST) -> Iterator[list[str]]:
    """Every dotted name the source reaches (``a.b.c``, also spelled ``getattr(a.b, "c")``, which TorchScript
    compiles), each prefix included, and the bare names of TorchScript's RPC builtins."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _RPC_BUILTINS:
            yield ["torch", "distributed", "rpc", node.id]
        chain = _chain(node) if isinstance(node, ast.Attribute) or _is_getattr(node) else None
        if chain is not None:
            yield chain


# TorchScript resolves its RPC builtins (prim::rpc_async, …) by their bare names too.
_RPC_BUILTINS = frozenset(name.partition("::")[2] for name in REFUSED_OPERATORS if name.startswith("prim::rpc_"))


def _is_getattr(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str))


def _chain(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif _is_getattr(node):
            parts.append(node.args[1].value)
            node = node.args[0]
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return None


def _chain_refusal(chain: list[str]) -> str | None:
    if chain[:2] == ["torch", "ops"] or chain[:1] == ["ops"]:
        rest = chain[2:] if chain[0] == "torch" else chain[1:]
        if not rest:
            return None
        return operator_refusal("::".join(rest[:2]) if len(rest) > 1 else f"{rest[0]}::")
    if chain[:2] == ["torch", "classes"] or chain[:3] == ["__torch__", "torch", "classes"]:
        rest = chain[2:] if chain[0] == "torch" else chain[3:]
        return class_refusal(_CUSTOM_CLASS + ".".join(rest)) if rest else None
    if chain[0] == "torch" and len(chain) > 1:
        if chain[1] == "distributed":
            return "torch.distributed talks to other processes"
        if chain[-1] in _REFUSED_BUILTINS:
            return _OUTSIDE
    return None


def _audit_pickled_classes(raw: bytes, role: str, path: Path, entry: str) -> None:
    """The classes a TorchScript state pickle would build (read with pickletools: nothing is unpickled)."""
    strings: list[str] = []
    try:
        for opcode, argument, _ in pickletools.genops(raw):
            if opcode.name == "GLOBAL":
                module, _, name = str(argument).partition(" ")
                qualified = f"{module}.{name}"
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                qualified = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(argument, str):
                    strings.append(argument)
                continue
            why = class_refusal(qualified)
            if why is not None:
                raise _refused(role, path, f"{qualified} ({entry})", why)
    except ValueError as error:  # a truncated or malformed pickle: torch.jit.load would fail on it too
        raise InputError(f"cannot read {role} TorchScript model {path}: {entry}: {error}") from None


# -- loaded programs ---------------------------------------------------------------------------------


def audit_scripted_module(module: Any, role: str, path: Path) -> None:
    """What a loaded TorchScript module runs: its own methods with every call inlined (all that ``forward``
    reaches), and each submodule's methods as written (those an interface call may reach)."""
    import torch

    for submodule in module.modules():
        compiled = submodule._c
        for method in compiled._method_names():
            graph = compiled._get_method(method).graph
            if submodule is module:
                graph = graph.copy()
                torch._C._jit_pass_inline(graph)
            for node in _graph_nodes(graph.nodes()):
                kind = node.kind()
                why = operator_refusal(kind)
                if why is None and kind in _OBJECT_NODES:  # a custom class's method runs, or one is built
                    value = node.output() if kind == "prim::CreateObject" else node.inputsAt(0)
                    if isinstance(value.type(), torch._C.ClassType):
                        why = class_refusal(value.type().qualified_name())
                if why is not None:
                    raise _refused(role, path, f"{kind} (in {method})", why)


_OBJECT_NODES = frozenset({"prim::CallMethod", "prim::CreateObject"})


def _graph_nodes(nodes: Iterable[Any]) -> Iterator[Any]:
    """Every node, inside blocks (if, loop) and subgraphs (``torch.jit.fork``'s, its calls inlined) too."""
    import torch

    for node in nodes:
        yield node
        for block in node.blocks():
            yield from _graph_nodes(block.nodes())
        for attribute in node.attributeNames():
            if node.kindOf(attribute) == "g":
                subgraph = node.g(attribute).copy()
                torch._C._jit_pass_inline(subgraph)
                yield from _graph_nodes(subgraph.nodes())


def audit_exported_program(program: Any, role: str, path: Path) -> None:
    """Every operator an exported program's graphs call, higher-order operators' subgraphs and the
    operators they are handed as arguments included (``auto_functionalized``, ``with_effects``)."""
    import torch
    from torch.utils._pytree import tree_leaves

    for graph_module in program.graph_module.modules():
        graph = getattr(graph_module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            for target in [node.target, *tree_leaves((node.args, node.kwargs))]:
                if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
                    name = _operator_name(target)
                    why = operator_refusal(name)
                    if why is not None:
                        raise _refused(role, path, name, why)


def _operator_name(target: Any) -> str:
    import torch

    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"{target.namespace}::{target.name()}"
    return target.name()
