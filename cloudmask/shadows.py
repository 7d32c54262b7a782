"""Cloud–shadow geometry matching: the scene's own clouds say where their shadows can be.

Why: a shadow lies where its cloud is displaced along the sun azimuth, by a distance set by the
cloud's height and the sun's elevation — at 10–30 m often 30–500 px away, beyond the network's
receptive field. So the network alone misses many shadows (real-tile recall ~35–40 %). This step,
in the spirit of Fmask's cloud–shadow matching but needing no sun angles or cloud heights (when
the scene's sun angles are known, a :class:`ShadowPrior` keeps only the shifts they allow):

1. Learn the scene's **displacement kernel** ``K``: for every shift ``d``, how much more P(shadow)
   than the scene's average the network puts on the clear ground at ``p + d`` of every cloud pixel
   ``p`` (two FFT cross-correlations: cloud map × P(shadow), cloud map × clear ground), per cloud
   pixel, less what the opposite shift shows too (a shadow lies on one side of its cloud; dark rims
   and halos surround it). ``K`` holds the shifts scoring at least ``frac`` of the peak — the sun
   direction with the range of cloud heights the scene shows.
2. The **shadow zone** is the cloud map dilated by ``K``.
3. Inside the zone, a clear pixel becomes shadow when ``(1 + boost) · P(shadow) > P(clear)``, or
   (opt-in, given the scene's NIR band) when its NIR is below ``darkness`` × the NIR of the clear
   ground around it: a shadow takes away the direct sun, which carries most of the NIR (Fmask's
   potential-shadow test, made local). Outside the zone nothing changes. Clouds, and scenes with no
   clear lift (no shadows, no clouds, all cloud), are left alone.

The kernel is learnt on a grid coarsened to at most ``LOWRES`` cells a side (cells of ≥ ``MIN_CELL``
px), so the FFTs stay small for any scene; the streaming mask path (:func:`cloudmask.tiles.stream_mask`) feeds rows in with
:meth:`ShadowMatcher.observe`, calls :meth:`ShadowMatcher.resolve` once, then :meth:`ShadowMatcher.apply`
to the rows it re-reads — the same result as :func:`match_shadows` on the whole array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft as sfft

from cloudmask.errors import BandError

#: Internal code for "clear, but shadow if inside the zone" between the passes (never written out).
CANDIDATE = 4
#: Internal codes DARK_BASE..254 between the passes: "clear, with this (log-quantised) NIR", so the
#: second pass can compare each pixel with its surroundings' clear NIR, known only after the first.
DARK_BASE = 8
_NIR_LO, _NIR_HI = 1e-3, 2.0  # NIR reflectance range of the codes; beyond it codes saturate
_NIR_LEVELS = 254 - DARK_BASE  # code 254 is kept for "never dark" (NaN)
_NIR_STEP = math.log(_NIR_HI / _NIR_LO) / _NIR_LEVELS  # 3.1 % per code
#: NIR band for the darkness test: the reflective band nearest this centre (µm), within NIR_TOLERANCE.
NIR_CENTRE, NIR_TOLERANCE = 0.84, 0.06
#: The kernel is learnt on a grid of at most this many cells a side, of at least MIN_CELL px.
LOWRES = 512
MIN_CELL = 4


@dataclass(frozen=True)
class ShadowPrior:
    """Where a scene's shadows can lie, from its sun angles (see :func:`shadow_prior`).

    Why: the learnt shift can point the wrong way where the network's own shadow evidence is weak
    (3 of 13 simulated scenes); the sun's azimuth fixes the direction (and its elevation, with the
    range of cloud heights, the distance), so only the strength of the evidence is left to learn.
    Opt-in: on simulated scenes it gained on one set and lost on another (docs/model.md).
    """

    direction: tuple[float, float]  # unit (dy, dx) in pixels, cloud → shadow (away from the sun)
    tolerance_deg: float = 20.0  # shifts further off that direction are dropped
    reach_px: tuple[float, float] | None = None  # (min, max) shift length in px, None: any length
    sun_azimuth: float | None = None  # degrees clockwise from north, as given (for the record)
    sun_elevation: float | None = None  # degrees above the horizon, as given

    def allows(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Which pixel shifts (dy, dx) a cloud's shadow can take."""
        dist = np.hypot(dy, dx)
        along = dy * self.direction[0] + dx * self.direction[1]
        ok = along >= math.cos(math.radians(self.tolerance_deg)) * dist
        if self.reach_px is not None:
            ok &= (dist >= self.reach_px[0]) & (dist <= self.reach_px[1])
        return ok


#: Cloud heights a shadow's distance is allowed for (km above ground; Fmask's range).
CLOUD_HEIGHTS_KM = (0.2, 12.0)


def shadow_prior(sun_azimuth: float, sun_elevation: float | None, transform: Any, crs: Any = None,
                 heights_km: tuple[float, float] = CLOUD_HEIGHTS_KM, tolerance_deg: float = 20.0) -> ShadowPrior:
    """The :class:`ShadowPrior` of a scene on grid ``transform`` (rasterio ``Affine``).

    The shadow falls away from the sun: in map coordinates (east, north) it points along
    (−sin az, −cos az), mapped to pixels through the grid's own axes, so rotated or south-up grids
    are handled too. The distance (height / tan(elevation)) is bounded only when the elevation is
    known and the CRS is projected (a geographic grid gets the direction alone). Without a CRS the
    image is taken as north up, with no distance bound (its pixel size is unknown).
    """
    if not 0.0 <= sun_azimuth <= 360.0:
        raise ValueError(f"sun azimuth must be within 0..360 degrees, got {sun_azimuth}")
    if sun_elevation is not None and not 0.0 < sun_elevation <= 90.0:
        raise ValueError(f"sun elevation must be within 0..90 degrees, got {sun_elevation}")
    a, b, _, d, e, _ = tuple(transform)[:6] if crs is not None else (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    det = a * e - b * d
    if det == 0:
        raise ValueError("the scene's grid transform is singular")
    az = math.radians(sun_azimuth)
    east, north = -math.sin(az), -math.cos(az)
    # pixel offsets (col, row) from map offsets: the inverse of the 2×2 part of the transform
    col, row = (e * east - b * north) / det, (-d * east + a * north) / det
    norm = math.hypot(row, col)
    direction = (row / norm, col / norm)
    reach = None
    metres = float(crs.linear_units_factor[1]) if crs is not None and crs.is_projected else None
    if sun_elevation is not None and metres is not None:
        px = math.sqrt(abs(det)) * metres  # pixel edge in metres (square-ish pixels)
        tan = math.tan(math.radians(max(sun_elevation, 3.0)))
        reach = (heights_km[0] * 1000.0 / tan / px, heights_km[1] * 1000.0 / tan / px)
    return ShadowPrior(direction, tolerance_deg, reach, float(sun_azimuth),
                       None if sun_elevation is None else float(sun_elevation))


@dataclass(frozen=True)
class ShadowOptions:
    """Knobs of the matching step (coarse choices; the sweep is in docs/model.md)."""

    boost: float = 3.0  # inside the zone, P(shadow) counts (1 + boost) times against P(clear)
    frac: float = 0.3  # shifts whose lift is ≥ frac × the peak lift form the kernel
    min_lift: float = 0.02  # peak excess P(shadow) per cloud pixel below which a scene shows no pairing
    min_shift_px: float = 3.0  # shifts shorter than this are cloud edges, not shadows
    min_support: float = 0.05  # a shift counts once this fraction of the clouds lands on clear ground
    min_cloud_px: int = 20
    max_cloud_fraction: float = 0.95
    prior: ShadowPrior | None = None  # the scene's sun geometry, when known: only shifts it allows
    # inside the zone a clear pixel whose NIR is below darkness × the mean NIR of the clear pixels
    # within dark_box_px around it turns shadow too (needs the NIR band; None or 0: off, the
    # default: on the real tiles it gained 1.96 points, short of the 2 declared before, docs/model.md)
    darkness: float | None = None
    dark_box_px: int = 65


def nir_band(descriptors: np.ndarray) -> int | None:
    """Index of the band the darkness test reads (reflective, centre nearest 0.84 µm), or None.

    By descriptor (columns: min, centre, max, FWHM, thermal flag), so any sensor works."""
    d = np.asarray(descriptors, dtype="float64")
    if d.ndim != 2 or d.shape[0] == 0:
        return None
    dist = np.where(d[:, 4] > 0.5, np.inf, np.abs(d[:, 1] - NIR_CENTRE))
    i = int(np.argmin(dist))
    return i if dist[i] <= NIR_TOLERANCE else None


def _nir_codes(nir: np.ndarray) -> np.ndarray:
    """uint8 codes DARK_BASE..253 of log NIR reflectance (254 for NaN: never dark)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.log(np.maximum(nir, np.float32(_NIR_LO)) * np.float32(1.0 / _NIR_LO))
    q *= np.float32(1.0 / _NIR_STEP)
    np.minimum(q, np.float32(_NIR_LEVELS - 1), out=q)
    np.nan_to_num(q, copy=False, nan=_NIR_LEVELS)
    out = q.astype(np.uint8)
    out += np.uint8(DARK_BASE)
    return out


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over the k×k box (k odd) centred on each cell, counting only cells inside the grid."""
    r = k // 2
    c = np.pad(a, ((r + 1, r), (r + 1, r))).cumsum(0).cumsum(1)
    h, w = a.shape
    return c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]


# The two FFT helpers below are scipy.signal.correlate/fftconvolve in a few lines of scipy.fft:
# scipy.signal would add ~0.5 s to the import of every `cloudmask mask` run.


#: Threads for the matching's FFTs: they run once per scene, after the model's workers are done,
#: on the otherwise idle cores (0.17 → ~0.1 s per scene on two cores; same numbers either way).
FFT_WORKERS = -1


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``c[d] = Σ_p a(p)·b(p + d)`` for every shift, centred: index ``(h, w)`` is shift 0."""
    h, w = a.shape
    fa = sfft.rfft2(a, (2 * h, 2 * w), workers=FFT_WORKERS)
    fb = sfft.rfft2(b, (2 * h, 2 * w), workers=FFT_WORKERS)
    return sfft.fftshift(sfft.irfft2(np.conj(fa) * fb, (2 * h, 2 * w), workers=FFT_WORKERS))


def _negate_shift(a: np.ndarray) -> np.ndarray:
    """``b[d] = a[−d]`` for a map centred as :func:`_xcorr` returns it."""
    return np.roll(a[::-1, ::-1], (1, 1), axis=(0, 1))


def _spread(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``z[q] = Σ_d a(q − d)·kernel(d)`` with ``kernel`` centred as :func:`_xcorr` returns it."""
    h, w = a.shape
    shape = (sfft.next_fast_len(3 * h, real=True), sfft.next_fast_len(3 * w, real=True))
    fk = sfft.rfft2(kernel, shape, workers=FFT_WORKERS)
    full = sfft.irfft2(sfft.rfft2(a, shape, workers=FFT_WORKERS) * fk, shape, workers=FFT_WORKERS)
    return full[h : 2 * h, w : 2 * w]


class ShadowMatcher:
    """Accumulates coarse cloud / P(shadow) maps row by row, then resolves candidate pixels."""

    def __init__(self, height: int, width: int, options: ShadowOptions | None = None) -> None:
        self.opt = options or ShadowOptions()
        self.h, self.w = height, width
        self.f = max(MIN_CELL, math.ceil(max(height, width) / LOWRES))
        lh, lw = -(-height // self.f), -(-width // self.f)
        self._cloud = np.zeros((lh, lw), "float64")  # cloud pixels per cell
        self._clear = np.zeros((lh, lw), "float64")  # valid non-cloud pixels per cell
        self._shadow = np.zeros((lh, lw), "float64")  # Σ P(shadow) over valid non-cloud pixels
        self._nir = np.zeros((lh, lw), "float64")  # Σ NIR over network-clear pixels (darkness test)
        self._n_nir = np.zeros((lh, lw), "float64")  # how many those are
        self._dark_thr: np.ndarray | None = None  # per cell: codes below this are dark (0 outside the zone)
        self.dark = bool(self.opt.darkness)  # the darkness test is on (rows given without NIR take no part)
        # statistics are sampled every ``step`` px (≥ 16 samples per cell): the maps are coarse anyway
        self.step = max(1, self.f // 4)
        xs = np.arange(0, width, self.step) // self.f
        self._col_starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        self.zone: np.ndarray | None = None  # coarse bool map after resolve()
        self._zone3: np.ndarray | None = None  # the zone as the class it gives (3 in, 0 out)
        self.active = False
        self.peak = 0.0  # excess P(shadow) per cloud pixel at the best shift
        self.shift: tuple[int, int] | None = None  # that shift (dy, dx) in px: cloud → shadow

    def _cells(self, rows: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Sum the sampled pixels of a (rows, w/s) map into coarse cells: (cells touched, lw)."""
        cols = np.add.reduceat(a, self._col_starts, axis=1, dtype="float64")
        cell = rows // self.f
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        return np.add.reduceat(cols, starts, axis=0)

    def observe(self, y0: int, proba: np.ndarray, cls: np.ndarray, nir: np.ndarray | None = None) -> np.ndarray:
        """Record rows ``y0:y0+len`` (``proba`` (4, r, w), ``cls`` from :func:`classify`, ``nir``
        (r, w) NIR reflectance for the darkness test) and return ``cls`` with clear pixels that
        would turn shadow inside the zone marked CANDIDATE, the other clear ones by their NIR code."""
        # clear (0) + CANDIDATE where it may turn shadow: uint8 arithmetic, which numpy vectorises
        # (a masked store ``out[m] = v`` goes element by element)
        cand = np.greater(np.float32(1.0 + self.opt.boost) * proba[3], proba[0])
        cand &= cls == 0
        out = cand.view(np.uint8) * np.uint8(CANDIDATE)
        out += cls
        if self.dark and nir is not None:
            plain = (out == 0).view(np.uint8)
            plain *= _nir_codes(nir)
            out += plain
        # statistics from every s-th row and column (absolute positions, so any row split agrees)
        s = self.step
        first = (-y0) % s
        if first >= cls.shape[0]:
            return out
        c, p_sh = cls[first::s, ::s], proba[3, first::s, ::s]
        rows = np.arange(y0 + first, y0 + cls.shape[0], s)
        ground = (c == 0) | (c == 3)
        r0 = int(rows[0]) // self.f
        maps = [(self._cloud, ((c == 1) | (c == 2)).view("uint8")), (self._clear, ground.view("uint8")),
                (self._shadow, np.where(ground, p_sh, np.float32(0.0)))]
        if self.dark and nir is not None:
            clear = (c == 0) & np.isfinite(nir[first::s, ::s])
            maps += [(self._n_nir, clear.view("uint8")), (self._nir, np.where(clear, nir[first::s, ::s], np.float32(0.0)))]
        for acc, m in maps:
            cells = self._cells(rows, m) * (s * s)  # in pixels
            acc[r0 : r0 + cells.shape[0]] += cells
        return out

    def resolve(self) -> bool:
        """Learn the displacement kernel and the shadow zone; False when the scene shows none."""
        o, f = self.opt, self.f
        n_cloud, n_clear = float(self._cloud.sum()), float(self._clear.sum())
        self.active, self._zone3 = False, None
        if n_cloud < o.min_cloud_px or n_clear == 0 or n_cloud / (n_cloud + n_clear) > o.max_cloud_fraction:
            return False
        # per-cell fractions (and mean P(shadow) mass), so every score below is per cloud pixel
        cloud, clear, shadow = self._cloud / (f * f), self._clear / (f * f), self._shadow / (f * f)
        n_cloud = float(cloud.sum())
        num = _xcorr(cloud, shadow)
        den = _xcorr(cloud, clear)
        base = shadow.sum() / clear.sum()
        # excess shadow mass per cloud pixel: the lift weighted by how much of the clouds the shift
        # keeps on clear ground in the scene, so a shift that maps one cloud onto one dark patch
        # (little support) cannot outvote the shift that holds for all of them
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = np.where(den > o.min_support * n_cloud, (num - base * den) / n_cloud, 0.0)
        # a shadow lies on one side of its cloud; dark rims, thin-cloud halos and the like surround
        # it: keep only what the opposite shift does not show as well
        lift -= np.maximum(_negate_shift(lift), 0.0)
        lh, lw = cloud.shape
        yy, xx = np.ogrid[-lh:lh, -lw:lw]
        lift[(yy * yy + xx * xx) * f * f < max(o.min_shift_px, 1.0) ** 2] = 0.0
        lift[lh, lw] = 0.0
        if o.prior is not None:  # the sun says where shadows can lie: other shifts are not theirs
            lift[~o.prior.allows(yy * float(f), xx * float(f))] = 0.0
        at = np.unravel_index(int(np.argmax(lift)), lift.shape)
        peak = self.peak = float(lift[at])
        self.shift = ((int(at[0]) - lh) * f, (int(at[1]) - lw) * f)
        if not peak > o.min_lift:
            return False
        kernel = (lift >= o.frac * peak).astype("float64")
        # the clouds shifted by every kernel displacement
        self.zone = _spread(cloud, kernel) > 0.25  # a quarter of the cell under a shifted cloud
        self.active = bool(self.zone.any())
        if self.active and self.dark and self._n_nir.any():
            self._dark_thr = self._darkness_thresholds()
        return self.active

    def _darkness_thresholds(self) -> np.ndarray:
        """Per cell, the NIR code below which a clear pixel is dark: ``darkness`` × the mean NIR of
        the network-clear pixels in the box around it (the scene's where under 5 % of the box is
        clear); 0 outside the zone, where nothing turns shadow."""
        o = self.opt
        k = max(1, round(o.dark_box_px / self.f)) | 1
        n = _box_sum(self._n_nir, k)
        valid = _box_sum(self._cloud + self._clear, k)
        scene_mean = self._nir.sum() / self._n_nir.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where((n > 0) & (n >= 0.05 * valid), _box_sum(self._nir, k) / n, scene_mean)
        thr = _nir_codes((float(o.darkness) * ref).astype("float32"))
        return np.where(self.zone, thr, np.uint8(0))

    def _cells_to_rows(self, cells: np.ndarray, y0: int, rows: np.ndarray) -> np.ndarray:
        """A coarse per-cell map expanded to the pixels of rows ``y0:…``."""
        zr = cells[np.arange(y0, y0 + rows.shape[0]) // self.f]  # cell rows, then columns
        return np.repeat(zr, self.f, axis=1)[:, : rows.shape[1]]

    def apply(self, y0: int, rows: np.ndarray) -> np.ndarray:
        """CANDIDATE pixels (and dark NIR codes) of rows ``y0:…`` → shadow inside the zone, clear
        outside (in place)."""
        # uint8 arithmetic, which numpy vectorises (masked stores go element by element, ~8x slower)
        if self.dark:  # NIR codes: shadow where darker than the cell's threshold, else clear
            coded = (rows >= DARK_BASE) & (rows != 255)
            if coded.any():
                dark = None
                if self._dark_thr is not None:
                    dark = (rows < self._cells_to_rows(self._dark_thr, y0, rows)) & coded
                rows *= (~coded).view(np.uint8)
                if dark is not None:
                    rows += dark.view(np.uint8) * np.uint8(3)
        cand = (rows == CANDIDATE).view(np.uint8)
        if not cand.any():
            return rows
        # candidates become clear (0), then 3 inside the zone
        rows -= cand * np.uint8(CANDIDATE)
        if self.active and self.zone is not None:
            if self._zone3 is None:
                self._zone3 = np.where(self.zone, np.uint8(3), np.uint8(0))
            rows += self._cells_to_rows(self._zone3, y0, rows) * cand
        return rows


def match_shadows(proba: np.ndarray, cls: np.ndarray, options: ShadowOptions | None = None,
                  nir: np.ndarray | None = None) -> np.ndarray:
    """Whole-array form: (4, h, w) probabilities and their classes (and the (h, w) NIR reflectance
    for the darkness test) → classes with matched shadows."""
    proba, cls = np.asarray(proba), np.asarray(cls)
    if proba.ndim != 3 or proba.shape[0] != 4 or cls.shape != proba.shape[1:]:
        raise BandError(f"match_shadows takes (4, h, w) probabilities and (h, w) classes, got {proba.shape} "
                        f"and {cls.shape}")
    if cls.dtype != np.uint8:  # e.g. argmax's int64: the matcher works in uint8 arithmetic
        if cls.dtype.kind not in "iu" or cls.size and (cls.min() < 0 or cls.max() > 255):
            raise BandError(f"classes must be integers 0-3 (255 nodata), got dtype {cls.dtype}")
        cls = cls.astype(np.uint8)
    m = ShadowMatcher(cls.shape[0], cls.shape[1], options)
    marked = m.observe(0, proba, cls, nir)
    m.resolve()
    return m.apply(0, marked)


__all__ = ["CANDIDATE", "CLOUD_HEIGHTS_KM", "DARK_BASE", "LOWRES", "ShadowOptions", "ShadowMatcher", "ShadowPrior",
           "match_shadows", "nir_band", "shadow_prior"]
