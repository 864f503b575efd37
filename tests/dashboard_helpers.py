"""A dashboard served in-process (real uvicorn on a free loopback port) following a real daemon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wellwatch.core.plate_map import read_plate_map
from wellwatch.dashboard.cli import ServerThread
from wellwatch.results.journal_reader import JournalView
from wellwatch.dashboard.live import LiveState, Source
from wellwatch.dashboard.server import create_app
from wellwatch.harness import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


class Dashboard:
    def __init__(self, config, plate_map: Path | None = None, fields_expected: int = 0):
        source = Source(config.publish.endpoint, config.publish.snapshot_endpoint,
                        JournalView(Path(config.journal.path)), fields_expected, config.plate.format,
                        read_plate_map(plate_map, config.plate.format) if plate_map else None)
        self.state = LiveState(source).start()
        self.port = free_port()
        self.server = ServerThread(create_app(self.state), "127.0.0.1", self.port)
        self.server.start()
        self.server.wait_started()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()
        self.state.stop()


def launch_chromium(playwright):
    """Debian's chromium (Playwright cannot download browsers here). CI sets
    WELLWATCH_REQUIRE_BROWSER=1 (make test) so that a missing browser fails instead of skipping."""
    if not CHROMIUM.exists():
        if os.environ.get("WELLWATCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture
def browser():
    """Headless Debian chromium; skipped without Playwright unless CI requires the browser."""
    if os.environ.get("WELLWATCH_REQUIRE_BROWSER") != "1":
        pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def dashboards():
    """make(config, **kwargs) -> a served Dashboard, each stopped after the test."""
    started = []

    def make(config, **kwargs) -> Dashboard:
        d = Dashboard(config, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()
