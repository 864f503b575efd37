"""Cellpose networks served by the daemon: contract, config, export parity with cellpose's own eval,
training with Cellpose's own code, and the daemon counting cells with one on real frames.

No pretrained Cellpose weights can be downloaded here: the model the tests serve is trained from
scratch for a few steps on real Usiigaci frames (a module-scoped fixture), so the parity checks
compare two ways of running the same (weak but real) network on the same real frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import daemon_frames, shared_data
from wellwatch.core.config import load_config
from wellwatch.core.contract import ModelContract
from wellwatch.core.errors import ConfigError, ContractError, StartupError
from wellwatch.core.segmentation.cellpose_flows import served_model_file

USIIGACI_PX_UM = 0.8708


@pytest.mark.unit
def test_config_refuses_cellpose_without_a_model_or_with_tta():
    with pytest.raises(ConfigError, match="segmentation.cellpose.model"):
        load_config(None, {"watch.root": "/tmp/x", "journal.path": "/tmp/j.sqlite", "segmentation.method": "cellpose"})
    with pytest.raises(ConfigError, match="segmentation.tta"):
        load_config(None, {"watch.root": "/tmp/x", "journal.path": "/tmp/j.sqlite", "segmentation.method": "cellpose",
                           "segmentation.cellpose.model": "/m.onnx", "segmentation.tta": True})


@pytest.mark.unit
def test_built_in_name_without_weights_is_refused_with_one_line_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    with pytest.raises(StartupError) as e:
        served_model_file("cyto3")
    message = str(e.value)
    assert "\n" not in message
    assert str(tmp_path / "models" / "cyto3") in message and "are not here" in message
    assert "wellwatch cellpose export cyto3" in message
    with pytest.raises(StartupError, match="nuclei.*nucleitorch_0"):
        served_model_file("nuclei")
    with pytest.raises(StartupError, match="neither a file nor a built-in"):
        served_model_file("cyto9")
    torch_weights = tmp_path / "lab_model"
    torch_weights.write_bytes(b"\0" * 16)
    with pytest.raises(StartupError, match="PyTorch.*wellwatch cellpose export"):
        served_model_file(str(torch_weights))


# --- a Cellpose network trained here, exported --------------------------------------------------

def crop_tiff(src: Path, dst: Path, size: int = 256) -> Path:
    import tifffile

    from wellwatch.core.files.tiff import read_frame

    tifffile.imwrite(dst, read_frame(str(src))[:size, :size])
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Cellpose network trained from scratch with cellpose's own train_seg for one step on crops
    of two Usiigaci frames (group A), exported to ONNX with parity checked on a crop of a group-B
    frame. One step teaches it little, so it is served with the cell-probability threshold at the
    85th percentile of its own output and the flow check off: hundreds of masks, which is what a
    parity check needs (a network that finds nothing agrees with anything)."""
    pytest.importorskip("cellpose")
    import torch

    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.cellpose_flows import cellpose_flows, cellpose_tiles, rescale_for
    from wellwatch.export.cellpose_export import cellpose_contract, export_cellpose, load_cellpose
    from wellwatch.training.cellpose_train import CellposeTrainSettings, train_cellpose
    from wellwatch.training.masks import MaskSet, build_mask_set, find_mask_pairs

    root = shared_data("usiigaci-phase")
    tmp = tmp_path_factory.mktemp("cellpose")
    pairs = [p for p in find_mask_pairs([root], "raw.tif", "instances_ids.png") if p[0] in ("set1", "set2")]
    full = build_mask_set(pairs, progress=False)
    data = MaskSet(full.names, [im[:256, :256] for im in full.images], [lb[:256, :256] for lb in full.labels],
                   full.meta)
    settings = CellposeTrainSettings(epochs=1, batch_size=2, images_per_epoch=2)
    result = train_cellpose(data, tmp / "run", "usiigaci-a", None, settings)

    parity_frame = crop_tiff(root / "set13" / "raw.tif", tmp / "set13-crop.tif", 512)  # > 1 tile once resized
    cp = load_cellpose(str(result.model_file))
    contract = cellpose_contract(cp, "probe", USIIGACI_PX_UM, {}, {})
    tiles, geometry = cellpose_tiles(read_frame(str(parity_frame)), contract, rescale_for(contract, 0.0, 0.0))
    with torch.no_grad():
        _, cellprob = cellpose_flows(cp.net(torch.from_numpy(tiles))[0].numpy(), geometry)
    served = {"cellprob_threshold": float(np.percentile(cellprob, 85)), "flow_threshold": 0.0}
    onnx, parity = export_cellpose(str(result.model_file), tmp / "usiigaci-a.onnx", USIIGACI_PX_UM,
                                   [str(parity_frame)], trained_on={"images": data.names}, postprocess=served)
    return {"root": root, "result": result, "onnx": onnx, "parity": parity, "tmp": tmp, "cp": cp}


@pytest.mark.unit
def test_training_writes_a_cellpose_model_with_its_training_cells_diameter(trained):
    result = trained["result"]
    assert result.model_file.is_file() and np.isfinite(result.final_loss)
    # Usiigaci group A cells are ~3,700 px: an equal-area circle is ~69 px across (cellpose's diameter)
    assert 40 < result.diam_labels < 100


@pytest.mark.unit
def test_export_carries_a_cellpose_contract_and_matches_cellpose_eval_on_a_real_frame(trained):
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.export.manifest import manifest_path

    backend = OnnxBackend(trained["onnx"], device="cpu", warmup=False)
    c = backend.contract
    assert c.is_cellpose and c.task == "segmentation" and c.height == 224
    assert c.segmentation.pixel_size_um == USIIGACI_PX_UM
    assert c.segmentation.postprocess["diam_labels"] == pytest.approx(trained["result"].diam_labels, rel=1e-4)
    parity = trained["parity"]
    assert parity.max_abs_diff < 1e-3
    assert parity.cells_cellpose > 20, "too few masks for the parity to mean anything"
    assert parity.ap90 > 0.95 and parity.foreground_iou > 0.99, parity.summary()
    manifest = json.loads(manifest_path(trained["onnx"]).read_text())
    assert manifest["contract"]["segmentation"]["maps"] == ["flow_y", "flow_x", "cellprob"]
    assert manifest["sha256"] == backend.sha256


@pytest.mark.unit
@pytest.mark.slow
def test_served_masks_match_cellpose_eval_on_whole_real_frames(trained):
    """The daemon's ModelSegmenter (ONNX Runtime + cellpose's own pre/post-processing) against
    CellposeModel.eval on whole frames of groups A and C: the masks' IoU, by cellpose's own metric."""
    from cellpose import metrics

    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.segmenters import ModelSegmenter
    from wellwatch.core.segmentation.cellpose_flows import CellposeParams

    cp = trained["cp"]
    segmenter = ModelSegmenter(OnnxBackend(trained["onnx"], device="cpu", warmup=False))
    params = CellposeParams.from_contract(segmenter.contract)
    ours, theirs = [], []
    for name in ("set5", "set19"):
        frame = read_frame(str(trained["root"] / name / "raw.tif"))
        ours.append(segmenter.segment(frame))
        theirs.append(np.asarray(cp.eval(frame.astype(np.float32), channels=[0, 0], flow_threshold=0.0,
                                         cellprob_threshold=params.cellprob_threshold)[0], np.int32))
    assert all(o.shape == (1022, 1024) and o.dtype == np.int32 for o in ours)
    assert all(t.max() > 20 for t in theirs)
    ap, _, _, _ = metrics.average_precision(theirs, ours, threshold=[0.5, 0.9])
    assert ap[:, 0].min() > 0.97 and ap[:, 1].min() > 0.95, ap


@pytest.mark.unit
def test_diameter_follows_the_acquisitions_pixel_size(trained):
    """Frames at twice the training pixel size show cells half as wide: Cellpose's resize doubles."""
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.segmentation.cellpose_flows import rescale_for

    c = OnnxBackend(trained["onnx"], device="cpu", warmup=False).contract
    p = c.segmentation.postprocess
    own = rescale_for(c, 0.0, 0.0)
    assert own == pytest.approx(p["diam_mean"] / p["diam_labels"])
    assert rescale_for(c, USIIGACI_PX_UM, 0.0) == pytest.approx(own)
    assert rescale_for(c, 2 * USIIGACI_PX_UM, 0.0) == pytest.approx(2 * own)
    assert rescale_for(c, 0.5, 15.0) == pytest.approx(p["diam_mean"] / 30.0)  # 15 um at 0.5 um/px = 30 px


@pytest.mark.unit
def test_contract_refuses_a_cellpose_network_stitched_another_way(trained):
    from wellwatch.core.inference.backend import OnnxBackend

    c = OnnxBackend(trained["onnx"], device="cpu", warmup=False).contract
    doc = json.loads(c.to_json())
    doc["segmentation"]["stitch"] = "blend"
    with pytest.raises(ContractError, match="stitch 'cellpose'"):
        ModelContract.from_dict(doc)
    doc["segmentation"]["stitch"] = "cellpose"
    doc["segmentation"]["postprocess"]["seed_threshold"] = 0.5
    with pytest.raises(ContractError, match="seed_threshold"):
        ModelContract.from_dict(doc)


@pytest.mark.unit
def test_init_from_a_cellpose_model_file_and_export_in_one_command(trained, capsys):
    from wellwatch.cli import main
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.training.masks import MaskSet, build_mask_set, find_mask_pairs, save_mask_set

    root, tmp = trained["root"], trained["tmp"]
    full = build_mask_set([p for p in find_mask_pairs([root], "raw.tif", "instances_ids.png") if p[0] == "set13"],
                          progress=False)
    save_mask_set(MaskSet(full.names, [full.images[0][:256, :256]], [full.labels[0][:256, :256]], full.meta), tmp / "b")
    code = main(["cellpose", "train", str(tmp / "b"), "--init", str(trained["result"].model_file), "--epochs", "1",
                 "--images-per-epoch", "2", "--batch", "2", "--pixel-size", str(USIIGACI_PX_UM),
                 "--out", str(tmp / "tuned.onnx")])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(report["onnx"]).is_file() and Path(report["cellpose_model"]).is_file()
    contract = OnnxBackend(report["onnx"], device="cpu", warmup=False).contract
    assert contract.is_cellpose and contract.trained_on["init"] == str(trained["result"].model_file)
    assert contract.trained_on["images"] == ["set13"]


@pytest.mark.unit
def test_few_frame_adaptation_is_one_command_scored_before_and_after_on_frames_not_trained_on(trained, capsys,
                                                                                              caplog):
    """`cellpose train --init M --frames ... --adapt --score rest` on crops of three well-B frames: the
    human-in-the-loop recipe (SGD, lr 0.1) trains on two, the diameter comes from their masks, and the
    model before and after are scored through the served path on the third."""
    from cellpose import utils

    from wellwatch.cli import main
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.segmentation.maps import ServeOptions
    from wellwatch.core.segmentation.segmenters import load_segmenter
    from wellwatch.training.masks import MaskSet, build_mask_set, find_mask_pairs, save_mask_set

    root, tmp = trained["root"], trained["tmp"]
    full = build_mask_set([p for p in find_mask_pairs([root], "raw.tif", "instances_ids.png")
                           if p[0] in ("set13", "set14", "set16")], progress=False)
    crops = MaskSet(full.names, [im[:256, :256] for im in full.images], [lb[:256, :256] for lb in full.labels],
                    full.meta)
    save_mask_set(crops, tmp / "b3")
    init = str(trained["result"].model_file)
    code = main(["cellpose", "train", str(tmp / "b3"), "--init", init, "--frames", "set13,set14", "--adapt",
                 "--epochs", "1", "--images-per-epoch", "2", "--batch", "2", "--score", "rest",
                 "--out", str(tmp / "adapted.onnx")])
    assert code == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    diameter = np.mean([utils.diameters(lb)[0] for lb in crops.labels[:2]])
    assert report["diam_labels_px"] == pytest.approx(diameter, abs=0.1)
    contract = OnnxBackend(report["onnx"], device="cpu", warmup=False).contract
    assert contract.trained_on["optimizer"] == "SGD" and contract.trained_on["learning_rate"] == 0.1
    assert contract.trained_on["images"] == ["set13", "set14"] and contract.trained_on["epochs"] == 1
    cells = len(np.unique(crops.labels[2])) - 1
    for when, onnx in (("before", None), ("after", report["onnx"])):
        scores = report[when]
        assert scores["frames"] == ["set16"] and scores["cells"] == cells > 5
        assert 0.0 <= scores["f1@0.75"] <= scores["f1@0.5"] <= 1.0
    served = load_segmenter(report["onnx"], options=ServeOptions(1.0, False, report["diam_labels_px"]))
    assert report["after"]["found"] == pytest.approx(served.segment(crops.images[2]).max(), abs=2)
    assert "before F1@0.5" in captured.err and "after F1@0.5" in captured.err
    assert "[cellpose train adapted] 1 epochs in" in captured.err

    code = main(["cellpose", "train", str(tmp / "b3"), "--init", init, "--frames", "set13,set14", "--adapt",
                 "--score", "set14,set16", "--out", str(tmp / "refused.onnx")])
    assert code == 2 and "--score set14: frames trained on say nothing" in caplog.text
    assert not (tmp / "refused.cellpose").exists()


@pytest.mark.unit
def test_segment_out_labels_open_as_the_cellpose_gui_and_napari_read_them(trained, tmp_path, capsys):
    """`wellwatch segment --out IMAGE_masks.tif` beside the image: the name the Cellpose GUI autoloads,
    read back with the calls the GUI (cellpose.io.imread) and napari's TIFF reader (tifffile.imread)
    use; ids 1..n with none missing, so the GUI keeps them as they are rather than renumbering."""
    import fastremap
    import tifffile
    from cellpose import io as cellpose_io

    from wellwatch.cli import main
    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.maps import ServeOptions
    from wellwatch.core.segmentation.segmenters import load_segmenter

    image = crop_tiff(trained["root"] / "set16" / "raw.tif", tmp_path / "set16.tif", 320)
    out = tmp_path / "set16_masks.tif"
    assert main(["segment", str(image), "--model", str(trained["onnx"]), "--pixel-size", str(USIIGACI_PX_UM),
                 "--out", str(out)]) == 0
    cells = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cells"]
    expected = load_segmenter(str(trained["onnx"]), options=ServeOptions(USIIGACI_PX_UM)).segment(
        read_frame(str(image)))
    for masks in (cellpose_io.imread(str(out)), tifffile.imread(out)):
        assert masks.shape == (320, 320) and np.issubdtype(masks.dtype, np.integer)
        assert np.array_equal(masks, expected) and masks.max() == cells > 5
        assert len(fastremap.unique(masks)) == masks.max() + 1


@pytest.mark.unit
def test_adapt_is_cellpose_guis_recipe_and_each_flag_overrides_it():
    from wellwatch.cellpose_cli import train_settings
    from wellwatch.cli import build_parser

    def settings(*flags, frames=3):
        return train_settings(build_parser("cellpose").parse_args(["cellpose", "train", "ds", "--out", "m.onnx",
                                                                     *flags]), frames)

    adapt = settings("--adapt")
    assert (adapt.sgd, adapt.learning_rate, adapt.weight_decay, adapt.min_train_masks) == (True, 0.1, 1e-4, 0)
    assert adapt.images_per_epoch == 8 and settings("--adapt", frames=12).images_per_epoch == 12
    tuned = settings("--adapt", "--lr", "0.05", "--epochs", "80", "--images-per-epoch", "4")
    assert (tuned.learning_rate, tuned.epochs, tuned.images_per_epoch, tuned.sgd) == (0.05, 80, 4, True)
    plain = settings()
    assert (plain.sgd, plain.learning_rate, plain.epochs, plain.min_train_masks) == (False, 0.005, 100, 1)


@pytest.mark.unit
def test_init_from_a_missing_built_in_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("cellpose")
    from wellwatch.training.cellpose_train import cellpose_model

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"--init cyto3: .*{tmp_path}/cyto3 are not on this machine"):
        cellpose_model("cyto3")


@pytest.mark.integration
@pytest.mark.parametrize("size", [256, pytest.param(0, marks=pytest.mark.slow)])
def test_daemon_serves_the_cellpose_model_on_the_nis_timelapse(trained, tmp_path, size):
    """Real NIS-Elements frames (cropped to `size`; 0 = whole) through the daemon: watcher, batched
    ONNX inference, the pool's flows -> masks, SQLite, ZeroMQ; every frame's `cells` equals the same
    model run directly with `wellwatch segment`'s code."""
    from wellwatch.core.files.tiff import read_frame
    from wellwatch.core.segmentation.segmenters import load_segmenter
    from wellwatch.harness import local_config
    from wellwatch.simulator.spec import SimulationSpec

    folder = shared_data("nis-timelapse")
    sources = sorted(folder.glob("*.tif"))[:3]
    staged = tmp_path / "staged"
    staged.mkdir()
    for src in sources:
        if size:
            crop_tiff(src, staged / src.name, size)
        else:
            shutil.copy(src, staged / src.name)
    spec = SimulationSpec(naming="nis", plate_name="T98G")
    config = local_config(tmp_path, spec, **{"channels.label_free": "phase", "plate.fields_per_well": 1,
                                             "plate.pixel_size_um": USIIGACI_PX_UM,
                                             "segmentation.method": "cellpose", "segmentation.workers": 1,  # one cellpose import
                                             "segmentation.cellpose.model": str(trained["onnx"])})
    frames = daemon_frames(config, sorted(staged.iterdir()), len(sources))
    direct = load_segmenter(str(trained["onnx"]))
    assert trained["onnx"].stem in frames[0]["models"]
    for m in frames:
        assert m["cells"] == int(direct.segment(read_frame(str(staged / m["path"]))).max()), m["path"]
    assert all(m["cells"] > 0 for m in frames)


@pytest.mark.integration
def test_daemon_serves_cellpose_on_a_nuclear_stain_at_the_acquisitions_pixel_size(trained, tmp_path):
    """adcc-paired's scanR fields (0.3112 um/px) with `segment_on = "LIVE"`: the live/dead model reads
    bright field, the Cellpose network (trained at Usiigaci's 0.8708 um/px) segments the LIVE stain,
    resized for [plate] pixel_size_um. Every field's `cells` equals the same model run directly on the
    LIVE frame at that pixel size, and not its count at the training pixel size or on bright field."""
    import tifffile

    from wellwatch.core.segmentation.maps import ServeOptions
    from wellwatch.core.segmentation.segmenters import load_segmenter
    from wellwatch.harness import local_config
    from wellwatch.simulator.spec import SimulationSpec

    adcc, px = shared_data("adcc-paired", "data"), 0.3112
    fields = ("A2--W00002--P00004", "A6--W00006--P00001")
    config = local_config(tmp_path, SimulationSpec(naming="scanr"), **{
        "channels.segment_on": "LIVE", "plate.pixel_size_um": px, "plate.fields_per_well": 0,
        "segmentation.method": "cellpose", "segmentation.workers": 1,  # one cellpose import
        "segmentation.cellpose.model": str(trained["onnx"])})
    frames = daemon_frames(config, [adcc / f"{f}--Z00000--T00000--{c}.tif" for f in fields for c in ("BF", "LIVE")],
                           len(fields))
    at_px = load_segmenter(str(trained["onnx"]), options=ServeOptions(px))
    at_training_px = load_segmenter(str(trained["onnx"]))
    assert sorted(m["path"] for m in frames) == sorted(f"{f}--Z00000--T00000--BF.tif" for f in fields)
    for m in frames:
        live = tifffile.imread(adcc / m["path"].replace("--BF.tif", "--LIVE.tif"))
        assert m["cells"] == int(at_px.segment(live).max()) > 0, m["path"]
        assert m["cells"] != int(at_training_px.segment(live).max()), m["path"]
        assert m["cells"] != int(at_px.segment(tifffile.imread(adcc / m["path"])).max()), m["path"]


@pytest.mark.integration
def test_without_the_cellpose_package_the_daemon_says_which_extra(tmp_path):
    """A runtime-only install (cellpose and torch blocked) that asks for method = "cellpose" gets one
    line naming the extra, through the CLI's user-error path."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['cellpose'] = None; sys.modules['torch'] = None\n"
            "from wellwatch.core.errors import WellwatchError\n"
            "from wellwatch.core.segmentation.cellpose_flows import cellpose_modules\n"
            "try:\n    cellpose_modules()\nexcept WellwatchError as e:\n    print(type(e).__name__, '|', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    assert out.startswith("CellposeMissing |") and "pip install 'wellwatch[cellpose]'" in out and "\n" not in out
