"""The design's dependency rules: the daemon needs no PyTorch, and daemon/ imports neither
training/ nor export/ (train/serve parity lives in daemon/, which the others import)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_daemon_imports_neither_training_nor_export_nor_torch():
    offenders = {}
    for path in sorted((ROOT / "daemon").glob("*.py")):
        bad = {m for m in imported_modules(path)
               if m.split(".")[0] in ("torch", "torchvision", "onnx")
               or any(part in ("training", "export") for part in m.strip(".").split("."))
               or m.startswith("..")}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


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
