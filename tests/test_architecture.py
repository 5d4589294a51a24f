"""The code's own rules, held by a test: no module imports a private name of another, and the imports have no
cycle, counting those made inside functions and those made only for type checking; the benchmarks name only
what release_kit has."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "release_kit"


def module_imports() -> dict[str, list[tuple[str, str]]]:
    """Module → the (module, name) pairs it imports from release_kit, wherever the import statement is."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found: dict[str, list[tuple[str, str]]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        pairs = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    pairs.append((submodule, "") if submodule in modules else (target, alias.name))
            elif isinstance(node, ast.Import):
                pairs.extend((alias.name, "") for alias in node.names)
        found[module] = [(target, name) for target, name in pairs if target in modules and target != module]
    return found


def test_no_module_imports_another_modules_private_name():
    private = [(module, f"{target}.{name}") for module, pairs in module_imports().items() for target, name in pairs
               if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_the_imports_have_no_cycle():
    edges = {module: {target for target, _ in pairs} for module, pairs in module_imports().items()}
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target):], module, target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []
    assert "release_kit.render" in edges["release_kit.template_worker"]  # the walk sees imports inside functions


def test_the_benchmarks_name_only_what_release_kit_has():
    """A benchmark is run by hand (``make bench``), not by the suite: one that names a function since renamed
    would break unnoticed until its figure is next re-measured. Every ``from release_kit… import name`` and
    every ``module.name`` of an imported release_kit module in benchmarks/ must exist."""
    import importlib

    missing = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules: dict[str, str] = {}  # local name → release_kit module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("release_kit"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if hasattr(module, alias.name) and not isinstance(getattr(module, alias.name), type(ast)):
                        continue
                    try:
                        modules[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}").__name__
                    except ImportError:
                        missing.append(f"{path.name}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                modules.update({alias.asname or alias.name: alias.name for alias in node.names if alias.name.startswith("release_kit")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                if not hasattr(importlib.import_module(modules[node.value.id]), node.attr):
                    missing.append(f"{path.name}: {modules[node.value.id]}.{node.attr}")
    assert not missing, missing
