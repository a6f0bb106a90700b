"""The layers of vm/ (its docstring): each imports only from the layers before it, apart from
the exceptions named there, and no module imports in a circle. An import that breaks the order
or closes a circle fails here with the file and the line, lazy imports (inside a function) and
relative imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_portable_upgrade as vm

VM = Path(vm.__file__).resolve().parent
PKG = vm.__name__ + "."  # the import name; the source directory is vm/
LAYERS = ("core", "boxes", "subject", "machine", "load", "systemd", "report", "scenarios",
          "plugin")
# (importing file, imported layer): the exceptions vm/__init__.py names.
EXCEPTIONS = {
    ("core/config.py", "boxes"),
    ("core/config.py", "subject"),
    ("subject/spec.py", "scenarios"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package's own modules in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(PKG)]
    return found


def module_name(path: Path) -> str:
    """``pytest_portable_upgrade.boxes.builder`` of vm/boxes/builder.py (a package: its own)."""
    parts = list(path.relative_to(VM).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PKG.rstrip("."), *parts])


def imported_modules(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every module of the package that ``path`` (the module ``name``)
    imports: absolute and relative imports, lazy ones too; ``from P import m`` names the
    module P.m when there is one, else P."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(PKG)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if not (module + ".").startswith(PKG):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else module))
    return found


def harness_modules() -> list[Path]:
    """Every module of the harness (not the scripts run in the guest)."""
    return [p for p in sorted(VM.rglob("*.py")) if "guest" not in p.relative_to(VM).parts]


MODULES = {module_name(p) for p in sorted(VM.rglob("*.py")) if "guest" not in p.parts}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (or a module importing itself),
    each as a sorted list: an import circle (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): {m for _, m in imported_modules(p) if m in MODULES}
            for p in harness_modules()}


def test_no_module_imports_in_a_circle() -> None:
    graph = import_graph()
    where = {module_name(p): p for p in harness_modules()}
    described = [
        " -> ".join(group) + ": " + "; ".join(
            f"{where[a].relative_to(VM)}:{line} imports {m}"
            for a in group for line, m in imported_modules(where[a]) if m in group)
        for group in circles(graph)]
    assert described == []


def test_the_circle_check_finds_a_circle_lazy_or_relative(tmp_path: Path) -> None:
    """The check would pass vacuously if it saw no edges: it finds circles, including ones
    closed by a lazy import or a relative one, and sees the real graph's edges."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"a"}}) == [["a"]] and circles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert sum(len(v) for v in graph.values()) > 100
    builder = f"{PKG}boxes.builder"
    assert f"{PKG}boxes.fedora_box" in graph[builder]
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from . import builder\n    from .recipes import BoxRecipe\n")
    assert [m for _, m in imported_modules(lazy, f"{PKG}boxes.lazy")] == [
        builder, f"{PKG}boxes.recipes"]


def test_every_module_lies_in_a_layer() -> None:
    outside = [str(p.relative_to(VM)) for p in harness_modules()
               if p.parent != VM and p.relative_to(VM).parts[0] not in LAYERS]
    loose = [p.name for p in VM.glob("*.py") if p.name != "__init__.py"]
    assert (outside, loose) == ([], [])
    assert sorted(d.name for d in VM.iterdir() if (d / "__init__.py").exists()) == sorted(LAYERS)


def test_each_layer_imports_only_the_layers_before_it() -> None:
    wrong = []
    for path in harness_modules():
        name = path.relative_to(VM).as_posix()
        if "/" not in name:
            continue
        layer = name.split("/")[0]
        for line, module in imports_of(path):
            target = module.removeprefix(PKG).split(".")[0]
            if target not in LAYERS:
                wrong.append(f"{name}:{line}: {module} is in no layer")
            elif LAYERS.index(target) > LAYERS.index(layer) and (name, target) not in EXCEPTIONS:
                wrong.append(f"{name}:{line}: {layer} imports {module}, a later layer")
    assert wrong == []


def test_the_exceptions_are_still_needed() -> None:
    """An exception nothing uses any more is dropped here and in vm/__init__.py."""
    used = {(path.relative_to(VM).as_posix(), module.removeprefix(PKG).split(".")[0])
            for path in harness_modules() for _, module in imports_of(path)}
    assert EXCEPTIONS - used == set()


def test_the_layer_check_sees_the_imports() -> None:
    """The checks above would pass vacuously if the import name changed under them."""
    assert len([m for p in harness_modules() for m in imports_of(p)]) > 100


def test_the_package_docstring_names_every_layer_in_order() -> None:
    doc = vm.__doc__ or ""
    positions = [doc.find(f"\n    {layer} ") for layer in LAYERS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions
