"""Random virtual bands: the training recipe for a sensor-independent model.

A model that must work on any sensor is trained on scenes whose bands are drawn at random, so it
learns from the spectral descriptor rather than from a fixed band order.
"""

from __future__ import annotations

import numpy as np

from cloudmask.registry import Band

#: Windows where real sensors put bands (µm): VNIR, red edge, NIR, water-vapour, cirrus, SWIR.
_WINDOWS = ((0.40, 0.70, 0.45), (0.70, 0.96, 0.25), (1.0, 1.3, 0.04), (1.36, 1.39, 0.06), (1.55, 1.75, 0.12),
            (2.05, 2.35, 0.08))


def virtual_bands(rng: np.random.Generator | int | None, n: int, thermal_prob: float = 0.3,
                  resolution: float = 20.0) -> list[Band]:
    """``n`` random reflective bands (centres where real sensors have them, FWHM 10–200 nm), plus with
    probability ``thermal_prob`` one thermal band at 10.5–12 µm. Sorted by centre wavelength."""
    rng = np.random.default_rng(rng)
    lo, hi, w = (np.array(v) for v in zip(*_WINDOWS))
    out: list[Band] = []
    for i in range(n):
        k = int(rng.choice(len(w), p=w / w.sum()))
        c = float(rng.uniform(lo[k], hi[k]))
        fwhm = float(np.exp(rng.uniform(np.log(0.01), np.log(0.2 if c < 1.3 else 0.25))))
        if k == 3:  # cirrus-like bands are narrow
            fwhm = float(rng.uniform(0.01, 0.035))
        out.append(Band(name=f"v{i:02d}", kind="reflectance", wavelength_min=round(c - fwhm * 0.7, 4),
                        wavelength_center=round(c, 4), wavelength_max=round(c + fwhm * 0.7, 4),
                        fwhm=round(fwhm, 4), resolution=resolution))
    if rng.random() < thermal_prob:
        c, f = float(rng.uniform(10.5, 12.0)), float(rng.uniform(0.5, 1.0))
        out.append(Band(name="vtir", kind="thermal", wavelength_min=c - f / 2, wavelength_center=c,
                        wavelength_max=c + f / 2, fwhm=f, resolution=max(resolution, 60.0)))
    return sorted(out, key=lambda b: b.wavelength_center)
