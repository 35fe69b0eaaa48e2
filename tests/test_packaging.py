"""`pip install .` in any directory works: the wheel carries every module, templates, migrations, example config."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_module_templates_migrations_and_example_config(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    setuptools_warnings = re.findall(r"setuptools/\S+: \w*Warning: .*", build.stdout + build.stderr)
    assert setuptools_warnings == []  # e.g. a deprecated license table, a template folder missing from `packages`
    wheel = next(tmp_path.glob("newsletter-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "newsletter/config.example.toml" in names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "newsletter").rglob("*.py")}
    assert sorted(modules - names) == []  # a subpackage missing from `packages` is left out silently
    assert "newsletter/migrations/env.py" in names
    assert "newsletter/migrations/script.py.mako" in names
    shipped_versions = {n.rsplit("/", 1)[1] for n in names if n.startswith("newsletter/migrations/versions/")}
    assert {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")} <= shipped_versions
    shipped_templates = {
        n.removeprefix("newsletter/templates/") for n in names if n.startswith("newsletter/templates/")
    }
    on_disk = {
        str(p.relative_to(ROOT / "templates"))
        for p in (ROOT / "templates").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert on_disk <= shipped_templates
