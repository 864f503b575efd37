"""Training crops that look like other microscopes and other samples.

One random crop of an image (before normalisation, at model resolution) and its label image goes
through, in order:
- scale: cells 0.5-2x their linear size (the crop window is taken larger or smaller and resampled
  with core/segmentation/pixel_size.py, as the daemon resamples a frame to the model's pixel size); the targets
  are recomputed from the resampled labels, so boundaries stay one pixel wide at every scale;
- geometry: a 90-degree rotation and a flip;
- illumination: a smooth multiplicative gradient (linear ramp plus vignette), gain, gamma;
- optics: phase-contrast halo and contrast (unsharp masking with a random sign and width), blur or
  defocus (a disk kernel), Poisson-like and Gaussian noise.
Then the contract's normalisation is applied (to a context around the crop), as the daemon
applies it to a frame.

"basic" keeps the first recipe (rotations, flips, gain/offset, gamma, blur, noise on the
normalised crop); "scale" is "basic" plus the scale change (the crop is cut from the frame
normalised as a whole, then resampled), so leave-group-out runs can compare the three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from wellwatch.core.contract import Normalisation
from wellwatch.core.preprocess import normalise_frame
from wellwatch.core.segmentation.pixel_size import resize_image, resize_labels

from .seg_targets import class_map, distance_map

RECIPES = ("basic", "scale", "microscope")


@dataclass(frozen=True)
class AugmentConfig:
    recipe: str = "microscope"
    scale_min: float = 0.5  # cells' linear size relative to the training images
    scale_max: float = 2.0
    p_scale: float = 0.85   # the rest keep the training images' own scale


@dataclass
class TrainImage:
    """One training image at model resolution: raw (reduced, not normalised), normalised as a whole
    frame (the daemon's input), its labels, and the targets made from them."""
    raw: np.ndarray
    normed: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    distance: np.ndarray


def sample_crop(im: TrainImage, crop: int, norm: Normalisation, aug: AugmentConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised input, class map, distance map), each crop x crop.

    The "microscope" recipe resamples, augments and normalises a context twice the crop's side
    around it, and makes the targets there: the normalisation's statistics come from about as
    much of the field as when the daemon normalises a frame, and a cell cut by the crop's edge
    keeps its true distance map.
    """
    h, w = im.raw.shape
    scale = 1.0
    if aug.recipe != "basic" and rng.random() < aug.p_scale:
        scale = float(np.exp(rng.uniform(np.log(aug.scale_min), np.log(aug.scale_max))))
    window = min(int(round(crop / scale)), h, w)  # the largest zoom-out the image allows
    scale = crop / window
    y0, x0 = int(rng.integers(h - window + 1)), int(rng.integers(w - window + 1))
    if aug.recipe == "basic" or (aug.recipe == "scale" and window == crop):
        win = (slice(y0, y0 + window), slice(x0, x0 + window))
        x, c, d = im.normed[win], im.classes[win], im.distance[win]
    elif aug.recipe == "scale":  # targets from a context, as below, so cut cells keep their distance maps
        context = min(2 * window, h, w)
        cy = int(np.clip(y0 - (context - window) // 2, 0, h - context))
        cx = int(np.clip(x0 - (context - window) // 2, 0, w - context))
        side = max(crop, int(round(context * scale)))
        ctx = (slice(cy, cy + context), slice(cx, cx + context))
        x = resize_image(im.normed[ctx], (side, side))
        lab = resize_labels(im.labels[ctx], (side, side))
        oy, ox = min(int(round((y0 - cy) * scale)), side - crop), min(int(round((x0 - cx) * scale)), side - crop)
        win = (slice(oy, oy + crop), slice(ox, ox + crop))
        x, c, d = x[win], class_map(lab)[win], distance_map(_only(lab, lab[win]))[win]
    else:
        context = min(2 * window, h, w)
        cy = int(np.clip(y0 - (context - window) // 2, 0, h - context))
        cx = int(np.clip(x0 - (context - window) // 2, 0, w - context))
        side = max(crop, int(round(context * scale)))
        ctx = (slice(cy, cy + context), slice(cx, cx + context))
        x = normalise_frame(microscope_intensity(resize_image(im.raw[ctx], (side, side)), rng), norm)
        lab = resize_labels(im.labels[ctx], (side, side))
        oy, ox = min(int(round((y0 - cy) * scale)), side - crop), min(int(round((x0 - cx) * scale)), side - crop)
        win = (slice(oy, oy + crop), slice(ox, ox + crop))
        lab_crop = lab[win]
        # targets from the context, restricted to cells present in the crop
        x, c, d = x[win], class_map(lab)[win], distance_map(_only(lab, lab_crop))[win]
    k = int(rng.integers(4))
    x, c, d = np.rot90(x, k), np.rot90(c, k), np.rot90(d, k)
    if rng.random() < 0.5:
        x, c, d = x[:, ::-1], c[:, ::-1], d[:, ::-1]
    if aug.recipe != "microscope":
        x = basic_intensity(x, rng)
    return (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(c), np.ascontiguousarray(d, np.float32))


def _only(labels: np.ndarray, window: np.ndarray) -> np.ndarray:
    """`labels` with only the ids that appear in `window` (distance maps for the rest are not needed)."""
    keep = np.zeros(int(labels.max()) + 1, bool)
    keep[np.unique(window)] = True
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def basic_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first recipe, on the normalised crop: gain/offset, gamma, blur, noise."""
    x = x * rng.uniform(0.75, 1.33) + rng.uniform(-0.15, 0.15)
    gamma = rng.uniform(0.7, 1.4)
    x = np.where(x > 0, np.abs(x) ** gamma, x)
    if rng.random() < 0.3:
        x = ndi.gaussian_filter(x, rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape)
    return x


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = (yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float32)
    return k / k.sum()


def microscope_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another lamp, condenser, objective and camera, on the raw (un-normalised) crop."""
    level = max(float(np.median(x)), 1e-3)
    x = x / level  # background ~ 1
    n = x.shape[0]
    # halo and contrast: phase-contrast halos grow and shrink with phase ring and defocus
    if rng.random() < 0.6:
        sigma = rng.uniform(1.0, 4.0)
        x = x + rng.uniform(-0.5, 1.0) * (x - ndi.gaussian_filter(x, sigma))
    if rng.random() < 0.7:
        x = 1.0 + (x - 1.0) * float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    # blur or defocus
    u = rng.random()
    if u < 0.25:
        x = ndi.gaussian_filter(x, rng.uniform(0.5, 2.0))
    elif u < 0.4:
        x = ndi.convolve(x, _disk(rng.uniform(1.0, 3.0)), mode="reflect")
    # gamma (on the positive background-relative image)
    if rng.random() < 0.5:
        x = np.maximum(x, 0.0) ** rng.uniform(0.6, 1.6)
    # illumination: linear gradient in a random direction plus a vignette, then gain
    if rng.random() < 0.7:
        yy, xx = (np.mgrid[0:n, 0:x.shape[1]] / max(n, 1)) - 0.5
        angle = rng.uniform(0, 2 * np.pi)
        ramp = rng.uniform(0.0, 0.6) * (np.cos(angle) * xx + np.sin(angle) * yy)
        vignette = -rng.uniform(0.0, 0.6) * (xx ** 2 + yy ** 2)
        x = x * np.exp(ramp + vignette)
    x = x * float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    # noise: shot noise (variance ~ signal) and read noise
    if rng.random() < 0.6:
        photons = float(np.exp(rng.uniform(np.log(30.0), np.log(3000.0))))
        x = x + rng.normal(0, 1, x.shape) * np.sqrt(np.maximum(x, 0) / photons)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape)
    return (x * level).astype(np.float32)
