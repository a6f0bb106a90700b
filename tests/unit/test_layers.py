"""The layers of vm/ (its docstring): each imports only from the layers before it, apart from
the exceptions named there. An import that breaks the order fails here with the file and the
line, lazy imports (inside a function) included."""

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
    ("boxes/fedora_box.py", "machine"),
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


def harness_modules() -> list[Path]:
    """Every module of the harness (not the scripts run in the guest)."""
    return [p for p in sorted(VM.rglob("*.py")) if "guest" not in p.relative_to(VM).parts]


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
