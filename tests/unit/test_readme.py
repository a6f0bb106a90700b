"""README.md keeps up with the code: its module map names every module of vm/, and "Add a
scenario" describes every field of Scenario and defines every ``expect`` kind."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pytest_portable_upgrade.scenarios.catalogue import EXPECTATIONS, Scenario

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text from the heading ``title`` to the next heading of the same level."""
    level = title.split(" ", 1)[0]
    start = README.index(f"\n{title}\n")
    end = README.find(f"\n{level} ", start + len(title) + 2)
    return README[start:end if end != -1 else None]


def test_the_module_map_names_every_module() -> None:
    block = section("## How it is built").split("```")[1]
    vm = ROOT / "vm"
    files = [p for p in vm.rglob("*") if p.suffix in (".py", ".sh") and p.name != "__init__.py"]
    missing = [str(p.relative_to(vm)) for p in files
               if not re.search(rf"(?<![\w/.-]){re.escape(p.name)}\b", block)
               and f"guest/{p.name}" not in block]
    assert missing == [], "add them to README's module map (## How it is built)"
    for layer in sorted(d.name for d in vm.iterdir() if (d / "__init__.py").exists()):
        assert f"\n  {layer}/ " in block, layer


def test_add_a_scenario_describes_every_field() -> None:
    text = section("## Add a scenario")
    missing = [f.name for f in dataclasses.fields(Scenario) if f"`{f.name}`" not in text]
    assert missing == []


def test_add_a_scenario_defines_every_expect_kind() -> None:
    text = section("## Add a scenario")
    assert [e for e in EXPECTATIONS if f"\n| `{e}` |" not in text] == []
