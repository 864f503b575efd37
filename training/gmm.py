"""Two-component 1-D Gaussian mixture, fitted by EM, for fluorescence-derived labels.

The live/dead seed study labels a patch live if its mean propidium-iodide fluorescence is below
mean_live + sd_live and dead if above mean_dead - sd_dead; patches in between are discarded.
Plain numpy: no scikit-learn needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture:
    weights: tuple[float, float]
    means: tuple[float, float]  # ascending: component 0 is the dim (live) one
    sds: tuple[float, float]

    def log_densities(self, x: np.ndarray) -> np.ndarray:
        """(N, 2) log of each weighted component's density at x."""
        x = np.asarray(x, np.float64).ravel()[:, None]
        m, s, w = np.array(self.means), np.array(self.sds), np.array(self.weights)
        return np.log(w) - np.log(s) - 0.5 * np.log(2 * np.pi) - 0.5 * ((x - m) / s) ** 2

    def densities(self, x: np.ndarray) -> np.ndarray:
        """(N, 2) each weighted component's density at x (what a histogram of N values shows / N / bin)."""
        return np.exp(self.log_densities(x))

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """(N, 2) posterior probability of each component."""
        log_p = self.log_densities(x)
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        return p / p.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Thresholds:
    mixture: Mixture
    live_below: float
    dead_above: float

    def to_dict(self) -> dict:
        return asdict(self)


def log_likelihood(mix: Mixture, x: np.ndarray) -> float:
    log_p = mix.log_densities(x)
    top = log_p.max(axis=1, keepdims=True)
    return float((top.ravel() + np.log(np.exp(log_p - top).sum(axis=1))).sum())


# starting points (percentiles of the data for the two means): EM finds a local optimum, and a
# heavy-tailed stain has more than one; the best likelihood over these starts is kept
STARTS = ((25, 75), (10, 90), (50, 97), (5, 60))


def best_mixture(x: np.ndarray) -> Mixture:
    """`fit_mixture` from several starting points; the fit with the highest likelihood."""
    fits = [fit_mixture(x, start=start) for start in STARTS]
    return max(fits, key=lambda mix: log_likelihood(mix, x))


def fit_mixture(x: np.ndarray, iterations: int = 500, tol: float = 1e-9,
                start: tuple[float, float] = (25, 75)) -> Mixture:
    """EM from means at the `start` percentiles of x."""
    x = np.asarray(x, np.float64).ravel()
    if len(x) < 4 or np.ptp(x) == 0:
        raise ValueError(f"cannot fit a two-component mixture to {len(x)} values with range {np.ptp(x) if len(x) else 0}")
    lo, hi = np.percentile(x, start)
    m = np.array([lo, hi], np.float64)
    s = np.full(2, x.std() / 2 + 1e-12)
    w = np.array([0.5, 0.5])
    prev = -np.inf
    for _ in range(iterations):
        log_p = np.log(w) - np.log(s) - 0.5 * ((x[:, None] - m) / s) ** 2
        top = log_p.max(axis=1, keepdims=True)
        ll = float((top.ravel() + np.log(np.exp(log_p - top).sum(axis=1))).sum())
        r = np.exp(log_p - top)
        r /= r.sum(axis=1, keepdims=True)
        n = r.sum(axis=0) + 1e-12
        w = n / len(x)
        m = (r * x[:, None]).sum(axis=0) / n
        s = np.sqrt((r * (x[:, None] - m) ** 2).sum(axis=0) / n) + 1e-9 * (np.ptp(x) or 1)
        if ll - prev < tol * abs(ll):
            break
        prev = ll
    order = np.argsort(m)
    return Mixture(tuple(w[order].tolist()), tuple(m[order].tolist()), tuple(s[order].tolist()))


def live_dead_thresholds(reference: np.ndarray) -> Thresholds:
    """The seed study's rule from a mixture fitted on the reference values."""
    mix = fit_mixture(reference)
    return Thresholds(mix, live_below=mix.means[0] + mix.sds[0], dead_above=mix.means[1] - mix.sds[1])


def label_by_thresholds(values: np.ndarray, t: Thresholds) -> np.ndarray:
    """0 = live, 1 = dead, -1 = ambiguous (discarded). If the bands overlap, the middle is ambiguous."""
    values = np.asarray(values)
    labels = np.full(len(values), -1, np.int64)
    live = values < t.live_below
    dead = values > t.dead_above
    labels[live & ~dead] = 0
    labels[dead & ~live] = 1
    return labels
