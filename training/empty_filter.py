"""Empty-patch filters, measured against each other.

- the seed study's: ResNet-18 features (penultimate layer) + an SVM (RBF) trained on a few hundred
  hand-labelled patches (reported f1 0.833);
- the cheap one the daemon implements (contract empty_filter 'std'): a patch is empty when the
  standard deviation of its normalised pixels is below a threshold; the threshold either comes
  without labels (a mixture on log tile std, `auto_empty_threshold`) or from the same labels.

`compare_empty_filters` trains/fits each on `n_train` labelled patches and scores the rest (F1 with
"empty" as the positive class, as the seed study reports it). On the simulator the truth is known
(a tile is empty when no cell outline reaches into it), so

    python -m wellwatch.training.empty_filter --json /tmp/empty-filters.json

measures both on simulated frames. Without network access torchvision's ImageNet weights cannot be
loaded, and the ResNet-18 features are then those of a randomly initialised network (said in the
output): the seed method as published needs the ImageNet weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np

from wellwatch.core.contract import Normalisation, Tiling
from wellwatch.core.preprocess import cut_tiles, normalise_frame, tile_origins, tile_std
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec

from .gmm import fit_mixture

log = logging.getLogger(__name__)


def f1_report(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int((truth & pred).sum())
    fp = int((~truth & pred).sum())
    fn = int((truth & ~pred).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {"f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "accuracy": round(float((truth == pred).mean()), 4)}


def unsupervised_std_threshold(stds: np.ndarray) -> float:
    """Tile std of cell-free background forms a tight low mode (log scale): threshold 4 sd above it.
    When that point reaches past the upper component's mean there is no distinct empty mode (e.g.
    large tiles that nearly all hold a cell): then only tiles quieter than the low mode (3 sd below
    it) count as empty, rather than cutting into tiles with cells."""
    mix = fit_mixture(np.log(stds + 1e-6))
    upper = mix.means[0] + 4 * mix.sds[0]
    if upper >= mix.means[1]:
        thr = float(np.exp(mix.means[0] - 3 * mix.sds[0]))
        log.warning("tile std shows no distinct empty-tile mode (modes %.3g and %.3g); empty threshold %.3g drops "
                    "only outliers: give an explicit threshold to change it", np.exp(mix.means[0]),
                    np.exp(mix.means[1]), thr)
        return thr
    return float(np.exp(upper))


def supervised_std_threshold(stds: np.ndarray, empty: np.ndarray) -> float:
    """The threshold with the best F1 on labelled tiles."""
    cands = np.unique(stds)
    best = max(cands, key=lambda t: f1_report(empty, stds < t)["f1"])
    return float(best)


class ResNetSVM:
    """The seed study's filter: ResNet-18 penultimate features -> RBF SVM (scikit-learn)."""

    def __init__(self, pretrained: str | None = "imagenet", seed: int = 0):
        import torch

        # torch only for this comparison study: `dataset live-dead` uses this module's std threshold without it
        from .models import PretrainedUnavailable, build_model

        torch.manual_seed(seed)
        try:
            self.net = build_model("resnet18", 1, 2, pretrained=pretrained)
            self.weights = pretrained or "random"
        except PretrainedUnavailable as e:
            log.warning("%s; using a randomly initialised ResNet-18 as the feature extractor", e)
            self.net = build_model("resnet18", 1, 2)
            self.weights = "random (ImageNet weights unavailable offline)"
        self.net.eval()
        self.svm = None

    def features(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        from .models import penultimate  # torch, as in __init__

        x = np.ascontiguousarray(tiles[:, None] if tiles.ndim == 3 else tiles, np.float32)
        with torch.no_grad():
            return np.concatenate([penultimate(self.net, torch.from_numpy(x[i:i + 128])).numpy()
                                   for i in range(0, len(x), 128)])

    def fit(self, tiles: np.ndarray, empty: np.ndarray) -> "ResNetSVM":
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        self.svm = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced"))
        self.svm.fit(self.features(tiles), empty)
        return self

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return self.svm.predict(self.features(tiles)).astype(bool)


def compare_empty_filters(tiles: np.ndarray, empty: np.ndarray, n_train: int = 300, seed: int = 0,
                          pretrained: str | None = "imagenet") -> dict[str, Any]:
    """Fit on `n_train` random labelled tiles, score on the rest. tiles: (N, T, T) normalised."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tiles))
    tr, te = order[:n_train], order[n_train:]
    stds = tile_std(tiles)
    out: dict[str, Any] = {"n_train": int(len(tr)), "n_test": int(len(te)), "empty_fraction": round(float(empty.mean()), 4)}
    t = time.perf_counter()
    thr_u = unsupervised_std_threshold(stds)
    out["std_unsupervised"] = {**f1_report(empty[te], stds[te] < thr_u), "threshold": round(thr_u, 4),
                               "labels_needed": 0}
    thr_s = supervised_std_threshold(stds[tr], empty[tr])
    out["std_supervised"] = {**f1_report(empty[te], stds[te] < thr_s), "threshold": round(thr_s, 4),
                             "labels_needed": int(len(tr))}
    std_ms = (time.perf_counter() - t) * 1000
    out["std_unsupervised"]["ms_per_1000_tiles"] = round(std_ms / len(tiles) * 1000, 2)
    t = time.perf_counter()
    svm = ResNetSVM(pretrained, seed).fit(tiles[tr], empty[tr])
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    pred = svm.predict(tiles[te])
    t_pred = time.perf_counter() - t
    out["resnet18_svm"] = {**f1_report(empty[te], pred), "features": svm.weights, "labels_needed": int(len(tr)),
                           "fit_s": round(t_fit, 2), "ms_per_1000_tiles": round(t_pred / max(len(te), 1) * 1e6, 1)}
    return out


def simulated_tiles(tile: int = 64, stride: int = 64, cells_per_field: float = 12, fields: int = 2,
                    timepoints: int = 2, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Normalised bright-field tiles of a simulated dose-series plate and whether each is empty
    (no cell's outline, radius + 2 px, reaches into the tile)."""
    spec = SimulationSpec(treatment="dose_series", fields=fields, timepoints=timepoints, seed=seed,
                          cells_per_field=cells_per_field, channels=("BF",))
    tiling, norm = Tiling(tile, stride), Normalisation("robust_zscore", {})
    xs, ys = [], []
    for f in iter_fields(spec):
        n = normalise_frame(f.images["BF"], norm)
        origins = tile_origins(n.shape, tiling)
        xs.append(cut_tiles(n, origins, tile))
        occupied = np.zeros(len(origins), bool)
        for c in f.cells:
            r = c.radius * 1.6 + 2  # elongated outlines reach beyond the nominal radius
            occupied |= ((origins[:, 0] - r <= c.y) & (c.y < origins[:, 0] + tile + r) &
                         (origins[:, 1] - r <= c.x) & (c.x < origins[:, 1] + tile + r))
        ys.append(~occupied)
    return np.concatenate(xs), np.concatenate(ys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--cells-per-field", type=float, default=12)
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tiles, empty = simulated_tiles(a.tile, a.tile, a.cells_per_field)
    res = compare_empty_filters(tiles, empty, a.n_train, a.seed)
    res["setting"] = {"tile": a.tile, "cells_per_field": a.cells_per_field, "tiles": int(len(tiles)),
                      "truth": "simulator cell positions (no outline within radius*1.6+2 px)"}
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        open(a.json, "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
