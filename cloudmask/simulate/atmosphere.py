"""Atmosphere: Rayleigh + aerosol path reflectance, transmittances and gas absorption.

A compact single-scattering model (Rayleigh optical depth of Bodhaine et al. 1999, Ångström aerosol,
Henyey-Greenstein phase function) with Gaussian-shaped gas absorption bands. It is not a radiative
transfer code, but it gets the signs and magnitudes right: a blue-bright path radiance that grows
with aerosol load and low sun, a deep water-vapour dip at 940 nm, a nearly opaque 1375 nm band that
hides the surface but not high clouds, and O2/CO2 dips at 760 nm and 2 µm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: (centre nm, sigma nm, optical depth per cm precipitable water, vertical) of water-vapour bands.
_WV_BANDS = ((720, 10, 0.015), (820, 12, 0.02), (940, 22, 0.12), (1135, 30, 0.16), (1390, 25, 3.0),
             (1880, 30, 4.0), (2500, 60, 0.6))
#: (centre nm, sigma nm, vertical optical depth) of well-mixed gases (O2, CO2, CH4) and ozone.
_MIXED_BANDS = ((687, 4, 0.05), (762, 5, 0.5), (1268, 6, 0.05), (1575, 8, 0.02), (1605, 8, 0.02),
                (2010, 10, 0.22), (2060, 10, 0.22), (2320, 40, 0.03))
_H_WV_KM = 2.0  # water-vapour scale height
_H_AIR_KM = 8.0


def rayleigh_tau(wl_nm: np.ndarray) -> np.ndarray:
    """Rayleigh optical depth at sea level (Hansen & Travis 1974 fit)."""
    lam = np.asarray(wl_nm) / 1000.0
    return 0.008569 * lam**-4 * (1 + 0.0113 * lam**-2 + 0.00013 * lam**-4)


def gas_tau(wl_nm: np.ndarray, water_vapour_cm: float, ozone_cm: float = 0.3, above_km: float = 0.0) -> np.ndarray:
    """Vertical gas optical depth of the column above ``above_km``."""
    wl = np.asarray(wl_nm, dtype=float)
    wv = water_vapour_cm * np.exp(-above_km / _H_WV_KM)
    mixed = np.exp(-above_km / _H_AIR_KM)
    tau = np.zeros_like(wl)
    for c, s, a in _WV_BANDS:
        tau += wv * a * np.exp(-0.5 * ((wl - c) / s) ** 2)
    for c, s, a in _MIXED_BANDS:
        tau += mixed * a * np.exp(-0.5 * ((wl - c) / s) ** 2)
    tau += ozone_cm / 0.3 * 0.03 * np.exp(-0.5 * ((wl - 600) / 55) ** 2)  # Chappuis band
    return tau


@dataclass
class Atmosphere:
    """Band-integrated atmospheric terms, each (n_bands,) float32.

    TOA reflectance of a Lambertian surface ``rho`` lit by ``irradiance`` (1 = clear sky):
    ``path + gas2 * (t_up * (t_dir*e_dir + t_dif*e_dif) * rho / (1 - s_alb * rho))``.
    """

    path: np.ndarray
    t_dir: np.ndarray  # direct downward transmittance (sun -> ground)
    t_dif: np.ndarray  # diffuse downward transmittance
    t_up: np.ndarray  # total upward transmittance (ground -> sensor)
    s_alb: np.ndarray  # spherical albedo
    gas2: np.ndarray  # two-way gas transmittance, full column (path already includes its own)

    def gas_above(self, responses: np.ndarray, grid: np.ndarray, height_km: float, mu_s: float,
                  water_vapour_cm: float, ozone_cm: float) -> np.ndarray:
        """Two-way gas transmittance for light reflected by a layer at ``height_km``."""
        tau = gas_tau(grid, water_vapour_cm, ozone_cm, above_km=height_km)
        return (responses @ np.exp(-tau * (1 / mu_s + 1.0))).astype("float32")


def atmosphere(responses: np.ndarray, grid: np.ndarray, sun_elevation: float, aerosol_tau550: float,
               angstrom: float, water_vapour_cm: float, ozone_cm: float = 0.3, aerosol_ssa: float = 0.92,
               aerosol_g: float = 0.70) -> Atmosphere:
    """Compute spectral terms on ``grid`` and integrate them with the (n_bands, n_wl) ``responses``."""
    mu_s = float(np.sin(np.deg2rad(max(sun_elevation, 3.0))))
    mu_v = 1.0  # near-nadir view
    t_r = rayleigh_tau(grid)
    t_a = aerosol_tau550 * (grid / 550.0) ** (-angstrom)
    cos_scat = -mu_s * mu_v  # backscatter geometry for a nadir view
    p_r = 0.75 * (1 + cos_scat**2)
    g = aerosol_g
    p_a = (1 - g**2) / (1 + g**2 - 2 * g * cos_scat) ** 1.5
    m = 1 / mu_s + 1 / mu_v
    # single scattering with an attenuation term; the 1.35 and 2.0 factors stand in for multiple scattering
    # (calibrated so clear water and vegetation match Landsat 8 Biome TOA blue, see docs/simulator.md)
    path = (1.35 * t_r * p_r + aerosol_ssa * t_a * p_a * 2.0) / (4 * mu_s * mu_v) * (1 - np.exp(-m * (t_r + t_a))) / np.maximum(
        m * (t_r + t_a), 1e-6) * (1 + 0.5 * t_a)
    ext = t_r + t_a
    t_dir = np.exp(-ext / mu_s)
    lost = 0.5 * t_r + (1 - aerosol_ssa * (1 + g) / 2) * t_a  # back-scattered or absorbed
    t_tot_down = np.exp(-lost / mu_s)
    t_dif = np.clip(t_tot_down - t_dir, 0, None)
    t_up = np.exp(-lost / mu_v)
    s_alb = 0.5 * t_r * np.exp(-t_r) + 0.12 * t_a
    tau_g = gas_tau(grid, water_vapour_cm, ozone_cm)
    gas2 = np.exp(-tau_g * m)
    gas_path = np.exp(-tau_g * m * 0.35)  # path radiance is scattered mostly above the humid layer
    r = responses
    return Atmosphere(
        path=(r @ (path * gas_path)).astype("float32"),
        t_dir=(r @ t_dir).astype("float32"),
        t_dif=(r @ t_dif).astype("float32"),
        t_up=(r @ t_up).astype("float32"),
        s_alb=(r @ s_alb).astype("float32"),
        gas2=(r @ gas2).astype("float32"),
    )


def planck(wl_um: float, temp_k: np.ndarray) -> np.ndarray:
    """Spectral radiance (W m-2 sr-1 µm-1) at ``wl_um``."""
    c1, c2 = 1.191042e8, 1.4387752e4
    return c1 / (wl_um**5 * (np.exp(c2 / (wl_um * np.asarray(temp_k, dtype="float32"))) - 1))


def brightness_temperature(wl_um: float, radiance: np.ndarray) -> np.ndarray:
    """Inverse of :func:`planck`."""
    c1, c2 = 1.191042e8, 1.4387752e4
    return (c2 / (wl_um * np.log(c1 / (wl_um**5 * np.maximum(radiance, 1e-6)) + 1))).astype("float32")
