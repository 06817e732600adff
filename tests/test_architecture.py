"""The layering of qatune, checked on its source: every import (module level and inside functions) of every
module under qatune/ is an edge; the graph must have no cycle and no forbidden edge.

Forbidden: the shared layers (training, evaluation, inference, serve, export, compare, cli, pipelines)
importing the extractive-QA task package or SQuAD code (they reach tasks through ``qatune.tasks``);
tasks importing backends and backends importing tasks; inference importing export (export depends on
inference, never the reverse).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qatune"
SHARED_LAYERS = ("training", "evaluation", "inference", "serve", "export", "compare", "cli", "pipelines")
QA_TASKS = ("qatune.tasks.extractive_qa", "qatune.tasks.generative_qa")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """qatune modules ``name`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(name, path.name == "__init__.py", node)
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_squad_code(module: str) -> bool:
    return (any(in_package(module, task) for task in QA_TASKS) or in_package(module, "qatune.data.squad")
            or "squad" in module.rsplit(".", 1)[-1])


def test_the_walker_sees_function_level_and_relative_imports(graph: dict[str, set[str]]) -> None:
    """Guard the guard: known edges, one at module level and one inside a function, are found."""
    assert "qatune.errors" in graph["qatune.config"]
    assert "qatune.training.trainer" in graph["qatune"]  # imported inside qatune.train()
    assert "qatune.tasks.extractive_qa" in graph["qatune.tasks"]  # the registry's lazy factory
    assert len(graph) > 60


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """A package's ``__init__`` importing its own submodules is how packages work, not a cycle; every other
    cycle (a -> b -> ... -> a) fails, named in full."""
    def edges(module: str) -> set[str]:
        # a package re-exporting its children: the child importing the package resolves to the child module
        return {t for t in graph[module] if not in_package(module, t) or t == module}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_shared_layers_never_import_the_qa_task_or_squad_code(graph: dict[str, set[str]]) -> None:
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                 if any(in_package(src, f"qatune.{layer}") for layer in SHARED_LAYERS) and is_squad_code(dst))
    assert not bad, "shared layers must reach tasks through qatune.tasks:\n" + "\n".join(bad)


def test_tasks_and_backends_never_import_each_other(graph: dict[str, set[str]]) -> None:
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                 if (in_package(src, "qatune.tasks") and in_package(dst, "qatune.backends"))
                 or (in_package(src, "qatune.backends") and in_package(dst, "qatune.tasks")))
    assert not bad, "tasks and backends meet only in the loop and the loader:\n" + "\n".join(bad)


def test_export_depends_on_inference_never_the_reverse(graph: dict[str, set[str]]) -> None:
    assert any(in_package(dst, "qatune.inference") for src, targets in graph.items() if in_package(src, "qatune.export")
               for dst in targets)
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                 if in_package(src, "qatune.inference") and in_package(dst, "qatune.export"))
    assert not bad, "\n".join(bad)


def test_run_dir_files_do_not_import_models_methods_or_tasks(graph: dict[str, set[str]]) -> None:
    """artifacts.py reads and writes run-dir files; loading models is the backends' job."""
    bad = sorted(t for t in graph["qatune.artifacts"]
                 if any(in_package(t, p) for p in ("qatune.methods", "qatune.tasks", "qatune.backends")))
    assert not bad, bad


def test_every_package_has_an_init() -> None:
    missing = [str(d.relative_to(PACKAGE.parent)) for d in PACKAGE.rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").is_file()]
    assert not missing, missing


def _contract(protocol: type) -> set[str]:
    """Names a Protocol declares: its annotated attributes and its methods."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return names


def test_the_builtin_task_and_backend_implement_their_contracts() -> None:
    from qatune.backends import get_backend
    from qatune.backends.base import Backend
    from qatune.tasks import Task, get_task

    task, backend = get_task("extractive_qa"), get_backend("hf")
    assert len(_contract(Task)) > 25 and len(_contract(Backend)) > 8
    assert not sorted(n for n in _contract(Task) if not hasattr(task, n))
    assert not sorted(n for n in _contract(Backend) if not hasattr(backend, n))


def test_task_packages_never_import_each_other(graph: dict[str, set[str]]) -> None:
    """What two tasks share (SQuAD reading and scoring) lives below them, in qatune.data.squad."""
    def task_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[:2] == ["qatune", "tasks"] and parts[2] != "base" else None

    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                 if task_of(src) and task_of(dst) and task_of(src) != task_of(dst))
    assert not bad, "task packages import each other:\n" + "\n".join(bad)
