"""Clouds: optical-thickness fields with soft edges and their spectral optics.

Cloud fields are thresholded multi-scale noise (cumulus/stratus: isotropic; cirrus: stretched
streaks), so edges are gradual and thin cloud naturally surrounds thick cores. Optics follow
two-stream asymptotics: a conservative-scattering reflectance ``R(τ)`` that is spectrally flat,
times a droplet/ice absorption factor from the imaginary refractive index (bright VNIR, darker at
1.6 and 2.2 µm, ice darker than water).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloudmask.simulate.layout import fractal_noise
from cloudmask.simulate.spectra import water_k

_G = 0.85  # asymmetry parameter of cloud droplets / ice crystals


@dataclass
class CloudField:
    """Optical thickness at 550 nm of one layer, its height (km) and phase."""

    tau: np.ndarray  # (h, w) float32
    height_km: float
    top_km: float
    phase: str  # "water" or "ice"
    effective_radius_um: float


def cumulus_field(shape: tuple[int, int], rng: np.random.Generator, cover: float, tau_max: float,
                  pixel_size: float) -> np.ndarray:
    """Water-cloud optical thickness: fractal noise above a cover-quantile threshold, soft edges."""
    if cover <= 0:
        return np.zeros(shape, "float32")
    scale_px = np.exp(rng.uniform(np.log(1500), np.log(30000))) / pixel_size
    base = fractal_noise(shape, rng.uniform(3.2, 4.2), rng, scale_px=scale_px)
    detail = fractal_noise(shape, rng.uniform(1.8, 2.6), rng)
    n = base + rng.uniform(0.03, 0.25) * detail
    thr = np.quantile(n[::4, ::4], 1 - cover)
    soft = rng.uniform(0.15, 1.1) * n.std()
    x = np.clip((n - thr) / soft, 0, None)
    # τ grows quickly inside the cloud: thin fringe of width ~soft, thick core
    tau = tau_max * (1 - np.exp(-x ** rng.uniform(1.0, 1.8)))
    return tau.astype("float32")


def cirrus_field(shape: tuple[int, int], rng: np.random.Generator, cover: float, tau_max: float,
                 pixel_size: float) -> np.ndarray:
    """Ice-cloud optical thickness: streaky (anisotropic) noise, mostly semi-transparent."""
    if cover <= 0:
        return np.zeros(shape, "float32")
    n = fractal_noise(shape, rng.uniform(2.4, 3.2), rng, scale_px=rng.uniform(3000, 20000) / pixel_size,
                      anisotropy=rng.uniform(2, 6), angle=rng.uniform(0, np.pi))
    n = n + 0.2 * fractal_noise(shape, 1.8, rng, anisotropy=3.0, angle=rng.uniform(0, np.pi))
    thr = np.quantile(n[::4, ::4], 1 - cover)
    x = np.clip((n - thr) / (0.8 * n.std()), 0, None)
    return (tau_max * np.tanh(x)).astype("float32")


def absorption_factor(grid_nm: np.ndarray, k_ice: np.ndarray, phase: str, radius_um: float) -> np.ndarray:
    """Spectral reduction of cloud reflectance by particle absorption (asymptotic theory):
    ``exp(-4 sqrt((1-ω)/(3(1-g))) * 1.1)`` with ``1-ω ≈ 0.85 γ r``, γ = 4πk/λ."""
    k = k_ice if phase == "ice" else water_k(grid_nm)
    gamma = 4 * np.pi * k / (grid_nm * 1e-9)
    size = radius_um * 1e-6 * (1.6 if phase == "ice" else 0.85)
    coalb = np.clip(gamma * size, 0, 0.5)
    y = 4 * np.sqrt(coalb / (3 * (1 - _G)))
    return np.exp(-1.1 * y)


def conservative_reflectance(tau: np.ndarray, mu_s: float) -> np.ndarray:
    """Two-stream reflectance of a non-absorbing layer (spectrally flat in the VNIR)."""
    t = np.sqrt(3.0) * (1 - _G) * tau * (0.5 + 0.5 / max(mu_s, 0.2)) ** 0.5
    return (t / (2 + t)).astype("float32")


@dataclass
class CloudOptics:
    """Band-space cloud reflectance and transmittance for a τ field."""

    reflect: np.ndarray  # (n_bands, h, w)
    trans: np.ndarray  # (n_bands, h, w) total (direct + diffuse) transmittance


def cloud_optics(tau: np.ndarray, absorb_b: np.ndarray, mu_s: float) -> CloudOptics:
    """Per-band R and T of a cloud layer: absorption matters more as the layer thickens."""
    r0 = conservative_reflectance(tau, mu_s)[None]
    weight = np.clip(tau / 8.0, 0, 1)[None]
    a = absorb_b[:, None, None].astype("float32")
    fac = a**weight  # broadcast: (nb, h, w)
    reflect = r0 * fac
    trans = (1 - r0) * np.sqrt(fac)
    return CloudOptics(reflect=reflect.astype("float32"), trans=trans.astype("float32"))
