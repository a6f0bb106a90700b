"""The Python examples in README.md and docs/ import what the package really has: a module
that moves breaks its example here, not in a user's repository."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def imports_in(text: str) -> list[tuple[str, str]]:
    """(module, name) of every ``from M import N`` of the package in the examples of ``text``."""
    found = []
    for block in BLOCK.findall(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "pytest_portable_upgrade"):
                found += [(node.module or "", alias.name) for alias in node.names]
    return found


def test_the_docs_have_examples_to_check() -> None:
    assert sum(len(imports_in(p.read_text())) for p in DOCS) >= 3


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_example_import_exists(doc: Path) -> None:
    missing = [f"from {module} import {name}" for module, name in imports_in(doc.read_text())
               if not hasattr(importlib.import_module(module), name)]
    assert missing == [], f"{doc.name}: fix the example's import"
