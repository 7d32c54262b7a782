"""Spatial layout: multi-scale noise, Voronoi parcels, land-cover maps, rivers and roads.

Fields come from FFT-filtered white noise with a power-law spectrum (``1/k^beta``), the standard
way to get fractal, natural-looking texture in a few milliseconds; FFT noise is periodic, which the
shadow projection exploits (a rolled cloud field stays seamless).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cloudmask.simulate.spectra import CLASSES

#: Landscape recipes, loosely following the Landsat 8 Biome strata: class weights of each scene type.
BIOMES: dict[str, dict[str, float]] = {
    "forest": {"vegetation": 0.80, "soil": 0.04, "npv": 0.06, "water": 0.06, "urban": 0.02, "burned": 0.02},
    "cropland": {"vegetation": 0.45, "soil": 0.30, "npv": 0.12, "urban": 0.06, "water": 0.05, "sand": 0.02},
    "grass_shrub": {"vegetation": 0.30, "npv": 0.30, "soil": 0.30, "sand": 0.04, "water": 0.03, "burned": 0.03},
    "barren": {"soil": 0.40, "sand": 0.35, "salt": 0.12, "npv": 0.08, "vegetation": 0.03, "water": 0.02},
    "urban": {"urban": 0.55, "vegetation": 0.25, "soil": 0.10, "water": 0.06, "npv": 0.04},
    "snow_ice": {"snow": 0.65, "soil": 0.17, "vegetation": 0.08, "water": 0.07, "npv": 0.03},
    "water": {"water": 0.60, "vegetation": 0.22, "sand": 0.08, "urban": 0.05, "soil": 0.05},
    "wetlands": {"water": 0.35, "vegetation": 0.50, "soil": 0.10, "npv": 0.05},
}


def fractal_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator, scale_px: float | None = None,
                  anisotropy: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-std fractal noise, float32.

    ``beta`` is the spectral slope (2 = smooth clouds, 1 = rough texture); ``scale_px`` suppresses
    structure larger than that (a low-cut), ``anisotropy`` > 1 stretches features along ``angle``
    (cirrus streaks).
    """
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    if anisotropy != 1.0:
        c, s = np.cos(angle), np.sin(angle)
        ku, kv = kx * c + ky * s, -kx * s + ky * c
        k2 = (ku * anisotropy) ** 2 + kv**2
    else:
        k2 = kx**2 + ky**2
    k0 = 1.0 / scale_px if scale_px else 1.0 / max(h, w)
    amp = ((k2 + k0**2) ** (-beta / 4.0)).astype("float32")
    amp[0, 0] = 0.0
    # band-limit: frequencies whose amplitude is < 0.2 % of the largest scale's cannot be seen after
    # normalisation, so no random numbers are spent on them (smooth fields cost a fraction of rough ones)
    ref = (1.0 / max(h, w) ** 2 + k0**2) ** (-beta / 4.0)
    keep = amp > 2e-3 * ref
    rows = np.flatnonzero(keep.any(1))
    ncols = int(np.flatnonzero(keep.any(0)).max()) + 1 if rows.size else 1
    spec = np.zeros((h, w // 2 + 1), dtype="complex64")
    white = rng.standard_normal((rows.size, 2 * ncols), dtype="float32").view("complex64")
    spec[rows, :ncols] = white * amp[rows, :ncols]
    field = np.fft.irfft2(spec, s=(h, w)).astype("float32", copy=False)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def voronoi(shape: tuple[int, int], cell_px: float, rng: np.random.Generator, warp: float = 0.0) -> np.ndarray:
    """Voronoi cell ids (int32) with mean cell size ``cell_px``; ``warp`` (pixels) bends the edges."""
    h, w = shape
    n = max(2, int(h * w / max(cell_px, 2.0) ** 2))
    seeds = rng.random((n, 2)) * (h, w)
    step = 2 if min(h, w) >= 128 else 1
    yy, xx = np.mgrid[0:h:step, 0:w:step].astype("float32")
    if warp:
        yy = yy + warp * fractal_noise(yy.shape, 2.5, rng)
        xx = xx + warp * fractal_noise(xx.shape, 2.5, rng)
    _, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), workers=1)
    ids = idx.reshape(yy.shape).astype("int32")
    if step > 1:
        ids = np.repeat(np.repeat(ids, step, 0), step, 1)[:h, :w]
    return ids


@dataclass
class Layout:
    """Per-pixel land-cover class (index into CLASSES), parcel ids and texture fields."""

    classes: np.ndarray  # (h, w) uint8
    parcels: np.ndarray  # (h, w) int32
    mix: np.ndarray  # (h, w) float32 in 0..1: within-parcel mixing of two spectra
    brightness: np.ndarray  # (h, w) float32 multiplicative texture around 1


def make_layout(shape: tuple[int, int], biome: str, rng: np.random.Generator, pixel_size: float) -> Layout:
    """Land-cover map for one scene type: macro regions from competing noise fields, Voronoi parcels
    (fields, blocks), meandering rivers and straight roads."""
    h, w = shape
    weights = BIOMES[biome]
    names = list(weights)
    # macro regions: argmax of noise + log weight; scale of regions ~ 1-5 km
    region_px = float(np.clip(rng.uniform(1000, 6000) / pixel_size, 8, 4 * max(h, w)))
    scores = np.stack([
        fractal_noise(shape, 3.0, rng) * 0.9
        + np.log(weights[n]) * 0.8
        + 0.25 * fractal_noise(shape, 2.0, rng, scale_px=region_px)
        for n in names
    ])
    cls_local = np.argmax(scores, axis=0)
    lut = np.array([CLASSES.index(n) for n in names], dtype="uint8")
    classes = lut[cls_local]

    parcel_px = float(np.clip(rng.uniform(150, 900) / pixel_size, 3, max(h, w) / 2))
    warp = 0.0 if biome in ("cropland", "urban") else parcel_px * 0.4
    parcels = voronoi(shape, parcel_px, rng, warp=warp)

    water = CLASSES.index("water")
    if rng.random() < 0.55 and biome != "barren":  # a river: the zero-crossing band of a smooth field
        ridge = np.abs(fractal_noise(shape, 3.2, rng))
        width = rng.uniform(20, 250) / pixel_size / max(h, w) * 6
        classes = np.where(ridge < width, water, classes).astype("uint8")
    if biome in ("urban", "cropland") or rng.random() < 0.3:  # roads: straight lines of urban material
        urban = CLASSES.index("urban")
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(1, 6))):
            ang = rng.uniform(0, np.pi)
            off = rng.uniform(-0.5, 0.5) * max(h, w)
            d = np.abs((xx - w / 2) * np.sin(ang) - (yy - h / 2) * np.cos(ang) - off)
            classes = np.where((d < max(0.6, rng.uniform(8, 30) / pixel_size)) & (classes != water), urban, classes)
        classes = classes.astype("uint8")

    mix = np.clip(0.5 + 0.3 * fractal_noise(shape, rng.uniform(1.5, 2.5), rng), 0, 1).astype("float32")
    brightness = (1.0 + rng.uniform(0.03, 0.10) * fractal_noise(shape, rng.uniform(1.0, 2.0), rng)).astype("float32")
    return Layout(classes=classes, parcels=parcels, mix=mix, brightness=brightness)


def terrain_shading(shape: tuple[int, int], rng: np.random.Generator, relief: float, sun_elevation: float,
                    sun_azimuth: float) -> np.ndarray:
    """Illumination factor of a fractal terrain (1 = flat): sun-facing slopes brighter, far sides dark.

    ``relief`` is the typical slope (rise over run); mountain shade is a natural cloud-shadow confuser.
    """
    if relief <= 0:
        return np.ones(shape, "float32")
    z = fractal_noise(shape, 3.6, rng)
    gy, gx = np.gradient(z)
    scale = relief / max(float(np.hypot(gx, gy).std()), 1e-6)
    gx, gy = gx * scale, gy * scale
    el, az = np.deg2rad(sun_elevation), np.deg2rad(sun_azimuth)
    sx, sy, sz = np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)  # rows grow southwards
    cos_i = (-gx * sx - gy * sy + sz) / np.sqrt(1 + gx**2 + gy**2)
    direct = np.clip(cos_i, 0, None) / sz
    return np.clip(0.25 + 0.75 * direct, 0.15, 2.5).astype("float32")
