"""MkDocs hook: lay the sources out as they install (daemon/ -> wellwatch/daemon/, export/ ->
wellwatch/export/, ...; pyproject's package-dir) as a folder of links in build/api-src, so
mkdocstrings reads them statically: nothing is imported to build the API pages."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from mkdocs.plugins import event_priority


@event_priority(100)  # before mkdocstrings' on_config, which looks the paths up once
def on_config(config):
    root = Path(config.config_file_path).parent
    package_dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = root / "build" / "api-src"
    shutil.rmtree(out, ignore_errors=True)
    top = out / "wellwatch"
    top.mkdir(parents=True)
    for entry in (root / package_dirs["wellwatch"]).iterdir():
        (top / entry.name).symlink_to(entry.resolve())
    for package, folder in package_dirs.items():
        if package != "wellwatch":
            (out / package.replace(".", "/")).symlink_to((root / folder).resolve(), target_is_directory=True)
    return config
