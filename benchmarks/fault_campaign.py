"""The long fault campaign: an operator's worst week against one plate.

A 60-frame plate (10 wells x 2 fields x 3 timepoints, 192 px, scanR names, temp name then
rename) is written while `wellwatch run` (a subprocess, classical segmentation in a 2-worker
process pool) suffers, at random moments:

- kill -9 of the daemon (then a restart), `--kills` times
- kill -9 of a segmentation pool worker (the OOM killer), `--worker-kills` times
- the watched folder renamed away and back (a dropped share)
- two decompression bombs and a truncated file dropped among the frames (must be quarantined)
- one frame re-written with new pixels and then restored to its first pixels (two new versions)

At the end the journal and the outbox are compared with the files on disk:
  lost               a good frame whose latest content has no `done` row
  doubled            a (path, version) journaled or announced twice, or a version for unchanged content
  quarantined wrongly a good frame quarantined
and the daemon must stop with exit code 0 on SIGTERM.

    python benchmarks/fault_campaign.py [--kills 10] [--worker-kills 6] [--seed 1]   (~3 min, 2-core CPU)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WELLWATCH = [sys.executable, "-m", "wellwatch"]
SIMULATED_BF = {"foreground": '"texture"', "texture_window": "5", "threshold_factor": "0.6", "smooth_sigma": "1.0",
                "closing_radius": "0", "min_distance": "6", "min_area": "60", "downsample": "1", "dist_sigma": "1.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path) -> Path:
    (folder / "acq" / "data").mkdir(parents=True, exist_ok=True)
    classical = "\n".join(f"{k} = {v}" for k, v in SIMULATED_BF.items())
    text = f"""[watch]
root = "acq/data"
settle_s = 0.1
reconcile_s = 2.0
[plate]
name = "camp"
fields_per_well = 2
[segmentation]
method = "classical"
workers = 2
[segmentation.classical]
{classical}
[pipeline]
retry_delay_s = 0.2
[publish]
endpoint = "tcp://127.0.0.1:{free_port()}"
snapshot_endpoint = "tcp://127.0.0.1:{free_port()}"
[metrics]
port = 0
[journal]
path = "journal.sqlite"
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class Daemon:
    """`wellwatch run` under a supervisor like systemd's Restart=on-failure (1 s later)."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.exits: list[int] = []  # exit codes of runs that ended on their own
        self.supervising = True
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while self.supervising:
            time.sleep(1.0)
            with self.lock:
                if self.supervising and self.proc is not None and self.proc.poll() is not None:
                    self.exits.append(self.proc.returncode)
                    self.start()

    def start(self) -> None:
        self.started = time.monotonic()
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(WELLWATCH + ["run", "--config", str(self.config)], stdout=out, stderr=out)

    def kill9_and_restart(self) -> None:
        with self.lock:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.start()

    def kill_worker(self) -> bool:
        with self.lock:
            # the pool's workers are the daemon's children that are Python processes (not the resource tracker)
            workers = [p for p in children(self.proc.pid)
                       if "from multiprocessing.spawn import spawn_main" in Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")]
            if not workers:
                return False
            os.kill(random.choice(workers), signal.SIGKILL)
            return True


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--worker-kills", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wellwatch-campaign-"))
    cfg = write_config(work)
    root = work / "acq" / "data"
    daemon = Daemon(cfg, work / "daemon.log")
    daemon.start()
    time.sleep(4)  # started (imports, model load, pool)
    t0 = time.monotonic()
    writer = subprocess.Popen(WELLWATCH + ["simulate", str(work / "acq"), "--wells", "A1,A2,A3,A4,A5,A6,B1,B2,B3,B4",
                                           "--fields", "2", "--timepoints", "3", "--size", "192",
                                           "--cells-per-field", "12", "--channels", "BF", "--plate-name", "camp",
                                           "--seed", str(args.seed), "--interval-s", "0.5", "--write-mode", "rename"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from wellwatch.daemon.naming import format_scanr
    from wellwatch.simulator.hostile import tiff_bomb

    hostile = {format_scanr("H1", 85, 1, 0, "BF"), format_scanr("H2", 86, 1, 0, "BF"), format_scanr("H3", 87, 1, 0, "BF")}
    events = ([(rng.uniform(2, 45), "kill") for _ in range(args.kills)] +
              [(rng.uniform(2, 45), "worker") for _ in range(args.worker_kills)] +
              [(42.0, "share"), (6.0, "hostile"), (8.0, "rewrite"), (20.0, "restore")])
    done = {"kill": 0, "worker": 0}
    rewritten, original = None, None
    for at, what in sorted(events):
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        if what == "kill":
            daemon.kill9_and_restart()
            done["kill"] += 1
        elif what == "worker":
            done["worker"] += daemon.kill_worker()
        elif what == "share":
            writer.wait(timeout=300)  # a microscope writing into a dropped share fails: drop it after
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
            rewritten = sorted(root.glob("A1--*.tif"))[0]
            original = rewritten.read_bytes()
            data = bytearray(original)
            data[-5000:] = bytes(reversed(data[-5000:]))  # new pixels, same size
            tmp = rewritten.with_name("." + rewritten.name + ".part")
            tmp.write_bytes(bytes(data))
            tmp.rename(rewritten)
        elif what == "restore":
            tmp = rewritten.with_name("." + rewritten.name + ".part")
            tmp.write_bytes(original)
            tmp.rename(rewritten)
        print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)
    writer.wait(timeout=300)
    expected = {p.name: sha256(p) for p in root.glob("*.tif")}
    good = set(expected) - hostile
    deadline = time.monotonic() + 180
    journal = work / "journal.sqlite"

    def latest_rows() -> dict[str, tuple]:
        with sqlite3.connect(journal) as db:
            rows = db.execute("SELECT path, sha256, state FROM frames f WHERE version = "
                              "(SELECT MAX(version) FROM frames g WHERE g.path = f.path)").fetchall()
        return {r[0]: r[1:] for r in rows}

    while time.monotonic() < deadline:
        rows = latest_rows()
        if all(rows.get(n, (None,))[0] == expected[n] for n in good) and hostile <= set(rows):
            break
        time.sleep(0.5)
    time.sleep(max(1.0, 10.0 - (time.monotonic() - daemon.started)))  # a SIGTERM mid-start-up ends it unhandled
    with daemon.lock:
        daemon.supervising = False
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=60)

    rows = latest_rows()
    with sqlite3.connect(journal) as db:
        all_rows = db.execute("SELECT path, version, sha256, state FROM frames ORDER BY path, version").fetchall()
        frame_msgs = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE topic LIKE 'frame/%'")]
        suspects = db.execute("SELECT COUNT(*) FROM suspects").fetchone()[0]
    lost = sorted(n for n in good if rows.get(n) != (expected[n], "done"))
    per_version = {}
    for path, version, sha, state in all_rows:
        per_version.setdefault(path, []).append(sha)
    doubled = sum(len(v) - len(set(zip(range(len(v)), v))) for v in per_version.values())
    doubled += sum(1 for v in per_version.values() for a, b in zip(v, v[1:]) if a == b)  # a version for nothing new
    announced = [(m["path"], m["version"]) for m in frame_msgs]
    doubled += len(announced) - len(set(announced))
    wrongly = sorted(path for path, version, sha, state in all_rows if state == "quarantined" and path not in hostile)
    hostile_ok = all(rows.get(n, (None, None))[1] == "quarantined" for n in hostile)
    versions = [v for p, v, *_ in all_rows if rewritten is not None and p == rewritten.name]
    print(f"\nfault campaign, seed {args.seed}: {len(good)} good frames, {done['kill']} daemon kill -9 + restarts, "
          f"{done['worker']} pool workers killed, a dropped share, {len(hostile)} hostile files, a rewrite + restore; "
          f"runs that ended on their own (restarted by the supervisor): exit codes {daemon.exits}")
    print(f"frames lost {len(lost)}, doubled {doubled}, quarantined wrongly {len(wrongly)}; hostile files "
          f"quarantined: {hostile_ok}; versions of the rewritten frame: {versions}; exit code on SIGTERM {code}; "
          f"suspects left {suspects}")
    if lost or wrongly:
        print("lost:", lost, "\nquarantined wrongly:", wrongly)
    print(f"workdir {work} (daemon.log, journal.sqlite)")
    return 0 if not (lost or doubled or wrongly) and hostile_ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
