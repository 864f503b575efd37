"""Live/dead labels from a real-looking stain: high, uneven background, heavy-tailed dead signal,
registration padding. The generator returns the truth (which tiles hold a dead nucleus)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from wellwatch.training.livedead import build_live_dead_dataset
from wellwatch.training.patches import PairedField
from wellwatch.training.stain_labels import (SEED_STUDY_RULE, StainFitError, estimate_background, fit_stain_mixture,
                                             separation)

SIZE, TILE = 256, 32


def stained_field(seed: int, dead_fraction: float = 0.3, with_dead: bool = True, pad: int = 0):
    """(bright field, stain, truth) where truth[i, j] is True when tile (i, j) holds a dead nucleus.
    The stain: an offset of ~100 (camera), a background ramp from ~600 to ~2500 across the field,
    shot-like noise, and dead nuclei (sd 4 px) whose brightness has a heavy upper tail."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    background = 100 + 500 * (1 + 3 * xx / SIZE) * (1 + 0.3 * np.sin(yy / 90))
    stain = background.copy()
    n = SIZE // TILE
    truth = np.zeros((n, n), bool)
    if with_dead:
        truth = rng.random((n, n)) < dead_fraction
        for i, j in zip(*np.nonzero(truth)):
            cy, cx = i * TILE + rng.integers(10, TILE - 10), j * TILE + rng.integers(10, TILE - 10)
            peak = 500 * np.exp(1.2 * abs(rng.normal()))  # heavy upper tail: some nuclei 10-30x the dimmest
            stain += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
    stain += rng.normal(0, 1, stain.shape) * np.sqrt(stain) * 2
    bf = rng.normal(1000, 60, stain.shape).astype(np.float32)  # textured everywhere: no tile is empty
    if pad:  # a registered frame shifted by `pad` px: zeros in both channels along the left edge
        stain[:, :pad] = 0
        bf[:, :pad] = 0
    return bf, np.clip(stain, 0, 65535).astype(np.uint16), truth


def fields(seeds, **kw):
    out, truths = [], []
    for s in seeds:
        bf, stain, truth = stained_field(s, **kw)
        out.append(PairedField(bf, stain, f"p/A{s}/f1", f"A{s}", "p"))
        truths.append(truth)
    return out, truths


@pytest.mark.unit
def test_background_and_noise_are_recovered_under_objects():
    bf, stain, truth = stained_field(1)
    bg = estimate_background(stain)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    expected = 100 + 500 * (1 + 3 * xx / SIZE) * (1 + 0.3 * np.sin(yy / 90))
    centre = (slice(40, -40), slice(40, -40))
    # a low percentile of blocks, smoothed: a little under the noisy background and its curvature
    assert np.median(np.abs(bg.level[centre] - expected[centre]) / expected[centre]) < 0.1
    # noise ~ 2 sqrt(background): 50..100 across the ramp; the residual ramp inside blocks adds some
    assert 40 < bg.noise_sd < 140


def agreement(ds, fs, truths) -> float:
    """Fraction of labelled tiles whose label is the truth (a dead nucleus in the tile)."""
    truth_by_id = {}
    for f, t in zip(fs, truths):
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                truth_by_id[f"{f.source}@{i * TILE},{j * TILE}"] = int(t[i, j])
    return float(np.mean([truth_by_id[i] == y for i, y in zip(ds.ids, ds.y)]))


@pytest.mark.unit
def test_default_labels_survive_a_high_uneven_heavy_tailed_stain(tmp_path):
    fs, truths = fields(range(1, 9))
    ds = build_live_dead_dataset(fs, tile=TILE, stride=TILE, empty="none", histogram=tmp_path / "h.png",
                                 acquisition="synthetic-plate")
    c = ds.meta["label_counts"]
    assert c["live"] > 50 and c["dead"] > 30
    th = ds.meta["thresholds"]
    assert 0 < th["live_below"] < th["dead_above"]
    assert ds.meta["separation"]["ashman_d"] >= 2
    assert agreement(ds, fs, truths) > 0.97
    assert (tmp_path / "h.png").stat().st_size > 5000


@pytest.mark.unit
def test_the_seed_studys_rule_labels_the_background_gradient_instead(tmp_path):
    """Raw means on an uneven background: the mixture separates bright background from dim, so the
    seed study's rule labels silently wrong -- what the default's background subtraction prevents."""
    fs, truths = fields(range(1, 9))
    ds = build_live_dead_dataset(fs, tile=TILE, stride=TILE, empty="none", labelling=SEED_STUDY_RULE)
    assert agreement(ds, fs, truths) < 0.6


@pytest.mark.unit
def test_a_stain_without_dead_cells_is_refused_not_labelled(tmp_path):
    fs, _ = fields(range(1, 9), with_dead=False)
    with pytest.raises(StainFitError) as e:
        build_live_dead_dataset(fs, tile=TILE, stride=TILE, empty="none", histogram=tmp_path / "h.png",
                                acquisition="untreated-only")
    assert "untreated-only" in str(e.value)
    assert e.value.fit is not None and (tmp_path / "h.png").exists()


@pytest.mark.unit
def test_padded_tiles_are_dropped_and_counted():
    fs, _ = fields([3], pad=20)
    ds = build_live_dead_dataset(fs + fields([4, 5, 6])[0], tile=TILE, stride=TILE, empty="none")
    assert ds.meta["label_counts"]["padded"] == SIZE // TILE  # one column of tiles
    assert not any(i.startswith("p/A3/f1@") and i.endswith(",0") for i in ds.ids)


@pytest.mark.unit
def test_separation_measures():
    from wellwatch.training.gmm import Mixture

    far = separation(Mixture((0.5, 0.5), (0.0, 10.0), (1.0, 1.0)))
    near = separation(Mixture((0.5, 0.5), (0.0, 1.0), (1.0, 1.0)))
    assert far.ashman_d == pytest.approx(10.0) and far.overlap < 1e-6
    assert near.ashman_d == pytest.approx(1.0) and 0.25 < near.overlap < 0.35  # Bayes error of N(0,1) vs N(1,1)
    rng = np.random.default_rng(0)
    with pytest.raises(StainFitError, match="overlap"):
        fit_stain_mixture(rng.normal(0, 1, 2000), "one-population")


@pytest.mark.integration
def test_cli_refusal_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "acq" / "data"
    data.mkdir(parents=True)
    for k in range(1, 5):
        bf, stain, _ = stained_field(k, with_dead=False)
        stem = f"A{k}--W0000{k}--P00001--Z00000--T00000"
        tifffile.imwrite(data / f"{stem}--BF.tif", bf.astype(np.uint16))
        tifffile.imwrite(data / f"{stem}--PI.tif", stain)
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "wellwatch.cli", "dataset", "live-dead", str(data), "--tile", "32",
                        "--empty-filter", "none", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and str(data) in last and "fluorescence_histogram.png" in last
    assert (out / "fluorescence_histogram.png").exists()
