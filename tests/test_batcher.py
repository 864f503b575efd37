"""PatchBatcher: patches pooled across frames, scores handed back to the right frame, in order."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.daemon.batcher import PatchBatcher

pytestmark = pytest.mark.unit


def patches(frame_id: int, n: int) -> np.ndarray:
    """n 1x2x2 patches whose value encodes (frame, index): the 'score' is the value itself."""
    return (frame_id * 1000 + np.arange(n, dtype=np.float32)).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 2), np.float32)


def score(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0, 0].copy()


def run_batch(b: PatchBatcher):
    batch, owners = b.next_batch()
    return batch, b.distribute(score(batch), owners)


def test_frame_split_across_batches_completes_only_when_fully_scored():
    b = PatchBatcher(max_batch=4, max_delay_s=1.0)
    assert b.add("f1", patches(1, 6), now=0.0) == []
    assert b.add("f2", patches(2, 3), now=0.0) == []
    assert b.waiting_patches == 9

    batch, done = run_batch(b)
    assert len(batch) == 4 and done == []  # f1 has 2 patches left
    batch, done = run_batch(b)
    assert len(batch) == 4 and [item for item, _ in done] == ["f1"]
    np.testing.assert_array_equal(done[0][1], 1000 + np.arange(6))
    batch, done = run_batch(b)
    assert len(batch) == 1 and [item for item, _ in done] == ["f2"]
    np.testing.assert_array_equal(done[0][1], 2000 + np.arange(3))
    assert b.waiting_patches == 0 and not b.due(now=100.0)


def test_zero_patch_frame_finishes_at_once():
    b = PatchBatcher(max_batch=4, max_delay_s=1.0)
    done = b.add("empty", patches(1, 0), now=0.0)
    assert [item for item, _ in done] == ["empty"] and len(done[0][1]) == 0
    assert b.waiting_patches == 0 and not b.due(now=10.0) and b.seconds_until_due(0.0) is None


def test_due_by_max_batch():
    b = PatchBatcher(max_batch=8, max_delay_s=10.0)
    b.add("a", patches(1, 5), now=0.0)
    assert not b.due(now=0.0)
    b.add("b", patches(2, 3), now=0.0)
    assert b.due(now=0.0)


def test_due_by_max_delay_of_the_oldest_patch():
    b = PatchBatcher(max_batch=100, max_delay_s=0.25)  # binary-exact times
    b.add("a", patches(1, 3), now=5.0)
    b.add("b", patches(2, 3), now=5.125)
    assert not b.due(now=5.1875)
    assert b.seconds_until_due(5.125) == 0.125
    assert b.due(now=5.25) and b.seconds_until_due(5.5) == 0.0


def test_no_patch_lost_or_duplicated_over_random_frames():
    rng = np.random.default_rng(1234)
    for trial in range(30):
        max_batch = int(rng.integers(1, 40))
        b = PatchBatcher(max_batch=max_batch, max_delay_s=0.0)
        sizes = rng.integers(0, 90, size=int(rng.integers(1, 25)))
        finished: dict[int, np.ndarray] = {}
        for frame_id, n in enumerate(sizes):
            for item, scores in b.add(frame_id, patches(frame_id, int(n)), now=float(frame_id)):
                assert item not in finished
                finished[item] = scores
            if rng.random() < 0.5 and b.due(now=float(frame_id)):  # interleave adds and batches
                batch, done = run_batch(b)
                assert 1 <= len(batch) <= max_batch
                for item, scores in done:
                    assert item not in finished
                    finished[item] = scores
        while b.waiting_patches:
            batch, done = run_batch(b)
            assert 1 <= len(batch) <= max_batch
            for item, scores in done:
                assert item not in finished
                finished[item] = scores
        assert sorted(finished) == list(range(len(sizes))), f"trial {trial}"
        for frame_id, n in enumerate(sizes):
            if n:
                np.testing.assert_array_equal(finished[frame_id], frame_id * 1000 + np.arange(n))
            else:
                assert len(finished[frame_id]) == 0


def test_tile_sets_and_arrays_share_batches_each_row_copied_once_and_released_when_all_taken():
    from wellwatch.core.preprocess import TileSet

    released = []
    planes = np.arange(2 * 4 * 6, dtype=np.float32).reshape(1, 8, 6)  # 1 channel, 8x6 px
    origins = np.array([[0, 0], [0, 2], [4, 4], [6, 0]])  # four 2x2 tiles
    tiles = TileSet(planes, origins, 2, release=lambda: released.append("tiles"))
    b = PatchBatcher(max_batch=3, max_delay_s=1.0)
    b.add("array", patches(1, 2), now=0.0)
    b.add("tiles", tiles, now=0.0)
    b.add("none", TileSet(planes, origins[:0], 2, release=lambda: released.append("none")), now=0.0)
    assert released == ["none"]  # nothing to batch: given back at once
    first, _ = b.next_batch()
    assert first.shape == (3, 1, 2, 2) and released == ["none"]
    np.testing.assert_array_equal(first[:2], patches(1, 2))
    np.testing.assert_array_equal(first[2, 0], planes[0, 0:2, 0:2])
    second, _ = b.next_batch()
    assert released == ["none", "tiles"]
    for row, (y, x) in zip(second, origins[1:]):
        np.testing.assert_array_equal(row[0], planes[0, y:y + 2, x:x + 2])
