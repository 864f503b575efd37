"""Normalisation, tiling and empty-tile QC on synthetic frames whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Tiling
from wellwatch.core.preprocess import (cut_tiles, empty_mask, normalise_frame, prepare_tiles,
                                         tile_origins)

pytestmark = pytest.mark.unit

ROBUST = Normalisation("robust_zscore")
QC = EmptyFilter("std", {"threshold": 1.5})


def noisy_frame(shape=(256, 320), blobs=((40, 40), (150, 200)), seed=0, level=1000.0, noise=20.0):
    """A flat noisy background with bright Gaussian blobs; returns (uint16 frame, blob centres)."""
    rng = np.random.default_rng(seed)
    frame = level + noise * rng.standard_normal(shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for cy, cx in blobs:
        frame += 40 * noise * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0 ** 2))
    return np.clip(frame, 0, 65535).astype(np.uint16), list(blobs)


def contract(tile=64, stride=64) -> ModelContract:
    return ModelContract(
        name="t", task="live_dead", classes=("live", "dead"), positive_class="dead", output="probabilities",
        input_name="x", channels=("brightfield",), layout="NCHW", height=tile, width=tile, normalisation=ROBUST,
        tiling=Tiling(tile, stride), empty_filter=QC, decision_threshold=0.5, trained_on={}, metrics={})


def test_tile_origins_count_and_positions():
    origins = tile_origins((100, 130), Tiling(tile_size=32, stride=24))
    ys, xs = [0, 24, 48], [0, 24, 48, 72, 96]  # y 72 would end at 104 > 100; x 96 ends at 128 <= 130
    assert origins.tolist() == [[y, x] for y in ys for x in xs]
    assert (origins.max(axis=0) + 32 <= [100, 130]).all()


def test_tile_origins_exact_fit_and_too_small():
    assert tile_origins((64, 64), Tiling(64, 16)).tolist() == [[0, 0]]
    assert len(tile_origins((63, 200), Tiling(64, 16))) == 0


def test_cut_tiles_equals_slicing():
    image = np.arange(50 * 70, dtype=np.float32).reshape(50, 70)
    origins = tile_origins(image.shape, Tiling(16, 11))
    tiles = cut_tiles(image, origins, 16)
    assert tiles.shape == (len(origins), 16, 16) and tiles.flags.c_contiguous
    for tile, (y, x) in zip(tiles, origins):
        np.testing.assert_array_equal(tile, image[y:y + 16, x:x + 16])


def test_robust_zscore_background_is_standard_normal():
    frame, _ = noisy_frame()
    z = normalise_frame(frame, ROBUST)
    assert z.dtype == np.float32 and z.shape == frame.shape
    background = z[200:, :120]  # far from both blobs
    median = np.median(background)
    assert abs(median) < 0.1
    assert abs(1.4826 * np.median(np.abs(background - median)) - 1.0) < 0.1
    assert z.max() > 20  # the blobs stand out


def test_robust_zscore_is_invariant_to_gain_and_offset():
    frame, _ = noisy_frame(level=500.0)
    brighter = frame.astype(np.int64) * 3 + 700  # exact in uint16: max 3 * ~1400 + 700
    assert brighter.max() < 65535
    z1 = normalise_frame(frame, ROBUST)
    z2 = normalise_frame(brighter.astype(np.uint16), ROBUST)
    np.testing.assert_allclose(z1, z2, atol=1e-4)


def test_fixed_and_percentile_normalisation():
    frame = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    fixed = normalise_frame(frame, Normalisation("fixed", {"mean": 500.0, "std": 250.0}))
    assert fixed.min() == pytest.approx(-2.0) and fixed.max() == pytest.approx(2.0)
    uniform = np.random.default_rng(1).uniform(0, 1000, (256, 256)).astype(np.float32)
    pct = normalise_frame(uniform, Normalisation("percentile", {"low": 5.0, "high": 95.0}))
    assert 0.04 < (pct < 0).mean() < 0.06 and 0.04 < (pct > 1).mean() < 0.06


def test_empty_mask_flags_noise_tiles_and_keeps_blob_tiles():
    frame, blobs = noisy_frame(shape=(256, 256), blobs=((32, 32), (160, 224)))
    z = normalise_frame(frame, ROBUST)
    origins = tile_origins(z.shape, Tiling(64, 64))
    empty = empty_mask(cut_tiles(z, origins, 64), QC)
    with_blob = {(y, x) for y, x in origins.tolist() for cy, cx in blobs if y <= cy < y + 64 and x <= cx < x + 64}
    assert with_blob == {(0, 0), (128, 192)}
    assert {tuple(o) for o, e in zip(origins.tolist(), empty) if not e} == with_blob
    assert empty_mask(cut_tiles(z, origins, 64), EmptyFilter("none")).sum() == 0


def test_prepare_tiles_returns_nchw_float32_of_non_empty_tiles_only():
    frame, _ = noisy_frame(shape=(256, 256), blobs=((32, 32), (160, 224)))
    patches, origins, empty = prepare_tiles([frame], contract())
    assert patches.dtype == np.float32 and patches.shape == (2, 1, 64, 64)
    assert len(origins) == 16 and empty.sum() == 14
    z = normalise_frame(frame, ROBUST)
    for patch, (y, x) in zip(patches, origins[~empty]):
        np.testing.assert_array_equal(patch[0], z[y:y + 64, x:x + 64])


def test_prepare_tiles_extra_channels_follow_the_first_channels_empty_test():
    frame, _ = noisy_frame(shape=(128, 128), blobs=((32, 32),))
    other = np.full_like(frame, 7) + (np.arange(128, dtype=np.uint16)[None, :] % 5)
    patches, origins, empty = prepare_tiles([frame, other], contract())
    assert patches.shape == (1, 2, 64, 64) and origins[~empty].tolist() == [[0, 0]]


def test_prepare_tiles_all_empty_gives_zero_patches():
    frame, _ = noisy_frame(shape=(128, 128), blobs=())
    patches, origins, empty = prepare_tiles([frame], contract())
    assert patches.shape[0] == 0 and empty.all() and len(origins) == 4


def test_prepare_tiles_frame_smaller_than_a_tile_gives_zero_patches():
    frame, _ = noisy_frame(shape=(48, 300), blobs=())
    patches, origins, empty = prepare_tiles([frame], contract(tile=64))
    assert len(patches) == 0 and len(origins) == 0 and len(empty) == 0


# --- the cheap preparation path: the same numbers as the straightforward one ------------------------

def _reference_normalise(frame: np.ndarray, norm: Normalisation) -> np.ndarray:
    """The plain expressions the in-place path replaces (stats on the same every-4th-pixel sample)."""
    x = frame.astype(np.float32)
    sample = x[::4, ::4]
    if norm.method == "robust_zscore":
        centre = float(np.median(sample))
        sigma = 1.4826 * float(np.median(np.abs(sample - centre)))
        return (x - np.float32(centre)) * np.float32(1.0 / max(sigma, 1e-6))
    lo, hi = np.percentile(sample, [norm.params["low"], norm.params["high"]])
    return (x - np.float32(lo)) * np.float32(1.0 / max(float(hi - lo), 1e-6))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("norm", [ROBUST, Normalisation("percentile", {"low": 1.0, "high": 99.0})])
def test_in_place_normalisation_is_bitwise_the_plain_expression_and_leaves_the_input(dtype, norm):
    rng = np.random.default_rng(4)
    frame = rng.gamma(3, 60, size=(203, 317)).astype(dtype)
    before = frame.copy()
    out = np.full(frame.shape, np.nan, np.float32)
    result = normalise_frame(frame, norm, out=out)
    assert result is out
    np.testing.assert_array_equal(out, _reference_normalise(frame, norm))
    np.testing.assert_array_equal(frame, before)  # a float32 input is never normalised in place


def test_fast_median_equals_numpy_median_odd_even_ties_and_nan():
    from wellwatch.core.preprocess import median

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 101, 1000, 4097):
        for values in (rng.normal(size=n).astype(np.float32), np.round(rng.gamma(2, 3, size=n)).astype(np.float32)):
            got, want = median(values), np.median(values)
            assert got == want and got.dtype == want.dtype, (n, got, want)
    assert np.isnan(median(np.array([1.0, np.nan, 3.0], np.float32)))


def test_tile_set_gathers_exactly_the_tiles_prepare_tiles_cuts_and_releases_once():
    from wellwatch.core.preprocess import TileSet, prepare_tile_set

    frame, _ = noisy_frame(shape=(300, 400))
    other = (frame[::-1] // 2).copy()
    tiles, origins, empty = prepare_tile_set([frame, other], contract(tile=64, stride=48))
    patches, origins2, empty2 = prepare_tiles([frame, other], contract(tile=64, stride=48))
    np.testing.assert_array_equal(origins, origins2)
    np.testing.assert_array_equal(empty, empty2)
    assert tiles.shape == patches.shape and 0 < len(tiles) < len(origins)
    out = np.zeros((5, 2, 64, 64), np.float32)
    tiles.gather(1, 4, out)
    np.testing.assert_array_equal(out[:3], patches[1:4])
    assert not out[3:].any()
    released = []
    tiles = TileSet(tiles.planes, tiles.origins, 64, release=lambda: released.append(1))
    tiles.release()
    tiles.release()
    assert released == [1]

