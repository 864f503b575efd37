"""The simulator: determinism, ground truth consistency, image content, naming, write modes."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wellwatch.core.errors import ConfigError
from wellwatch.core.naming import NamingScheme
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.simulator import SimulationSpec, iter_fields, parse_wells, write_plate
from wellwatch.simulator import cli
from wellwatch.simulator.render import BF_BACKGROUND, PI_BACKGROUND

pytestmark = pytest.mark.unit

SMALL = dict(size=160, cells_per_field=10, wells=("A1", "A2"), fields=2, timepoints=2)


def _arrays(spec):
    return [(f.well, f.field, f.timepoint, {k: v.tobytes() for k, v in f.images.items()})
            for f in iter_fields(spec)]


def test_same_seed_same_images_and_truth(tmp_path):
    spec = SimulationSpec(**SMALL, seed=7)
    assert _arrays(spec) == _arrays(SimulationSpec(**SMALL, seed=7))
    a, b = tmp_path / "a", tmp_path / "b"
    write_plate(spec, a)
    write_plate(spec, b)
    files = sorted(p.name for p in (a / "data").iterdir())
    assert files and files == sorted(p.name for p in (b / "data").iterdir())
    for name in files:
        assert (a / "data" / name).read_bytes() == (b / "data" / name).read_bytes()
    for name in ("ground_truth.json", "ground_truth_cells.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_different_seed_differs():
    one = _arrays(SimulationSpec(**SMALL, seed=1))
    two = _arrays(SimulationSpec(**SMALL, seed=2))
    assert all(x[3]["BF"] != y[3]["BF"] for x, y in zip(one, two))


def test_field_does_not_depend_on_other_wells():
    alone = next(iter_fields(SimulationSpec(**{**SMALL, "wells": ("A2",)}, seed=3)))
    together = [f for f in iter_fields(SimulationSpec(**SMALL, seed=3)) if f.well == "A2"][0]
    assert np.array_equal(alone.images["BF"], together.images["BF"])


def test_ground_truth_matches_cells(tmp_path):
    spec = SimulationSpec(**SMALL, seed=5, treatment="dose_series")
    write_plate(spec, tmp_path)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    frames = list(iter_fields(spec))
    with open(tmp_path / "ground_truth_cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert truth["spec"]["seed"] == 5 and truth["spec"]["wells"] == ["A1", "A2"]
    assert len(truth["frames"]) == len(frames) * len(spec.channels)
    assert len(rows) == sum(len(f.cells) for f in frames) > 0
    by_file = {(e["file"], e["channel"]): e for e in truth["frames"]}
    for fr in frames:
        bf_file = next(e["file"] for e in truth["frames"] if e["channel"] == "BF"
                       and (e["well"], e["field"], e["timepoint"]) == (fr.well, fr.field, fr.timepoint))
        entry = by_file[(bf_file, "BF")]
        assert (entry["live"], entry["dead"]) == (fr.live, fr.dead)
        mine = [r for r in rows if r["file"] == bf_file]
        assert sum(r["state"] == "dead" for r in mine) == fr.dead
        assert sum(r["state"] == "live" for r in mine) == fr.live
        assert {r["type"] for r in mine} <= {"A"}
    for w in truth["wells"]:
        fs = [f for f in frames if (f.well, f.timepoint) == (w["well"], w["timepoint"])]
        assert w["live"] == sum(f.live for f in fs) and w["dead"] == sum(f.dead for f in fs)
        assert w["live_fraction"] == pytest.approx(w["live"] / (w["live"] + w["dead"]))
        assert w["fields"] == 2 and w["dose"] == fs[0].dose


def _frames_with_both_states(seed=11):
    spec = SimulationSpec(size=256, cells_per_field=25, wells=("A1", "A12"), fields=1,
                          timepoints=2, treatment="dose_series", seed=seed)
    frames = list(iter_fields(spec))
    assert sum(f.dead for f in frames) >= 5 and sum(f.live for f in frames) >= 5
    return frames


def test_pi_bright_at_dead_dark_at_live():
    for fr in _frames_with_both_states():
        pi = fr.images["PI"].astype(float)
        for c in fr.cells:
            r, col = int(round(c.y)), int(round(c.x))
            centre = pi[r - 1: r + 2, col - 1: col + 2].mean()
            if c.dead:
                assert centre > PI_BACKGROUND + 1000, c
            else:
                assert centre < PI_BACKGROUND + 40, c


def test_bf_dark_ring_outside_dead_cells():
    for fr in _frames_with_both_states():
        bf = fr.images["BF"].astype(float)
        yy, xx = np.mgrid[: bf.shape[0], : bf.shape[1]]
        near_any = np.zeros(bf.shape, bool)
        for c in fr.cells:
            near_any |= np.hypot(xx - c.x, yy - c.y) < c.radius * 1.6 + 8
        background = bf[~near_any].mean()
        assert abs(background - BF_BACKGROUND) < 150
        for c in fr.cells:
            if not c.dead:
                continue
            d = np.hypot(xx - c.x, yy - c.y)
            ring = bf[(d > c.radius + 1) & (d < c.radius + 3)].mean()
            local_bg = bf[(d > c.radius + 12) & (d < c.radius + 20) & ~near_any].mean()
            assert ring < min(background, local_bg) - 40, c


def test_dose_series_live_fraction_falls_with_dose(tmp_path):
    spec = SimulationSpec(size=256, cells_per_field=30, wells=tuple(f"A{i}" for i in range(1, 7)),
                          fields=2, timepoints=3, treatment="dose_series", seed=4)
    write_plate(spec, tmp_path)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    last = [w for w in truth["wells"] if w["timepoint"] == 2]
    doses = [w["dose"] for w in last]
    live = [w["live_fraction"] for w in last]
    assert doses == sorted(doses) and doses[0] < doses[-1]
    assert live[0] > 0.8 and live[-1] < 0.3
    assert np.corrcoef(np.log(doses), live)[0, 1] < -0.8
    first = {w["well"]: w["live_fraction"] for w in truth["wells"] if w["timepoint"] == 0}
    assert first[last[-1]["well"]] > 0.8  # the top dose kills over time, not at once


def test_untreated_plate_mostly_live():
    frames = list(iter_fields(SimulationSpec(**SMALL, seed=9)))
    live, dead = sum(f.live for f in frames), sum(f.dead for f in frames)
    assert dead / (live + dead) < 0.25 and live > 0


@pytest.mark.parametrize("naming", ["scanr", "nis"])
def test_names_parse_back(tmp_path, naming):
    spec = SimulationSpec(**{**SMALL, "wells": ("A1", "B11"), "size": 64, "cells_per_field": 2},
                          naming=naming)
    write_plate(spec, tmp_path)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    scheme = NamingScheme(naming, PLATE_FORMATS[96], "plate1")
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == sorted(e["file"] for e in truth["frames"])
    for e in truth["frames"]:
        meta = scheme.parse(e["file"])
        assert meta.well == e["well"] and meta.field == e["field"]
        if naming == "scanr":
            assert meta.timepoint == e["timepoint"] and meta.channel == e["channel"]
        else:  # NIS numbers t and c from 1
            assert meta.timepoint == e["timepoint"] + 1
            assert meta.channel == str(spec.channels.index(e["channel"]) + 1)
    if naming == "scanr":
        assert "A1--W00001--P00001--Z00000--T00000--BF.tif" in names
        assert "B11--W00023--P00002--Z00000--T00001--PI.tif" in names
    else:
        assert "plate1_A01_t001xy01c1.tif" in names


@pytest.mark.parametrize("mode", ["rename", "chunked"])
def test_write_modes_leave_complete_tiffs(tmp_path, mode):
    spec = SimulationSpec(**{**SMALL, "size": 96, "cells_per_field": 3}, write_mode=mode,
                          chunk_pause_s=0.0)
    seen = []
    summary = write_plate(spec, tmp_path, progress=lambda done, total, path: seen.append((done, total)))
    files = list((tmp_path / "data").iterdir())
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert summary.frames == len(files) == 2 * 2 * 2 * 2 == seen[-1][0] == seen[-1][1]
    expected = {(f.well, f.field, f.timepoint): f.images for f in iter_fields(spec)}
    scheme = NamingScheme("scanr", PLATE_FORMATS[96], "plate1")
    for p in files:
        img = tifffile.imread(p)
        assert img.dtype == np.uint16 and img.shape == (96, 96)
        m = scheme.parse(p.name)
        assert np.array_equal(img, expected[(m.well, m.field, m.timepoint)][m.channel])


def test_bf_written_before_pi(tmp_path):
    spec = SimulationSpec(**{**SMALL, "size": 64, "cells_per_field": 2}, channels=("PI", "BF"))
    order = []
    write_plate(spec, tmp_path, progress=lambda d, t, path: order.append(path.name))
    assert order[0].endswith("--BF.tif") and order[1].endswith("--PI.tif")


def test_spec_rejects_bad_values():
    with pytest.raises(ConfigError, match="Z99"):
        SimulationSpec(wells=("A1", "Z99"))
    with pytest.raises(ConfigError, match="write_mode"):
        SimulationSpec(write_mode="sideways")
    with pytest.raises(ConfigError, match="GFP"):
        SimulationSpec(channels=("BF", "GFP"))
    assert SimulationSpec().wells == tuple(f"A{i}" for i in range(1, 13))


@pytest.mark.parametrize("kwargs, key, allowed", [
    (dict(size=100.5), "simulate.size", "expected an integer"),  # the simulator's own checker let this by
    (dict(size=16), "simulate.size", "allowed range 32..16384"),
    (dict(fields=0), "simulate.fields", "allowed: at least 1"),
    (dict(seed=True), "simulate.seed", "expected an integer"),
    (dict(naming="regex"), "simulate.naming", "allowed: scanr, nis"),
    (dict(plate_format=1536), "simulate.plate_format", "allowed: 96, 384"),
    (dict(plate_name=3), "simulate.plate_name", "expected a string"),
])
def test_spec_is_checked_by_the_validator_config_toml_uses(kwargs, key, allowed):
    with pytest.raises(ConfigError) as e:
        SimulationSpec(**kwargs)
    assert (e.value.key, e.value.allowed) == (key, allowed)
    assert SimulationSpec(plate_format=384).wells[-1] == "A12"
    assert parse_wells("3", 384) == ("A1", "A2", "A3")
    assert len(parse_wells("all", 384)) == 384


def _cli(argv):
    parser = argparse.ArgumentParser(prog="wellwatch")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_plate_and_reports(tmp_path, capsys):
    rc = _cli(["simulate", str(tmp_path), "--wells", "2", "--fields", "1", "--timepoints", "1",
               "--size", "64", "--cells-per-field", "2", "--naming", "nis", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 4 frames" in out and "ground_truth.json" in out
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "plate1_A01_t001xy01c1.tif", "plate1_A01_t001xy01c2.tif",
        "plate1_A02_t001xy01c1.tif", "plate1_A02_t001xy01c2.tif"]


def test_cli_unknown_well_is_a_clear_error(tmp_path, capsys):
    rc = _cli(["simulate", str(tmp_path), "--wells", "A1,Q7"])
    err = capsys.readouterr().err
    assert rc == 2 and "Q7" in err and "96-well" in err
    assert not (tmp_path / "data").exists()


def test_ground_truth_is_complete_before_the_first_frame(tmp_path):
    spec = SimulationSpec(**{**SMALL, "size": 64, "cells_per_field": 2})
    seen = []

    def progress(done, total, path):
        if done == 1:
            truth = json.loads((tmp_path / "ground_truth.json").read_text())
            seen.append((len(truth["frames"]), total, (tmp_path / "ground_truth_cells.csv").exists()))

    write_plate(spec, tmp_path, progress=progress)
    assert seen == [(16, 16, True)]


# Default options must keep producing exactly what earlier versions produced (the demo model and
# other tests were made from it). The digests were recorded from the simulator before cell types,
# phase/DIC and the marker channel were added. They hash decoded pixels and the ground-truth
# text, not TIFF bytes (which may follow the tifffile version); numpy's float32 maths may still
# differ by an ulp across numpy versions or CPUs, which would show up here first.
UNCHANGED = {
    "default": (dict(), 4),
    "dose_small": (dict(size=192, cells_per_field=25, wells=("A1", "A6", "B12"), fields=2,
                        timepoints=3, treatment="dose_series", seed=4), None),
    "nis_pi_bf_384": (dict(plate_format=384, wells=("C3",), size=200, cells_per_field=8, fields=1,
                           timepoints=2, channels=("PI", "BF"), cell_scale=1.7, naming="nis",
                           write_mode="rename", chunk_pause_s=0.0, seed=12), None),
}
UNCHANGED_DIGESTS = {
    "default": "1d34f4a91f5e31325ca6416528913bafac1612e31b32b5e11b9815f71d1f3d8e",
    "dose_small": "136d4c2811c52069e6039bf7b71470a6dd44daf75faa37d92c30a37b86e2fb2b",
    "nis_pi_bf_384": "d12cdfb8fecc84c607a31b8aeed985e3d4a9f771189a960be9d10505ee7dff7c",
}


def output_digest(spec, tmp_path, n_fields=None):
    """sha256 over rendered pixels and ground truth: the first n_fields fields from iter_fields
    plus ground_truth() (the default plate), or, with n_fields None, everything write_plate
    writes (file names, decoded pixels, ground_truth.json, ground_truth_cells.csv)."""
    import hashlib
    import itertools

    from wellwatch.simulator.plate import plan_plate
    from wellwatch.simulator.writer import ground_truth

    h = hashlib.sha256()
    if n_fields is not None:
        for fr in itertools.islice(iter_fields(spec), n_fields):
            for ch in spec.channels:
                h.update(ch.encode())
                h.update(fr.images[ch].tobytes())
        doc, cells_csv = ground_truth(spec, plan_plate(spec))
        h.update(json.dumps(doc, indent=1).encode())
        h.update(cells_csv.encode())
        return h.hexdigest()
    write_plate(spec, tmp_path)
    for p in sorted((tmp_path / "data").iterdir()):
        h.update(p.name.encode())
        h.update(tifffile.imread(p).tobytes())
    for name in ("ground_truth.json", "ground_truth_cells.csv"):
        h.update((tmp_path / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_default_options_output_unchanged(tmp_path, name):
    kwargs, n_fields = UNCHANGED[name]
    assert output_digest(SimulationSpec(**kwargs), tmp_path, n_fields) == UNCHANGED_DIGESTS[name]
