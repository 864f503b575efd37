"""Dataset folders: the on-disk format, VOC import, pairing of acquisitions by naming preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wellwatch.training.dataset import load_dataset, save_dataset
from wellwatch.training.voc import build_voc_dataset, parse_voc, read_grey

from .test_training_data import blob_dataset

pytestmark = pytest.mark.unit

VOC = """<annotation><folder>x</folder><filename>{name}</filename>
<size><width>{w}</width><height>{h}</height><depth>1</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
       "<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def test_save_load_round_trip(tmp_path):
    ds = blob_dataset(40, 16, 8)
    save_dataset(ds, tmp_path / "ds")
    back = load_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(back.x, ds.x)
    np.testing.assert_array_equal(back.y, ds.y)
    assert back.classes == ("live", "dead") and back.ids.tolist() == ds.ids.tolist()
    np.testing.assert_allclose(back.fluorescence, ds.fluorescence)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["counts"] == ds.counts() and meta["groups"]["source"] == 8 and len(meta["fingerprint"]) == 16
    assert back.tiling.tile_size == 16 and back.empty_filter.method == "none"
    with np.load(tmp_path / "ds" / "dataset.npz", allow_pickle=False) as z:  # no pickled objects inside
        assert z["ids"].dtype.kind == "U"


def test_duplicate_ids_are_refused(tmp_path):
    ds = blob_dataset(10, 16, 2)
    ds.ids[:] = "same"
    with pytest.raises(ValueError, match="not unique"):
        save_dataset(ds, tmp_path / "ds")


def test_not_a_dataset_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a wellwatch dataset"):
        load_dataset(tmp_path)


def _voc_image(rng, live_at, dead_at, h=90, w=100):
    img = rng.normal(120, 4, (h, w))
    yy, xx = np.mgrid[:h, :w]
    for (cy, cx) in live_at:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 170
    for (cy, cx) in dead_at:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 40
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_voc(folder, name, img, boxes, rgb=True):
    arr = np.stack([img] * 3, -1) if rgb else img
    Image.fromarray(arr).save(folder / f"{name}.png")
    objs = "".join(OBJ.format(cls=c, x0=x - 9, y0=y - 9, x1=x + 9, y1=y + 9) for c, (y, x) in boxes)
    (folder / f"{name}.xml").write_text(VOC.format(name=f"{name}.png", w=img.shape[1], h=img.shape[0], objects=objs))


def test_voc_import_crops_boxes_with_ldc_names(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        live, dead = [(20, 20 + 25 * k), (60, 70)], [(65, 20)]
        img = _voc_image(rng, live, dead)
        _write_voc(tmp_path, f"img{k}", img, [("Living Cell", p) for p in live] + [("Dead Cell", p) for p in dead],
                   rgb=k != 1)
    name, boxes = parse_voc(tmp_path / "img0.xml")
    assert name == "img0.png" and [b.name for b in boxes] == ["Living Cell", "Living Cell", "Dead Cell"]
    assert read_grey(tmp_path / "img0.png").ndim == 2
    ds = build_voc_dataset([tmp_path], size=24, context=1.5, duplicate_threshold=None, scale="box")
    assert ds.meta["task"] == "live_dead" and ds.classes == ("live", "dead")
    assert ds.counts() == {"live": 6, "dead": 3}
    assert ds.x.shape == (9, 1, 24, 24) and ds.x.dtype == np.float32
    assert ds.meta["tiling"] == {"tile_size": 24, "stride": 24} and ds.meta["empty_filter"]["method"] == "none"
    # crops are normalised frames: a dead (dark) cell's centre is far below a live (bright) one's
    centre = ds.x[:, 0, 10:14, 10:14].mean(axis=(1, 2))
    assert centre[ds.y == 1].max() < centre[ds.y == 0].min()
    assert sorted(set(ds.source)) == ["img0", "img1", "img2"]


def test_voc_rotated_copies_share_a_group(tmp_path):
    rng = np.random.default_rng(1)
    a = _voc_image(rng, [(20, 30)], [(60, 70)])
    b = _voc_image(np.random.default_rng(2), [(50, 40), (20, 75)], [(25, 20)])
    _write_voc(tmp_path, "a", a, [("Living Cell", (20, 30)), ("Dead Cell", (60, 70))])
    rot = np.ascontiguousarray(np.rot90(a))  # (100, 90): a rotated copy, boxes moved with it
    _write_voc(tmp_path, "a_rot", rot, [("Living Cell", (100 - 30, 20)), ("Dead Cell", (100 - 70, 60))])
    _write_voc(tmp_path, "b", b, [("Living Cell", (50, 40)), ("Dead Cell", (25, 20))])
    ds = build_voc_dataset([tmp_path], size=16)
    groups = dict(zip([i.split("#")[0] for i in ds.ids], ds.source))
    assert groups["a"] == groups["a_rot"] != groups["b"]
    assert ds.meta["duplicates"]["images_in_duplicate_groups"] == 2


def test_voc_native_scale_cuts_windows_of_the_frame_itself(tmp_path):
    from wellwatch.core.contract import Normalisation
    from wellwatch.core.preprocess import normalise_frame

    rng = np.random.default_rng(3)
    img = _voc_image(rng, [(30, 40)], [(60, 70)])
    _write_voc(tmp_path, "n", img, [("Living Cell", (30, 40)), ("Dead Cell", (60, 70))], rgb=False)
    ds = build_voc_dataset([tmp_path], size=20, scale="native", duplicate_threshold=None, describe="Grey discs.")
    frame = normalise_frame(img.astype(np.float32), Normalisation("robust_zscore", {}))
    # boxes span 9 px either side of the centre: a 20 px window starts 10 px before it, nothing resized
    np.testing.assert_allclose(ds.x[0, 0], frame[20:40, 30:50], rtol=1e-6)
    np.testing.assert_allclose(ds.x[1, 0], frame[50:70, 60:80], rtol=1e-6)
    crop = ds.meta["crop"]
    assert crop["scale"] == "native" and crop["context"] is None and crop["box_side_px"]["median"] == 18
    assert "about 18 px across" in crop["serving_note"]
    assert ds.meta["fits"] == "Grey discs; " + crop["serving_note"]  # a model's trained_on.fits
    with pytest.raises(ValueError, match="crop scale 'zoom'; allowed: native, box"):
        build_voc_dataset([tmp_path], size=20, scale="zoom")


def test_voc_class_map_for_other_names_gives_cell_type(tmp_path):
    rng = np.random.default_rng(0)
    img = _voc_image(rng, [(20, 20)], [(60, 60)])
    _write_voc(tmp_path, "i", img, [("LMPP", (20, 20)), ("proB", (60, 60))])
    ds = build_voc_dataset([tmp_path], size=16, duplicate_threshold=None)
    assert ds.meta["task"] == "cell_type" and ds.classes == ("LMPP", "proB")


def test_live_dead_pairs_by_naming_preset(tmp_path):
    from wellwatch.simulator.spec import SimulationSpec
    from wellwatch.simulator.writer import write_plate
    from wellwatch.training.livedead import build_live_dead_dataset, find_pairs, read_pairs

    spec = SimulationSpec(wells=("A1", "A2"), fields=2, timepoints=2, size=128, treatment="dose_series", seed=5,
                          cells_per_field=30)
    write_plate(spec, tmp_path / "acq")
    pairs = find_pairs([tmp_path / "acq" / "data"], "scanr", "BF", "PI")
    assert len(pairs) == 8
    assert all(lf.name.endswith("--BF.tif") and fl.name.endswith("--PI.tif") and
               lf.name.replace("--BF", "") == fl.name.replace("--PI", "") for lf, fl, _ in pairs)
    ds = build_live_dead_dataset(list(read_pairs(pairs)), tile=32, stride=16, empty="std", empty_threshold=0.95)
    assert ds.x.shape[1:] == (1, 32, 32) and set(ds.well) <= {"A1", "A2"} and set(ds.plate) == {"acq"}
    assert ds.meta["tiling"] == {"tile_size": 32, "stride": 16} and ds.meta["empty_filter"]["method"] == "std"
    # the split unit is the field position: its timepoints share a source, ids still differ per frame
    assert len(set(ds.source)) == 4 and all("/t" in i and "@" in i for i in ds.ids)
    counts = ds.meta["label_counts"]
    assert counts["tiles"] == 8 * 49 and 0 < counts["empty"] < counts["tiles"]
    assert ds.meta["empty_filter"]["params"]["threshold"] == 0.95
    with pytest.raises(FileNotFoundError, match="no BF\\+GFP pairs"):
        find_pairs([tmp_path / "acq" / "data"], "scanr", "BF", "GFP")
