"""The package's shape, checked from its source: no import cycles, the use side never
reaches the training loop, modules stay small. Read with `ast`, so every import counts,
also those inside functions (the lazy ones), except those only for type checkers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "runner"
TRAINING_LOOP = "runner.training.engine"
USE_SIDE = (
    "runner.use.",
    "runner.serve.",
    "runner.cli.views",
)  # load, evaluate, predict, export, plot, serve; show results
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The runner modules `tree` imports when it runs (not under `if TYPE_CHECKING:`)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from runner.x import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """runner module -> the runner modules it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in paths and m != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_sees_lazy_imports_and_ignores_type_checking_ones() -> None:
    graph = import_graph()
    assert "runner.training.engine" in graph["runner.training.session"]  # imported inside build_trainer
    assert "runner.training.engine" not in graph["runner.training.events"]  # only for type checkers


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = sorted(name for name in graph if name in reachable(graph, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_use_side_never_reaches_the_training_loop() -> None:
    graph = import_graph()
    use_side = [name for name in graph if name.startswith(USE_SIDE)]
    assert {
        "runner.use.trained",
        "runner.use.evaluate",
        "runner.use.export",
        "runner.use.plot",
        "runner.serve.app",
    } <= set(use_side)
    reaching = {name: sorted(m for m in reachable(graph, name) if m.startswith("runner.training")) for name in use_side}
    assert not any(reaching.values()), reaching


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: module_name(p))
def test_package_inits_import_nothing(path: Path) -> None:
    # An import here would run for every submodule: `runner --help` would pay for all of them.
    imports = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not imports


def test_no_module_grows_past_a_few_hundred_lines() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_the_architecture_map_names_every_module() -> None:
    # docs/architecture.md is the newcomer's map: a top-level module by its path, any other
    # in its package's row of the table ("| `runner/data/` | ... `cache.py` ... |").
    text = (REPO / "docs" / "architecture.md").read_text()
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("| `runner/") and line.split("|")[1].strip().endswith("/`"):
            rows[line.split("`")[1]] = line
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(REPO).as_posix()
        folder = relative.rsplit("/", 1)[0] + "/"
        named = f"`{relative}`" in text if folder == "runner/" else f"`{path.name}`" in rows.get(folder, "")
        if not named:
            missing.append(relative)
    assert not missing, f"docs/architecture.md does not say what these are: {missing}"
