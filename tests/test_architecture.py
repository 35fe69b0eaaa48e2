"""docs/architecture.md stays true: it names every module, and imports go one way (no
cycle, and nothing imports an entry point)."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "newsletter"
ENTRY_POINTS = {"__main__", "cli", "web", "desk"}  # they may import each other (serve runs web, web mounts desk)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (at module level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.startswith("newsletter")
        ):
            base = node.module.removeprefix("newsletter").lstrip(".")
            for alias in node.names:  # `from newsletter.desk import auth` imports the module desk.auth
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("newsletter.") for a in node.names if a.name.startswith("newsletter.")}
    return found - {""}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_imports_go_one_way() -> None:
    edges = graph()
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    for module, deps in edges.items():
        if module.split(".")[0] not in ENTRY_POINTS:
            wrong = sorted(d for d in deps if d.split(".")[0] in ENTRY_POINTS)
            assert not wrong, f"newsletter.{module} imports the entry point(s) {wrong}"


def words(doc: str) -> set[str]:
    return set(re.findall(r"`[^`\s]+`", doc))


def test_the_architecture_map_names_every_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    names |= {
        f"{p.relative_to(PACKAGE).parent.as_posix()}/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE
    }
    missing = sorted(n for n in names if not {f"`{n}`", f"`{Path(n).name}`", f"`{Path(n).name}/`"} & words(doc))
    assert missing == [], f"docs/architecture.md does not name {missing}"
