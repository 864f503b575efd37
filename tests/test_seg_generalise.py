"""Segmentation beyond the training acquisitions: pixel-size rescaling, test-time augmentation,
illumination-robust normalisation, acquisition groups, lab label exports, fine-tuning's start."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from tests.conftest import shared_data
from tests.test_segment_maps import seg_contract
from wellwatch.core.config import load_config
from wellwatch.core.contract import Normalisation
from wellwatch.core.errors import ConfigError
from wellwatch.core.preprocess import normalise_frame
from wellwatch.core.segmentation.pixel_size import (resize_labels, scale_factor, scaled_shape, segment_at_pixel_size,
                                      to_model_scale)
from wellwatch.core.segmentation.segmenters import ModelSegmenter
from wellwatch.core.segmentation.maps import ServeOptions, merge_tta, tta_tiles
from wellwatch.training.seg_metrics import match_scores
from wellwatch.training.seg_targets import class_map, distance_map


def discs(shape, radius, spacing, value=3000.0, background=1000.0):
    """Bright discs on a grid (a phase-contrast-like frame) and their labels."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    k = 0
    for cy in range(spacing // 2, shape[0] - radius, spacing):
        for cx in range(spacing // 2, shape[1] - radius, spacing):
            k += 1
            labels[np.hypot(yy - cy, xx - cx) < radius] = k
    return np.where(labels > 0, value, background).astype(np.uint16), labels


class ThresholdNetwork:
    """A stand-in for ONNX Runtime: the maps a network would give for bright blobs in each tile."""

    def __init__(self, contract):
        self.contract, self.path, self.calls = contract, "threshold", []

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        self.calls.append(len(tiles))
        out = []
        for tile in tiles[:, 0]:
            labels, _ = ndi.label(tile > 0.5)
            classes = class_map(labels)
            out.append(np.stack([classes == 0, classes == 1, classes == 2, distance_map(labels)]))
        return np.asarray(out, np.float32)


def model_at(pixel_size_um: float, **post):
    post = {"min_area": 50, "min_seed_area": 4, "seed_threshold": 0.5, **post}
    c = seg_contract(tile=64, stride=48, downsample=2, **post)
    return dataclasses.replace(c, segmentation=dataclasses.replace(c.segmentation, pixel_size_um=pixel_size_um))


# --- pixel size ----------------------------------------------------------------------------------

@pytest.mark.unit
def test_scale_factor_is_one_when_a_size_is_unknown_or_equal():
    assert scale_factor(0.0, 0.87) == 1.0 and scale_factor(0.435, 0.0) == 1.0
    assert scale_factor(0.87, 0.871) == 1.0  # within the tolerance: not worth a resample
    assert scale_factor(0.435, 0.87) == pytest.approx(0.5)
    assert scale_factor(1.74, 0.87) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="pixel sizes must be >= 0"):
        scale_factor(-1.0, 0.87)


@pytest.mark.unit
def test_frames_resample_to_the_model_and_labels_come_back_at_the_frame_shape():
    frame = np.arange(100 * 120, dtype=np.uint16).reshape(100, 120)
    assert to_model_scale(frame, 0.0, 0.87) is frame
    small = to_model_scale(frame, 0.435, 0.87)
    assert small.shape == scaled_shape(frame.shape, 0.5) == (50, 60) and small.dtype == np.float32
    assert abs(float(small.mean()) - float(frame.mean())) < 0.01 * float(frame.mean())
    labels = np.repeat(np.repeat(np.arange(6, dtype=np.int32).reshape(2, 3), 25, 0), 20, 1)  # (50, 60)
    back = resize_labels(labels, (100, 120))
    assert back.shape == (100, 120) and set(np.unique(back)) == set(range(6))
    assert back[0, 0] == 0 and back[-1, -1] == 5


@pytest.mark.unit
def test_a_20x_frame_is_segmented_at_the_model_pixel_size():
    """A 'model' that only finds cells of its training size (area window) finds the 20x frame's
    cells once the frame is resampled to its pixel size, and the labels match at 20x."""
    frame20, truth20 = discs((240, 240), radius=20, spacing=60)   # 0.435 um/px: cells 2x larger in px

    def sized_threshold(image):  # keeps only blobs of the 10x size (radius ~10 px)
        labels, n = ndi.label(image > 2000)
        sizes = np.bincount(labels.ravel())
        keep = (sizes > 150) & (sizes < 600)
        keep[0] = False
        return np.where(keep[labels], labels, 0)

    assert sized_threshold(frame20).max() == 0  # as it is, the 20x frame's cells are too big
    labels = segment_at_pixel_size(frame20, 0.435, 0.87, sized_threshold)
    assert labels.shape == frame20.shape
    s = match_scores(truth20, labels)
    assert s["n_pred"] == s["n_gt"] == 16 and s["iou"][0.75]["f1"] == 1.0


@pytest.mark.unit
def test_model_segmenter_rescales_with_its_serve_options():
    frame20, truth20 = discs((384, 384), radius=24, spacing=64)
    contract = model_at(0.87)
    at_model = ModelSegmenter(ThresholdNetwork(contract), ServeOptions(frame_pixel_size_um=0.435))
    tiles, origins = at_model.prepare(frame20)
    assert len(tiles) == 4  # 384 px at 0.435 -> 192 at 0.87 -> 96 after the 2x reduction: 2x2 tiles of 64
    labels = at_model.finish(at_model.backend.infer(tiles), origins, frame20.shape)
    assert labels.shape == frame20.shape
    assert match_scores(truth20, labels)["iou"][0.5]["f1"] == 1.0
    as_is = ModelSegmenter(ThresholdNetwork(contract))
    assert len(as_is.prepare(frame20)[0]) == 16  # unknown pixel size: 192 px after the reduction, 4x4 tiles


@pytest.mark.unit
def test_a_frames_vendor_pixel_size_is_used_unless_the_config_gives_one():
    contract = model_at(0.87)
    unknown = ModelSegmenter(ThresholdNetwork(contract))
    assert unknown.options_for(0.435).frame_pixel_size_um == 0.435  # vendor metadata (layout, .nd2)
    assert unknown.options_for(None).frame_pixel_size_um == 0.0
    configured = ModelSegmenter(ThresholdNetwork(contract), ServeOptions(frame_pixel_size_um=0.65, tta=True))
    assert configured.options_for(0.435) == ServeOptions(0.65, True)  # [plate] pixel_size_um wins
    frame20, _ = discs((384, 384), radius=24, spacing=64)
    tiles, origins = unknown.prepare(frame20, 0.435)
    assert len(tiles) == 4 and unknown.finish(unknown.backend.infer(tiles), origins, frame20.shape, 0.435).shape == (384, 384)


# --- test-time augmentation ----------------------------------------------------------------------

@pytest.mark.unit
def test_tta_tiles_flip_and_merge_undoes_the_flips():
    tiles = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    aug = tta_tiles(tiles)
    assert aug.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(aug[3:6], tiles[..., ::-1])
    np.testing.assert_array_equal(aug[6:9], tiles[..., ::-1, :])
    np.testing.assert_array_equal(merge_tta(aug, 3), tiles)  # an equivariant "network": the tiles back
    with pytest.raises(ValueError, match="12 outputs for 4 tiles"):
        merge_tta(aug, 4)


@pytest.mark.unit
def test_tta_segmenter_runs_each_tile_four_times_and_agrees_on_clean_cells():
    frame, truth = discs((200, 210), radius=12, spacing=40)
    contract = model_at(0.0)
    plain = ModelSegmenter(ThresholdNetwork(contract))
    tta = ModelSegmenter(ThresholdNetwork(contract), ServeOptions(tta=True))
    a, b = plain.segment(frame), tta.segment(frame)
    assert tta.backend.calls[0] == 4 * plain.backend.calls[0]
    assert match_scores(truth, a)["iou"][0.5]["f1"] == match_scores(truth, b)["iou"][0.5]["f1"] == 1.0


# --- illumination-robust normalisation -----------------------------------------------------------

@pytest.mark.unit
def test_flatfield_normalisation_removes_gradients_and_gain():
    frame, _ = discs((256, 256), radius=8, spacing=32, value=1300.0, background=1000.0)
    noise = np.random.default_rng(1).normal(0, 20, frame.shape)
    frame = frame + noise
    yy, xx = np.indices(frame.shape) / 256.0
    lit = frame * (0.8 + 0.4 * xx) * 2.5  # +-20% across the field, and another gain
    ff = Normalisation("flatfield", {"sigma": 32.0})
    pct = Normalisation("percentile", {"low": 1.0, "high": 99.0})

    def change(norm):
        a, b = normalise_frame(frame, norm), normalise_frame(lit, norm)
        return float(np.abs(a - b).mean() / np.abs(a - a.mean()).mean())

    assert change(ff) < 0.2 * change(pct)
    assert change(ff) < 0.15


# --- config --------------------------------------------------------------------------------------

@pytest.mark.unit
def test_pixel_size_and_tta_keys_are_validated(tmp_path):
    config = load_config(None, {"plate.pixel_size_um": 0.65, "segmentation.tta": True})
    assert config.plate.pixel_size_um == 0.65 and config.segmentation.tta is True
    assert load_config(None).plate.pixel_size_um == 0.0
    with pytest.raises(ConfigError, match="plate.pixel_size_um"):
        load_config(None, {"plate.pixel_size_um": -0.5})
    with pytest.raises(ConfigError, match="plate.pixel_size_um.*expected a number"):
        load_config(None, {"plate.pixel_size_um": "0.65"})
    with pytest.raises(ConfigError, match="segmentation.tta"):
        load_config(None, {"segmentation.tta": "yes"})


@pytest.mark.unit
def test_contract_refuses_a_negative_pixel_size():
    from wellwatch.core.contract import ModelContract
    from wellwatch.core.errors import ContractError

    doc = model_at(0.87).to_json().replace('"pixel_size_um": 0.87', '"pixel_size_um": -1')
    with pytest.raises(ContractError, match="pixel_size_um"):
        ModelContract.from_json(doc, "t.onnx")
    assert ModelContract.from_json(model_at(0.87).to_json()).segmentation.pixel_size_um == 0.87


# --- acquisition groups --------------------------------------------------------------------------

@pytest.mark.unit
def test_stage_positions_cluster_into_wells():
    from wellwatch.training.seg_groups import FrameMetadata, stage_groups

    frames = [FrameMetadata(f"f{i}", x, y, 0.0, 0.87) for i, (x, y) in
              enumerate([(0, 0), (1000, 0), (2000, 500), (20000, 0), (21000, 800), (0, 50000)])]
    assert stage_groups(frames) == {"f0": "A", "f1": "A", "f2": "A", "f3": "B", "f4": "B", "f5": "C"}
    assert len(set(stage_groups(frames, gap_um=500).values())) == 6


@pytest.mark.unit
def test_nis_metadata_doubles_are_read_from_the_blob():
    import struct

    from wellwatch.training.seg_groups import nis_doubles

    def entry(name, value):
        return bytes([6, len(name) + 1]) + name.encode("utf-16-le") + b"\0\0" + struct.pack("<d", value)

    blob = b"\x01\x02junk" + entry("dXPos", 12140.1) + entry("dCalibration", 0.8708) + b"tail"
    assert nis_doubles(blob, ("dXPos", "dCalibration", "dYPos")) == {"dXPos": 12140.1, "dCalibration": 0.8708}


@pytest.mark.unit
def test_usiigaci_sets_fall_into_three_wells_at_one_pixel_size():
    from wellwatch.training.seg_groups import members, usiigaci_groups

    groups, frames = usiigaci_groups(shared_data("usiigaci-phase"))
    by_group = members(groups)
    assert sorted(by_group["B"], key=lambda n: int(n[3:])) == ["set13", "set14", "set15", "set16", "set30"]
    assert sorted(by_group["C"]) == ["set19", "set20"] and len(by_group["A"]) == 23
    assert {round(f.pixel_size_um, 4) for f in frames} == {0.8708}


# --- a lab's label exports -----------------------------------------------------------------------

@pytest.mark.unit
def test_flat_folder_of_cellpose_napari_and_qupath_exports(tmp_path):
    from wellwatch.training.masks import build_mask_set, find_flat_pairs
    from skimage.io import imsave

    image = np.full((16, 16), 100, np.uint16)
    labels = np.zeros((16, 16), np.uint32)
    labels[2:6, 2:6], labels[8:12, 8:14] = 7, 70000  # uint32 ids as napari may save them
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", labels)
    tifffile.imwrite(tmp_path / "b.tif", image)
    imsave(tmp_path / "b-labels.png", (labels > 0).astype(np.uint16) * 3, check_contrast=False)
    tifffile.imwrite(tmp_path / "c.tif", image)  # no labels: not a pair
    pairs = find_flat_pairs([tmp_path])
    assert [(n, m.name) for n, _, m in pairs] == [("a", "a_masks.tif"), ("b", "b-labels.png")]
    ds = build_mask_set(pairs, progress=False)
    assert ds.meta["cells"] == [2, 1] and ds.labels[0].max() == 70000
    with pytest.raises(FileNotFoundError, match="label image beside it"):
        find_flat_pairs([tmp_path], ("_nothing",))


# --- fine-tuning's starting point ----------------------------------------------------------------

@pytest.mark.integration
def test_bundled_onnx_rebuilds_into_a_trainable_unet_with_the_same_output():
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL
    from wellwatch.core.segmentation.maps import serve_tiles
    from wellwatch.training.seg_init import load_initial_model
    from wellwatch.training.unet import SegmentationMaps

    model, contract = load_initial_model(BUNDLED_SEGMENTATION_MODEL)
    frame = tifffile.imread(shared_data("usiigaci-phase", "set3", "raw.tif"))
    tiles, _ = serve_tiles(frame, contract)
    session = ort.InferenceSession(str(BUNDLED_SEGMENTATION_MODEL), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: tiles[:2]})[0]
    with torch.no_grad():
        got = SegmentationMaps(model).eval()(torch.from_numpy(tiles[:2])).numpy()
    assert np.abs(got - expected).max() < 1e-3
    assert sum(p.requires_grad for p in model.parameters()) > 0


@pytest.mark.unit
def test_restamp_adds_pixel_size_and_scores_without_touching_the_weights(tmp_path):
    torch = pytest.importorskip("torch")
    import json

    from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL
    from wellwatch.training.seg_restamp import restamp
    from wellwatch.training.seg_checkpoint import load_seg_checkpoint

    logo = {"grouping": "g", "groups": {"B": {"images": ["set13"], "f1_iou50": 0.6}}, "pooled": {"images": 1}}
    (tmp_path / "logo.json").write_text(json.dumps(logo))
    out = restamp(str(BUNDLED_SEGMENTATION_MODEL), str(tmp_path / "s.pt"), pixel_size_um=0.8708,
                  leave_group_out=str(tmp_path / "logo.json"))
    model, contract, _ = load_seg_checkpoint(out)
    assert contract.segmentation.pixel_size_um == 0.8708
    assert contract.metrics["leave_group_out"]["groups"]["B"]["f1_iou50"] == 0.6
    assert "validation" in contract.metrics  # what was there stays
    with pytest.raises(ValueError, match="must be >= 0"):
        restamp(str(BUNDLED_SEGMENTATION_MODEL), str(tmp_path / "t.pt"), pixel_size_um=-1.0)


# --- bench segment: scores per acquisition group ------------------------------------------------

@pytest.mark.unit
def test_bench_scores_by_group_count_trained_frames_and_print_the_contract_figures():
    import io

    from wellwatch.bench.segment import print_groups, scores_by_group

    _, truth = discs((64, 64), radius=6, spacing=20)
    miss = np.where(truth == 1, 0, truth)  # one of the nine cells missed
    per_image = [match_scores(truth, truth), match_scores(truth, miss), match_scores(truth, truth)]
    groups = {"set1": "A", "set2": "A", "set13": "B"}
    by_group = scores_by_group(["set1", "set2", "set13"], per_image, groups, seen={"set1"})
    assert by_group["A"]["trained_on"] == 1 and by_group["B"]["trained_on"] == 0
    assert by_group["A"]["f1@0.5"] == pytest.approx(2 * 17 / (2 * 17 + 1)) and by_group["B"]["f1@0.5"] == 1.0
    logo = {"groups": {"B": {"images": ["set13"], "f1_iou50": 0.61, "f1_iou75": 0.2, "ap_iou50": 0.44,
                             "ap_iou75": 0.1}},
            "recipe": {"augment": "basic", "base": 8, "steps": 400}}
    out = io.StringIO()
    print_groups({"grouping": "test", "methods": {"model": {"by_group": by_group,
                                                            "contract_metrics": {"leave_group_out": logo}}}}, out)
    text = out.getvalue()
    assert "1/2 frames trained on" in text and "0/1 frames trained on" in text
    assert "leave-group-out" in text and "F1@0.5 0.610" in text
    assert "--augment basic, 8 wide, 400 steps" in text  # the figures say what compute they came from
