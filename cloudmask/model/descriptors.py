"""Band descriptors and physical inputs, turned into what the network sees.

Why a fixed (non-learned) featurisation: the descriptor embedding must generalise to bands never
seen in training, so it is built from smooth functions of log-wavelength (sinusoids at a few
frequencies, like positional encodings) that interpolate between the wavelengths the simulator
covers. Physical normalisation lives here, inside the model, so callers pass reflectance and kelvin
exactly as the scene reader returns them.
"""

from __future__ import annotations

import math

import torch

#: Frequencies (cycles per unit of log-wavelength) of the sinusoidal descriptor features.
_FREQS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: Reference thermal brightness temperature and spread (kelvin) for normalisation.
THERMAL_REF_K, THERMAL_SCALE_K = 280.0, 30.0

#: Width of :func:`descriptor_features` output.
N_DESCRIPTOR_FEATURES = 5 + 3 * 2 * len(_FREQS)


def descriptor_features(desc: torch.Tensor) -> torch.Tensor:
    """(n, 5) descriptors [min, centre, max, fwhm µm, thermal] -> (n, F) fixed features.

    Log-wavelengths make visible and thermal bands comparable in scale; sinusoids let a small MLP
    resolve fine spectral position (e.g. the 1.38 µm water-vapour band vs 1.6 µm SWIR).
    """
    if desc.ndim != 2 or desc.shape[1] != 5:
        raise ValueError(f"descriptors must have shape (n_bands, 5), got {tuple(desc.shape)}")
    d = desc.float()
    lo, mid, hi = (torch.log(d[:, i].clamp(min=0.05)) for i in range(3))
    fwhm = torch.log(d[:, 3].clamp(min=1e-3))
    thermal = d[:, 4].clamp(0, 1)
    feats = [mid, lo, hi, (fwhm + 3.0) / 2.0, thermal]
    for x in (mid, lo, hi):
        for f in _FREQS:
            a = 2 * math.pi * f * x
            feats += [torch.sin(a), torch.cos(a)]
    return torch.stack(feats, dim=1)


def band_affine(desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band scale and offset that map physical values to the network's range.

    Reflectance stays as is (clouds bright, shadows dark); thermal becomes (K - 280) / 30. Being a
    per-band affine map, it folds into the first linear layer at full resolution (no extra pass).
    """
    thermal = desc[:, 4] > 0.5
    scale = torch.where(thermal, 1.0 / THERMAL_SCALE_K, 1.0).float()
    offset = torch.where(thermal, -THERMAL_REF_K / THERMAL_SCALE_K, 0.0).float()
    return scale, offset


def normalise_inputs(x: torch.Tensor, desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical values (B, n, h, w), NaN = nodata -> (value, validity), NaN-free.

    Invalid pixels (NaN/inf, or a thermal value below 100 K, i.e. a fill value) are zero-filled and
    flagged in the validity tensor, which every pooling step uses as weights.
    """
    thermal = (desc[:, 4] > 0.5).view(1, -1, 1, 1)
    valid = torch.isfinite(x) & (~thermal | (x > 100.0))
    scale, offset = band_affine(desc)
    v = torch.where(valid, x * scale.view(1, -1, 1, 1) + offset.view(1, -1, 1, 1), 0.0)
    m = valid.to(x.dtype)
    return v, m


def log_feature(v: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
    """A log-reflectance channel (ratios between dark surfaces); thermal bands pass through."""
    if torch.is_grad_enabled():
        thermal = (desc[:, 4] > 0.5).view(1, -1, 1, 1)
        return torch.where(thermal, v, (torch.log(v.clamp(min=0.0) + 0.01) + 2.0) / 2.0)
    # inference: the same operations in place on one new tensor (one map instead of five)
    out = v.clamp(min=0.0).add_(0.01).log_().add_(2.0).div_(2.0)
    thermal = torch.nonzero(desc[:, 4] > 0.5).flatten()
    if thermal.numel():
        out[:, thermal] = v[:, thermal]
    return out
