"""Render one field (bright-field, phase contrast, DIC, propidium iodide, a surface marker)
from a list of cells.

Every cell is drawn into its own small square patch, all patches at once as one (N, P, P)
array, then the patches are added into the frame: numpy does the per-pixel work, Python only
loops over cells for the final slice-add. A 512x512 BF+PI pair takes a few milliseconds.

Intensities are built as a contrast map (fraction of background) so the flat-field
(vignetting) multiplies cells and background alike, as it does on a real microscope.

The label-free channels (BF, phase contrast, DIC) show the same cells with the same granular
interior: the texture noise is drawn once per field and shared by all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cells import CELL_TYPES, MAX_NUCLEOLI, N_HARMONICS, Cell

BF_BACKGROUND = 1000.0
BF_READ_SIGMA = 20.0
BF_GAIN = 0.25        # shot-noise variance per count: a little Poisson-like noise on top of read noise
PI_BACKGROUND = 100.0
PI_READ_SIGMA = 5.0
PI_GAIN = 1.0
PH_BACKGROUND = 800.0
PH_READ_SIGMA = 16.0
PH_GAIN = 0.25
DIC_BACKGROUND = 1200.0
DIC_READ_SIGMA = 20.0
DIC_GAIN = 0.25
DIC_SHEAR = (1.0, 1.0)   # shear direction (x, y): relief lit from the top left
DIC_RELIEF = 0.2        # contrast per unit slope of the optical path (a dome as high as the cell radius)
MARKER_BACKGROUND = 100.0
MARKER_READ_SIGMA = 5.0
MARKER_GAIN = 1.0

# Channel name (case-insensitive) -> what is rendered for it.
CHANNEL_KINDS = {"bf": "bf", "brightfield": "bf", "bright-field": "bf", "pi": "pi",
                 "ph": "ph", "phase": "ph", "dic": "dic",
                 "cd19": "marker", "marker": "marker"}
LABEL_FREE_KINDS = ("bf", "ph", "dic")
# Child generators of a field's render stream, by kind. Append only: the order keeps every
# existing channel's noise as it was.
_RNG_ORDER = ("bf", "pi", "ph", "dic", "marker")


def channel_kind(name: str) -> str:
    """'BF' -> 'bf', 'PI' -> 'pi', 'PH' -> 'ph', 'DIC' -> 'dic', 'CD19' -> 'marker'; ValueError
    naming the channel for anything else."""
    try:
        return CHANNEL_KINDS[name.lower()]
    except KeyError:
        raise ValueError(f"channel {name!r}: the simulator renders only "
                         f"{', '.join(sorted(CHANNEL_KINDS))} (case-insensitive)") from None


def flat_field(size: int) -> np.ndarray:
    """Gentle vignetting (~12% darker corners) with a slight tilt and off-centre optical axis."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = c[:, None], c[None, :]
    r2 = ((xx - 0.53) ** 2 + (yy - 0.47) ** 2) / 0.5
    return (1.0 - 0.12 * r2 + 0.03 * (xx - 0.5) - 0.02 * (yy - 0.5)).astype(np.float32)


@dataclass
class _Patches:
    """Per-cell geometry on (N, P, P) patches centred on each cell's nearest pixel."""

    ext: int                # patch half-width; P = 2 * ext + 1
    rows: np.ndarray        # (N,) patch centre row (int)
    cols: np.ndarray        # (N,) patch centre column (int)
    dead: np.ndarray        # (N, 1, 1) bool
    sd: np.ndarray          # signed distance to the outline, px (negative inside)
    inside: np.ndarray      # soft cell mask, 1-px antialiased edge
    nd: np.ndarray          # distance to the nucleus centre, px
    rn: np.ndarray          # (N, 1, 1) nucleus radius, px
    spots: np.ndarray       # nucleoli (sum of small Gaussians, peak 1)
    texture_amp: np.ndarray  # (N, 1, 1) interior texture amplitude
    radius: np.ndarray      # (N, 1, 1) cell radius, px


def _col(values, dtype=np.float32) -> np.ndarray:
    return np.asarray(values, dtype=dtype)[:, None, None]


def _patches(cells: Sequence[Cell], scale: float) -> _Patches:
    dead = np.array([c.dead for c in cells])
    radius = np.array([c.radius for c in cells], np.float32)
    aspect = np.array([c.shape.aspect for c in cells], np.float32)
    amp = np.array([c.shape.wobble_amp for c in cells], np.float32).reshape(-1, N_HARMONICS)
    # Dead cells round up: less elongated, smoother outline.
    aspect = np.where(dead, 1.0 + (aspect - 1.0) * 0.2, aspect)
    amp = np.where(dead[:, None], amp * 0.3, amp)
    semi_major = radius * np.sqrt(aspect)
    ext = int(np.ceil(np.max(semi_major * (1.0 + amp.sum(1))) + 6.0 * scale)) if len(cells) else 1

    x = np.array([c.x for c in cells], np.float64)
    y = np.array([c.y for c in cells], np.float64)
    cols, rows = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    off = np.arange(-ext, ext + 1, dtype=np.float32)
    dx = off[None, None, :] - (x - cols).astype(np.float32)[:, None, None]   # (N, 1, P)
    dy = off[None, :, None] - (y - rows).astype(np.float32)[:, None, None]   # (N, P, 1)
    d = np.sqrt(dx * dx + dy * dy)
    # Unit complex direction z = e^{i theta}: harmonics and rotation by multiplication, no trig.
    z = (dx + 1j * dy).astype(np.complex64) / np.maximum(d, 1e-6)

    angle = np.array([c.shape.angle for c in cells])
    rot = z * _col(np.exp(-1j * angle), np.complex64)          # direction in the cell's frame
    a, b = _col(semi_major), _col(radius / np.sqrt(aspect))
    r_ell = 1.0 / np.sqrt((rot.real / a) ** 2 + (rot.imag / b) ** 2)
    phase = np.array([c.shape.wobble_phase for c in cells]).reshape(-1, N_HARMONICS)
    coef = (amp * np.exp(1j * phase)).astype(np.complex64)
    wob = np.zeros_like(z)
    zk = z
    for k in range(N_HARMONICS):
        zk = zk * z                                           # e^{i (k+2) theta}
        wob += _col(coef[:, k], np.complex64) * zk
    sd = d - r_ell * (1.0 + wob.real)
    inside = np.clip(0.5 - sd, 0.0, 1.0)

    # Nucleus: offset inside the cell, rotated with it; dead nuclei condense towards the centre.
    noff = np.array([c.shape.nucleus_offset for c in cells], np.float32).reshape(-1, 2)
    noff = np.where(dead[:, None], noff * 0.5, noff) * radius[:, None]
    nfrac = np.array([CELL_TYPES[c.type].nucleus for c in cells], np.float32)
    rn = radius * np.where(dead, 0.6, nfrac)
    ndx, ndy = dx - _col(noff[:, 0]), dy - _col(noff[:, 1])
    nd = np.sqrt(ndx * ndx + ndy * ndy)

    spots = np.zeros_like(d)
    sigma2 = 2.0 * (0.9 * scale) ** 2
    for j in range(MAX_NUCLEOLI):
        present = np.array([len(c.shape.nucleoli) > j and not c.dead for c in cells])
        pos = np.array([c.shape.nucleoli[j] if len(c.shape.nucleoli) > j else (0.0, 0.0)
                        for c in cells], np.float32).reshape(-1, 2) * rn[:, None]
        spot = np.exp(-((ndx - _col(pos[:, 0])) ** 2 + (ndy - _col(pos[:, 1])) ** 2) / sigma2)
        spots += spot * _col(present)

    tex = np.array([CELL_TYPES[c.type].texture for c in cells], np.float32)
    return _Patches(ext=ext, rows=rows, cols=cols, dead=_col(dead, bool), sd=sd, inside=inside,
                    nd=nd, rn=_col(rn), spots=spots,
                    texture_amp=_col(np.where(dead, tex * 0.25, tex)),  # dead: near-uniform
                    radius=_col(radius))


def _paste(patches: np.ndarray, p: _Patches, size: int) -> np.ndarray:
    """Sum (N, P, P) patches into a size x size frame (cells near the edge are clipped)."""
    e = p.ext
    frame = np.zeros((size + 2 * e, size + 2 * e), np.float32)
    for i in range(len(patches)):
        r, c = p.rows[i] + e, p.cols[i] + e
        frame[r - e: r + e + 1, c - e: c + e + 1] += patches[i]
    return frame[e: e + size, e: e + size]


def _gauss(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise with ~1-px correlation: the granular interior of a cell."""
    n = rng.standard_normal((shape[0], shape[1] + 2, shape[2] + 2), dtype=np.float32)
    n = 0.25 * n[:, :-2] + 0.5 * n[:, 1:-1] + 0.25 * n[:, 2:]
    n = 0.25 * n[:, :, :-2] + 0.5 * n[:, :, 1:-1] + 0.25 * n[:, :, 2:]
    return n / 0.375  # std of a [1/4, 1/2, 1/4] x [1/4, 1/2, 1/4] smoothing of unit noise


def _to_uint16(signal: np.ndarray, read_sigma: float, gain: float,
               rng: np.random.Generator) -> np.ndarray:
    """Camera: Gaussian read noise plus signal-dependent (Poisson-like) shot noise."""
    signal = np.asarray(signal, np.float32)
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    sigma = np.maximum(signal, 0.0)                      # in-place chain: few 2-D temporaries
    sigma *= gain
    sigma += read_sigma ** 2
    np.sqrt(sigma, out=sigma)
    noise *= sigma
    noise += signal
    np.clip(noise, 0, 65535, out=noise)
    return np.rint(noise, out=noise).astype(np.uint16)


def _bf_contrast(p: _Patches, grain: np.ndarray, scale: float) -> np.ndarray:
    """Live: pale textured body, dark membrane, bright defocus halo, darker nucleus, bright
    nucleoli. Dead: darker uniform body inside a distinct dark ring, no nucleoli."""
    s = scale
    pick = lambda dead, live: np.where(p.dead, np.float32(dead), np.float32(live))  # noqa: E731
    body = pick(-0.15, -0.04) * p.inside
    membrane = pick(0.0, -0.05) * _gauss(p.sd, 0.0, 0.8 * s)
    # Dead: a dark ring just outside the outline; live: a fainter bright defocus halo further out.
    halo = pick(-0.16, 0.08) * _gauss(p.sd, pick(1.8 * s, 2.0 * s), 1.2 * s)
    nucleus = pick(-0.04, -0.06) * np.clip(0.5 - (p.nd - p.rn) / s, 0.0, 1.0) * p.inside
    texture = p.texture_amp * p.inside * grain
    return body + membrane + halo + nucleus + 0.12 * p.spots + texture


def _ph_contrast(p: _Patches, grain: np.ndarray, scale: float) -> np.ndarray:
    """Phase contrast. Live: dark body (darker nucleus, dark nucleoli, granular) inside a bright
    halo hugging the outline. Dead (rounded, refractile): paler body, brighter and wider halo."""
    s = scale
    pick = lambda dead, live: np.where(p.dead, np.float32(dead), np.float32(live))  # noqa: E731
    body = pick(-0.08, -0.30) * p.inside
    nucleus = pick(-0.04, -0.10) * np.clip(0.5 - (p.nd - p.rn) / s, 0.0, 1.0) * p.inside
    halo = pick(0.55, 0.35) * _gauss(p.sd, pick(1.3 * s, 1.1 * s), pick(1.4 * s, 1.0 * s))
    texture = 1.6 * p.texture_amp * p.inside * grain
    return body + nucleus + halo - 0.15 * p.spots + texture


def _optical_path(p: _Patches, grain: np.ndarray, scale: float) -> np.ndarray:
    """Optical path difference for DIC, in units of cell radius: a soft dome (thickest at the
    centre), a denser nucleus, nucleoli and the granular interior."""
    s = scale
    r = p.radius
    depth = np.clip(-p.sd / r, 0.0, 1.0)                      # 0 at the outline, 1 deep inside
    dome = np.sqrt(depth * (2.0 - depth)) * p.inside           # spherical-cap profile
    nucleus = 0.25 * np.clip(0.5 - (p.nd - p.rn) / s, 0.0, 1.0) * p.inside
    texture = 1.5 * p.texture_amp * p.inside * grain
    return (dome + nucleus + 0.3 * p.spots + texture) * r


def _dic_relief(path: np.ndarray, scale: float) -> np.ndarray:
    """DIC: the optical path's derivative along the shear direction, so cells look lit from one
    side (bright edge facing the light, dark shadow edge opposite) on a grey background."""
    gy, gx = np.gradient(path)
    sx, sy = DIC_SHEAR
    norm = float(np.hypot(sx, sy))
    return (DIC_RELIEF / scale) * ((sx * gx + sy * gy) / norm)


def _pi_signal(p: _Patches, cells: Sequence[Cell], scale: float) -> np.ndarray:
    """Nuclear PI stain with a blurred edge: bright in dead cells, a trace leak in live ones."""
    amp = _col([c.shape.pi_amp if c.dead else c.shape.pi_leak for c in cells])
    return amp * 0.5 * (1.0 - np.tanh((p.nd - p.rn) / (1.2 * scale)))


def _marker_signal(p: _Patches, cells: Sequence[Cell], scale: float) -> np.ndarray:
    """Surface marker (anti-CD19-like): the whole cell body with a brighter rim, blurred edge;
    each cell's amplitude is its drawn marker intensity."""
    amp = _col([c.shape.marker_amp for c in cells])
    body = 0.5 * (1.0 - np.tanh(p.sd / (1.2 * scale)))
    rim = _gauss(p.sd, -0.5 * scale, 1.0 * scale)
    return amp * (0.8 * body + 0.4 * rim)


def render_field(cells: Sequence[Cell], size: int, rng: np.random.Generator,
                 channels: Sequence[str] = ("BF", "PI"), scale: float = 1.0,
                 flat: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Render the named channels of one field as uint16 (size, size) arrays.

    `scale` is the cell size factor (halo widths follow it); `flat` is a cached flat_field(size).
    Each channel kind draws from its own child generator, so rendering BF alone gives the same
    BF image as rendering BF and PI together. The label-free kinds share one texture draw (from
    the BF generator, before BF's camera noise), so BF, phase and DIC show the same granules.
    """
    kinds = {name: channel_kind(name) for name in channels}
    flat = flat_field(size) if flat is None else flat
    rngs = dict(zip(_RNG_ORDER, rng.spawn(len(_RNG_ORDER))))
    p = _patches(cells, scale) if cells else None
    grain = None
    if p is not None and any(k in LABEL_FREE_KINDS for k in kinds.values()):
        grain = _smooth_noise(rngs["bf"], p.sd.shape)
    out: dict[str, np.ndarray] = {}
    cache: dict[str, np.ndarray] = {}
    for name, kind in kinds.items():
        if kind not in cache:
            cache[kind] = _render_kind(kind, cells, p, grain, size, scale, flat, rngs[kind])
        out[name] = cache[kind]
    return out


def _render_kind(kind: str, cells: Sequence[Cell], p: _Patches | None, grain: np.ndarray | None,
                 size: int, scale: float, flat: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    if kind == "bf":
        contrast = _paste(_bf_contrast(p, grain, scale), p, size) if p else 0.0
        return _to_uint16(BF_BACKGROUND * flat * (1.0 + contrast), BF_READ_SIGMA, BF_GAIN, rng)
    if kind == "ph":
        contrast = _paste(_ph_contrast(p, grain, scale), p, size) if p else 0.0
        return _to_uint16(PH_BACKGROUND * flat * (1.0 + contrast), PH_READ_SIGMA, PH_GAIN, rng)
    if kind == "dic":
        contrast = _dic_relief(_paste(_optical_path(p, grain, scale), p, size), scale) if p else 0.0
        return _to_uint16(DIC_BACKGROUND * flat * (1.0 + contrast), DIC_READ_SIGMA, DIC_GAIN, rng)
    if kind == "pi":
        stain = _paste(_pi_signal(p, cells, scale), p, size) if p else 0.0
        return _to_uint16(PI_BACKGROUND * flat + stain, PI_READ_SIGMA, PI_GAIN, rng)
    if kind == "marker":
        stain = _paste(_marker_signal(p, cells, scale), p, size) if p else 0.0
        return _to_uint16(MARKER_BACKGROUND * flat + stain, MARKER_READ_SIGMA, MARKER_GAIN, rng)
    raise ValueError(f"channel kind {kind!r}: not rendered")


def render_bf(cells: Sequence[Cell], size: int, rng: np.random.Generator, scale: float = 1.0,
              flat: np.ndarray | None = None) -> np.ndarray:
    return render_field(cells, size, rng, ("BF",), scale, flat)["BF"]


def render_pi(cells: Sequence[Cell], size: int, rng: np.random.Generator, scale: float = 1.0,
              flat: np.ndarray | None = None) -> np.ndarray:
    return render_field(cells, size, rng, ("PI",), scale, flat)["PI"]


def render_ph(cells: Sequence[Cell], size: int, rng: np.random.Generator, scale: float = 1.0,
              flat: np.ndarray | None = None) -> np.ndarray:
    return render_field(cells, size, rng, ("PH",), scale, flat)["PH"]


def render_dic(cells: Sequence[Cell], size: int, rng: np.random.Generator, scale: float = 1.0,
               flat: np.ndarray | None = None) -> np.ndarray:
    return render_field(cells, size, rng, ("DIC",), scale, flat)["DIC"]


def render_marker(cells: Sequence[Cell], size: int, rng: np.random.Generator, scale: float = 1.0,
                  flat: np.ndarray | None = None) -> np.ndarray:
    return render_field(cells, size, rng, ("CD19",), scale, flat)["CD19"]
