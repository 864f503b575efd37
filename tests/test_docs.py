"""The README and the docs site say what the code does: every config key documented, every
`wellwatch ...` line a user would type parses, pages stay short and self-contained, and the README's
first real acquisition runs as written (slow; on the optional adcc-paired data set)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from wellwatch.cli import build_parser
from wellwatch.core.config import load_config

from .conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
GETTING_STARTED = DOCS / "getting-started.md"
PAGES = sorted(DOCS.rglob("*.md"))
ROOT_PLACEHOLDER = "/path/to/acquisition/data"  # the one value in the example config a user must replace


def fenced_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, split at ;, &&, || and &."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in words + [";"]:
            if word in (";", "&&", "||", "&", "|"):
                if command:
                    commands.append(shlex.join(command))
                command = []
            else:
                command.append(word.rstrip(";&"))
    return commands


def wellwatch_lines(path: Path) -> list[str]:
    return [c for block in fenced_blocks(path, "bash") for c in shell_commands(block) if c.startswith("wellwatch ")]


@pytest.mark.integration
def test_every_config_key_is_on_the_configuration_page():
    page = (DOCS / "operating" / "configuration.md").read_text()
    sections = re.split(r"^#{2,3} .*?`\[([\w.]+)\]`.*$", page, flags=re.M)
    documented = {name: body for name, body in zip(sections[1::2], sections[2::2])}
    config = tomllib.loads((ROOT / "config.toml").read_text())

    def keys(table: dict, prefix: str = ""):
        for key, value in table.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield prefix.rstrip("."), key

    missing = [f"[{section}] {key}" for section, key in keys(config)
               if f"| `{key}` |" not in documented.get(section, "")]
    assert not missing, f"config.toml keys without a row on docs/operating/configuration.md: {missing}"


@pytest.mark.unit
def test_the_command_line_splitter_sees_each_command():
    block = "wellwatch run --config a.toml &\nmake demo && wellwatch subscribe tcp://x:1 \\\n    --count 3  # note\n"
    assert shell_commands(block) == ["wellwatch run --config a.toml", "make demo",
                                     "wellwatch subscribe tcp://x:1 --count 3"]


@pytest.mark.unit
@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_wellwatch_command_in_the_docs_parses(path, capsys):
    parser = build_parser()
    for line in wellwatch_lines(path):
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit as e:
            if e.code:
                pytest.fail(f"{path.relative_to(ROOT)}: `{line}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.unit
def test_readme_and_getting_started_show_commands_that_are_checked():
    # the parse test above must have something to check where a newcomer starts
    assert any(line.startswith("wellwatch run --config") for line in wellwatch_lines(README))
    assert any(line.startswith("wellwatch subscribe") for line in wellwatch_lines(GETTING_STARTED))


@pytest.mark.unit
def test_first_acquisition_config_is_one_and_loads(tmp_path):
    readme_toml, = fenced_blocks(README, "toml")
    assert readme_toml in fenced_blocks(GETTING_STARTED, "toml"), "README and getting started show different configs"
    assert ROOT_PLACEHOLDER in readme_toml
    (tmp_path / "my-plate.toml").write_text(readme_toml.replace(ROOT_PLACEHOLDER, str(tmp_path / "data")))
    config = load_config(tmp_path / "my-plate.toml")
    assert config.watch.naming == "scanr" and config.channels.label_free == ("BF",)
    assert Path(config.journal.path) == tmp_path / "plate-journal.sqlite"


@pytest.mark.unit
def test_pages_stay_short():
    assert len(README.read_text().splitlines()) <= 200
    long = {str(p.relative_to(ROOT)): n for p in PAGES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"pages over 400 lines: {long}"


@pytest.mark.unit
def test_nothing_points_outside_the_repository_or_at_development_process():
    pattern = re.compile(r"\.\./shared|DESIGN\.md|\bissues? \d+|\bthe lead\b", re.I)
    allowed = {DOCS / "contributing.md": {"../shared"}}  # where the optional data folder is described
    found = []
    for path in [README, *PAGES]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            hits = {m.group(0) for m in pattern.finditer(line)} - allowed.get(path, set())
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{n}: {sorted(hits)}")
    assert not found, "\n".join(found)


@pytest.mark.unit
def test_code_names_no_development_issues():
    """Comments, docstrings and messages explain themselves; they cite no tracker or design card."""
    pattern = re.compile(r"\bissues? #?\d+|DESIGN\.md|design card", re.I)
    skip = {".venv", "site", "build", ".git", "node_modules"}
    sources = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
               and (p.suffix in {".py", ".js", ".html", ".toml", ".sh"} or p.name == "Makefile")
               and "vendor" not in p.parts and p != Path(__file__).resolve()]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in sources
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not found, found


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


@pytest.mark.integration
@pytest.mark.slow
def test_first_real_acquisition_runs_as_written(tmp_path):
    """The README's config and shell block, on a real scanR folder whose files arrive one by one."""
    source = shared_data("adcc-paired", "data")
    if not ports_free(5556, 5557, 9108):
        pytest.skip("the documented default ports 5556/5557/9108 are in use on this machine")
    acquisition = tmp_path / "acquisition" / "data"
    acquisition.mkdir(parents=True)
    readme_toml, = fenced_blocks(README, "toml")
    (tmp_path / "my-plate.toml").write_text(readme_toml.replace(ROOT_PLACEHOLDER, str(acquisition)))
    block = next(b for b in fenced_blocks(README, "bash") if "wellwatch run --config my-plate.toml" in b)

    def microscope():  # files appear the way a scanR writes them: temp name, then rename
        for f in sorted(source.glob("*.tif")):
            shutil.copyfile(f, acquisition / (f.name + ".part"))
            os.rename(acquisition / (f.name + ".part"), acquisition / f.name)
            time.sleep(0.1)

    writer = threading.Thread(target=microscope, daemon=True)
    writer.start()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = f"{block}\nkill %1\nwait %1\n"  # the block leaves the daemon running: stop it as the docs say
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    writer.join()
    assert done.returncode == 0, done.stderr[-2000:]
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    updates = [m for m in messages if m.get("type") == "well"]
    assert len(updates) == 3, done.stdout[-2000:]
    assert all(sum(m["counts"].values()) > 0 and m["cells"] is not None for m in updates), updates
