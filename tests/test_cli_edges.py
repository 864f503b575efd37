"""The command line's edges: every bad input is one line and exit 2, never a traceback; Ctrl-C at
start exits 130 with one line; `--help` imports none of the heavy modules. Each case runs the real
`wellwatch` entry point in its own process, as a user's shell would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wellwatch.daemon.journal import Journal

HEAVY = ("numpy", "zmq", "skimage", "scipy", "torch", "tifffile", "onnxruntime", "uvicorn", "starlette")


def wellwatch(*argv: str, block: tuple[str, ...] = (), timeout: float = 60, cwd: Path | None = None):
    """Run `wellwatch ARGV` in a new interpreter; `block` makes those modules uninstalled there."""
    code = ("import sys\n"
            f"for name in {block!r}: sys.modules[name] = None\n"
            "from wellwatch.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def assert_one_line_exit_2(proc, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.integration
def test_help_imports_none_of_the_heavy_modules():
    code = ("import sys\nfrom wellwatch.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "simulate" in proc.stdout and "dashboard" in proc.stdout


@pytest.mark.unit
def test_lazy_help_strings_are_the_modules_own():
    """`--help` lists each command with the help its module registers (the table cannot drift)."""
    from wellwatch.cli import LAZY_COMMANDS, build_parser

    def helps(parser):
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        return {a.dest: a.help for a in sub._choices_actions}

    lazy, full = helps(build_parser("run")), helps(build_parser())
    assert set(LAZY_COMMANDS) <= set(full)
    assert set(full) == set(lazy), "a module registers a command the lazy table does not list"
    assert {n: lazy[n] for n in LAZY_COMMANDS} == {n: full[n] for n in LAZY_COMMANDS}


SIMULATE = ["simulate", "OUT", "--wells", "4", "--timepoints", "50", "--interval-s", "0.2"]


@pytest.mark.integration
@pytest.mark.parametrize("argv, after_s", [(SIMULATE, 0.05), (SIMULATE, 0.2), (SIMULATE, 1.0),
                                           (["train", "OUT", "--out", "OUT/run"], 0.5)],  # while torch imports
                         ids=["simulate-0.05s", "simulate-0.2s", "simulate-1s", "train-0.5s"])
def test_ctrl_c_at_start_is_one_line_and_130(tmp_path, argv, after_s):
    """Timed from the moment the console script calls main(): Python's own start-up is not ours."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    code = "import sys\nfrom wellwatch.cli import main\nprint('ready', flush=True)\nsys.exit(main())\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "wellwatch: interrupted"


@pytest.mark.integration
def test_version():
    proc = wellwatch("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("wellwatch "), proc


@pytest.mark.integration
def test_verbose_after_the_command_is_accepted(tmp_path):
    proc = wellwatch("run", "-v", "--config", str(tmp_path / "missing.toml"))
    assert_one_line_exit_2(proc, "missing.toml", "does not exist")


@pytest.mark.integration
def test_dashboard_without_its_extra_names_it():
    proc = wellwatch("dashboard", "--endpoint", "tcp://127.0.0.1:5556", block=("uvicorn",))
    assert_one_line_exit_2(proc, "uvicorn", "pip install 'wellwatch[dashboard]'")


@pytest.mark.integration
def test_dashboard_on_a_taken_port_says_so_before_printing_its_url():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = wellwatch("dashboard", "--endpoint", "tcp://127.0.0.1:5556", "--port", str(port))
    assert_one_line_exit_2(proc, f"--port {port}", "choose another --port")
    assert "http://" not in proc.stdout


@pytest.mark.integration
def test_subscribe_without_a_scheme():
    proc = wellwatch("subscribe", "127.0.0.1:5556", "--timeout", "1")
    assert_one_line_exit_2(proc, "'127.0.0.1:5556'", "tcp://HOST:PORT")


@pytest.fixture
def journal(tmp_path) -> Path:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()  # a real, empty journal
    return path


@pytest.mark.integration
def test_results_to_an_unknown_format(tmp_path, journal):
    proc = wellwatch("results", "--journal", str(journal), "--out", str(tmp_path / "r.xlsx"))
    assert_one_line_exit_2(proc, "r.xlsx", ".csv or .parquet")


@pytest.mark.integration
def test_results_parquet_without_pyarrow(tmp_path, journal):
    proc = wellwatch("results", "--journal", str(journal), "--out", str(tmp_path / "r.parquet"), block=("pyarrow",))
    assert_one_line_exit_2(proc, "pyarrow")


@pytest.mark.integration
def test_layout_of_a_folder_without_one(tmp_path):
    proc = wellwatch("layout", str(tmp_path))
    assert_one_line_exit_2(proc, str(tmp_path), "no vendor layout file")


@pytest.mark.integration
def test_run_on_a_root_that_is_a_file(tmp_path):
    (tmp_path / "frames.tif").write_bytes(b"not a folder")
    (tmp_path / "c.toml").write_text(
        '[watch]\nroot = "frames.tif"\n[metrics]\nport = 0\n[journal]\npath = "j.sqlite"\n'
        f'[publish]\nendpoint = "tcp://127.0.0.1:{free()}"\nsnapshot_endpoint = "tcp://127.0.0.1:{free()}"\n')
    proc = wellwatch("run", "--config", str(tmp_path / "c.toml"), timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "frames.tif: is a file, not a folder" in err[-1]


def free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_keys_into_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = wellwatch("keys", str(tmp_path / "afile"), "server")
    assert_one_line_exit_2(proc, "afile: cannot make the key folder")


@pytest.mark.integration
def test_evaluate_a_model_that_does_not_exist(tmp_path):
    proc = wellwatch("evaluate", str(tmp_path / "missing.onnx"), str(tmp_path), "--out", str(tmp_path / "rep"))
    assert_one_line_exit_2(proc, "missing.onnx: no such run folder, checkpoint or .onnx file")


@pytest.mark.unit
def test_an_os_error_that_names_no_file_says_where_it_was_raised():
    from wellwatch.cli import user_error_line

    def start_up():
        raise FileNotFoundError(2, "No such file or directory")

    try:
        start_up()
    except FileNotFoundError as e:
        line = user_error_line(e)
    assert line.startswith("[Errno 2] No such file or directory (in test_cli_edges.py:")
    assert "start_up" in line and "\n" not in line
    named = FileNotFoundError(2, "No such file or directory", "/data/x.tif")
    assert user_error_line(named) == str(named)  # a file named already: as it is
