"""Sensor effects applied to the ideal TOA values: spatial resolution, calibration jitter, noise,
quantisation, saturation, nodata borders and band dropout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import uniform_filter

from cloudmask.registry import Band


def degrade_resolution(data: np.ndarray, bands: Sequence[Band], pixel_size: float) -> None:
    """Blur bands coarser than the simulation grid to their own footprint (in place), as a reader
    that resamples 60 m or 100 m bands onto a finer grid would show them."""
    for i, b in enumerate(bands):
        ratio = b.resolution / pixel_size
        if ratio >= 1.5:
            size = int(round(ratio))
            data[i] = uniform_filter(data[i], size=size, mode="wrap")


def apply_sensor(data: np.ndarray, bands: Sequence[Band], rng: np.random.Generator, noise: float = 1.0,
                 saturation: float | None = None, quantise: bool = True) -> dict:
    """Calibration gain/offset jitter, signal-dependent noise, quantisation, saturation (in place).

    Returns the jitter applied, for the metadata."""
    gains, offsets = [], []
    h, w = data.shape[1:]
    # one white-noise draw; each band reads it at its own random offset (independent-looking, cheap)
    pool = rng.standard_normal(h * w + 4099, dtype="float32") if noise else None

    def white(i: int) -> np.ndarray:
        start = int(rng.integers(0, 4099))
        flat = pool[start:start + h * w]
        return flat.reshape(h, w) if i % 2 == 0 else flat[::-1].reshape(h, w)

    for i, b in enumerate(bands):
        band = data[i]
        if b.kind == "thermal":
            off = rng.normal(0, 0.4)
            band += np.float32(off)
            if noise:
                band += white(i) * np.float32(noise * rng.uniform(0.05, 0.3))
            if quantise:
                np.round(band, 2, out=band)
            gains.append(1.0)
            offsets.append(float(off))
            continue
        gain, off = rng.normal(1.0, 0.015), rng.normal(0.0, 0.002)
        band *= np.float32(gain)
        band += np.float32(off)
        if noise:
            a, c = rng.uniform(0.0005, 0.003), rng.uniform(0.002, 0.01)
            sigma = np.float32(noise) * np.sqrt(np.float32(a**2) + np.float32(c**2) * np.abs(band))
            band += white(i) * sigma
        if quantise:
            np.round(band, 4, out=band)  # 1e-4 reflectance steps, like 12-16 bit L1/L2 products
        if saturation is not None:
            np.minimum(band, np.float32(saturation), out=band)
        np.maximum(band, np.float32(-0.01), out=band)
        gains.append(float(gain))
        offsets.append(float(off))
    return {"gain": gains, "offset": offsets}


def nodata_border(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Mask (True = nodata) of a tilted scene footprint clipping one or two corners of the tile."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype("float32")
    ang = rng.uniform(-0.35, 0.35) + rng.choice([0, np.pi / 2, np.pi, 3 * np.pi / 2])
    nx, ny = np.cos(ang), np.sin(ang)
    proj = (xx - w / 2) * nx + (yy - h / 2) * ny
    edge = rng.uniform(0.15, 0.45) * max(h, w)
    mask = proj > edge
    if rng.random() < 0.3:
        ang2 = ang + np.pi / 2 + rng.uniform(-0.2, 0.2)
        proj2 = (xx - w / 2) * np.cos(ang2) + (yy - h / 2) * np.sin(ang2)
        mask |= proj2 > rng.uniform(0.25, 0.5) * max(h, w)
    return mask
