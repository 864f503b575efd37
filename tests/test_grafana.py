"""The Grafana dashboard (deploy/grafana/) against the daemon's real metrics, scraped by a real
Prometheus server (Debian's `prometheus`; `make test` installs it)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.harness import free_port, local_config, start_daemon
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import write_plate

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "wellwatch-daemon.json"
SPEC = SimulationSpec(wells=("A1", "A2", "A3"), fields=2, timepoints=2, size=128, cells_per_field=6,
                      channels=("BF",), interval_s=0.05, seed=8)


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def concrete(expr: str, window: str) -> str:
    """Grafana's variables, as Grafana would fill them in."""
    return expr.replace("$__rate_interval", window).replace("$instance", ".*")


@pytest.mark.unit
def test_dashboard_uses_only_metrics_the_daemon_exports():
    text = generate_latest(DaemonMetrics(CollectorRegistry()).registry).decode()
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    names = set()
    for name, kind in exported:
        names |= {name} if kind not in ("histogram", "counter", "info") else \
            {f"{name}{s}" for s in ("_bucket", "_sum", "_count", "_total", "_info", "")}
    used = {m for _, expr in dashboard_queries() for m in re.findall(r"\bwellwatch_\w+", expr)}
    assert used and used <= names, sorted(used - names)
    panels = {title for title, _ in dashboard_queries()}
    assert {"Frames processed per second", "File written -> count published (p50, p99)", "Queue depth"} <= panels


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]["result"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.mark.integration
def test_prometheus_scrapes_the_daemon_and_answers_the_dashboards_queries(tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian package prometheus; `make test` installs it)")
    metrics_port, prom_port = free_port(), free_port()
    config = local_config(tmp_path, SPEC, metrics_port=metrics_port, **{"watch.settle_s": 0.05})
    running = start_daemon(config)
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: wellwatch\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: [r["value"][1] for r in query(prom_port, 'up{job="wellwatch"}')] == ["1"], 60,
                 "Prometheus to scrape the daemon")
        write_plate(SPEC, tmp_path / "acquisition")
        n = len(SPEC.wells) * SPEC.fields * SPEC.timepoints
        wait_for(lambda: [r["value"][1] for r in query(prom_port, 'wellwatch_frames_total{outcome="processed"}')]
                 == [str(n)], 60, f"{n} processed frames in Prometheus")
        answers = {title: query(prom_port, concrete(expr, "1m")) for title, expr in dashboard_queries()}
    finally:
        proc.terminate()
        stderr = proc.communicate(timeout=30)[1].decode(errors="replace")
        running.stop()
    empty = [t for t, result in answers.items() if not result]
    assert empty == [], f"panels without data: {empty}\n{stderr[-2000:]}"
    rate = float(answers["Frames processed per second"][0]["value"][1])
    assert rate > 0
    p99 = [float(r["value"][1]) for r in answers["File written -> count published (p50, p99)"]]
    assert all(math.isfinite(v) and 0 < v < 30 for v in p99), p99
    providers = [r["metric"]["provider"] for r in answers["Execution provider in use"]]
    assert providers == ["CPUExecutionProvider"] or "CUDAExecutionProvider" in providers
