"""Make docs/dashboard.png: the dashboard in the middle of a simulated dose-series plate.

The daemon counts a simulated plate (classical segmentation, the demo live/dead model, the
simulator's plate map as `[plate] map`, so it publishes the dose fits); the dashboard follows it;
Debian's chromium (Playwright) takes the picture once the third of four timepoints is half done.

    python docs/dashboard_screenshot.py [--out docs/dashboard.png]      # about a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from wellwatch.dashboard.cli import ServerThread
from wellwatch.results.journal_reader import JournalView
from wellwatch.dashboard.live import LiveState, Source
from wellwatch.dashboard.server import create_app
from wellwatch.harness import free_port, local_config, start_daemon, start_writer
from wellwatch.simulator.plate import plan_plate
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import plate_map_csv

SIMULATED = {"foreground": "texture", "texture_window": 5, "threshold_factor": 0.6, "smooth_sigma": 1.0,
             "closing_radius": 0, "min_distance": 6, "min_area": 60, "downsample": 1, "dist_sigma": 1.0}
SPEC = SimulationSpec(wells=tuple(f"{r}{c}" for r in "ABC" for c in range(1, 11)), fields=1, timepoints=4,
                      cells_per_field=40, treatment="dose_series", control_columns=2, growth_doublings=1.0,
                      channels=("BF",), write_mode="rename", interval_s=0.1, plate_name="dose-plate", seed=7)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).with_name("dashboard.png")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wellwatch-shot-"))
    (work / "plate_map.csv").write_text(plate_map_csv(plan_plate(SPEC)))
    config = local_config(work, SPEC, **{"segmentation.method": "classical", "plate.map": str(work / "plate_map.csv"),
                                         "plate.fields_per_well": SPEC.fields,
                                         **{f"segmentation.classical.{k}": v for k, v in SIMULATED.items()}})
    running = start_daemon(config)
    state = LiveState(Source(config.publish.endpoint, config.publish.snapshot_endpoint,
                             JournalView(Path(config.journal.path)), SPEC.fields, 96)).start()
    port = free_port()
    server = ServerThread(create_app(state), "127.0.0.1", port)
    server.start()
    server.wait_started()
    writer = start_writer(SPEC, work / "acquisition")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            half = len(SPEC.wells) // 2
            while sum(1 for (_, _, t) in state.wells if t == 2) < half:
                if not writer.is_alive():
                    raise SystemExit("the plate finished before the picture was taken")
                time.sleep(0.2)
            page.click("#well-B6")
            page.wait_for_selector("#dose-simdrug canvas", timeout=30000)
            time.sleep(1.0)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        writer.join()
        server.stop()
        state.stop()
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
