"""The publisher and the reference client: snapshot + updates, and gap detection."""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from prometheus_client import CollectorRegistry

from wellwatch.client import follow
from wellwatch.daemon.journal import Journal, OutboxMessage
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.daemon.stages.publish import Publisher
from wellwatch.core.stream_schema import envelope, well_topic
from wellwatch.harness import free_port

pytestmark = pytest.mark.integration


def well_message(seq: int, well: str, live: int) -> OutboxMessage:
    return OutboxMessage(seq, well_topic("p", well), envelope(
        seq, "well", {"m": "0" * 64}, "p", well, 0, frames=1, fields_expected=1, complete=True,
        counts={"live": live, "dead": 0, "empty": 0}, live_fraction=1.0, unit="tile"))


def test_a_gap_in_seq_makes_the_client_count_and_resnapshot(tmp_path):
    Journal(tmp_path / "j.sqlite").close()
    pub_ep, snap_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publisher = Publisher(zmq.Context.instance(), pub_ep, snap_ep, tmp_path / "j.sqlite",
                          DaemonMetrics(CollectorRegistry()))
    publisher.start()
    received, final, done = [], {}, threading.Event()

    def client():
        for kind, message, state in follow(pub_ep, snap_ep, timeout_s=5):
            received.append((kind, message.get("seq"), state.gaps, state.missed))
            if state.seq >= 7:
                final.update(state.wells)
                break
        done.set()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:  # subscribed and snapshotted
        time.sleep(0.01)
    publisher.submit([well_message(1, "A1", 5), well_message(2, "A2", 6)])
    time.sleep(0.2)
    # seq 3-5 are "lost" on the way to this subscriber: the publisher's state has them, the client not
    publisher.state[("p", "A3")] = well_message(3, "A3", 7).payload  # one entry per well: its latest timepoint
    publisher.last_seq = 5
    publisher.submit([well_message(6, "A1", 8), well_message(7, "A4", 9)])
    assert done.wait(10)
    publisher.stop()
    publisher.join(5)
    kinds = [r[0] for r in received]
    assert kinds[:4] == ["snapshot", "update", "update", "snapshot"]  # seq 6 arrived after 2: a gap
    assert received[3][2:] == (1, 3)  # one gap, three messages missed
    # the re-snapshot restored what the lost messages carried: the client ends with the publisher's state
    assert final == {(p, w, m["timepoint"]): m for (p, w), m in publisher.state.items()}
    assert final[("p", "A3", 0)]["counts"]["live"] == 7
