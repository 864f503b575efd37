"""The real cluster.nd2 (Nikon A1, 3 T x 10 Z x 2 C) read frame by frame: finished, growing, copied."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_data
from tests.nd2_writer import copy_in_chunks, write_live
from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.nd2 import frame_key, nd2_contents, read_nd2_frame

pytestmark = pytest.mark.unit

nd2 = pytest.importorskip("nd2")


@pytest.fixture
def cluster():
    return shared_data("vendor-files", "nd2", "cluster.nd2")


def test_finished_file_metadata_and_every_frame(cluster):
    c = nd2_contents(cluster)
    assert c.finished and c.sizes == {"T": 3, "Z": 10, "C": 2, "Y": 31, "X": 38}
    assert c.channels == ("5-FAM/pH 9.0", "FM 4-64/2% CHAPS")
    assert c.pixel_size_um == pytest.approx(0.1678, abs=1e-4)
    assert c.expected_frames == 30 and len(c.readable) == 30
    assert [(f.timepoint, f.z) for f in c.readable[:3]] == [(1, 0), (1, 1), (1, 2)]  # t from 1, as NIS
    assert c.readable[10].timepoint == 2 and c.readable[10].z == 0
    truth = nd2.imread(str(cluster))  # (T, Z, C, Y, X) from the package's own whole-file reader
    for f in c.readable:
        np.testing.assert_array_equal(read_nd2_frame(cluster, f.index), truth[f.timepoint - 1, f.z])
    assert frame_key("run/cluster.nd2", 7) == "run/cluster.nd2#7"


def test_growing_file_offers_each_frame_as_its_chunk_completes(cluster, tmp_path):
    dst = tmp_path / "live.nd2"
    truth = nd2.imread(str(cluster))
    seen: list[int] = []
    for written in write_live(cluster, dst):
        c = nd2_contents(dst)
        assert c is not None and not c.finished
        new = sorted(c.readable_indices - set(seen))
        assert new == [written]  # exactly the frame just written, nothing ahead of it
        f = c.readable[-1]
        np.testing.assert_array_equal(read_nd2_frame(dst, written), truth[f.timepoint - 1, f.z])
        seen += new
    c = nd2_contents(dst)
    assert c.finished and sorted(c.readable_indices) == seen == list(range(30))


def test_copy_in_chunks_reads_nothing_early(cluster, tmp_path):
    dst = tmp_path / "copy.nd2"
    truth = nd2.imread(str(cluster))
    size = cluster.stat().st_size
    first_readable_at = None
    for written in copy_in_chunks(cluster, dst, 7919):  # a prime: chunk edges fall anywhere
        c = nd2_contents(dst)
        if c is None or not c.readable:
            with pytest.raises(FrameReadError, match="not complete on disk yet"):
                read_nd2_frame(dst, 0)
            continue
        first_readable_at = first_readable_at or written
        for f in c.readable:  # whatever is offered is already the finished file's frame
            np.testing.assert_array_equal(read_nd2_frame(dst, f.index), truth[f.timepoint - 1, f.z])
    # this file keeps its attributes chunk at the end: frames wait for it (~99% of the copy)
    assert first_readable_at is not None and first_readable_at > 0.98 * size
    assert nd2_contents(dst).finished


def test_not_an_nd2_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.nd2"
    bad.write_bytes(b"x" * 100)
    assert nd2_contents(bad) is None  # nothing decodable: wait, do not guess
    with pytest.raises(FrameReadError, match="bad.nd2"):
        read_nd2_frame(bad, 0)


def test_tracker_offers_each_frame_once_and_skips_journaled_ones(cluster, tmp_path):
    from wellwatch.core.files.nd2 import Nd2Tracker, nd2_layout

    dst = tmp_path / "live.nd2"
    tracker = Nd2Tracker()
    offered: list[int] = []
    for _ in write_live(cluster, dst):
        offered += [f.index for f in tracker.offer(str(dst), "live.nd2")]
        assert tracker.offer(str(dst), "live.nd2") == []  # nothing twice
    assert not tracker.finished(str(dst))  # the writer has not closed the file when last looked
    assert tracker.offer(str(dst), "live.nd2") == [] and tracker.finished(str(dst))
    assert sorted(offered) == list(range(30))
    restarted = Nd2Tracker(done={frame_key("live.nd2", i) for i in range(20)})
    assert [f.index for f in restarted.offer(str(dst), "live.nd2")] == list(range(20, 30))
    layout = nd2_layout(tracker.contents[str(dst)], "A1")
    assert layout.wells == ("A1",) and layout.fields_expected("A1") == 10  # 1 position x 10 z planes
    assert layout.timepoints == (1, 2, 3) and layout.pixel_size_um == pytest.approx(0.1678, abs=1e-4)
