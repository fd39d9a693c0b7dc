"""The README's "How the code is laid out" is the map a newcomer trusts: every package and
module it names must exist where it says, so a move or a rename that forgets the map fails."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = re.compile(r"\b[a-z0-9_]+\.py\b")


def _layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1]
    return section.split("```", 2)[1].strip("\n").splitlines()


def named_paths(lines: list[str]) -> set[Path]:
    """Each entry (a path at the start of a line) under the folder it is indented in, and each
    module its description names, under the entry's folder (a folder's description names its
    modules) or beside the entry."""
    found: set[Path] = set()
    stack: list[tuple[int, Path]] = [(-1, ROOT)]
    described = ROOT  # where modules named in the current description live
    entry_indent = 0
    for line in lines:
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        if indent <= entry_indent + 4 and (first.endswith("/") or MODULE.match(first)):
            while stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1]
            entry_indent = indent
            if first.endswith("/"):
                folder = parent / first.rstrip("/")
                found.add(folder)
                stack.append((indent, folder))
                described = folder
            else:
                described = parent
        found.update(described / name for name in MODULE.findall(line))
    return found


def test_every_package_and_module_the_readme_layout_names_exists():
    named = named_paths(_layout_block())
    assert (
        ROOT / "pgvault_assets" / "engine" / "storage" / "store" / "s3.py" in named
    )  # the reading works
    assert len(named) > 40
    missing = sorted(str(path.relative_to(ROOT)) for path in named if not path.exists())
    assert missing == []


def test_a_renamed_module_is_caught():
    lines = [*_layout_block()]
    lines[lines.index(next(line for line in lines if "clock.py" in line))] = (
        "    clocks.py       renamed without moving the code"
    )
    assert ROOT / "pgvault_assets" / "engine" / "clocks.py" in named_paths(lines)
