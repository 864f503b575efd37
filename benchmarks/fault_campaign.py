"""The fault campaign: an operator's worst week, for every configuration shape.

For each shape a simulated plate (scanR names) is staged first, then copied into a watched folder
file by file, temp name then rename, in the microscope's order (a field's label-free channel
first), twice: once while `wellwatch run` runs undisturbed (the reference), once while it suffers,
at random files:

- kill -9 of the daemon's pid alone (its workers must die with it: counted as orphans if not),
  of its whole process group, and, with several channels, between the channels of one field;
  each followed by a restart, like systemd's Restart=on-failure
- kill -9 of a pool worker (segmentation or preparation processes; the OOM killer)
- the watched folder renamed away and back (a dropped share)
- two decompression bombs and a truncated file (must be quarantined)
- one frame rewritten with new pixels, then restored to its first pixels (two new versions)
- a second `wellwatch run` on the same journal (other ports): it must exit 2 with one line naming
  the journal and the running daemon's pid, and leave the lock with the running daemon

Shapes: tiles (tiles only, preparation in 2 processes), classical (classical segmentation in a
2-process pool), segnet (the bundled segmentation network), segment_on (cells segmented on the PI
channel, the model reads BF), multichannel (a two-channel BF + PH model), dose (a dose-series
plate with its plate map: dose-response fits), cells (classical segmentation and a per-cell crop
model, [models.cell_live_dead]: a one-feature logistic model fitted on a simulated calibration plate),
nd2 (a real .nd2 written frame by frame as a live acquisition does, `--nd2`; no hostile files nor
rewrites there), hub (the tiles shape behind `wellwatch hub`: the subscriber follows the hub, which
stays up while the daemon is killed, and once the daemon stays down for a third of the files).

In every shape a subscriber (`wellwatch.client.follow`) follows the stream throughout, from the
daemon's first start to its last stop, across every kill and restart.

Per shape, from the journal and the files on disk at the end:
  lost          a good frame the journal knows nothing of, `stall_s` after the last file and restart
  stalled       a good frame the daemon saw (in flight, a suspect) but had not counted by then
  twice         a (path, version) journaled or announced twice, or a version for unchanged content
                (unless a joined field's other file, scored with it, is new)
  wrongly q.    a good frame quarantined
  wells differ  (well, timepoint) states (frames, complete, counts, cells, cell types, per-cell calls) that differ
                from the reference run's
  orphans       daemon workers alive 5 s after a kill -9 of the daemon's pid alone
  second        second daemons on the journal that were not refused as they must be (above)
  sub differs   (well, timepoint) states the subscriber ended with that differ from the daemon's own
                (its journal's latest well message per (plate, well, timepoint): daemon/history)
and the daemon must stop with exit code 0 on SIGTERM.

    nice -n 10 python benchmarks/fault_campaign.py --shapes classical,segment_on --kills 4 --worker-kills 2
    python benchmarks/fault_campaign.py            (all nine shapes, 35 kills each: 315 kills)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
ND2 = ROOT.parent / "shared" / "data" / "vendor-files" / "nd2" / "cluster.nd2"
ND2_CHANNEL = "5-FAM/pH 9.0"  # one of cluster.nd2's two channels
WELLWATCH = [sys.executable, "-m", "wellwatch"]
SIMULATED_BF = {"foreground": '"texture"', "texture_window": "5", "threshold_factor": "0.6", "smooth_sigma": "1.0",
                "closing_radius": "0", "min_distance": "6", "min_area": "60", "downsample": "1", "dist_sigma": "1.0"}
NUCLEI = {"foreground": '"intensity"', "downsample": "1", "min_area": "20", "max_area": "3000"}
SCANR = re.compile(r"^(?P<well>[A-P]\d+)--W\d+--P(?P<field>\d+)--Z\d+--T(?P<t>\d+)--(?P<channel>\w+)\.tif$")
WELL_KEYS = ("frames", "fields_expected", "complete", "counts", "cells", "cell_types", "cell_counts")


@dataclass(frozen=True)
class Shape:
    name: str
    channels: str  # the simulator's --channels, in the order they are written per field
    sections: dict[str, dict[str, str]]  # config.toml sections for this shape
    simulate: tuple[str, ...] = ()  # more `wellwatch simulate` options
    worker_kind: str = ""  # which pool's workers a worker kill hits ("" = none: no worker kills)
    nd2: bool = False  # one .nd2 written frame by frame (--nd2) instead of the simulated TIFFs
    hub: bool = False  # the subscriber follows `wellwatch hub` in front of the daemon, and the daemon is
    # also down for a third of the files once (a long outage spanning timepoints), the hub staying up


def classical(extra: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    return {"segmentation": {"method": '"classical"', "workers": "2"},
            "segmentation.classical": extra or SIMULATED_BF}


SHAPES = {
    "tiles": Shape("tiles", "BF", {"pipeline": {"prepare_workers": "2"}}, worker_kind="prepare"),
    "classical": Shape("classical", "BF", classical(), worker_kind="segmentation"),
    "segnet": Shape("segnet", "BF", {"segmentation": {"method": '"model"', "workers": "2"}},
                    worker_kind="segmentation"),
    "segment_on": Shape("segment_on", "BF,PI", {**classical(NUCLEI), "channels": {"segment_on": '"PI"'}},
                        worker_kind="segmentation"),
    "multichannel": Shape("multichannel", "BF,PH", {"channels": {"label_free": '["BF", "PH"]'},
                                                    "models.live_dead": {"path": '"two-channel.onnx"'}}),
    "dose": Shape("dose", "BF", {**classical(), "plate": {"map": '"staged/plate_map.csv"'}},
                  ("--treatment", "dose_series", "--growth-doublings", "1", "--control-columns", "1"),
                  worker_kind="segmentation"),
    "cells": Shape("cells", "BF", {**classical(), "models.cell_live_dead": {"path": '"cell-live-dead.onnx"'}},
                   worker_kind="segmentation"),
    "nd2": Shape("nd2", ND2_CHANNEL, {"channels": {"label_free": f'"{ND2_CHANNEL}"'}}, nd2=True),
    "hub": Shape("hub", "BF", {"pipeline": {"prepare_workers": "2"}}, worker_kind="prepare", hub=True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, shape: Shape, fields: int) -> Path:
    (folder / "acq" / "data").mkdir(parents=True, exist_ok=True)
    sections = {"watch": {"root": '"acq/data"', "settle_s": "0.1", "reconcile_s": "2.0"},
                "plate": {"name": '"camp"', "fields_per_well": str(fields)},
                "pipeline": {"retry_delay_s": "0.2"},
                "publish": {"endpoint": f'"tcp://127.0.0.1:{free_port()}"',
                            "snapshot_endpoint": f'"tcp://127.0.0.1:{free_port()}"'},
                "metrics": {"port": "0"}, "journal": {"path": '"journal.sqlite"'}}
    for name, keys in shape.sections.items():
        sections[name] = {**sections.get(name, {}), **keys}
    path = folder / "config.toml"
    path.write_text("\n".join(f"[{s}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) + "\n"
                              for s, kv in sections.items()))
    return path


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every living process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] == "Z":
                    continue
                out[int(entry.name)] = (int(stat[1]), (entry / "cmdline").read_text().replace("\0", " "))
            except OSError:
                continue
    return out


def children(pid: int) -> list[int]:
    return [p for p, (parent, _) in process_table().items() if parent == pid]


class Daemon:
    """`wellwatch run` in its own process group, under a supervisor that restarts it 1 s after it ends."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.exits: list[int] = []  # exit codes of runs that ended on their own
        self.orphans = 0
        self.supervising = True
        self.down = False  # a long outage: killed and not restarted until `resume`
        self.started = time.monotonic()
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while self.supervising:
            time.sleep(1.0)
            with self.lock:
                if self.supervising and not self.down and self.proc is not None and self.proc.poll() is not None:
                    self.exits.append(self.proc.returncode)
                    self.start()

    def start(self) -> None:
        self.started = time.monotonic()
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(WELLWATCH + ["run", "--config", str(self.config)], stdout=out, stderr=out,
                                         cwd=self.config.parent, start_new_session=True)

    def kill9_and_restart(self, group: bool) -> None:
        with self.lock:
            kids = children(self.proc.pid)
            if group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            if not group:
                deadline = time.monotonic() + 5
                while (alive := set(kids) & set(process_table())) and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.orphans += len(alive)
                for pid in alive:  # do not let them pile up over the campaign
                    os.kill(pid, signal.SIGKILL)
            self.start()

    def outage(self) -> None:
        """kill -9 of the process group, and no restart until `resume` (a scope down for a while)."""
        with self.lock:
            self.down = True
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def resume(self) -> None:
        with self.lock:
            self.down = False
            self.start()

    def kill_worker(self, kind: str) -> bool:
        """kind: "segmentation" or "prepare": both are spawned pool workers (not the resource tracker);
        waits up to 10 s for a (re)started daemon's workers."""
        deadline = time.monotonic() + 10
        while kind and time.monotonic() < deadline:
            with self.lock:
                workers = [p for p, (parent, cmd) in process_table().items()
                           if parent == self.proc.pid and "multiprocessing.spawn import spawn_main" in cmd]
                if workers:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    return True
            time.sleep(0.2)
        return False

    def stop(self) -> int:
        time.sleep(max(1.0, 8.0 - (time.monotonic() - self.started)))  # a SIGTERM mid-start-up ends it unhandled
        with self.lock:
            self.supervising = False
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=90)
        for pid, (_, cmd) in process_table().items():  # nothing of this run may outlive it
            if str(self.config) in cmd:
                os.kill(pid, signal.SIGKILL)
        return code


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_order(staged: Path, channels: list[str]) -> list[Path]:
    """The microscope's order: timepoint, well, field, then the channels in the order given."""
    def key(p: Path):
        m = SCANR.match(p.name)
        return int(m["t"]), m["well"][0], int(m["well"][1:]), int(m["field"]), channels.index(m["channel"])
    return sorted((p for p in staged.glob("*.tif") if SCANR.match(p.name)), key=key)


def place(src: bytes | Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    os.replace(tmp, dst)


@dataclass
class Outcome:
    good: int = 0
    kills: dict[str, int] = field(default_factory=lambda: {"pid": 0, "group": 0, "channels": 0})
    worker_kills: int = 0
    outages: int = 0  # the hub shape's long outage (a kill -9 of the group, restarted a third of the files later)
    lost: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    twice: int = 0
    wrongly: list[str] = field(default_factory=list)
    hostile_refused: bool = True
    wells: dict = field(default_factory=dict)
    wells_differ: list = field(default_factory=list)
    orphans: int = 0
    second: list[str] = field(default_factory=list)  # what went wrong with each second daemon ('' = refused)
    subscribed: dict = field(default_factory=dict)  # the subscriber's final well states
    own: dict = field(default_factory=dict)  # the daemon's own (own_states)
    sub_differ: list = field(default_factory=list)
    sub_errors: list[str] = field(default_factory=list)
    sub_gaps: int = 0  # gaps the subscriber saw and healed
    exit_code: int = 0
    exits: list[int] = field(default_factory=list)
    seconds: float = 0.0


def journal_rows(journal: Path, query: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            return db.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet


def latest_rows(journal: Path) -> dict[str, tuple]:
    rows = journal_rows(journal, "SELECT path, sha256, state FROM frames f WHERE version = "
                                 "(SELECT MAX(version) FROM frames g WHERE g.path = f.path)")
    return {r[0]: r[1:] for r in rows}


def well_states(journal: Path) -> dict[tuple, dict]:
    """(well, timepoint) -> the latest published state of it (the journal's outbox, in seq order)."""
    out = {}
    for (payload,) in journal_rows(journal, "SELECT payload FROM outbox WHERE topic LIKE 'well/%' ORDER BY seq"):
        m = json.loads(payload)
        if m.get("type") == "well":
            out[(m["well"], m["timepoint"])] = {k: m.get(k) for k in WELL_KEYS}
    return out


def build_cell_live_dead_model(path: Path) -> None:
    """The crop model of tests/test_daemon_cell_live_dead.py: `dataset cells --dead-stain` on a simulated
    calibration plate (another seed than the campaign's), one feature fitted, written as a tiny ONNX graph."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from tests.test_daemon_cell_live_dead import CLASSICAL, crop_feature, write_feature_model
    from wellwatch.simulator import SimulationSpec, write_plate
    from wellwatch.training.dataset import load_dataset

    work = path.parent / "calibration"
    write_plate(SimulationSpec(fields=1, timepoints=1, size=256, cells_per_field=25, channels=("BF", "PI"),
                               treatment="dose_series", seed=3), work / "cal")
    subprocess.run(WELLWATCH + ["dataset", "cells", str(work / "cal"), "--out", str(work / "ds"), "--label-free", "BF",
                                "--dead-stain", "PI", "--segment-on", "BF", "--crop", "48", "--mask-radius", "16",
                                "--min-area", "60", "--max-area", "2000", *CLASSICAL],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # its progress lines
    ds = load_dataset(work / "ds")
    f = crop_feature(ds.x)
    live, dead = np.median(f[ds.y == 0]), np.median(f[ds.y == 1])
    write_feature_model(path, ds, (live + dead) / 2, 8.0 / (dead - live))


def nd2_frame_digests(src: Path, channel: str) -> dict[str, str]:
    """'live.nd2#i' -> sha256 of frame i's `channel` plane, as the daemon journals it."""
    import nd2
    import numpy as np

    with nd2.ND2File(str(src)) as f:
        c = [ch.channel.name for ch in f.metadata.channels].index(channel)
        return {f"live.nd2#{i}": hashlib.sha256(np.ascontiguousarray(f.read_frame(i)[c]).tobytes()).hexdigest()
                for i in range(f.attributes.sequenceCount)}


class Subscriber(threading.Thread):
    """`wellwatch.client.follow` from before the first file to after the daemon's last stop: the state
    a dashboard would end with. An error ends one follow; it is noted and a fresh follow begins."""

    def __init__(self, endpoint: str, snapshot_endpoint: str):
        super().__init__(daemon=True)
        self.endpoint, self.snapshot_endpoint = endpoint, snapshot_endpoint
        self.context = zmq.Context()
        self.state = None
        self.errors: list[str] = []
        self.connected = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        from wellwatch.client import follow

        while True:
            try:
                for _, _, state in follow(self.endpoint, self.snapshot_endpoint, context=self.context):
                    self.state = state
                    self.connected.set()
            except Exception as e:  # noqa: BLE001 - reported in the campaign's output
                if self.stopping.is_set():  # the context destroyed under it: its socket errors
                    return
                self.errors.append(repr(e))
                time.sleep(1.0)

    def stop(self) -> None:
        self.stopping.set()
        self.context.destroy(linger=0)
        self.join(10)


def start_hub(work: Path, daemon_config: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    """`wellwatch hub` in front of the daemon: (process, its endpoint, its snapshot endpoint)."""
    publish = tomllib.loads(daemon_config.read_text())["publish"]
    endpoint, snapshot = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = work / "hub.toml"
    config.write_text(f'[hub]\nendpoint = "{endpoint}"\nsnapshot_endpoint = "{snapshot}"\n\n[[daemons]]\n'
                      f'endpoint = "{publish["endpoint"]}"\nsnapshot_endpoint = "{publish["snapshot_endpoint"]}"\n')
    with log.open("a") as out:
        proc = subprocess.Popen(WELLWATCH + ["hub", "--config", str(config)], stdout=out, stderr=out,
                                cwd=work, start_new_session=True)
    return proc, endpoint, snapshot


def lock_holder(journal: Path) -> int | None:
    try:
        return json.loads((journal.with_name(journal.name + ".lock")).read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def second_daemon(daemon: Daemon, config: Path, journal: Path) -> str:
    """Start a second `wellwatch run` on the running daemon's journal (same folder, other ports):
    '' when it is refused as it must be, else what went wrong."""
    second = config.with_name("second.toml")
    second.write_text(re.sub(r"tcp://127\.0\.0\.1:\d+", lambda _: f"tcp://127.0.0.1:{free_port()}", config.read_text()))
    from wellwatch.client import request_snapshot

    snapshot_endpoint = tomllib.loads(config.read_text())["publish"]["snapshot_endpoint"]
    with daemon.lock:  # no restart meanwhile: the running daemon holds the journal throughout
        deadline = time.monotonic() + 60
        while True:  # a daemon just restarted: wait until it serves (it has its journal by then)
            try:
                request_snapshot(zmq.Context.instance(), snapshot_endpoint, timeout_s=1.0)
                break
            except TimeoutError:
                if time.monotonic() > deadline or daemon.proc.poll() is not None:
                    return "the running daemon did not come up within 60 s"
        run = subprocess.Popen(WELLWATCH + ["run", "--config", str(second)], cwd=config.parent, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = run.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            return "the second daemon was still running after 45 s"
        lines = [line for line in output.splitlines() if line.strip()]
        naming = [line for line in lines if journal.name in line and f"pid {daemon.proc.pid}" in line]
        if run.returncode != 2:
            return f"the second daemon exited {run.returncode}: {lines[-2:]}"
        if len(naming) != 1:
            return f"no one line naming the journal and pid {daemon.proc.pid}: {lines[-2:]}"
        if lock_holder(journal) != daemon.proc.pid or daemon.proc.poll() is not None:
            return "the running daemon lost the journal's lock or died"
    return ""


def own_states(journal: Path) -> dict[tuple, dict]:
    """(plate, well, timepoint) -> its state as the daemon itself has it (its journal's history)."""
    from wellwatch.results.journal_reader import well_history

    return {(m["plate"], m["well"], m["timepoint"]): {k: m.get(k) for k in WELL_KEYS} for m in well_history(journal)}


def run_shape(shape: Shape, work: Path, args: argparse.Namespace, faults: bool, seed: int) -> Outcome:
    rng = random.Random(seed)
    out = Outcome()
    work.mkdir(parents=True)
    staged = work / "staged"
    if not shape.nd2:
        subprocess.run(WELLWATCH + ["simulate", str(staged), "--wells", args.wells, "--fields", str(args.fields),
                                    "--timepoints", str(args.timepoints), "--size", "192", "--cells-per-field", "12",
                                    "--channels", shape.channels, "--plate-name", "camp", "--seed", str(args.seed),
                                    "--interval-s", "0", "--write-mode", "direct", *shape.simulate],
                       check=True, stdout=subprocess.DEVNULL)
    if shape.name == "cells":
        model = work.parent / "cell-live-dead.onnx"  # one model for the reference and the faulted run
        if not model.exists():
            build_cell_live_dead_model(model)
        (work / model.name).write_bytes(model.read_bytes())
    if shape.name == "multichannel":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.two_channel_model import build_two_channel_model

        build_two_channel_model(work / "two-channel.onnx", ("BF", "PH"))
    cfg = write_config(work, shape, args.fields)
    root = work / "acq" / "data"
    sys.path.insert(0, str(ROOT))
    from tests.nd2_writer import write_live

    if shape.nd2:
        files: list[Path] = []
        arrivals = write_live(args.nd2, root / "live.nd2")  # yields as each frame is on disk
        n = len(nd2_frame_digests(args.nd2, ND2_CHANNEL))
    else:
        files = write_order(staged / "data", shape.channels.split(","))
        arrivals = (place(src, root / src.name) for src in files)
        n = len(files)
    daemon = Daemon(cfg, work / "daemon.log")
    daemon.start()
    publish = tomllib.loads(cfg.read_text())["publish"]
    hub = None
    if shape.hub:
        hub, endpoint, snapshot_endpoint = start_hub(work, cfg, work / "hub.log")
    else:
        endpoint, snapshot_endpoint = publish["endpoint"], publish["snapshot_endpoint"]
    time.sleep(4)  # started (imports, model load, pools)
    subscriber = Subscriber(endpoint, snapshot_endpoint)
    subscriber.start()
    if not subscriber.connected.wait(60):
        daemon.stop()
        raise SystemExit(f"{shape.name}: no snapshot from {snapshot_endpoint} within 60 s (see {work}/*.log)")
    t0 = time.monotonic()

    from wellwatch.core.naming import format_scanr
    from wellwatch.simulator.hostile import tiff_bomb

    first = shape.channels.split(",")[0]
    hostile = {format_scanr("H1", 85, 1, 0, first), format_scanr("H2", 86, 1, 0, first),
               format_scanr("H3", 87, 1, 0, first)}
    events: dict[int, list[str]] = {}
    if faults:
        multi = "," in shape.channels
        down = range(n // 2 + 1, min(n - 2, n // 2 + 1 + n // 3) + 1) if shape.hub else range(0)  # the outage
        firsts = [i for i, p in enumerate(files) if multi and SCANR.match(p.name)["channel"] == first]
        up = [i for i in range(n) if i not in down]
        for _ in range(args.kills):
            kind = rng.choice(["pid", "group", "channels"] if firsts else ["pid", "group"])
            at = rng.choice(firsts) if kind == "channels" else rng.choice(up)
            events.setdefault(at, []).append(kind)
        for _ in range(args.worker_kills if shape.worker_kind else 0):
            events.setdefault(rng.choice(up), []).append("worker")
        for what, at in (("hostile", n // 6), ("rewrite", n // 4), ("second", n // 3), ("restore", n // 2),
                         ("share", n - 1)):
            if not (shape.nd2 and what in ("hostile", "rewrite", "restore")):  # files of one .nd2 only
                events.setdefault(at, []).append(what)
        if shape.hub:
            events.setdefault(down[0], []).append("outage")
            events.setdefault(down[-1], []).insert(0, "resume")
    rewritten, original = None, None
    for i, _ in enumerate(arrivals):
        time.sleep(args.interval_s)
        for what in events.get(i, []):
            if what in ("pid", "group", "channels"):
                if what != "channels":
                    time.sleep(rng.uniform(0, 0.5))  # anywhere in the reading of what came before
                daemon.kill9_and_restart(group=what == "group")
                out.kills[what] += 1
            elif what == "worker":
                time.sleep(rng.uniform(0, 0.5))
                out.worker_kills += daemon.kill_worker(shape.worker_kind)
            elif what == "share":
                gone = root.with_name("unmounted")
                root.rename(gone)
                time.sleep(1.0)
                gone.rename(root)
            elif what == "hostile":
                names = sorted(hostile)
                tiff_bomb(root / names[0], 60000, 60000)
                tiff_bomb(root / names[1], 20000, 20000)
                (root / names[2]).write_bytes(b"II*\0" + bytes(40))  # truncated
            elif what == "rewrite":
                rewritten = root / files[0].name
                original = rewritten.read_bytes()
                data = bytearray(original)
                data[-5000:] = bytes(reversed(data[-5000:]))  # new pixels, same size
                place(bytes(data), rewritten)
            elif what == "restore":
                place(original, rewritten)
            elif what == "outage":
                daemon.outage()
                out.outages += 1
            elif what == "resume":
                daemon.resume()
            elif what == "second":
                out.second.append(second_daemon(daemon, cfg, work / "journal.sqlite"))
    journal = work / "journal.sqlite"
    if shape.nd2:
        expected = nd2_frame_digests(args.nd2, ND2_CHANNEL)
        hostile = set()
    else:
        expected = {p.name: sha256(p) for p in root.glob("*.tif")}
    good = set(expected) - (hostile if faults else set())
    out.good = len(good)
    deadline = time.monotonic() + args.stall_s  # counted within stall_s after the last file (and restart)
    while time.monotonic() < deadline:
        rows = latest_rows(journal)
        if all(rows.get(n, (None,))[0] == expected[n] for n in good) and (not faults or hostile <= set(rows)):
            break
        time.sleep(0.5)
    out.exit_code = daemon.stop()
    out.exits, out.orphans = daemon.exits, daemon.orphans
    time.sleep(1.0)  # the last messages reach the subscriber
    subscriber.stop()
    out.subscribed = {key: {k: m.get(k) for k in WELL_KEYS}
                      for key, m in (subscriber.state.wells if subscriber.state else {}).items()}
    out.sub_errors = subscriber.errors
    out.sub_gaps = subscriber.state.gaps if subscriber.state else 0
    if hub is not None:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    out.seconds = time.monotonic() - t0

    rows = latest_rows(journal)
    seen = {p for (p,) in journal_rows(journal, "SELECT path FROM inflight UNION SELECT path FROM suspects")}
    not_done = sorted(n for n in good if rows.get(n) != (expected[n], "done"))
    out.stalled = [n for n in not_done if n in rows or n in seen]
    out.lost = [n for n in not_done if n not in out.stalled]
    all_rows = journal_rows(journal, "SELECT path, version, sha256, state, seq FROM frames ORDER BY path, version")
    per_path: dict[str, list[tuple[int, str, int]]] = {}
    for path, version, sha, state, seq in all_rows:
        per_path.setdefault(path, []).append((version, sha, seq))
    # a joined field scored again for one re-written channel file journals its unchanged files beside
    # it (same seq): their new versions are not a second count
    renewed = {b[2] for v in per_path.values() for a, b in zip([(0, None, None)] + v, v) if a[1] != b[1]}
    out.twice = sum(len(v) - len({version for version, _, _ in v})
                    + sum(1 for a, b in zip(v, v[1:]) if a[1] == b[1] and b[2] not in renewed)
                    for v in per_path.values())  # a version twice, or a version for unchanged content
    announced = [(m["path"], m["version"]) for (p,) in
                 journal_rows(journal, "SELECT payload FROM outbox WHERE topic LIKE 'frame/%'")
                 for m in [json.loads(p)]]
    out.twice += len(announced) - len(set(announced))
    out.wrongly = sorted(p for p, _, _, state, _ in all_rows if state == "quarantined" and p in good)
    out.hostile_refused = not faults or all(rows.get(n, (None, None))[1] == "quarantined" for n in hostile)
    out.wells = well_states(journal)
    out.own = own_states(journal)
    out.sub_differ = sorted((k for k in set(out.own) | set(out.subscribed) if out.own.get(k) != out.subscribed.get(k)),
                            key=str)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list among {', '.join(SHAPES)}")
    p.add_argument("--kills", type=int, default=35, help="daemon kill -9s per shape (pid, group, between channels)")
    p.add_argument("--worker-kills", type=int, default=6, help="pool worker kill -9s per shape")
    p.add_argument("--wells", default="A1,A2,A3,B1,B2,B3")
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--timepoints", type=int, default=3)
    p.add_argument("--interval-s", type=float, default=0.3, help="pause after each file")
    p.add_argument("--stall-s", type=float, default=90.0, help="bound for counting everything after the last file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--nd2", type=Path, default=ND2, help="the .nd2 the nd2 shape writes frame by frame")
    args = p.parse_args()
    unknown = [s for s in args.shapes.split(",") if s.strip() and s.strip() not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown shape(s) {unknown}; allowed: {', '.join(SHAPES)}")
    shapes = [SHAPES[s.strip()] for s in args.shapes.split(",") if s.strip()]
    if any(s.nd2 for s in shapes) and not args.nd2.is_file():
        p.error(f"--nd2 {args.nd2}: no such file (the nd2 shape needs a real .nd2, e.g. ../shared's cluster.nd2)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wellwatch-campaign-"))
    random.seed(args.seed)
    header = (f"{'shape':<13}{'good':>5}{'kills':>6}{'(pid/grp/ch)':>13}{'wkill':>6}{'lost':>5}{'stall':>6}"
              f"{'twice':>6}{'wrongQ':>7}{'wells≠':>7}{'orphan':>7}{'hostile':>8}{'2nd':>5}{'sub≠':>5}"
              f"{'exit':>5}{'s':>6}")
    lines, failed = [], False
    for shape in shapes:
        reference = run_shape(shape, work / shape.name / "reference", args, faults=False, seed=args.seed)
        faulted = run_shape(shape, work / shape.name / "faults", args, faults=True, seed=args.seed)
        faulted.wells_differ = sorted(k for k in set(reference.wells) | set(faulted.wells)
                                      if reference.wells.get(k) != faulted.wells.get(k))
        k = faulted.kills
        second_failed = [x for x in faulted.second if x]
        sub_differ = len(reference.sub_differ) + len(faulted.sub_differ)
        bad = (reference.lost + reference.stalled + faulted.lost + faulted.stalled + faulted.wrongly
               + faulted.wells_differ + second_failed + reference.sub_differ + faulted.sub_differ) \
            or faulted.twice or faulted.orphans or not faulted.hostile_refused \
            or faulted.exit_code or reference.exit_code
        failed |= bool(bad)
        kinds = f"{k['pid']}/{k['group']}/{k['channels']}"
        lines.append(f"{shape.name:<13}{faulted.good:>5}{sum(k.values()):>6}{kinds:>13}"
                     f"{faulted.worker_kills:>6}{len(faulted.lost):>5}{len(faulted.stalled):>6}{faulted.twice:>6}"
                     f"{len(faulted.wrongly):>7}{len(faulted.wells_differ):>7}{faulted.orphans:>7}"
                     f"{'-' if shape.nd2 else 'ok' if faulted.hostile_refused else 'NO':>8}{len(second_failed):>5}"
                     f"{sub_differ:>5}{faulted.exit_code:>5}{faulted.seconds:>6.0f}")
        print(lines[-1], flush=True)
        for label, items in (("lost", faulted.lost), ("stalled", faulted.stalled),
                             ("quarantined wrongly", faulted.wrongly),
                             ("reference lost/stalled", reference.lost + reference.stalled)):
            if items:
                print(f"  {label}: {items[:8]}{' ...' if len(items) > 8 else ''}", flush=True)
        for key in faulted.wells_differ[:4]:
            print(f"  {key}: reference {reference.wells.get(key)}\n  {' ' * len(str(key))}  faults    "
                  f"{faulted.wells.get(key)}", flush=True)
        for problem in second_failed:
            print(f"  second daemon: {problem}", flush=True)
        for label, run in (("reference", reference), ("faults", faulted)):
            for key in run.sub_differ[:4]:
                print(f"  subscriber ({label}) {key}: held {run.subscribed.get(key)}\n"
                      f"  {' ' * len(label)}              daemon's own {run.own.get(key)}", flush=True)
            if run.sub_errors:
                print(f"  subscriber ({label}) follow ended {len(run.sub_errors)}x: {run.sub_errors[:2]}", flush=True)
        if faulted.outages:
            print(f"  a long outage ({faulted.outages}); the subscriber healed {faulted.sub_gaps} gap(s)", flush=True)
        if faulted.exits:
            print(f"  runs that ended on their own (restarted): exit codes {faulted.exits}", flush=True)
    print(f"\nfault campaign, seed {args.seed}, {args.wells} x {args.fields} fields x {args.timepoints} timepoints; "
          f"workdir {work}\n{header}\n" + "\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
