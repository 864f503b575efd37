"""Count the cross-module calls one single-channel TIFF adds, from its watcher event to its frame message.

    python benchmarks/frame_hops.py [REPO_ROOT]

Every thread is profiled; an idle window first records what the daemon calls with no frame (polls,
ticks, heartbeats), then one TIFF is renamed into place and the window closes once its frame message
is published. A hop is a distinct (caller function -> callee function) call whose two ends sit in
different project modules, seen in the frame window and not in the idle one, with the caller in
daemon/ (the stages and their helpers; the callee may be in daemon/ or core/). Prints each hop with
the thread it ran on, then a JSON line: hops, modules, the threads the frame passed and those alive.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import tiff_bytes, write_frame

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
IDLE_S = 3.0

edges: set[tuple[str, str, str, str, str]] = set()
recording = threading.Event()


def module_of(path: str) -> str | None:
    """A project source file relative to ROOT; None for the standard library, packages, generated code."""
    if not path.endswith(".py"):
        return None
    try:
        rel = Path(path).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return None if rel.parts[0] == ".venv" else str(rel)


def profile(frame, event, arg) -> None:
    if event != "call" or not recording.is_set() or frame.f_back is None:
        return
    callee, caller = module_of(frame.f_code.co_filename), module_of(frame.f_back.f_code.co_filename)
    if callee is not None and caller is not None and caller != callee:
        edges.add((caller, frame.f_back.f_code.co_name, callee, frame.f_code.co_name,
                   threading.current_thread().name))


def main() -> int:
    work = Path(tempfile.mkdtemp())
    spec = SimulationSpec(plate_name="p", wells=("A1",), fields=1, timepoints=1, size=256, seed=3)
    config = local_config(work, spec, **{"watch.reconcile_s": 60.0, "report.progress_s": 0})
    threading.setprofile(profile)
    sys.setprofile(profile)
    running = start_daemon(config)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(config.publish.endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
    time.sleep(IDLE_S)  # started and settled
    alive = sorted(t.name for t in threading.enumerate())
    recording.set()
    time.sleep(IDLE_S)
    recording.clear()
    idle = {e[:4] for e in edges}
    edges.clear()
    image = next(iter(iter_fields(spec))).images["BF"]
    recording.set()
    write_frame(Path(config.watch.root) / "A1--W00001--P00001--Z00000--T00000--BF.tif", tiff_bytes(image), "rename")
    if not sub.poll(20000):
        raise SystemExit("no frame message within 20 s")
    topic, _ = sub.recv_multipart()
    time.sleep(0.05)  # the publisher marks the message sent
    recording.clear()
    sys.setprofile(None)
    threading.setprofile(None)
    running.stop()
    hops = sorted((e for e in edges if e[:4] not in idle and e[0].startswith("daemon/")), key=lambda e: (e[4], e))
    for caller, caller_fn, callee, callee_fn, thread in hops:
        print(f"{thread:>12}  {caller}:{caller_fn} -> {callee}:{callee_fn}")
    modules = {e[0] for e in hops} | {e[2] for e in hops}
    print(json.dumps({"hops": len(hops), "modules": len(modules), "threads_on_the_way": sorted({e[4] for e in hops}),
                      "threads_alive": alive, "published": topic.decode()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
