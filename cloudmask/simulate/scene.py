"""``simulate_scene``: one labelled synthetic scene for any set of bands.

The pipeline, each step in its own module:
surface layout (:mod:`.layout`) → surface spectra in band space (:mod:`.spectra`) → shadows
(:mod:`.shadows`) → clouds (:mod:`.clouds`) → atmosphere (:mod:`.atmosphere`) → thermal emission →
sensor effects (:mod:`.sensor`) → labels.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudmask.errors import BandError, UsageError
from cloudmask.registry import Band, Sensor
from cloudmask.simulate import atmosphere as atm
from cloudmask.simulate.clouds import absorption_factor, cirrus_field, cloud_optics, conservative_reflectance, cumulus_field
from cloudmask.simulate.layout import BIOMES, fractal_noise, make_layout, terrain_shading
from cloudmask.simulate.sensor import apply_sensor, degrade_resolution, nodata_border
from cloudmask.simulate.shadows import irradiance, project
from cloudmask.simulate.spectra import CLASSES, load_table, responses

CLEAR, THICK, THIN, SHADOW, NODATA = 0, 1, 2, 3, 255
LABEL_NAMES = {CLEAR: "clear", THICK: "thick_cloud", THIN: "thin_cloud", SHADOW: "cloud_shadow"}

# surface temperature offset from air temperature (K) and broadband thermal emissivity per class
_T_OFFSET = {"vegetation": -1.5, "soil": 6.0, "sand": 9.0, "npv": 4.0, "burned": 8.0, "urban": 5.0,
             "snow": -3.0, "water": -7.0, "salt": 3.0}
# per-parcel brightness range per class: lab spectra (dry, ground soils; dense PROSAIL canopies; fresh
# snow) are brighter than the same covers seen from orbit (moisture, roughness, shade, mixed pixels)
_GAIN = {"vegetation": (0.55, 1.0), "soil": (0.45, 0.95), "sand": (0.7, 1.05), "npv": (0.6, 1.0),
         "burned": (0.7, 1.1), "urban": (0.7, 1.1), "snow": (0.6, 1.05), "water": (0.9, 1.1), "salt": (0.8, 1.0)}
_EMISSIVITY = {"vegetation": 0.985, "soil": 0.955, "sand": 0.93, "npv": 0.95, "burned": 0.96, "urban": 0.945,
               "snow": 0.99, "water": 0.99, "salt": 0.94}

#: Options accepted by :func:`simulate_scene` and their defaults (None = drawn at random per scene).
DEFAULTS: dict[str, Any] = {
    "pixel_size": None,  # metres; default: median band resolution, clipped to 10..500
    "biome": None,  # one of BIOMES
    "sun_elevation": None,  # degrees
    "sun_azimuth": None,  # degrees clockwise from north
    "cloud_cover": None,  # target fraction of the low/mid cloud layer (0..1)
    "cloud_tau_max": None,  # optical thickness of cloud cores
    "cloud_height_km": None,  # cloud base
    "second_layer_km": None,  # base of a second cloud deck over part of the scene (0 = none)
    "cirrus_cover": None,  # 0 disables cirrus
    "cirrus_tau_max": None,
    "haze_tau": None,  # optical thickness of a smooth low haze/stratus veil (0 = none)
    "relief": None,  # terrain slope scale (0 = flat); mountains shade the surface
    "glint_prob": 0.08,  # probability of sun glint on water bodies
    "aerosol_tau550": None,
    "angstrom": None,
    "water_vapour_cm": None,
    "air_temperature": None,  # K, drives thermal bands
    "level": "toa",  # "toa" (L1) or "boa": surface reflectance as an L2 processor with imperfect
    #                  aerosol/water-vapour estimates would deliver it (thermal: surface temperature)
    "noise": 1.0,  # scale of sensor noise (0 = none)
    "quantise": True,
    "nodata_border_prob": 0.25,
    "band_dropout": 0.0,  # probability that a band is entirely missing (NaN)
    "saturation_prob": 0.1,
    "thick_tau": 5.0,  # label thresholds on total optical thickness
    "thin_min_tau": 0.5,
    "shadow_tau": 5.0,  # min projected optical thickness for a shadow label
    "shadow_max_sun": 0.7,  # ... and at most this fraction of the direct beam getting through
    "shadow_ambiguous_sun": None,  # if set: clear pixels with less direct sun than this (penumbra,
    #                                faint shadows an annotator may call either way) are labelled 255
}


@dataclass
class SimScene:
    """A simulated scene: physical values like :func:`cloudmask.scene.read_scene`, labels and facts."""

    data: np.ndarray  # (n_bands, h, w) float32; reflectance or kelvin; NaN = nodata
    labels: np.ndarray  # (h, w) uint8: 0 clear, 1 thick, 2 thin, 3 shadow, 255 nodata
    meta: dict[str, Any] = field(default_factory=dict)
    bands: tuple[Band, ...] = ()


def _rng(rng: np.random.Generator | int | None) -> tuple[np.random.Generator, int]:
    """A generator plus the integer seed that reproduces it (recorded in the metadata)."""
    if isinstance(rng, np.random.Generator):
        seed = int(rng.integers(0, 2**63 - 1))
    elif rng is None:
        seed = int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0] >> 1)
    elif isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        seed = int(rng)
        if seed < 0:
            raise UsageError(f"seed must be a whole number >= 0, got {seed}")
    else:
        raise UsageError(f"rng must be a numpy Generator, an int seed or None, not {type(rng).__name__}")
    return np.random.default_rng(seed), seed


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UsageError(f"size must be an int or (height, width), not {size!r}") from None
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise UsageError(f"size {h}x{w} is outside 16..8192 pixels")
    return h, w


def _draw(opts: dict[str, Any], rng: np.random.Generator, bands: Sequence[Band]) -> dict[str, Any]:
    """Fill the random scene parameters (every draw happens, so a fixed option never shifts the
    random stream of the others)."""
    p = dict(opts)
    d = {
        "biome": str(rng.choice(list(BIOMES), p=[0.17, 0.17, 0.14, 0.12, 0.1, 0.12, 0.08, 0.1])),
        "sun_elevation": float(rng.uniform(15, 70)),
        "sun_azimuth": float(rng.uniform(0, 360)),
        "aerosol_tau550": float(np.clip(np.exp(rng.normal(np.log(0.1), 0.7)), 0.01, 1.5)),
        "angstrom": float(rng.uniform(0.5, 2.0)),
        "cloud_height_km": float(rng.uniform(0.5, 4.0)),
        "cloud_tau_max": float(np.clip(np.exp(rng.normal(np.log(15), 0.9)), 3, 120)),
        "cirrus_tau_max": float(np.exp(rng.uniform(np.log(0.2), np.log(3.0)))),
        "haze_tau": float(np.exp(rng.uniform(np.log(0.3), np.log(4.0)))) if rng.random() < 0.3 else 0.0,
    }
    u = rng.random()
    d["cloud_cover"] = 0.0 if u < 0.12 else 1.0 if u < 0.16 else float(rng.beta(0.9, 1.3))
    d["cirrus_cover"] = float(rng.uniform(0.1, 0.8)) if rng.random() < 0.15 else 0.0
    relief_u, shade_leak, sky_view = rng.random(2), rng.uniform(0.45, 0.9), rng.uniform(0.5, 0.9)
    thickness = float(rng.uniform(0.2, 2.0))
    cirrus_h = float(rng.uniform(7, 12))
    second = float(rng.uniform(0.5, 6.0)) if rng.random() < 0.35 else None  # a second water-cloud deck
    t_air_u = rng.uniform(0, 1)
    wv_u = rng.uniform(0.5, 1.2)
    for k, v in d.items():
        if p.get(k) is None:
            p[k] = v
    if p["biome"] not in BIOMES:
        raise UsageError(f"unknown biome {p['biome']!r}; choose one of {', '.join(BIOMES)}")
    if p["air_temperature"] is None:
        lo, hi = (235.0, 275.0) if p["biome"] == "snow_ice" else (275.0, 312.0)
        p["air_temperature"] = float(lo + t_air_u * (hi - lo))
    if p["water_vapour_cm"] is None:
        wv = 0.1 + 4.5 * max(p["air_temperature"] - 245, 0) / 67 * wv_u
        if p["biome"] == "snow_ice":  # high, dry mountains and polar air: the 1375 nm band sees some snow
            wv *= 0.2 + 0.8 * wv_u / 1.2
        p["water_vapour_cm"] = float(np.clip(wv, 0.05, 5.5))
    if p["pixel_size"] is None:
        res = [b.resolution for b in bands if b.kind == "reflectance"] or [b.resolution for b in bands]
        p["pixel_size"] = float(np.clip(np.median(res), 10, 500))
    elif not (isinstance(p["pixel_size"], numbers.Real) and np.isfinite(p["pixel_size"]) and p["pixel_size"] > 0):
        raise UsageError(f"pixel_size must be a number of metres above 0, got {p['pixel_size']!r}")
    if p["relief"] is None:
        hi = 0.8 if p["biome"] == "snow_ice" else 0.25
        p["relief"] = float(relief_u[1] * hi) if relief_u[0] < (0.8 if p["biome"] == "snow_ice" else 0.5) else 0.0
    p["shadow_leak"], p["sky_view"] = float(shade_leak), float(sky_view)
    p["cloud_top_km"] = p["cloud_height_km"] + thickness
    p["second_layer_km"] = second if p["second_layer_km"] is None else (p["second_layer_km"] or None)
    p["cirrus_height_km"] = cirrus_h
    for k in ("cloud_cover", "cirrus_cover"):
        if isinstance(p[k], bool) or not isinstance(p[k], numbers.Real) or not 0 <= p[k] <= 1:
            raise UsageError(f"{k} must be within 0..1, got {p[k]!r}")
    if p["level"] not in ("toa", "boa"):
        raise UsageError(f"level must be 'toa' or 'boa', got {p['level']!r}")
    for k, (lo, hi, unit) in _RANGES.items():
        v = p.get(k)
        if v is None and k in ("second_layer_km", "shadow_ambiguous_sun"):
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo <= float(v) <= hi:
            raise UsageError(f"{k} must be a number within {lo:g}..{hi:g}{unit}, got {v!r}")
        p[k] = float(v)
    if not isinstance(p["quantise"], (bool, np.bool_)):
        raise UsageError(f"quantise must be true or false, got {p['quantise']!r}")
    if not 0 < p["thin_min_tau"] <= p["thick_tau"]:  # else the thin class vanishes, or every pixel is cloud
        raise UsageError(f"label thresholds need 0 < thin_min_tau <= thick_tau, got {p['thin_min_tau']:g} and "
                         f"{p['thick_tau']:g}")
    return p


#: Physically possible values of the numeric options (NaN and out-of-range values gave scenes of
#: NaN, reflectance in the thousands or thermal bands at 60 K, without an error).
_RANGES: dict[str, tuple[float, float, str]] = {
    "pixel_size": (1e-3, 1e5, " m"), "sun_elevation": (1.0, 90.0, " degrees"), "sun_azimuth": (0.0, 360.0, " degrees"),
    "cloud_cover": (0.0, 1.0, ""), "cirrus_cover": (0.0, 1.0, ""), "cloud_tau_max": (0.0, 1000.0, ""),
    "cloud_height_km": (0.0, 20.0, " km"), "second_layer_km": (0.0, 20.0, " km"), "cirrus_tau_max": (0.0, 50.0, ""),
    "haze_tau": (0.0, 100.0, ""), "relief": (0.0, 5.0, ""), "glint_prob": (0.0, 1.0, ""),
    "aerosol_tau550": (0.0, 5.0, ""), "angstrom": (-1.0, 4.0, ""), "water_vapour_cm": (0.0, 10.0, " cm"),
    "air_temperature": (180.0, 340.0, " K"), "noise": (0.0, 100.0, ""), "nodata_border_prob": (0.0, 1.0, ""),
    "band_dropout": (0.0, 1.0, ""), "saturation_prob": (0.0, 1.0, ""), "thick_tau": (0.0, 1000.0, ""),
    "thin_min_tau": (0.0, 1000.0, ""), "shadow_tau": (0.0, 1000.0, ""), "shadow_max_sun": (0.0, 1.0, ""),
    "shadow_ambiguous_sun": (0.0, 1.0, ""),
}


def simulate_scene(bands: Sequence[Band], size: int | tuple[int, int] = 256,
                   rng: np.random.Generator | int | None = None, **options: Any) -> SimScene:
    """Simulate one labelled scene for ``bands`` (any :class:`Band`, real or virtual).

    Values are physical (TOA reflectance, or surface reflectance with level="boa"; kelvin for thermal
    bands), NaN where nodata. Options are listed in :data:`DEFAULTS`; anything left at None is drawn
    at random. Equal ``rng`` seeds give identical scenes.
    """
    if isinstance(bands, (str, bytes)) or bands is None:
        raise UsageError(f"simulate_scene takes a Sensor (get_sensor('sentinel2')) or its Band objects, got {bands!r}")
    bands = tuple(bands.bands if isinstance(bands, Sensor) else bands)  # a Sensor: all its bands
    if not all(isinstance(b, Band) for b in bands):
        odd = next(b for b in bands if not isinstance(b, Band))
        raise UsageError(f"simulate_scene takes a Sensor or Band objects (sensor.band(name)), got {odd!r}")
    if not bands:
        raise BandError("simulate_scene needs at least one band")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"unknown simulator option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    shape = _shape(size)
    gen, seed = _rng(rng)
    p = _draw({**DEFAULTS, **options}, gen, bands)
    h, w = shape
    table = load_table()
    refl = [i for i, b in enumerate(bands) if b.kind == "reflectance"]
    therm = [i for i, b in enumerate(bands) if b.kind == "thermal"]
    rbands = [bands[i] for i in refl]
    mu_s = float(np.sin(np.deg2rad(p["sun_elevation"])))
    px = p["pixel_size"]

    # ---- surface
    lay = make_layout(shape, p["biome"], gen, px)
    n_cls = len(CLASSES)
    n_parcels = int(lay.parcels.max()) + 1
    lo = np.array([table.offsets[c][0] for c in CLASSES])
    span = np.array([table.offsets[c][1] - table.offsets[c][0] for c in CLASSES])
    combo_cls = np.tile(np.arange(n_cls), n_parcels)
    pick_a = lo[combo_cls] + (gen.random(combo_cls.size) * span[combo_cls]).astype(np.int64)
    pick_b = lo[combo_cls] + (gen.random(combo_cls.size) * span[combo_cls]).astype(np.int64)
    combo = lay.parcels * n_cls + lay.classes

    # ---- clouds (τ fields) and their shadows
    tau_low = cumulus_field(shape, gen, p["cloud_cover"], p["cloud_tau_max"], px)
    if p["haze_tau"] > 0:  # a smooth veil over part of the scene: thin cloud that is hard to see
        veil = 0.5 + 0.5 * np.tanh(1.5 * fractal_noise(shape, 3.5, gen) + gen.uniform(-1, 1.5))
        tau_low = tau_low + (p["haze_tau"] * veil).astype("float32")
    tau_ci = cirrus_field(shape, gen, p["cirrus_cover"], p["cirrus_tau_max"], px)
    thick_km = p["cloud_top_km"] - p["cloud_height_km"]
    top_km = np.full(shape, p["cloud_top_km"], dtype="float32")  # per-pixel cloud-top height (thermal)
    if p["second_layer_km"]:  # part of the field sits at another height: its own shadow offset
        deck = fractal_noise(shape, 3.5, gen) > gen.uniform(-0.5, 0.8)
        h2 = p["second_layer_km"]
        sh_low = np.maximum(
            project(np.where(deck, 0, tau_low).astype("float32"), p["cloud_height_km"], p["cloud_top_km"],
                    p["sun_elevation"], p["sun_azimuth"], px),
            project(np.where(deck, tau_low, 0).astype("float32"), h2, h2 + thick_km, p["sun_elevation"],
                    p["sun_azimuth"], px))
        top_km[deck] = h2 + thick_km
    else:
        sh_low = project(tau_low, p["cloud_height_km"], p["cloud_top_km"], p["sun_elevation"], p["sun_azimuth"], px)
    sh_ci = project(tau_ci, p["cirrus_height_km"], p["cirrus_height_km"] + 0.5, p["sun_elevation"],
                    p["sun_azimuth"], px, steps=1)
    sh_tau = sh_low + sh_ci
    sky_view = p["sky_view"]
    # L2 processor's errors in aerosol and water vapour (drawn always, used only for level="boa")
    aot_err, wv_err = float(np.exp(gen.normal(0, 0.35))), float(np.exp(gen.normal(0, 0.15)))
    t_sun = 1 - p["shadow_leak"] * conservative_reflectance(sh_tau, mu_s)  # cloud transmittance of the sun ray
    shading = terrain_shading(shape, gen, p["relief"], p["sun_elevation"], p["sun_azimuth"])
    # cloud-top relief and 3-D illumination: a per-scene brightness (cloud type, sun-facing sides) and texture
    cloud_tex = gen.uniform(0.8, 1.15) * (1 + gen.uniform(0.05, 0.3) * fractal_noise(shape, 2.2, gen)
                                           * np.clip(tau_low / 10, 0, 1))
    glint = float(gen.uniform(0.02, 0.25)) if gen.random() < p["glint_prob"] else 0.0

    data = np.empty((len(bands), h, w), dtype="float32")
    if rbands:
        lib_t = np.ascontiguousarray(table.library_bands(rbands).T)  # (nb, n_spectra)
        surf_a = lib_t[:, pick_a[combo]]
        surf_b = lib_t[:, pick_b[combo]]
        surf_b -= surf_a
        surf_b *= lay.mix[None]
        surf = surf_a
        surf += surf_b
        del surf_b
        g_lo = np.array([_GAIN[c][0] for c in CLASSES])
        g_hi = np.array([_GAIN[c][1] for c in CLASSES])
        gain = (g_lo[combo_cls] + gen.random(combo_cls.size) * (g_hi - g_lo)[combo_cls]).astype("float32")
        surf *= (lay.brightness * gain[combo])[None]
        # mixed pixels at edges: each pixel shares a third of its signal with its upper and left neighbours
        blend = surf.copy()
        blend[:, 1:, :] += surf[:, :-1, :]
        blend[:, 0, :] += surf[:, 0, :]  # the border has no upper/left neighbour: count itself twice
        blend[:, :, 1:] += surf[:, :, :-1]
        blend[:, :, 0] += surf[:, :, 0]
        blend *= np.float32(1 / 3)
        surf = blend
        if glint > 0:  # specular sun glint on water: spectrally flat, patchy (wind), a cloud confuser
            water = lay.classes == CLASSES.index("water")
            if water.any():
                patch = np.clip(0.5 + 0.5 * fractal_noise(shape, 3.0, gen), 0, 1)
                surf[:, water] += np.float32(glint) * patch[water]
        np.clip(surf, 0.0, 1.0, out=surf)

        resp = responses(rbands, table)
        a = atm.atmosphere(resp, table.grid, p["sun_elevation"], p["aerosol_tau550"], p["angstrom"],
                           p["water_vapour_cm"])
        # irradiance lost in cloud shadow (direct beam through the cloud, sky partly hidden)
        e = irradiance(np.broadcast_to(t_sun[None], surf.shape), a.t_dir, a.t_dif, sky_view,
                       np.clip(sh_tau / 5.0, 0, 1))
        rho = surf * shading[None]
        rho *= e
        del e
        t2 = (a.t_up * (a.t_dir + a.t_dif))[:, None, None]
        s = a.s_alb[:, None, None]
        g2 = a.gas2[:, None, None]
        toa = g2 * t2 * rho / (1 - s * surf)
        if p["cloud_cover"] > 0 or p["haze_tau"] > 0:
            absorb = resp @ absorption_factor(table.grid, table.k_ice, "water", float(gen.uniform(6, 16)))
            co = cloud_optics(tau_low, absorb, mu_s)
            g_c = a.gas_above(resp, table.grid, p["cloud_top_km"], mu_s, p["water_vapour_cm"], 0.3)[:, None, None]
            t_above = t2 ** np.float32(np.exp(-p["cloud_top_km"] / 8.0))
            r0 = conservative_reflectance(tau_low, mu_s)[None]
            toa = toa * co.trans**2 / (1 - co.reflect * surf) + g_c * t_above * co.reflect * cloud_tex[None]
            toa += a.path[:, None, None] * (1 - 0.6 * r0)
        else:
            toa += a.path[:, None, None]
        if p["cirrus_cover"] > 0:
            absorb = resp @ absorption_factor(table.grid, table.k_ice, "ice", float(gen.uniform(20, 60)))
            ci = cloud_optics(tau_ci, absorb, mu_s)
            g_ci = a.gas_above(resp, table.grid, p["cirrus_height_km"], mu_s, p["water_vapour_cm"], 0.3)[:, None, None]
            toa = ci.reflect * g_ci + ci.trans**2 * toa
        if p["level"] == "boa":
            est = atm.atmosphere(resp, table.grid, p["sun_elevation"], p["aerosol_tau550"] * aot_err, p["angstrom"],
                                 p["water_vapour_cm"] * wv_err)
            y = (toa - est.path[:, None, None]) / np.maximum(est.gas2 * est.t_up * (est.t_dir + est.t_dif), 0.05)[:, None, None]
            toa = np.clip(y / (1 + est.s_alb[:, None, None] * y), -0.05, 1.6)
        data[refl] = toa
    if therm:
        t_air = p["air_temperature"]
        t_off = np.array([_T_OFFSET[c] for c in CLASSES], dtype="float32")
        emis = np.array([_EMISSIVITY[c] for c in CLASSES], dtype="float32")
        t_surf = t_air + t_off[lay.classes] + 1.5 * fractal_noise(shape, 1.8, gen)
        t_surf -= 5.0 * np.clip(sh_tau / 5.0, 0, 1) * mu_s  # shaded ground is cooler
        eps = emis[lay.classes]
        t_cloud = np.maximum(t_air - 6.5 * top_km - 2.0, 200.0)
        t_cirrus = max(t_air - 6.5 * p["cirrus_height_km"], 195.0)
        e_low = 1 - np.exp(-0.6 * tau_low)
        e_ci = 1 - np.exp(-0.5 * tau_ci)
        for i in therm:
            wl = bands[i].wavelength_center
            trans = float(np.exp(-(0.05 + 0.04 * max(wl - 10.5, 0)) * p["water_vapour_cm"]))
            lw = eps * atm.planck(wl, t_surf) + (1 - eps) * atm.planck(wl, t_air - 30)
            lw = e_low * atm.planck(wl, t_cloud) + (1 - e_low) * lw
            lw = trans * lw + (1 - trans) * atm.planck(wl, t_air - 8)
            lw = e_ci * atm.planck(wl, t_cirrus) + (1 - e_ci) * lw
            if p["level"] == "boa":  # surface-temperature product: undo the estimated atmosphere
                trans_e = float(np.exp(-(0.05 + 0.04 * max(wl - 10.5, 0)) * p["water_vapour_cm"] * wv_err))
                lw = (lw - (1 - trans_e) * atm.planck(wl, t_air - 8)) / trans_e
            data[i] = atm.brightness_temperature(wl, lw)

    # ---- sensor
    degrade_resolution(data, bands, px)
    saturation = float(gen.uniform(0.9, 1.3)) if gen.random() < p["saturation_prob"] else None
    meta_sensor = apply_sensor(data, bands, gen, noise=float(p["noise"]), saturation=saturation,
                               quantise=bool(p["quantise"]))

    # ---- labels
    tau_tot = tau_low + tau_ci
    labels = np.zeros(shape, dtype="uint8")
    labels[tau_tot >= p["thin_min_tau"]] = THIN
    labels[tau_tot >= p["thick_tau"]] = THICK
    labels[(labels == CLEAR) & (sh_tau >= p["shadow_tau"]) & (t_sun < p["shadow_max_sun"])] = SHADOW
    if p["shadow_ambiguous_sun"] is not None:
        labels[(labels == CLEAR) & (t_sun < float(p["shadow_ambiguous_sun"]))] = NODATA
    border = nodata_border(shape, gen) if gen.random() < p["nodata_border_prob"] else None
    if border is not None:
        labels[border] = NODATA
        data[:, border] = np.nan
    dropped = [bands[i].name for i in range(len(bands)) if gen.random() < p["band_dropout"]]
    for i, b in enumerate(bands):
        if b.name in dropped:
            data[i] = np.nan
    if dropped:  # a pixel with no band left has no class either (every band dropped: the whole scene)
        labels[np.isnan(data).all(axis=0)] = NODATA

    valid = labels != NODATA
    n_valid = max(int(valid.sum()), 1)
    meta = {
        "seed": seed,
        "size": [h, w],
        "bands": [b.name for b in bands],
        "pixel_size": px,
        "biome": p["biome"],
        "level": p["level"],
        "sun_elevation": p["sun_elevation"],
        "sun_azimuth": p["sun_azimuth"],
        "cloud_height_km": p["cloud_height_km"],
        "cloud_top_km": p["cloud_top_km"],
        "second_layer_km": p["second_layer_km"],
        "cirrus_height_km": p["cirrus_height_km"] if p["cirrus_cover"] > 0 else None,
        "cloud_cover_target": p["cloud_cover"],
        "cirrus_cover_target": p["cirrus_cover"],
        "cloud_tau_max": p["cloud_tau_max"],
        "aerosol_tau550": p["aerosol_tau550"],
        "angstrom": p["angstrom"],
        "water_vapour_cm": p["water_vapour_cm"],
        "air_temperature": p["air_temperature"],
        "saturation": saturation,
        "dropped_bands": dropped,
        "calibration": meta_sensor,
        "class_fractions": {name: float((labels == k).sum() / n_valid) for k, name in LABEL_NAMES.items()},
        "nodata_fraction": float(1 - valid.mean()),
        "surface_fractions": {c: float((lay.classes[valid] == i).mean()) if valid.any() else 0.0
                              for i, c in enumerate(CLASSES)},
        "label_thresholds": {k: p[k] for k in ("thick_tau", "thin_min_tau", "shadow_tau", "shadow_max_sun")},
        "haze_tau": p["haze_tau"],
        "relief": p["relief"],
        "glint": glint,
    }
    return SimScene(data=data, labels=labels, meta=meta, bands=bands)


__all__ = ["SimScene", "simulate_scene", "DEFAULTS", "LABEL_NAMES"]
