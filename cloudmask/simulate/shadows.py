"""Cloud shadows projected from cloud height and sun geometry.

A cloud at height ``h`` shades the ground ``h / tan(elevation)`` away from the sun. Projecting the
cloud's base and top (and a point between) and keeping the densest gives the elongated shadows of 3-D
clouds. Shadowed ground loses the direct beam (except what diffuses through the cloud) but keeps the
bluish sky light, reduced by the part of the sky the cloud hides.
"""

from __future__ import annotations

import numpy as np


def shadow_offset_px(height_km: float, sun_elevation: float, sun_azimuth: float, pixel_size: float) -> tuple[float, float]:
    """(dy, dx) in pixels from a cloud to its shadow; image rows grow southwards, azimuth is
    clockwise from north, and the shadow falls away from the sun."""
    length = height_km * 1000.0 / np.tan(np.deg2rad(max(sun_elevation, 3.0))) / pixel_size
    az = np.deg2rad(sun_azimuth)
    return float(np.cos(az) * length), float(-np.sin(az) * length)


def project(tau: np.ndarray, base_km: float, top_km: float, sun_elevation: float, sun_azimuth: float,
            pixel_size: float, steps: int = 3) -> np.ndarray:
    """Optical thickness of the cloud along the sun ray above each ground pixel (periodic shift; the
    noise fields are periodic so the result is seamless).

    Cloud tops rise with optical thickness (thick cores are towers, thin fringes stay near the base),
    so only the cores are projected from the upper levels."""
    out = np.zeros_like(tau)
    tmax = float(tau.max()) if tau.size else 0.0
    if tmax <= 0:
        return out
    rel = np.sqrt(tau / tmax)
    for k, z in enumerate(np.linspace(base_km, top_km, steps)):
        frac = k / max(steps - 1, 1)
        layer = tau if k == 0 else np.where(rel >= frac, tau, 0).astype(tau.dtype)
        dy, dx = shadow_offset_px(z, sun_elevation, sun_azimuth, pixel_size)
        np.maximum(out, np.roll(layer, (int(round(dy)), int(round(dx))), axis=(0, 1)), out=out)
    return out


def irradiance(cloud_trans: np.ndarray, t_dir: np.ndarray, t_dif: np.ndarray, sky_view: float,
               sky_block: np.ndarray) -> np.ndarray:
    """Per-band fraction of clear-sky irradiance reaching the ground, (n_bands, h, w).

    ``cloud_trans`` is the cloud transmittance along the sun ray (n_bands, h, w); ``sky_block`` in 0..1
    says how much of the sky dome the shading cloud covers (scaled by ``sky_view``).
    """
    td = t_dir[:, None, None]
    tf = t_dif[:, None, None]
    sky = 1 - (1 - sky_view) * sky_block[None]
    return ((td * cloud_trans + tf * sky) / (td + tf)).astype("float32")
