"""The GMM labelling (the seed study's rule), on data whose true thresholds are known."""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.training.gmm import Thresholds, fit_mixture, label_by_thresholds, live_dead_thresholds
from wellwatch.training.livedead import build_live_dead_dataset, equal_posterior
from wellwatch.training.patches import PairedField
from wellwatch.training.stain_labels import SEED_STUDY_RULE

pytestmark = pytest.mark.unit

LIVE, DEAD = (100.0, 8.0), (220.0, 25.0)  # (mean, sd) of mean PI per patch
TRUE_LIVE_BELOW = LIVE[0] + LIVE[1]       # 108
TRUE_DEAD_ABOVE = DEAD[0] - DEAD[1]       # 195


def two_populations(n_live=3000, n_dead=1500, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(*LIVE, n_live), rng.normal(*DEAD, n_dead)])


def test_mixture_recovers_known_components():
    mix = fit_mixture(two_populations())
    assert mix.means[0] == pytest.approx(LIVE[0], abs=1.0)
    assert mix.means[1] == pytest.approx(DEAD[0], abs=2.0)
    assert mix.sds[0] == pytest.approx(LIVE[1], rel=0.08)
    assert mix.sds[1] == pytest.approx(DEAD[1], rel=0.08)
    assert mix.weights[0] == pytest.approx(2 / 3, abs=0.02)


def test_seed_rule_thresholds_match_the_truth():
    t = live_dead_thresholds(two_populations(seed=1))
    assert t.live_below == pytest.approx(TRUE_LIVE_BELOW, abs=1.5)
    assert t.dead_above == pytest.approx(TRUE_DEAD_ABOVE, abs=3.0)
    assert LIVE[0] < equal_posterior(t.mixture) < DEAD[0]


def test_labels_follow_the_rule_and_discard_the_middle():
    t = Thresholds(fit_mixture(two_populations()), live_below=108.0, dead_above=195.0)
    values = np.array([50, 107.9, 108.1, 150, 194.9, 195.1, 400])
    assert label_by_thresholds(values, t).tolist() == [0, 0, -1, -1, -1, 1, 1]


def test_overlapping_bands_are_ambiguous():
    t = Thresholds(fit_mixture(two_populations()), live_below=150.0, dead_above=120.0)
    assert label_by_thresholds(np.array([100, 130, 160]), t).tolist() == [0, -1, 1]


def _fields(values_per_field: list[np.ndarray], tile: int = 16, well: str = "A1", plate: str = "p"):
    """Fields whose tiles have known mean PI: each tile of the PI image is constant."""
    fields = []
    rng = np.random.default_rng(3)
    for k, vals in enumerate(values_per_field):
        side = int(np.sqrt(len(vals)))
        pi = np.kron(vals[: side * side].reshape(side, side), np.ones((tile, tile)))
        bf = rng.normal(1000, 50, pi.shape)  # textured everywhere: no tile is empty
        fields.append(PairedField(bf.astype(np.float32), pi.astype(np.float32), f"{plate}/{well}/{k}", well, plate))
    return fields


def test_dataset_labels_patches_with_the_known_thresholds(tmp_path):
    values = two_populations(1600, 800, seed=2)
    np.random.default_rng(0).shuffle(values)
    fields = _fields([v[:81] for v in np.array_split(values, 24)])
    ds = build_live_dead_dataset(fields, tile=16, stride=16, empty="none", histogram=tmp_path / "h.png",
                                 labelling=SEED_STUDY_RULE)
    th = ds.meta["thresholds"]
    assert th["live_below"] == pytest.approx(TRUE_LIVE_BELOW, abs=3)
    assert th["dead_above"] == pytest.approx(TRUE_DEAD_ABOVE, abs=6)
    # every kept patch obeys the recorded thresholds; the middle is gone
    assert (ds.fluorescence[ds.y == 0] < th["live_below"]).all()
    assert (ds.fluorescence[ds.y == 1] > th["dead_above"]).all()
    c = ds.meta["label_counts"]
    assert c["ambiguous"] > 0 and c["live"] + c["dead"] + c["ambiguous"] + c["empty"] == c["tiles"]
    assert c["tiles"] == 24 * 81
    assert (tmp_path / "h.png").stat().st_size > 5000
    # ids carry the source and the window; group ids are kept
    assert all("@" in i for i in ds.ids) and len(set(ds.source)) == 24


def test_reference_subset_sets_the_thresholds():
    rng = np.random.default_rng(4)
    # reference well: live 100+/-8, dead 220+/-25; other well: everything shifted up by 60
    ref = [np.concatenate([rng.normal(*LIVE, 54), rng.normal(*DEAD, 27)]) for _ in range(10)]
    other = [v + 60 for v in ref]
    fields = _fields(ref, well="A1") + _fields(other, well="B1")
    for i, f in enumerate(fields):  # distinct sources
        fields[i] = PairedField(f.label_free, f.fluorescence, f"{f.well}/{i}", f.well, f.plate)
    ds = build_live_dead_dataset(fields, tile=16, stride=16, empty="none", reference={"wells": ["A1"]},
                                 labelling=SEED_STUDY_RULE)
    assert ds.meta["thresholds"]["live_below"] == pytest.approx(TRUE_LIVE_BELOW, abs=4)
    assert ds.meta["thresholds"]["reference_patches"] == 810
