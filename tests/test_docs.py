"""The README stays true: every command is in the command reference (and nothing else is),
and the contents list is the README's sections in order."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from newsletter.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands(group: object, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    """Every leaf command of the Typer app, by its words after `newsletter`."""
    found: dict[str, object] = {}
    for name, cmd in getattr(group, "commands", {}).items():
        if hasattr(cmd, "commands"):
            found |= commands(cmd, (*prefix, name))
        else:
            found[" ".join((*prefix, name))] = cmd
    return found


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def test_every_command_has_help_with_an_example_and_one_line_in_the_command_reference() -> None:
    real = commands(typer.main.get_command(app))
    assert len(real) >= 20
    block = re.search(r"```\n(.*?)```", section(README, "Command reference"), re.S)
    assert block, "the command reference has no code block"
    listed = [line for line in block.group(1).splitlines() if line.startswith("newsletter ")]
    documented = set()
    for line in listed:
        words = line.split()[1:]
        name = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in real), None)
        assert name is not None or words[0].startswith(("-", "[")), (
            f"README lists a command that does not exist: {line}"
        )
        documented.add(name)
    for name, cmd in real.items():
        assert "Example: newsletter" in (getattr(cmd, "help", None) or ""), f"{name} has no example in its help"
        assert name in documented, f"'newsletter {name}' is missing from the README's command reference"


def test_the_command_reference_lists_each_command_once_with_its_own_options() -> None:
    root = typer.main.get_command(app)
    real = commands(root)
    block = re.search(r"```\n(.*?)```", section(README, "Command reference"), re.S)
    assert block, "the command reference has no code block"
    seen: list[str] = []
    for line in block.group(1).splitlines():
        words = line.split()[1:]
        name = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in real), None)
        params = getattr(real[name] if name else root, "params", [])
        options = {o for p in params if p.param_type_name == "option" for o in p.opts if o.startswith("--")}
        listed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
        assert listed <= options, f"README: {line!r} lists {sorted(listed - options)}, which it does not take"
        if name:
            seen.append(name)
            assert listed == options, f"README: {line!r} leaves out {sorted(options - listed)}"
    assert sorted(n for n in set(seen) if seen.count(n) > 1) == [], "listed more than once in the command reference"


def test_the_contents_list_is_the_readme_sections_in_order() -> None:
    headings = [h for h in re.findall(r"^## (.+)$", README, re.M) if h != "Contents"]
    listed = re.findall(r"^- \[(.+?)\]\(#(.+?)\)$", section(README, "Contents"), re.M)
    assert [title for title, _ in listed] == headings
    for title, anchor in listed:  # GitHub's anchors: lower case, punctuation dropped, spaces as '-'
        assert anchor == re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"), title
