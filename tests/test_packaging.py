"""The wheel holds every package of the source tree: pyproject lists packages by hand (the layout
maps top-level folders into wellwatch.*), and a subpackage missing from the list imports from a
checkout but not from an installed wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def source_packages(package_dirs: dict[str, str]) -> set[str]:
    """Every folder with an __init__.py below a mapped folder, as the dotted name it installs as."""
    found = set()
    for package, folder in package_dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(base).parts)))
    return found


def test_every_source_package_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    in_tree = source_packages(setuptools["package-dir"])
    assert in_tree - listed == set(), "add these to pyproject.toml's [tool.setuptools] packages"
    assert listed - in_tree == set(), "listed in pyproject.toml but no such package folder"
