"""The simulator's second cell type (LMPP vs pro-B), marker channel and label-free variants
(phase contrast, DIC): ground truth per type, a marker a GMM can read, channels that render the
same cells, validation that names the key, the CLI options, and defaults left alone."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter

import numpy as np
import pytest
import tifffile

from wellwatch.core.errors import ConfigError
from wellwatch.core.naming import NamingScheme
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.simulator import SimulationSpec, cli, iter_fields, well_type_mix, write_plate
from wellwatch.simulator.cells import CELL_TYPES
from wellwatch.simulator.render import (DIC_BACKGROUND, MARKER_BACKGROUND, PH_BACKGROUND,
                                        flat_field, render_field)
from wellwatch.simulator.spec import TYPE_FRACTION_RANGE
from wellwatch.training.gmm import fit_mixture

pytestmark = pytest.mark.unit

TYPES = ("lmpp", "prob")
SIX = tuple(f"A{i}" for i in range(1, 7))
ALL_CHANNELS = ("BF", "PH", "DIC", "CD19", "PI")


def typed(**kw) -> SimulationSpec:
    base = dict(size=192, cells_per_field=20, wells=("A1", "A2"), fields=2, timepoints=2,
                channels=("PH", "CD19"), cell_types=TYPES, seed=3)
    return SimulationSpec(**{**base, **kw})


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _disc(shape, x, y, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(xx - x, yy - y) <= r


def _isolated(cells, c, gap=6.0):
    return all(o is c or np.hypot(o.x - c.x, o.y - c.y) > o.radius * 1.4 + c.radius * 1.4 + gap
               for o in cells)


# --- ground truth ---------------------------------------------------------------------------

def test_ground_truth_types_and_marker_match_the_cells(tmp_path):
    spec = typed(type_mix="series", wells=("A1", "A2", "A3"), treatment="dose_series")
    write_plate(spec, tmp_path)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    rows = _read_csv(tmp_path / "ground_truth_cells.csv")
    frames = list(iter_fields(spec))
    assert truth["spec"]["cell_types"] == list(TYPES) and truth["spec"]["type_mix"] == "series"
    assert rows and set(rows[0]) >= {"type", "marker", "x", "y", "radius", "state"}
    assert {r["type"] for r in rows} == set(TYPES)

    # Per cell: the CSV row is the rendered cell (type, centre, radius, state, marker counts).
    by_key = {(r["well"], int(r["field"]), int(r["timepoint"]), int(r["cell_id"])): r for r in rows}
    assert len(by_key) == len(rows) == sum(len(f.cells) for f in frames)
    for fr in frames:
        for c in fr.cells:
            r = by_key[(fr.well, fr.field, fr.timepoint, c.cell_id)]
            assert r["type"] == c.type and r["state"] == c.state
            assert float(r["x"]) == pytest.approx(c.x, abs=0.006)
            assert float(r["y"]) == pytest.approx(c.y, abs=0.006)
            assert float(r["radius"]) == pytest.approx(c.radius, abs=0.006)
            assert float(r["marker"]) == pytest.approx(c.shape.marker_amp, abs=0.006)

    # Per (well, field, timepoint): the JSON frame entries count the CSV's cells by type.
    csv_counts = Counter((r["well"], int(r["field"]), int(r["timepoint"]), r["type"]) for r in rows)
    for e in truth["frames"]:
        assert set(e["types"]) == set(TYPES)
        for t in TYPES:
            assert e["types"][t] == csv_counts[(e["well"], e["field"], e["timepoint"], t)]
        assert sum(e["types"].values()) == e["live"] + e["dead"]

    # Per (well, timepoint): the well entries sum the fields; the mix is the plan's.
    mixes = well_type_mix(spec)
    for w in truth["wells"]:
        for t in TYPES:
            assert w["types"][t] == sum(n for (well, _, tp, ty), n in csv_counts.items()
                                        if (well, tp, ty) == (w["well"], w["timepoint"], t))
        assert sum(w["types"].values()) == w["live"] + w["dead"]
        assert w["type_mix"] == pytest.approx(mixes[w["well"]])

    # A cell keeps its type over the time-lapse.
    for (well, field, tp, cid), r in by_key.items():
        if tp == 1:
            assert by_key[(well, field, 0, cid)]["type"] == r["type"]


def test_types_differ_in_size_shape_texture_and_marker():
    spec = typed(size=256, cells_per_field=30, wells=SIX, fields=1, timepoints=1,
                 channels=("BF", "PH", "CD19"), type_fraction=0.5, seed=8)
    radius = {t: [] for t in TYPES}
    aspect = {t: [] for t in TYPES}
    marker = {t: [] for t in TYPES}
    grain = {t: [] for t in TYPES}   # interior roughness in phase contrast, fraction of background
    for fr in iter_fields(spec):
        ph = fr.images["PH"].astype(np.float64)
        for c in fr.cells:
            if c.dead:
                continue
            radius[c.type].append(c.radius)
            aspect[c.type].append(c.shape.aspect)
            marker[c.type].append(c.shape.marker_amp)
            grain[c.type].append(ph[_disc(ph.shape, c.x, c.y, 0.6 * c.radius)].std() / PH_BACKGROUND)
    assert min(len(v) for v in radius.values()) >= 30
    assert np.mean(radius["lmpp"]) > 1.25 * np.mean(radius["prob"])
    # sizes overlap, as in the cell-type study: size alone (its SVM baseline) cannot separate all cells
    assert min(radius["lmpp"]) < max(radius["prob"])
    assert np.mean(aspect["lmpp"]) > np.mean(aspect["prob"]) + 0.1
    assert np.median(grain["lmpp"]) > 1.5 * np.median(grain["prob"])
    lm, pb = np.log(marker["lmpp"]), np.log(marker["prob"])
    assert np.median(pb) - np.median(lm) == pytest.approx(np.log(600 / 80), abs=0.3)
    assert lm.std() == pytest.approx(CELL_TYPES["lmpp"].marker_sd, rel=0.3)
    assert max(lm) > min(pb)  # log-normal tails: the types overlap a little on marker intensity


# --- the marker channel: a two-component GMM labels the types --------------------------------

def test_gmm_on_rendered_marker_recovers_types():
    spec = typed(size=256, cells_per_field=30, wells=SIX, fields=2, timepoints=1,
                 type_mix="series", seed=21)
    values, is_prob = [], []
    for fr in iter_fields(spec):
        img = fr.images["CD19"].astype(np.float64)
        background = np.median(img)
        for c in fr.cells:
            inside = img[_disc(img.shape, c.x, c.y, 0.5 * c.radius)]
            values.append(np.log(max(inside.mean() - background, 1.0)))
            is_prob.append(c.type == "prob")
    values, is_prob = np.array(values), np.array(is_prob)
    assert len(values) > 250 and 0.3 < is_prob.mean() < 0.7
    mix = fit_mixture(values)
    post = mix.posterior(values)
    predicted_prob = post[:, 1] > 0.5     # component 1 is the bright one
    accuracy = (predicted_prob == is_prob).mean()
    assert accuracy > 0.95
    ambiguous = (post.max(axis=1) < 0.8).sum()  # the seed study leaves these cells unused
    assert 1 <= ambiguous < 0.08 * len(values)
    assert mix.means[1] - mix.means[0] > 1.5


# --- label-free channels --------------------------------------------------------------------

def test_new_channels_render_the_same_cells():
    spec = typed(size=192, cells_per_field=14, wells=("A1",), fields=1, timepoints=1,
                 channels=ALL_CHANNELS, seed=5)
    fr = next(iter_fields(spec))
    for ch in ALL_CHANNELS:
        assert fr.images[ch].dtype == np.uint16 and fr.images[ch].shape == (192, 192)
    # Each channel is the same whether rendered alone or with the others.
    rng_key = [spec.seed, 1, 1, 1, 0]  # plate._RENDER, well index 1, field 1, timepoint 0
    for ch in ("PH", "DIC", "CD19", "BF"):
        alone = render_field(fr.cells, spec.size, np.random.default_rng(rng_key), (ch,),
                             flat=flat_field(spec.size))[ch]
        assert np.array_equal(alone, fr.images[ch]), ch

    live = [c for c in fr.cells if not c.dead and _isolated(fr.cells, c)]
    assert len(live) >= 4
    ph = fr.images["PH"].astype(np.float64)
    dic = fr.images["DIC"].astype(np.float64)
    marker = fr.images["CD19"].astype(np.float64)
    yy, xx = np.mgrid[:192, :192]
    near_any = np.zeros(ph.shape, bool)
    for c in fr.cells:
        near_any |= np.hypot(xx - c.x, yy - c.y) < c.radius * 1.6 + 6
    for c in live:
        d = np.hypot(xx - c.x, yy - c.y)
        local = (d > c.radius * 1.6 + 6) & (d < c.radius * 1.6 + 16) & ~near_any
        # Phase contrast: dark body, bright halo just outside the outline.
        bg = ph[local].mean()
        assert ph[d < 0.5 * c.radius].mean() < bg - 0.12 * PH_BACKGROUND, c
        ring = ph[(d > c.radius + 0.5) & (d < c.radius + 2.5)].mean()
        assert ring > bg + 0.05 * PH_BACKGROUND, c
        # DIC: relief along the shear: the edge facing the light bright, the opposite one dark.
        bg = dic[local].mean()
        u = 0.7 * c.radius / np.sqrt(2)
        lit = dic[_disc(dic.shape, c.x - u, c.y - u, 0.25 * c.radius)].mean()
        shadow = dic[_disc(dic.shape, c.x + u, c.y + u, 0.25 * c.radius)].mean()
        assert lit > bg + 0.03 * DIC_BACKGROUND and shadow < bg - 0.03 * DIC_BACKGROUND, c
        # Marker: follows the type.
        centre = marker[d < 0.5 * c.radius].mean() - marker[local].mean()
        assert centre > 200 if c.type == "prob" else centre < 250, c
    assert abs(np.median(marker) - MARKER_BACKGROUND) < 15


@pytest.mark.parametrize("channels", [("PH",), ("DIC", "PH"), ("BF",), ("DIC", "PH", "CD19")])
def test_label_free_variants_write_and_parse(tmp_path, channels):
    spec = typed(size=64, cells_per_field=3, wells=("A1",), fields=1, timepoints=1,
                 channels=channels)
    order = []
    write_plate(spec, tmp_path, progress=lambda d, t, path: order.append(path.name))
    scheme = NamingScheme("scanr", PLATE_FORMATS[96], "plate1")
    # Label-free files first, the fluorescence file last (it completes the field, as on a scope).
    assert [scheme.parse(n).channel for n in order] == \
        [c for c in channels if c != "CD19"] + [c for c in channels if c == "CD19"]
    expected = {ch: next(iter_fields(spec)).images[ch] for ch in channels}
    for name in order:
        ch = scheme.parse(name).channel
        assert np.array_equal(tifffile.imread(tmp_path / "data" / name), expected[ch])
    rows = _read_csv(tmp_path / "ground_truth_cells.csv")
    assert all(r["file"] == order[0] for r in rows)  # cells refer to the first label-free file
    assert rows and ("marker" in rows[0]) == ("CD19" in channels)


# --- per-well composition ---------------------------------------------------------------------

def test_type_mix_series_and_fixed_fraction():
    series = typed(type_mix="series", wells=SIX)
    mix = well_type_mix(series)
    first = [mix[w]["lmpp"] for w in SIX]
    assert first == pytest.approx(np.linspace(*TYPE_FRACTION_RANGE, 6))
    assert all(sum(m.values()) == pytest.approx(1.0) for m in mix.values())
    fixed = well_type_mix(typed(type_fraction=0.3, wells=SIX))
    assert all(m == pytest.approx({"lmpp": 0.3, "prob": 0.7}) for m in fixed.values())
    assert well_type_mix(SimulationSpec(wells=SIX)) == {}
    three = well_type_mix(typed(cell_types=("prob", "lmpp", "A"), type_fraction=0.4))
    assert three["A1"] == pytest.approx({"prob": 0.4, "lmpp": 0.3, "A": 0.3})


def test_series_wells_differ_in_composition_deterministically():
    spec = typed(size=256, cells_per_field=40, wells=SIX, fields=2, timepoints=1,
                 type_mix="series", channels=("PH",), seed=2)
    frac = []
    for w in SIX:
        cells = [c for k, pop in _plan(spec).populations.items() if k[0] == w
                 for c in pop.cells_at(0)]
        frac.append(np.mean([c.type == "lmpp" for c in cells]))
    assert frac[0] < 0.3 and frac[-1] > 0.7
    assert np.corrcoef(np.arange(6), frac)[0, 1] > 0.9
    again = [[c.type for c in pop.cells_at(0)] for pop in _plan(spec).populations.values()]
    assert again == [[c.type for c in pop.cells_at(0)] for pop in _plan(spec).populations.values()]
    other = typed(size=256, cells_per_field=40, wells=SIX, fields=2, timepoints=1,
                  type_mix="series", channels=("PH",), seed=3)
    assert again != [[c.type for c in pop.cells_at(0)] for pop in _plan(other).populations.values()]


def _plan(spec):
    from wellwatch.simulator import plan_plate
    return plan_plate(spec)


def test_single_type_A_renders_like_the_default():
    base = dict(size=128, cells_per_field=8, wells=("A1",), fields=1, timepoints=2, seed=6)
    default = [f.images["BF"].tobytes() for f in iter_fields(SimulationSpec(**base))]
    as_a = [f.images["BF"].tobytes() for f in iter_fields(SimulationSpec(**base, cell_types=("A",)))]
    assert default == as_a
    assert "cell_types" not in SimulationSpec(**base).to_json()  # default JSON as before
    assert SimulationSpec(**base, cell_types=("A",)).to_json()["cell_types"] == ["A"]


# --- validation and CLI -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, key, shows", [
    (dict(cell_types=("lmpp", "tcell")), "simulate.cell_types", "tcell"),
    (dict(cell_types=("lmpp", "lmpp")), "simulate.cell_types", "at most once"),
    (dict(cell_types=TYPES, type_mix="random"), "simulate.type_mix", "series"),
    (dict(cell_types=("lmpp",), type_mix="series"), "simulate.type_mix", "two or more"),
    (dict(type_mix="series"), "simulate.type_mix", "two or more"),
    (dict(cell_types=TYPES, type_fraction=1.5), "simulate.type_fraction", "0..1"),
    (dict(channels=("PH", "GFP")), "simulate.channels", "GFP"),
])
def test_spec_errors_name_the_key(kwargs, key, shows):
    with pytest.raises(ConfigError, match=shows) as e:
        SimulationSpec(**kwargs)
    assert e.value.key == key and key in str(e.value)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="wellwatch")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_cell_type_options(tmp_path, capsys):
    rc = _cli(["simulate", str(tmp_path), "--wells", "3", "--fields", "1", "--timepoints", "1",
               "--size", "96", "--cells-per-field", "6", "--cell-types", "lmpp,prob",
               "--type-mix", "series", "--channels", "PH,DIC,CD19", "--seed", "4"])
    assert rc == 0 and "wrote 9 frames" in capsys.readouterr().out
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["spec"]["cell_types"] == ["lmpp", "prob"]
    assert truth["spec"]["channels"] == ["PH", "DIC", "CD19"]
    assert [w["type_mix"]["lmpp"] for w in truth["wells"]] == pytest.approx([0.1, 0.5, 0.9])
    assert sorted(p.name.rsplit("--", 1)[1] for p in (tmp_path / "data").iterdir()) == \
        ["CD19.tif"] * 3 + ["DIC.tif"] * 3 + ["PH.tif"] * 3

    rc = _cli(["simulate", str(tmp_path / "bad"), "--cell-types", "lmpp,nk"])
    err = capsys.readouterr().err
    assert rc == 2 and "simulate.cell_types" in err and "nk" in err
    rc = _cli(["simulate", str(tmp_path / "bad"), "--type-fraction", "2"])
    assert rc == 2 and "simulate.type_fraction" in capsys.readouterr().err
