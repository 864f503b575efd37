"""Segmentation training: masks import, targets, augmentation, a short real run, export, serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from tests.conftest import shared_data
from wellwatch.training.masks import build_mask_set, find_mask_pairs, load_mask_set, read_labels, save_mask_set
from wellwatch.training.seg_targets import class_map, distance_map, downsample_labels

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")


def test_targets_of_two_touching_squares():
    labels = np.zeros((12, 20), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2
    classes = class_map(labels)
    assert set(np.unique(classes[labels == 0])) == {0}
    assert classes[5, 9] == 2 and classes[5, 10] == 2  # both cells' own edge pixels: a band between them
    assert classes[5, 5] == 1
    d = distance_map(labels)
    assert d.max() == 1.0 and d[labels == 0].max() == 0
    assert np.isclose(d[labels == 1].max(), 1.0) and np.isclose(d[labels == 2].max(), 1.0)
    assert d[2, 2] < d[5, 5]


def test_label_downsampling_keeps_ids_and_aligns_with_block_means():
    labels = np.repeat(np.repeat(np.arange(12, dtype=np.int32).reshape(3, 4), 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(downsample_labels(labels, 2), np.arange(12).reshape(3, 4))


@pytest.mark.parametrize("recipe", ["basic", "scale", "microscope"])
def test_augmentation_moves_input_and_targets_together(recipe):
    """Bright squares on a dark field: after any crop, scale, rotation, flip and intensity change the
    input is still brightest where the targets say cell, and the class and distance maps agree."""
    from wellwatch.core.contract import Normalisation
    from wellwatch.core.preprocess import normalise_frame
    from wellwatch.training.seg_augment import AugmentConfig, TrainImage, sample_crop

    labels = np.zeros((96, 96), np.int32)
    for i, (y, x) in enumerate([(8, 10), (40, 50), (60, 12), (70, 70)], start=1):
        labels[y:y + 18, x:x + 14] = i
    raw = np.where(labels > 0, 3000.0, 1000.0).astype(np.float32)
    norm = Normalisation("percentile", {"low": 1.0, "high": 99.0})
    im = TrainImage(raw, normalise_frame(raw, norm), labels, class_map(labels), distance_map(labels))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x_aug, c_aug, d_aug = sample_crop(im, 48, norm, AugmentConfig(recipe), rng)
        assert x_aug.shape == c_aug.shape == d_aug.shape == (48, 48)
        np.testing.assert_array_equal(c_aug == 0, d_aug == 0)
        if (c_aug == 1).any() and (c_aug == 0).any():
            assert x_aug[c_aug == 1].mean() > x_aug[c_aug == 0].mean()


def test_mask_import_refuses_mismatched_and_colour_masks(tmp_path):
    (tmp_path / "a").mkdir()
    tifffile.imwrite(tmp_path / "a" / "raw.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "a" / "mask.tif", np.zeros((8, 9), np.uint16))
    with pytest.raises(ValueError, match="differs from its mask"):
        build_mask_set(find_mask_pairs([tmp_path], "raw.tif", "mask.tif"), progress=False)
    tifffile.imwrite(tmp_path / "a" / "rgb.tif", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="one 2-D plane"):
        read_labels(tmp_path / "a" / "rgb.tif")
    with pytest.raises(FileNotFoundError, match="holds both"):
        find_mask_pairs([tmp_path], "raw.tif", "nothing.png")


def test_short_run_on_real_masks_trains_exports_and_serves(tmp_path):
    """Two Usiigaci sets, a tiny U-Net, a few steps: the whole chain runs and stays consistent."""
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.segmenters import ModelSegmenter
    from wellwatch.training.checkpoint_export import export_checkpoint
    from wellwatch.export.manifest import manifest_path
    from wellwatch.training.seg_checkpoint import load_seg_checkpoint
    from wellwatch.training.seg_train import SegTrainConfig, train_segmentation

    root = shared_data("usiigaci-phase")
    pairs = [p for p in find_mask_pairs([root], "raw.tif", "instances_ids.png") if p[0] in ("set1", "set2")]
    save_mask_set(build_mask_set(pairs, progress=False), tmp_path / "ds")
    ds = load_mask_set(tmp_path / "ds")
    assert ds.names == ["set1", "set2"] and ds.labels[0].max() == 66

    cfg = SegTrainConfig(train=("set1",), val=("set2",), base=4, depth=2, crop=64, batch_size=2, steps=4,
                         eval_every=2, tile_size=128, stride=96, threads=1)
    summary = train_segmentation(tmp_path / "ds", tmp_path / "run", cfg, progress=False)
    assert [h["step"] for h in summary["history"]] == [2, 4]
    assert (tmp_path / "run" / "history.png").stat().st_size > 1000
    model, contract, _ = load_seg_checkpoint(tmp_path / "run" / "best.pt")
    assert contract.task == "segmentation" and contract.trained_on["images"] == ["set1"]
    assert contract.segmentation.postprocess == summary["postprocess"]

    result = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "seg.onnx", parity_images=[root / "set3" / "raw.tif"])
    assert result.parity.passed and result.parity.elements > 0
    backend = OnnxBackend(tmp_path / "seg.onnx", device="cpu", warmup=False)
    labels = ModelSegmenter(backend).segment(read_frame(str(root / "set3" / "raw.tif")))
    assert labels.shape == (1022, 1024) and labels.dtype == np.int32
    manifest = json.loads(manifest_path(tmp_path / "seg.onnx").read_text())
    assert manifest["contract"]["task"] == "segmentation" and manifest["sha256"] == backend.sha256


def test_group_balanced_sampling_draws_each_acquisition_group_equally():
    from wellwatch.training.seg_train import group_balanced_weights

    names = [f"set{i}" for i in range(1, 11)]
    groups = {n: ("A" if i < 8 else "C") for i, n in enumerate(names)}  # 8 frames of A, 2 of C
    w = group_balanced_weights(names, groups)
    assert w.sum() == pytest.approx(1.0)
    assert w[:8].sum() == pytest.approx(0.5) and w[8:].sum() == pytest.approx(0.5)
    assert w[8] == pytest.approx(4 * w[0])  # a C frame is drawn 4x as often as an A frame
    with pytest.raises(ValueError, match="no acquisition group for set11"):
        group_balanced_weights(names + ["set11"], groups)


def test_balance_groups_without_groups_is_refused(tmp_path, capsys):
    from wellwatch.cli import main

    assert main(["train", str(tmp_path), "--task", "segmentation", "--train-images", "set1", "--val-images", "set2",
                 "--balance-groups", "--out", str(tmp_path / "run")]) == 2  # one line, exit 2
    assert "--balance-groups needs --groups-from" in capsys.readouterr().err
