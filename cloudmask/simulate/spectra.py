"""Spectral building blocks: the wavelength grid, the shipped spectral table, band responses.

Everything the simulator does per scene happens in *band space*: each library spectrum is integrated
against a band's response once (``library @ response``), cached, and scenes are then mixtures of
those band values. This is what makes on-the-fly training data cheap for arbitrary virtual bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from cloudmask.errors import BandError, CloudmaskError
from cloudmask.registry import Band

#: Reflective-domain grid of the whole simulator (nm).
GRID_NM = np.arange(400.0, 2500.0 + 1e-6, 5.0)
TABLE_PATH = Path(__file__).with_name("data") / "spectra.npz"

#: Surface classes the table groups spectra into.
CLASSES = ("vegetation", "soil", "sand", "npv", "burned", "urban", "snow", "water", "salt")

# Imaginary refractive index of liquid water (Hale & Querry 1973; Segelstein 1981 beyond 2 µm),
# sparse nodes interpolated in log space. Drives cloud-droplet absorption in the SWIR and the
# pure-water absorption of the water-body model.
_KW_UM = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.975, 1.0, 1.1,
                   1.2, 1.3, 1.4, 1.45, 1.5, 1.6, 1.7, 1.8, 1.9, 1.94, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
_KW = np.array([1.9e-9, 1.0e-9, 1.0e-9, 2.0e-9, 1.1e-8, 1.6e-8, 3.4e-8, 1.6e-7, 1.25e-7, 2.9e-7, 4.9e-7,
                2.0e-6, 2.9e-6, 2.9e-6, 2.9e-6, 9.9e-6, 3.5e-5, 1.4e-4, 2.9e-4, 2.5e-4, 8.6e-5, 8.0e-5, 1.15e-4,
                1.1e-3, 1.9e-3, 1.1e-3, 4.9e-4, 2.9e-4, 3.1e-4, 4.3e-4, 8.0e-4])


def water_k(wl_nm: np.ndarray) -> np.ndarray:
    """Imaginary refractive index of liquid water at ``wl_nm``."""
    return np.exp(np.interp(np.asarray(wl_nm) / 1000.0, _KW_UM, np.log(_KW)))


def water_absorption(wl_nm: np.ndarray) -> np.ndarray:
    """Pure-water absorption coefficient (1/m): 4πk/λ."""
    wl_m = np.asarray(wl_nm) * 1e-9
    return 4 * np.pi * water_k(wl_nm) / wl_m


def water_reflectance(wl_nm: np.ndarray, chl: float = 0.5, cdom440: float = 0.05, spm: float = 1.0) -> np.ndarray:
    """Water-leaving reflectance of an optically deep water body (semi-analytic, Gordon 1988).

    ``chl`` mg/m³ chlorophyll, ``cdom440`` 1/m CDOM absorption at 440 nm, ``spm`` g/m³ suspended
    sediment. Clear water is blue and dark (~0.03-0.06 at 450 nm), turbid water peaks in green/red
    and keeps some NIR signal, and every water is black beyond ~1 µm (plus a small surface
    reflection, 0.2-1 %, so SWIR is not exactly zero).
    """
    wl = np.asarray(wl_nm, dtype=float)
    a = (water_absorption(wl)
         + 0.06 * chl**0.65 * np.exp(-(((wl - 440) / 60) ** 2)) + 0.02 * chl**0.65 * np.exp(-(((wl - 675) / 20) ** 2))
         + cdom440 * np.exp(-0.014 * (wl - 440))
         + 0.03 * spm * np.exp(-0.0123 * (wl - 443)))
    bb = 0.0038 * (400 / wl) ** 4.32 + 0.015 * spm * (555 / wl) ** 0.8 * 0.5 + 0.002 * chl**0.62 * (550 / wl)
    u = bb / (a + bb)
    rrs = 0.0949 * u + 0.0794 * u**2  # below-surface remote sensing reflectance (Gordon 1988)
    rrs_above = 0.52 * rrs / (1 - 1.7 * rrs)  # Lee et al. 2002
    return np.clip(np.pi * rrs_above + 0.004, 0, 1)


class SpectraTable:
    """The shipped surface library and band responses, plus per-band integration caches."""

    def __init__(self, path: Path = TABLE_PATH):
        if not path.exists():
            raise CloudmaskError(f"simulator spectra table {path} is missing (run python -m cloudmask.simulate.build_table)")
        with np.load(path) as z:
            self.grid = z["grid_nm"].astype("float64")
            self.k_ice = z["k_ice"].astype("float64")
            self.classes = {k[6:]: z[k].astype("float32") for k in z.files if k.startswith("class/")}
            self.srf = {k[4:]: z[k].astype("float64") for k in z.files if k.startswith("srf/")}
        # one matrix for all spectra so a band is integrated with one matmul
        self.offsets: dict[str, tuple[int, int]] = {}
        rows, start = [], 0
        for name in CLASSES:
            arr = self.classes[name]
            self.offsets[name] = (start, start + len(arr))
            rows.append(arr)
            start += len(arr)
        self.library = np.concatenate(rows).astype("float64")
        self._band_cache: dict[tuple, np.ndarray] = {}

    def integrate(self, spectra: np.ndarray, responses: np.ndarray) -> np.ndarray:
        """(n, n_wl) spectra against (n_bands, n_wl) normalised responses → (n, n_bands)."""
        return spectra @ responses.T

    def library_bands(self, bands: Sequence[Band]) -> np.ndarray:
        """Every library spectrum in band space, (n_spectra, n_bands) float32; each band cached once."""
        cols = []
        for b in bands:
            key = band_key(b)
            col = self._band_cache.get(key)
            if col is None:
                col = (self.library @ band_response(b, self)).astype("float32")
                if len(self._band_cache) > 4096:
                    self._band_cache.clear()
                self._band_cache[key] = col
            cols.append(col)
        return np.stack(cols, axis=1)

    def class_slice(self, name: str) -> slice:
        lo, hi = self.offsets[name]
        return slice(lo, hi)


def band_key(b: Band) -> tuple:
    """Hashable identity of a band's spectral facts (Band holds dicts, so it is not hashable)."""
    return (b.name, b.kind, b.wavelength_min, b.wavelength_center, b.wavelength_max, b.fwhm, b.srf)


@lru_cache(maxsize=1)
def load_table() -> SpectraTable:
    """The process-wide table (loaded once, ~10 ms)."""
    return SpectraTable()


@lru_cache(maxsize=256)
def _srf_variant(key: tuple) -> str | None:
    """pyrsr ``Satellite/Sensor`` of the registry sensor that owns this exact band, if any."""
    try:
        from cloudmask.registry import load_registry

        reg = load_registry()
    except CloudmaskError:
        return None
    for sensor in reg.values():
        for b in sensor.bands:
            if band_key(b) == key:
                variants = sensor.srf.get("variants") if isinstance(sensor.srf, dict) else None
                if isinstance(variants, dict) and variants:
                    return str(next(iter(variants.values())))
                return None
    return None


def band_response(b: Band, table: SpectraTable | None = None) -> np.ndarray:
    """Normalised (sum 1) response of ``b`` on the grid: the real pyrsr response when the band belongs
    to a registry sensor with a known response, else a Gaussian from centre and FWHM."""
    table = table or load_table()
    grid = table.grid
    if b.kind != "reflectance":
        raise BandError(f"band {b.name!r} is thermal: it has no reflective response")
    resp = None
    if b.srf:
        variant = _srf_variant(band_key(b))
        if variant is not None:
            resp = table.srf.get(f"{variant}/{b.srf}")
    if resp is None:
        c, fwhm = b.wavelength_center * 1000.0, max(b.fwhm * 1000.0, 1.0)
        sigma = fwhm / 2.3548
        resp = np.exp(-0.5 * ((grid - c) / sigma) ** 2)
        if resp.sum() < 1e-6:  # narrower than the grid spacing, or off the grid: nearest sample
            resp = np.zeros_like(grid)
            resp[int(np.argmin(np.abs(grid - c)))] = 1.0
    return resp / resp.sum()


def responses(bands: Sequence[Band], table: SpectraTable | None = None) -> np.ndarray:
    """(n_reflective_bands, n_wl) response matrix for the reflective ``bands``."""
    table = table or load_table()
    return np.stack([band_response(b, table) for b in bands])
