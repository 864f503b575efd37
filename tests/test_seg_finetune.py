"""`wellwatch finetune`: few-frame adaptation of the segmentation U-Net, chosen on strips never trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import shared_data
from wellwatch.training.masks import MASKS_FORMAT, MaskSet
from wellwatch.training.seg_finetune import split_for_checking


def _mask_set(shapes: dict[str, tuple[int, int]]) -> MaskSet:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4000, s).astype(np.uint16) for s in shapes.values()]
    labels = [np.arange(np.prod(s), dtype=np.int32).reshape(s) % 7 for s in shapes.values()]
    return MaskSet(list(shapes), images, labels, {"format": MASKS_FORMAT, "kind": "masks", "names": list(shapes)})


@pytest.mark.unit
def test_each_frame_is_cut_along_its_longer_side_into_a_fit_part_and_a_check_strip():
    data = _mask_set({"wide": (100, 200), "tall": (300, 120), "other": (50, 50)})
    split = split_for_checking(data, ["wide", "tall"], 0.25)
    assert split.names == ["wide:fit", "wide:check", "tall:fit", "tall:check"]
    shapes = [im.shape for im in split.images]
    assert shapes == [(100, 150), (100, 50), (225, 120), (75, 120)]
    # the parts tile the frame: nothing is both trained on and checked on, nothing is lost
    np.testing.assert_array_equal(np.hstack(split.images[:2]), data.images[0])
    np.testing.assert_array_equal(np.vstack(split.labels[2:]), data.labels[1])


@pytest.mark.unit
def test_encoder_frozen_leaves_only_the_decoder_to_learn():
    from wellwatch.training.seg_train import trainable_parameters
    from wellwatch.training.unet import UNet

    model = UNet(1, 4, 2)
    everything = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in trainable_parameters(UNet(1, 4, 2), "none")) == everything
    decoder = trainable_parameters(model, "encoder")
    assert 0 < sum(p.numel() for p in decoder) < everything
    assert not any(p.requires_grad for p in model.down.parameters())
    assert {id(p) for p in decoder} == {id(p) for m in (model.up, model.merge, model.head) for p in m.parameters()}


@pytest.mark.unit
def test_score_rest_means_every_frame_not_adapted_on_and_none_left_or_overlap_is_refused():
    from wellwatch.training.masks import frames_to_score

    assert frames_to_score(["a", "b", "c", "d"], ["a", "c"], "rest") == ["b", "d"]
    assert frames_to_score(["a", "b"], ["a"], None) == []
    with pytest.raises(ValueError, match="none is left to score"):
        frames_to_score(["a", "b"], ["a", "b"], "rest")
    with pytest.raises(ValueError, match="--score b: frames trained on say nothing about the others"):
        frames_to_score(["a", "b", "c"], ["a", "b"], "b,c")


@pytest.mark.unit
def test_a_frame_both_adapted_on_and_scored_is_refused_before_training(tmp_path, capsys):
    from wellwatch.cli import main
    from wellwatch.training.masks import save_mask_set

    save_mask_set(_mask_set({"f1": (64, 64), "f2": (64, 64)}), tmp_path / "ds")
    code = main(["finetune", str(tmp_path / "ds"), "--frames", "f1,f2", "--score", "f2", "--out",
                 str(tmp_path / "lab.onnx")])
    assert code == 2
    err = capsys.readouterr().err
    assert "wellwatch finetune: --score f2: frames trained on say nothing about the others" in err
    assert not (tmp_path / "lab.finetune").exists()


@pytest.mark.integration
def test_adapting_the_bundled_model_scores_the_other_frames_before_and_after_and_serves(tmp_path):
    """Real Usiigaci frames (cropped so the test stays short), the bundled model, a few steps."""
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.segmentation.segmenters import ModelSegmenter
    from wellwatch.training.masks import build_mask_set, find_mask_pairs
    from wellwatch.training.seg_finetune import FewFrameRecipe, finetune_segmentation

    root = shared_data("usiigaci-phase")
    pairs = [p for p in find_mask_pairs([root], "raw.tif", "instances_ids.png") if p[0] in ("set13", "set14", "set30")]
    full = build_mask_set(pairs, progress=False)
    window = (slice(0, 512), slice(0, 640))
    data = MaskSet(full.names, [im[window] for im in full.images], [lab[window] for lab in full.labels], full.meta)

    report = finetune_segmentation(data, ["set13", "set14"], ["set30"], tmp_path / "lab.onnx",
                                   recipe=FewFrameRecipe(steps=2, eval_every=1), threads=1, progress=False)
    assert report["frames"] == ["set13", "set14"] and report["scored_frames"] == ["set30"]
    for when in ("before", "after"):
        assert report[when]["frames"] == ["set30"] and 0 < report[when]["f1@0.5"] <= 1
        assert report["check_strips"][when]["frames"] == ["set13:check", "set14:check"]
    assert report["best_step"] in (0, 1, 2) and report["kept_start"] == (report["best_step"] == 0)
    saved = json.loads((tmp_path / "lab.finetune" / "report.json").read_text())
    assert saved == report

    backend = OnnxBackend(tmp_path / "lab.onnx", device="cpu", warmup=False)
    trained_on = backend.contract.trained_on
    assert trained_on["images"] == ["set13:fit", "set14:fit"]
    assert trained_on["validation"] == ["set13:check", "set14:check"]
    assert backend.contract.segmentation.postprocess == report["postprocess"]
    labels = ModelSegmenter(backend).segment(data.images[2])
    assert labels.shape == (512, 640) and labels.max() > 10


@pytest.mark.unit
def test_unknown_recipe_choices_are_refused_with_the_allowed_ones():
    from wellwatch.training.seg_train import SegTrainConfig

    with pytest.raises(ValueError, match="watershed 'strips'; allowed: validation, train\\+validation, keep"):
        SegTrainConfig(train=("a",), val=("b",), watershed="strips")
    with pytest.raises(ValueError, match="freeze 'decoder'; allowed: none, encoder"):
        SegTrainConfig(train=("a",), val=("b",), freeze="decoder")


@pytest.mark.unit
def test_frames_smaller_than_the_training_crop_are_refused_with_the_size_and_the_option(tmp_path, capsys):
    from wellwatch.cli import main
    from wellwatch.training.masks import save_mask_set

    save_mask_set(_mask_set({"f1": (128, 160), "f2": (128, 160)}), tmp_path / "ds")
    code = main(["finetune", str(tmp_path / "ds"), "--frames", "f1", "--score", "f2",
                 "--out", str(tmp_path / "lab.onnx")])
    assert code == 2
    # the fit part (128 x 120 px) at the bundled model's half resolution: 60 px, under the 192 px crop
    assert "crop 192 is larger than a training image at model resolution (60 px): give a smaller --crop" in \
        capsys.readouterr().err
