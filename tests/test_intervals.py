"""Per-well intervals (core/intervals.py) on simulated plates where the truth is known.

A calibration plate and later plates are drawn from one assay: each well has its own dead fraction,
and the classifier's scores carry a per-experiment shift (what makes the adcc-paired per-well errors
far larger than binomial noise). The calibration is fitted from the calibration wells' scores the way
`wellwatch calibrate` fits it; the later wells go through the daemon's own counting and aggregation
(count_tiles -> PlateAggregate -> CommitBuilder.interval_fields' function); the test counts how often
the published interval holds the well's true (stained) dead fraction.
"""

from __future__ import annotations

import numpy as np
import pytest

from wellwatch.core.aggregate import PlateAggregate, count_tiles
from wellwatch.core.contract import ModelContract
from wellwatch.core.errors import ContractError
from wellwatch.core.intervals import Calibration, conformal_half_width, dead_fraction, live_fraction_fields
from wellwatch.training.calibration import calibrate_scores

pytestmark = pytest.mark.unit

CAL_WELLS = 19  # (19 + 1) * 0.9 = 18: the 18th of 19 errors, exact 90% coverage in expectation
THRESHOLD = 0.5


def simulate_well(rng: np.random.Generator, shift_sd: float = 0.6) -> tuple[np.ndarray, np.ndarray, float]:
    """(stain labels, P(dead), stained dead fraction) of one well: scores separate the classes, plus
    a shift shared by the well's tiles (its experiment's brightness, focus, cell line ...)."""
    n = int(rng.integers(150, 600))
    truth = rng.uniform(0.05, 0.9)
    y = rng.random(n) < truth
    logit = 1.4 * (2 * y - 1) + rng.normal(0, shift_sd) + rng.normal(0, 1.0, n)
    return y, 1 / (1 + np.exp(-logit)), float(y.mean())


def fit_on_simulated_plate(rng: np.random.Generator) -> Calibration:
    wells = [simulate_well(rng) for _ in range(CAL_WELLS)]
    y = np.concatenate([w[0] for w in wells])
    p = np.concatenate([w[1] for w in wells])
    g = np.concatenate([np.full(len(w[0]), f"W{i:02d}") for i, w in enumerate(wells)])
    return calibrate_scores(y, p, g, THRESHOLD, n_boot=5).calibration


def served_interval(cal: Calibration, p_dead: np.ndarray, fields: int = 3) -> tuple[float, float]:
    """What the daemon publishes for a well whose tiles score `p_dead`, split over `fields` images."""
    agg = PlateAggregate(fields)
    for f, part in enumerate(np.array_split(p_dead, fields)):
        state = agg.add("plate", "A1", 0, f, count_tiles(part, 0, THRESHOLD))
    t = state.totals()
    out = live_fraction_fields(cal, 0.9, t.live, t.dead, t.dead_p_sum)
    low, high = out["live_fraction_interval"]
    return 1 - high, 1 - low  # as a dead fraction


def test_daemon_intervals_cover_the_truth_at_the_stated_rate():
    covered, widths, estimators = [], [], set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        cal = fit_on_simulated_plate(rng)
        estimators.add(cal.estimator)
        for _ in range(40):  # later plates' wells, never seen by the calibration
            _, p, truth = simulate_well(rng)
            low, high = served_interval(cal, p)
            covered.append(low <= truth <= high)
            widths.append(high - low)
    coverage = float(np.mean(covered))
    # 1600 wells over 40 calibrations: the split-conformal guarantee is 18/20 = 0.90 on average
    assert 0.86 <= coverage <= 0.95, coverage
    assert np.mean(widths) < 0.6  # informative, not the whole 0..1 range
    assert estimators <= {"classify_count", "mean_probability", "adjusted"}


def test_binomial_intervals_would_not_hold_on_the_same_plates():
    """The check discriminates: a textbook binomial interval around classify-and-count, which ignores
    the per-experiment error, covers far less than its nominal 90% on the same simulated wells."""
    covered = []
    rng = np.random.default_rng(1)
    for _ in range(300):
        _, p, truth = simulate_well(rng)
        cc = np.mean(p >= THRESHOLD)
        half = 1.645 * np.sqrt(cc * (1 - cc) / len(p))
        covered.append(cc - half <= truth <= cc + half)
    assert np.mean(covered) < 0.5


def test_conformal_half_width_is_the_ranked_error_and_none_when_too_few():
    errors = np.array([0.05, -0.3, 0.1, 0.2, -0.01, 0.15, 0.02, 0.08, 0.12])
    assert conformal_half_width(errors, 0.8) == pytest.approx(0.2)  # ceil(10 * 0.8) = 8th smallest |e|
    assert conformal_half_width(errors, 0.9) == pytest.approx(0.3)  # 9th = the largest
    assert conformal_half_width(errors, 0.95) is None  # ceil(9.5) = 10 > 9 errors


def test_estimators():
    assert dead_fraction("classify_count", 10, 3, 4.0) == 0.3
    assert dead_fraction("mean_probability", 10, 3, 4.0) == 0.4
    assert dead_fraction("mean_probability", 10, 3, None) is None  # counts restored from the journal
    assert dead_fraction("adjusted", 10, 3, None, tpr=0.8, fpr=0.1) == pytest.approx((0.3 - 0.1) / 0.7)
    assert dead_fraction("adjusted", 10, 0, None, tpr=0.8, fpr=0.1) == 0.0  # clipped


def test_uncalibrated_or_unusable_calls_are_marked():
    assert live_fraction_fields(None, 0.9, 5, 5, 5.0)["live_fraction_interval"] is None
    cal = Calibration("classify_count", {"0.9": 0.2}, "per-well fractions only")
    out = live_fraction_fields(cal, 0.9, 6, 4, None, prefix="cell_")
    assert out["cell_calls_usable"] is False
    assert out["cell_live_fraction_estimate"] == pytest.approx(0.6)
    assert out["cell_live_fraction_interval"] == pytest.approx([0.4, 0.8])


def test_contract_calibration_round_trips_and_bad_sections_name_the_problem(tmp_path):
    from wellwatch.core.contract import CONTRACT_VERSION

    doc = {"name": "m", "task": "live_dead", "classes": ["live", "dead"], "positive_class": "dead",
           "output": "probabilities", "input_name": "input", "channels": ["brightfield"], "layout": "NCHW",
           "height": 64, "width": 64, "normalisation": {"method": "robust_zscore", "params": {}},
           "tiling": {"tile_size": 64, "stride": 32}, "empty_filter": {"method": "none", "params": {}},
           "decision_threshold": 0.5, "trained_on": {}, "metrics": {}, "contract_version": CONTRACT_VERSION,
           "calibration": {"estimator": "adjusted", "half_width": {"0.8": 0.1, "0.9": None},
                           "verdict": "per-well fractions only", "tpr": 0.7, "fpr": 0.2}}
    c = ModelContract.from_dict(doc, "m.onnx")
    assert ModelContract.from_json(c.to_json()).calibration == c.calibration
    assert c.calibration.levels == (0.8, 0.9)
    doc["calibration"]["estimator"] = "median"
    with pytest.raises(ContractError, match="m.onnx.*estimator 'median'; allowed: classify_count"):
        ModelContract.from_dict(doc, "m.onnx")
    doc["calibration"].update(estimator="classify_count", half_width={"90": 0.1})
    with pytest.raises(ContractError, match="half_width level '90' must be a number strictly between 0 and 1"):
        ModelContract.from_dict(doc, "m.onnx")


def test_well_messages_carry_the_interval_and_mark_unusable_calls(tmp_path):
    import dataclasses

    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.daemon.stages.commit import CommitBuilder
    from wellwatch.core.scoring import FrameOutputs
    from wellwatch.daemon.messages import FrameFile, ScoredFrame
    from wellwatch.daemon.journal import Journal
    from wellwatch.core.naming import FrameMeta
    from wellwatch.core.bundled_models import bundled_demo_model

    demo = OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract
    cal = Calibration("mean_probability", {"0.8": 0.05, "0.9": 0.1}, "per-well fractions only")
    journal = Journal(tmp_path / "j.sqlite")

    def well_message(contract, p_dead: np.ndarray) -> dict:
        job = FrameFile("/acq/a.tif", "a.tif", FrameMeta("p", "A1", 1, 0, 0, "BF"), 10, 123)
        scores = np.zeros((len(p_dead), 2), np.float32)
        scores[:, contract.positive_index] = p_dead
        scores[:, 1 - contract.positive_index] = 1 - p_dead
        work = ScoredFrame(job, "s1", FrameOutputs((64, 64), np.zeros((len(p_dead), 2), np.int64), 0, scores))
        built = CommitBuilder(contract, {"m": "x"}, PlateAggregate(1), seq=0).build([work], journal)
        frame = next(m.payload for m in built.messages if m.payload["type"] == "frame")
        well = next(m.payload for m in built.messages if m.payload["type"] == "well")
        assert frame["calls_usable"] == well["calls_usable"]  # a frame's calls are marked the same way
        return well

    p = np.array([0.9, 0.7, 0.2, 0.2])  # classify-and-count: 2 of 4 dead; mean probability 0.5
    calibrated = well_message(dataclasses.replace(demo, calibration=cal), p)
    assert calibrated["live_fraction"] == 0.5 and calibrated["counts"] == {"live": 2, "dead": 2, "empty": 0}
    assert calibrated["live_fraction_estimate"] == pytest.approx(0.5)
    assert calibrated["live_fraction_interval"] == pytest.approx([0.4, 0.6])
    assert calibrated["interval_level"] == 0.9 and calibrated["estimator"] == "mean_probability"
    assert calibrated["calls_usable"] is False
    assert calibrated["cell_live_fraction_interval"] is None  # a tile calibration says nothing of cells
    plain = well_message(demo, p)  # an uncalibrated model: the same message, the new fields null
    assert plain["live_fraction_interval"] is None and plain["calls_usable"] is None
    assert {k: v for k, v in plain.items() if v is not None and k not in ("seq", "t_published", "t_sent")}.keys() \
        <= {k for k in calibrated}
    journal.close()


def test_dose_points_use_the_calibrated_estimate_and_carry_its_interval(tmp_path):
    from wellwatch.core.dose import dose_points, reading_from_message
    from wellwatch.core.plate_map import read_plate_map

    (tmp_path / "map.csv").write_text("well,compound,concentration,unit,role\nA1,,0,,control\n"
                                      "A2,drug,1,uM,treated\n")
    plate_map = read_plate_map(tmp_path / "map.csv")
    control = {"live_fraction": 0.75, "live_fraction_estimate": 0.8, "live_fraction_interval": [0.7, 0.9]}
    treated = {"live_fraction": 0.5, "live_fraction_estimate": 0.4, "live_fraction_interval": [0.3, 0.5]}
    readings = {("A1", 0): reading_from_message(control), ("A2", 0): reading_from_message(treated)}
    (point,), controls = dose_points(plate_map, "drug", readings, 0)
    assert controls["live_fraction"] == pytest.approx(0.8)
    assert point["viability"] == pytest.approx(0.5)
    assert point["viability_interval"] == pytest.approx([0.375, 0.625])
    uncalibrated = {("A1", 0): reading_from_message({"live_fraction": 0.8}),
                    ("A2", 0): reading_from_message({"live_fraction": 0.4})}
    (point,), _ = dose_points(plate_map, "drug", uncalibrated, 0)
    assert point["viability"] == pytest.approx(0.5) and point["viability_interval"] is None


def test_an_uncalibrated_level_refuses_to_start():
    from types import SimpleNamespace

    from wellwatch.core.errors import StartupError
    from wellwatch.core.config import check_interval_level

    model = SimpleNamespace(name="m", calibration=Calibration("classify_count", {"0.8": 0.1, "0.9": 0.2},
                                                               "per-well fractions only"))
    check_interval_level(0.9, model, None)
    check_interval_level(0.95, SimpleNamespace(name="plain", calibration=None))  # nothing to check
    with pytest.raises(StartupError, match="intervals.level 0.95 is not calibrated in model 'm'; .* 0.8, 0.9"):
        check_interval_level(0.95, model)
