"""Realism checks with synthetic thresholds: each physical effect shows up with the right sign."""

from __future__ import annotations

import numpy as np
import pytest

from cloudmask.registry import Band, get_sensor
from cloudmask.simulate import simulate_scene
from cloudmask.simulate import atmosphere as atm
from cloudmask.simulate.shadows import project, shadow_offset_px
from cloudmask.simulate.spectra import CLASSES, load_table, water_reflectance

QUIET = {"noise": 0.0, "nodata_border_prob": 0.0, "saturation_prob": 0.0, "haze_tau": 0.0, "relief": 0.0}


@pytest.fixture(scope="module")
def s2() -> dict[str, int]:
    names = [b.name for b in get_sensor("sentinel2").bands]
    return {n: i for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def bands() -> list[Band]:
    return list(get_sensor("sentinel2").bands)


def _class_mean(sim, lab: int) -> np.ndarray:
    m = sim.labels == lab
    assert m.sum() > 20, f"label {lab} too rare"
    return np.nanmean(sim.data[:, m], axis=1)


def test_cloud_brighter_than_land_and_flat(bands, s2) -> None:
    sim = simulate_scene(bands, 96, rng=7, biome="forest", cloud_cover=0.4, cirrus_cover=0.0, cloud_tau_max=40, **QUIET)
    clear, thick = _class_mean(sim, 0), _class_mean(sim, 1)
    assert thick[s2["B02"]] > clear[s2["B02"]] + 0.2
    vnir = thick[[s2["B02"], s2["B03"], s2["B04"], s2["B8A"]]]
    assert vnir.max() / vnir.min() < 1.3  # spectrally flat
    assert thick[s2["B11"]] < thick[s2["B04"]] and thick[s2["B12"]] < thick[s2["B11"]]  # droplet absorption


def test_surface_library_signatures(bands, s2) -> None:
    t = load_table()
    lib = t.library_bands(bands)
    veg = lib[t.class_slice("vegetation")].mean(0)
    snow = lib[t.class_slice("snow")].mean(0)
    water = lib[t.class_slice("water")].mean(0)
    assert veg[s2["B8A"]] > 2.5 * veg[s2["B04"]]  # red edge
    assert veg[s2["B07"]] > veg[s2["B05"]]
    assert snow[s2["B03"]] > 0.7 and snow[s2["B11"]] < 0.2  # bright VNIR, dark at 1.6 µm
    assert water[s2["B8A"]] < 0.03 and water[s2["B8A"]] < water[s2["B03"]]
    assert set(CLASSES) == set(t.classes)


def test_snow_dark_at_1600_unlike_cloud(bands, s2) -> None:
    sim = simulate_scene(bands, 96, rng=3, biome="snow_ice", cloud_cover=0.4, cirrus_cover=0.0, cloud_tau_max=40,
                         **QUIET)
    snow = (sim.labels == 0) & (np.asarray(sim.data[s2["B03"]]) > 0.6)
    assert snow.sum() > 50
    thick = _class_mean(sim, 1)
    assert np.nanmean(sim.data[s2["B11"], snow]) < 0.2 < thick[s2["B11"]]


def test_cirrus_band_hides_surface_shows_cirrus(bands, s2) -> None:
    clear = simulate_scene(bands, 64, rng=1, cloud_cover=0, cirrus_cover=0, water_vapour_cm=2.0, **QUIET)
    assert np.nanmax(clear.data[s2["B10"]]) < 0.01
    ci = simulate_scene(bands, 64, rng=1, cloud_cover=0, cirrus_cover=0.6, cirrus_tau_max=2.0,
                        water_vapour_cm=2.0, **QUIET)
    cirrus = ci.labels > 0
    assert np.nanmean(ci.data[s2["B10"], cirrus]) > 0.03


def test_water_vapour_dip(bands, s2) -> None:
    dry = simulate_scene(bands, 48, rng=5, cloud_cover=0, cirrus_cover=0, biome="forest", water_vapour_cm=0.3, **QUIET)
    wet = simulate_scene(bands, 48, rng=5, cloud_cover=0, cirrus_cover=0, biome="forest", water_vapour_cm=4.5, **QUIET)
    ratio = lambda s: np.nanmean(s.data[s2["B09"]]) / np.nanmean(s.data[s2["B8A"]])  # noqa: E731
    assert ratio(wet) < 0.8 * ratio(dry)


def test_shadow_dark_and_bluish(bands, s2) -> None:
    # the same surface (same seed) with and without clouds: the layout is drawn before the clouds
    kw = dict(biome="cropland", cirrus_cover=0.0, cloud_tau_max=40, sun_elevation=35, **QUIET)
    cloudy = simulate_scene(bands, 128, rng=9, cloud_cover=0.3, **kw)
    clear = simulate_scene(bands, 128, rng=9, cloud_cover=0.0, **kw)
    m = (cloudy.labels == 3) & (clear.data[s2["B8A"]] > 0.1)
    assert m.sum() > 50
    blue, nir = (np.median(cloudy.data[s2[b], m] / clear.data[s2[b], m]) for b in ("B02", "B8A"))
    assert nir < 0.6
    # diffuse sky light is blue: the shadow keeps relatively more blue than NIR
    assert blue > nir + 0.1


def test_shadow_geometry() -> None:
    # sun in the south-east: the shadow falls to the north-west (up and left)
    dy, dx = shadow_offset_px(2.0, 45.0, 135.0, 30.0)
    assert dy < 0 and dx < 0
    assert np.hypot(dy, dx) == pytest.approx(2000 / 30, rel=1e-6)
    tau = np.zeros((100, 100), "float32")
    tau[60:70, 60:70] = 10
    sh = project(tau, 1.0, 1.0, 45.0, 135.0, 30.0, steps=1)
    ys, xs = np.nonzero(sh)
    assert ys.mean() < 65 and xs.mean() < 65


def test_thermal_clouds_cold() -> None:
    tir = Band(name="tir", kind="thermal", wavelength_min=10.6, wavelength_center=10.9, wavelength_max=11.2,
               fwhm=0.6, resolution=30)
    blue = Band(name="b", kind="reflectance", wavelength_min=0.45, wavelength_center=0.48, wavelength_max=0.51,
                fwhm=0.06, resolution=30)
    sim = simulate_scene([blue, tir], 96, rng=2, cloud_cover=0.4, cirrus_cover=0, air_temperature=295.0,
                         cloud_height_km=2.0, biome="cropland", **QUIET)
    assert _class_mean(sim, 1)[1] < _class_mean(sim, 0)[1] - 10


def test_atmosphere_terms() -> None:
    grid = np.arange(400.0, 2501.0, 5.0)
    assert atm.rayleigh_tau(np.array([450.0]))[0] == pytest.approx(0.21, abs=0.02)
    tau = atm.gas_tau(grid, 2.0)
    assert tau[np.searchsorted(grid, 1375)] > 3 and tau[np.searchsorted(grid, 1600)] < 0.1
    # the SWIR windows stay clear up to their edges (a broad Landsat 5 band reaches 1.75 µm)
    assert tau[np.searchsorted(grid, 1750)] < 0.1 and tau[np.searchsorted(grid, 2200)] < 0.1
    assert tau[np.searchsorted(grid, 1880)] > 3
    wr = water_reflectance(grid)
    assert wr[np.searchsorted(grid, 450)] > wr[np.searchsorted(grid, 865)]


def test_second_cloud_deck_is_higher_and_colder() -> None:
    tir = Band(name="tir", kind="thermal", wavelength_min=10.6, wavelength_center=10.9, wavelength_max=11.2,
               fwhm=0.6, resolution=30)
    kw = dict(cloud_cover=0.6, cirrus_cover=0, air_temperature=290.0, cloud_height_km=1.0, cloud_tau_max=40, **QUIET)
    one = simulate_scene([tir], 96, rng=4, second_layer_km=0, **kw)
    two = simulate_scene([tir], 96, rng=4, second_layer_km=6.0, **kw)
    assert one.meta["second_layer_km"] is None and two.meta["second_layer_km"] == 6.0
    thick = (one.labels == 1) & (two.labels == 1)
    assert np.nanmin(two.data[0, thick]) < np.nanmin(one.data[0, thick]) - 20  # the high deck is colder
