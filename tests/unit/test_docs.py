"""The guide and the reference keep up with the code: README.md stays a guide (≤ 200 lines),
every relative link in it and in docs/ resolves (file and #anchor), docs/internals.md's module
map names every module of vm/, and docs/scenarios.md's "Add a scenario" describes every field
of Scenario and defines every ``expect`` kind."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pytest_portable_upgrade.scenarios.catalogue import EXPECTATIONS, Scenario

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def section(text: str, title: str) -> str:
    """The text from the heading ``title`` to the next heading of the same level."""
    level = title.split(" ", 1)[0]
    start = text.index(f"\n{title}\n")
    end = text.find(f"\n{level} ", start + len(title) + 2)
    return text[start:end if end != -1 else None]


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (outside code blocks)."""
    found, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    text = page.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:: not checked offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}: {target} (no {resolved.relative_to(root)})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(f"{page.name}: {target} (no heading #{anchor})")
    return broken


def test_the_readme_is_a_guide() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    """The check above must be able to fail."""
    (tmp_path / "a.md").write_text("# Top\n\n## A part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-part) [gone](c.md) [no anchor](a.md#nowhere) [self](#top)\n"
                    "# Top\n```\n[in code](nothing.md)\n```\n")
    assert [b.split(" ", 2)[1] for b in broken_links(page, tmp_path)] == ["c.md", "a.md#nowhere"]


def test_the_module_map_names_every_module() -> None:
    block = section((ROOT / "docs" / "internals.md").read_text(), "## How it is built")
    block = block.split("```")[1]
    vm = ROOT / "vm"
    files = [p for p in vm.rglob("*") if p.suffix in (".py", ".sh") and p.name != "__init__.py"]
    missing = [str(p.relative_to(vm)) for p in files
               if not re.search(rf"(?<![\w/.-]){re.escape(p.name)}\b", block)
               and f"guest/{p.name}" not in block]
    assert missing == [], "add them to docs/internals.md's module map (## How it is built)"
    for layer in sorted(d.name for d in vm.iterdir() if (d / "__init__.py").exists()):
        assert f"\n  {layer}/ " in block, layer


def test_add_a_scenario_describes_every_field() -> None:
    text = section((ROOT / "docs" / "scenarios.md").read_text(), "## Add a scenario")
    missing = [f.name for f in dataclasses.fields(Scenario) if f"`{f.name}`" not in text]
    assert missing == []


def test_add_a_scenario_defines_every_expect_kind() -> None:
    text = section((ROOT / "docs" / "scenarios.md").read_text(), "## Add a scenario")
    assert [e for e in EXPECTATIONS if f"\n| `{e}` |" not in text] == []
