"""The design's dependency rules, read from the sources (an AST walk: nothing is imported).

- the daemon needs no PyTorch, and daemon/ imports neither training/ nor export/, dashboard/, scale/;
- the project's packages import each other one way only: no cycles, counting every import, those
  inside functions included;
- core/ is the pure science: it imports no other project package and no threads, queues, sockets,
  ZeroMQ, SQLite, processes, file watching or metrics;
- the tools (training, export, dashboard, scale) build on core/, not on the daemon;
- a project module is imported inside a function only in the command-line dispatch (`cli.py`,
  `*_cli.py`: a subcommand's imports wait for the subcommand, so `--help` stays fast) or to defer a
  heavy optional dependency, with a comment saying so.

docs/import_graph.py draws the same package graph and prints the same count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Package -> its folder (pyproject's package-dir). Every other module under wellwatch/ (the CLI, the
# stream client, demo, harness, bench/) is one package, "wellwatch".
PACKAGES = {"core": "core", "daemon": "daemon", "training": "training", "export": "export", "scale": "scale",
            "dashboard": "dashboard", "simulator": "simulator", "results": "results", "net": "net",
            "wellwatch": "wellwatch"}


@dataclass(frozen=True)
class Import:
    path: Path     # the importing file
    line: int
    module: str    # the importing module, e.g. wellwatch.daemon.journal
    target: str    # the imported module: wellwatch.core.contract, or a third-party name such as zmq.auth
    local: bool    # inside a function body


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts[0] == "wellwatch" else ".".join(["wellwatch", *parts])


def project_files() -> dict[str, Path]:
    """Module name -> source file, for every package folder present."""
    files = {}
    for folder in PACKAGES.values():
        for path in sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else ():
            files[module_name(path)] = path
    return files


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    # `from wellwatch.core import contract` imports the module wellwatch.core.contract
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return submodules if len(submodules) == len(node.names) else [base, *submodules]


def imports_of(path: Path, modules: set[str]) -> list[Import]:
    module, is_package = module_name(path), path.name == "__init__.py"
    found = []

    def walk(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(path, child.lineno, module, target, local)
                             for target in _targets(child, module, is_package, modules))
            else:
                walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(path.read_text(), str(path)), False)
    return found


def project_imports() -> list[Import]:
    files = project_files()
    return [imp for path in files.values() for imp in imports_of(path, set(files))]


def package_of(module: str) -> str | None:
    """The project package a module belongs to; None for third-party modules and for the root
    package `wellwatch` itself (its __init__ holds only the version: every import passes through it)."""
    parts = module.split(".")
    if parts[0] != "wellwatch" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in PACKAGES and parts[1] != "wellwatch" else "wellwatch"


def package_graph(imports: list[Import]) -> Counter:
    """(importing package, imported package) -> number of import statements."""
    edges = Counter()
    for imp in imports:
        source, target = package_of(imp.module), package_of(imp.target)
        if target is not None and target != source:
            edges[source, target] += 1
    return edges


def cycles(edges) -> list[list[str]]:
    """The graph's strongly connected components of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_dispatch(path: Path) -> bool:
    """The command-line dispatch: each command's module (`cli.py`, `*_cli.py`) imports what a
    subcommand needs when it runs."""
    return path.name == "cli.py" or path.name.endswith("_cli.py")


def hidden_imports(imports: list[Import]) -> list[Import]:
    """Imports of the project's own modules inside a function, outside the command-line dispatch."""
    return [imp for imp in imports
            if imp.local and imp.target.split(".")[0] == "wellwatch" and not is_dispatch(imp.path)]


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(ROOT)}:{imp.line} {imp.target}"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module or "")
            names.add(prefix)
    return names


@pytest.mark.unit
def test_daemon_imports_neither_training_nor_export_nor_torch():
    offenders = {}
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        bad = {m for m in imported_modules(path)
               if m.split(".")[0] in ("torch", "torchvision", "onnx")
               or any(part in ("training", "export") for part in m.strip(".").split("."))
               or m.startswith("..")}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


@pytest.mark.integration
def test_runtime_commands_work_without_torch(tmp_path):
    """A microscope PC installs only the runtime: block torch and onnx, then load every runtime piece."""
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnx', 'matplotlib', 'sklearn'): sys.modules[name] = None\n"
        "import wellwatch.cli, wellwatch.daemon.service, wellwatch.demo, wellwatch.bench.cli, wellwatch.harness\n"
        "parser = wellwatch.cli.build_parser()\n"
        "for argv in (['run', '--config', 'c.toml'], ['subscribe', 'tcp://127.0.0.1:1'], ['simulate', 'out'],\n"
        "             ['demo'], ['bench'], ['keys', 'dir', 'name']):\n"
        "    parser.parse_args(argv)\n"
        "sys.exit(wellwatch.cli.main(['demo', '--wells', '2', '--fields', '1', '--timepoints', '1',\n"
        "                             '--workdir', sys.argv[1]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2/2 frames counted" in proc.stdout


@pytest.mark.unit
def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The rules below are only as good as the walk: relative, aliased, from-package and
    function-local imports all resolve to the module they load."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "contract.py").write_text("")
    source = tmp_path / "core" / "plate.py"
    source.write_text("import zmq.auth as za\nfrom . import contract\nfrom .contract import X\n"
                      "from wellwatch.core import contract as c\n"
                      "def f():\n    from ..daemon.journal import Journal\n")
    modules = set(project_files())
    assert modules == {"wellwatch.core", "wellwatch.core.contract", "wellwatch.core.plate"}
    found = [(i.target, i.local) for i in imports_of(source, modules)]
    assert found == [("zmq.auth", False), ("wellwatch.core.contract", False), ("wellwatch.core.contract", False),
                     ("wellwatch.core.contract", False), ("wellwatch.daemon.journal", True)]
    assert cycles({("a", "b"): 1, ("b", "c"): 1, ("c", "a"): 1, ("c", "d"): 1}) == [["a", "b", "c"]]
    assert cycles({("a", "b"): 1, ("b", "c"): 1}) == []


@pytest.mark.unit
def test_the_root_package_imports_nothing_of_the_project():
    """package_of() leaves the root package out of the graph: that holds while its __init__ imports nothing."""
    assert not [i for i in imports_of(ROOT / "wellwatch" / "__init__.py", set()) if package_of(i.target)]


@pytest.mark.unit
def test_no_cycles_between_packages():
    edges = package_graph(project_imports())
    assert cycles(edges) == [], "\n".join(
        f"{where(i)} ({package_of(i.module)} -> {package_of(i.target)})" for i in project_imports()
        if (package_of(i.module), package_of(i.target)) in edges
        and (package_of(i.target), package_of(i.module)) in edges)


# What core/ leaves to the daemon: threads, queues, sockets, ZeroMQ, SQLite, processes, file watching, metrics
SERVICE_MODULES = {"threading", "queue", "socket", "zmq", "sqlite3", "multiprocessing", "concurrent",
                   "watchdog", "prometheus_client"}
CORE_EXCEPTIONS = {
    # the stream's default source name is the host name (socket.gethostname); no socket is opened
    ("core/config.py", "socket"),
}


@pytest.mark.unit
def test_core_is_pure():
    found = {(str(i.path.relative_to(ROOT)), i.target.split(".")[0]) for i in project_imports()
             if package_of(i.module) == "core"
             and (package_of(i.target) not in (None, "core") or i.target.split(".")[0] in SERVICE_MODULES)}
    assert found - CORE_EXCEPTIONS == set()
    assert CORE_EXCEPTIONS - found == set(), "an exception no longer needed: remove it"


@pytest.mark.unit
def test_daemon_imports_no_tools():
    found = [where(i) for i in project_imports()
             if package_of(i.module) == "daemon" and package_of(i.target) in ("training", "export", "dashboard", "scale")]
    assert found == []


@pytest.mark.unit
def test_tools_build_on_core_not_on_the_daemon():
    found = {(str(i.path.relative_to(ROOT)), i.target) for i in project_imports()
             if package_of(i.module) in ("training", "export", "dashboard", "scale", "simulator", "results", "net")
             and package_of(i.target) == "daemon"}
    assert found == set()


MAX_HIDDEN_IMPORTS = 10


@pytest.mark.unit
def test_function_local_imports_only_defer_heavy_dependencies():
    hidden = hidden_imports(project_imports())
    assert len(hidden) <= MAX_HIDDEN_IMPORTS, "\n".join(map(where, hidden))
    uncommented = []
    for imp in hidden:
        lines = imp.path.read_text().splitlines()
        if not any("#" in line for line in lines[max(0, imp.line - 5):imp.line]):  # on it or just above
            uncommented.append(where(imp))
    assert uncommented == [], "a function-local import says why (a heavy optional dependency) or moves to the top"
