"""Run the daemon in-process against a simulated acquisition: shared by `demo`, `bench` and tests."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from wellwatch.core.config import Config, load_config
from wellwatch.daemon.service import Daemon
from .simulator.spec import SimulationSpec
from .simulator.writer import write_plate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_config(workdir: Path, spec: SimulationSpec, model: str = "", metrics_port: int = 0,
                 **overrides) -> Config:
    """A daemon config for a simulated plate in `workdir`, on free loopback ports."""
    pub, snap = free_port(), free_port()
    values = {
        "watch.root": str(workdir / "acquisition" / "data"), "watch.naming": spec.naming,
        "watch.settle_s": 0.1, "watch.reconcile_s": 2.0,
        "plate.format": spec.plate_format, "plate.name": spec.plate_name, "plate.fields_per_well": spec.fields,
        "channels.label_free": "BF", "models.live_dead.path": model,
        "publish.endpoint": f"tcp://127.0.0.1:{pub}", "publish.snapshot_endpoint": f"tcp://127.0.0.1:{snap}",
        "metrics.port": metrics_port, "journal.path": str(workdir / "journal.sqlite"),
    }
    if spec.naming == "nis":
        values["channels.label_free"] = str(spec.channels.index("BF") + 1)
    values.update(overrides)
    (workdir / "acquisition" / "data").mkdir(parents=True, exist_ok=True)
    return load_config(None, values)


@dataclass
class RunningDaemon:
    daemon: Daemon
    thread: threading.Thread
    exit_code: list[int]

    def stop(self, timeout: float = 60) -> int:
        self.daemon.stop()
        self.thread.join(timeout)
        return self.exit_code[0] if self.exit_code else -1


def start_daemon(config: Config, backend=None, segmentation_backend=None, cell_type_backend=None,
                 cell_live_dead_backend=None) -> RunningDaemon:
    """The daemon on a background thread (no signal handlers: the caller stops it)."""
    daemon = Daemon(config, backend=backend, segmentation_backend=segmentation_backend,
                    cell_type_backend=cell_type_backend, cell_live_dead_backend=cell_live_dead_backend)
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(daemon.run(install_signals=False)), name="daemon",
                              daemon=True)
    thread.start()
    return RunningDaemon(daemon, thread, code)


def start_writer(spec: SimulationSpec, out_dir: Path, progress=None) -> threading.Thread:
    thread = threading.Thread(target=write_plate, args=(spec, out_dir, progress), name="simulator", daemon=True)
    thread.start()
    return thread
