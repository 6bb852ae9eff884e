"""The layer order of docs/architecture.md holds over every import of the product, those inside functions too:
no package imports one above it, no import cycle among modules, and a function-level import of the project's
own code outside the command line says why."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
              if c["type"] == "layers")["layers"]  # top to bottom
RANK = {p: i for i, p in enumerate(reversed(LAYERS))}  # 0 = the bottom layer
LAZY_BY_DESIGN = {"cli", "bench"}  # import inside commands so that `ebr --help` starts fast


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> Iterator[tuple[str, int, bool, bool]]:
    """(imported module, line, inside a function, the line has a comment) for each import of the project."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, int, bool, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names]  # a module, or a name in one
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            else:
                yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
                continue
            for name in names:
                if name.split(".")[0] in RANK:
                    yield name, child.lineno, in_function, "#" in lines[child.end_lineno - 1]

    yield from walk(tree, False)


def product_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_every_package_of_the_project_is_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(LAYERS), f"packages outside the layer order: {sorted(packages ^ set(LAYERS))}"


def test_no_import_goes_up_the_layers():
    wrong = []
    for path in product_files():
        here = module_name(path).split(".")[0]
        for name, line, _, _ in project_imports(path):
            if RANK[name.split(".")[0]] > RANK[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "imports against the layer order (docs/architecture.md):\n" + "\n".join(wrong)


def test_function_level_imports_of_the_project_say_why():
    silent = []
    for path in product_files():
        if module_name(path).split(".")[0] in LAZY_BY_DESIGN:
            continue
        for name, line, in_function, commented in project_imports(path):
            if in_function and not commented:
                silent.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert not silent, "a function-level import needs a comment saying why:\n" + "\n".join(silent)


def test_no_import_cycle_among_modules():
    modules = {module_name(p): p for p in product_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for name, _, _, _ in project_imports(path):
            target = next((c for c in (name, name.rsplit(".", 1)[0]) if c in modules and c != m), None)
            if target:
                graph[m].add(target)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
