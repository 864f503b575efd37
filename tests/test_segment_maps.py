"""The learned segmentation's shared plumbing: input geometry, covering tiles, blending, watershed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Segmentation, Tiling
from wellwatch.core.errors import ContractError
from wellwatch.core.segmentation.maps import (BOUNDARY, INTERIOR, PostProcess, blend_weights,
                                           covering_origins, downsample_mean, filter_by_area,
                                           labels_from_maps, labels_from_tile_outputs, seg_tiles, stitch_maps,
                                           upsample_labels)
from wellwatch.training.seg_targets import class_map, distance_map

pytestmark = pytest.mark.unit


def seg_contract(tile: int = 64, stride: int = 48, downsample: int = 2, **post) -> ModelContract:
    return ModelContract(
        name="t", task="segmentation", classes=("background", "cell"), positive_class="cell",
        output="probabilities", input_name="image", channels=("phase_contrast",), layout="NCHW",
        height=tile, width=tile, normalisation=Normalisation("percentile", {"low": 1.0, "high": 99.0}),
        tiling=Tiling(tile, stride), empty_filter=EmptyFilter("none", {}),
        decision_threshold=0.5, trained_on={}, metrics={},
        segmentation=Segmentation(downsample=downsample, postprocess=post))


def disc_maps(shape, centres, radius):
    """The maps a perfect network would give for these discs (made by the training targets' code),
    and the discs' labels. Later discs cover earlier ones where they overlap."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[np.hypot(yy - cy, xx - cx) < radius] = i
    classes = class_map(labels)
    maps = np.stack([classes == 0, classes == INTERIOR, classes == BOUNDARY, distance_map(labels)]).astype(np.float32)
    return maps, labels


def test_contract_round_trip_and_validation():
    c = seg_contract(foreground_threshold=0.4, seeds="interior")
    again = ModelContract.from_json(c.to_json())
    assert again == c and again.segmentation.postprocess["seeds"] == "interior"
    with pytest.raises(ContractError, match="segmentation.postprocess has unknown keys"):
        ModelContract.from_json(seg_contract(bogus=1).to_json())
    with pytest.raises(ContractError, match="needs a segmentation section"):
        dataclasses.replace(c, segmentation=None).validate()
    with pytest.raises(ContractError, match="downsample 3"):
        dataclasses.replace(c, segmentation=Segmentation(downsample=3)).validate()
    with pytest.raises(ContractError, match="has no segmentation section"):
        dataclasses.replace(c, task="cell_type").validate()


@pytest.mark.parametrize("length,tile,stride", [(511, 288, 224), (100, 64, 48), (64, 64, 48), (40, 64, 48)])
def test_covering_origins_cover_every_pixel(length, tile, stride):
    starts = covering_origins(length, tile, stride)
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered[:length].all()
    assert starts.max() + tile == max(length, tile)  # no tile runs past the (padded) edge


def test_stitching_tiles_of_an_image_gives_the_image_back():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(150, 173)).astype(np.float32)
    tiling = Tiling(64, 40)
    tiles, origins = seg_tiles(image, tiling)
    assert tiles.shape[1:] == (1, 64, 64)
    stitched = stitch_maps(np.repeat(tiles, 3, axis=1), origins, image.shape, tiling)
    np.testing.assert_allclose(stitched, np.repeat(image[None], 3, axis=0), rtol=1e-5, atol=1e-5)


def test_small_frames_are_padded_and_cropped_back():
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20)
    tiles, origins = seg_tiles(image, Tiling(64, 48))
    assert tiles.shape == (1, 1, 64, 64) and origins.tolist() == [[0, 0]]
    back = stitch_maps(tiles, origins, image.shape, Tiling(64, 48))
    np.testing.assert_array_equal(back[0], image)


def test_blend_weights_fall_towards_edges_and_stay_positive():
    w = blend_weights(64, 16)
    assert w.min() > 0 and w[32, 32] == 1 and w[0, 32] < w[4, 32] < w[8, 32]


def test_downsample_mean_and_upsample_labels_geometry():
    frame = np.arange(36, dtype=np.uint16).reshape(6, 6)
    small = downsample_mean(frame, 2)
    assert small.shape == (3, 3) and small[0, 0] == np.mean([0, 1, 6, 7])
    labels = np.array([[1, 2], [3, 0]], np.int32)
    big = upsample_labels(labels, 2, (5, 5))  # an odd frame: the last row/column repeats
    assert big.shape == (5, 5) and big[4, 4] == 0 and big[0, 3] == 2 and big[4, 0] == 3


def test_watershed_on_ideal_maps_finds_every_disc():
    centres = [(20, 20), (20, 45), (60, 30), (70, 70)]
    maps, truth = disc_maps((96, 96), centres, 11)
    labels = labels_from_maps(maps, PostProcess(min_area=50, min_seed_area=4))
    assert labels.max() == len(centres)
    for i in range(1, len(centres) + 1):
        found = np.bincount(labels[truth == i]).argmax()
        iou = np.sum((labels == found) & (truth == i)) / np.sum((labels == found) | (truth == i))
        assert iou > 0.9


def test_touching_cells_are_split_by_their_seeds():
    maps, truth = disc_maps((60, 80), [(30, 25), (30, 45)], 11)  # overlapping discs: one foreground blob
    assert ndi.label((maps[INTERIOR] + maps[BOUNDARY]) > 0.5)[1] == 1
    for seeds in ("distance", "interior"):
        labels = labels_from_maps(maps, PostProcess(seeds=seeds, min_area=50, min_seed_area=4))
        assert labels.max() == 2, seeds


def test_area_filter_in_full_resolution_pixels():
    labels = np.zeros((40, 40), np.int32)
    labels[:5, :5] = 1      # 25 px at model resolution = 100 full-resolution px when downsample = 2
    labels[10:30, 10:30] = 2
    kept = filter_by_area(labels, min_area=120 / 4)
    assert kept.max() == 1 and kept[15, 15] == 1 and kept[0, 0] == 0


def test_labels_from_tile_outputs_returns_the_frame_shape():
    contract = seg_contract(tile=64, stride=48, downsample=2, min_area=40, min_seed_area=4)
    maps, truth = disc_maps((75, 90), [(20, 20), (50, 60)], 10)  # model resolution of a 151 x 181 frame
    tiles, origins = seg_tiles(maps[0], contract.tiling)
    outputs = np.stack([np.stack([maps[k][y:y + 64, x:x + 64] for k in range(4)]) for y, x in origins])
    labels = labels_from_tile_outputs(outputs, origins, (151, 181), contract)
    assert labels.shape == (151, 181) and labels.dtype == np.int32 and labels.max() == 2


def test_overlay_draws_predicted_and_true_outlines(tmp_path):
    from skimage.io import imread

    from wellwatch.overlay import PREDICTED, TRUTH, overlay_png

    frame = np.zeros((40, 40), np.uint16)
    pred = np.zeros((40, 40), np.int32)
    pred[5:15, 5:15] = 1
    truth = np.zeros((40, 40), np.int32)
    truth[20:30, 20:30] = 1
    png = imread(overlay_png(frame, pred, tmp_path / "o.png", truth=truth))
    assert tuple(png[5, 10]) == PREDICTED and tuple(png[20, 25]) == TRUTH and tuple(png[10, 10]) == (0, 0, 0)
