"""`wellwatch dashboard`."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from wellwatch.core.plate import PLATE_FORMATS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="a web page beside the microscope: plate map, time courses, dose-response",
                       description="Follow a daemon's stream (and read its journal, read-only) and serve a "
                                   "dashboard on http://HOST:PORT/.")
    p.add_argument("--config", help="the daemon's config.toml: its endpoints, journal, plate format and map")
    p.add_argument("--endpoint", help="the daemon's PUB endpoint (instead of, or overriding, --config)")
    p.add_argument("--snapshot", help="snapshot endpoint (default: from --config, else the PUB port + 1)")
    p.add_argument("--journal", help="the daemon's journal (read-only) for time courses and QC "
                                     "(default: journal.path of --config)")
    p.add_argument("--plate-map", help="plate map CSV (well,compound,concentration,unit,role): the dashboard "
                                       "fits dose-response itself (default: plate.map of --config)")
    p.add_argument("--plate-format", type=int, choices=sorted(PLATE_FORMATS),
                   help="default: plate.format of --config, else 96")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1: this PC only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.set_defaults(func=run_dashboard)


def build_source(args: argparse.Namespace):
    from wellwatch.core.config import load_config
    from wellwatch.core.plate_map import read_plate_map

    from wellwatch.results.journal_reader import JournalView

    from .live import Source

    config = load_config(args.config) if args.config else None
    endpoint = args.endpoint or (config.publish.endpoint if config else None)
    if not endpoint:
        raise SystemExit("wellwatch dashboard: give --config config.toml or --endpoint tcp://HOST:PORT")
    snapshot = args.snapshot or (config.publish.snapshot_endpoint if config and not args.endpoint else None)
    journal = args.journal or (config.journal.path if config else None)
    plate_format = args.plate_format or (config.plate.format if config else 96)
    map_path = args.plate_map or (config.plate.map if config else "")
    return Source(endpoint=endpoint, snapshot_endpoint=snapshot,
                  journal=JournalView(Path(journal)) if journal else None,
                  fields_expected=config.plate.fields_per_well if config else 0, plate_format=plate_format,
                  plate_map=read_plate_map(map_path, plate_format) if map_path else None)


def check_port_free(host: str, port: int) -> None:
    """Before anything starts or prints its URL: a port another program holds is the user's to fix."""
    import socket

    from wellwatch.core.errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"wellwatch dashboard: --host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UsageError(f"wellwatch dashboard: --port {port} on {host}: {e.strerror}; another program "
                             f"(another dashboard?) serves there: choose another --port") from None


def run_dashboard(args: argparse.Namespace) -> int:
    import uvicorn  # before anything starts: without the extra, main() names it

    from .live import LiveState
    from .server import create_app

    check_port_free(args.host, args.port)
    state = LiveState(build_source(args)).start()
    print(f"wellwatch dashboard: http://{args.host}:{args.port}/  (following {state.source.endpoint}"
          f"{', journal ' + str(state.source.journal.path) if state.source.journal else ''})", flush=True)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    finally:
        state.stop()
    return 0


class ServerThread(threading.Thread):
    """uvicorn on a background thread (tests, demos); stop() ends it."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        super().__init__(name="dashboard-server", daemon=True)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off"))

    def run(self) -> None:
        self.server.run()

    def wait_started(self, timeout: float = 10) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.is_alive():
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(10)
