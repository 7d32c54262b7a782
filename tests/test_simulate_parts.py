"""Simulator building blocks: spectra table, band responses, layout, haze/terrain, levels, writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cloudmask.errors import UsageError
from cloudmask.registry import Band, get_sensor
from cloudmask.simulate import simulate_scene
from cloudmask.simulate.clouds import absorption_factor, conservative_reflectance
from cloudmask.simulate.io import fake_georeference, safe_stem, write_scene
from cloudmask.simulate.layout import BIOMES, fractal_noise, make_layout, terrain_shading, voronoi
from cloudmask.simulate.spectra import CLASSES, band_response, load_table

QUIET = {"noise": 0.0, "nodata_border_prob": 0.0, "saturation_prob": 0.0, "relief": 0.0}


def gauss_band(center: float, fwhm: float, name: str = "g", srf: str | None = None) -> Band:
    return Band(name=name, kind="reflectance", wavelength_min=center - fwhm, wavelength_center=center,
                wavelength_max=center + fwhm, fwhm=fwhm, resolution=30, srf=srf)


def test_table_is_compact_and_complete() -> None:
    t = load_table()
    assert set(t.classes) == set(CLASSES)
    assert t.grid[0] == 400 and t.grid[-1] == 2500
    assert np.isfinite(t.library).all() and 0 <= t.library.min() and t.library.max() <= 1
    assert len(t.srf) > 50  # pyrsr responses for the registry's sensors
    assert "Landsat-8/OLI_TIRS/5" in t.srf and "Sentinel-2A/MSI/8A" in t.srf


def test_band_response_real_vs_gaussian() -> None:
    t = load_table()
    b5 = get_sensor("landsat8").band("B5")
    real = band_response(b5, t)
    gauss = band_response(gauss_band(b5.wavelength_center, b5.fwhm, name="B5", srf="5"), t)  # not a registry band
    assert real.sum() == pytest.approx(1) and gauss.sum() == pytest.approx(1)
    assert not np.allclose(real, gauss)  # the registry band uses the tabulated response
    centre = float(real @ t.grid)
    assert abs(centre - 864.6) < 5
    narrow = band_response(gauss_band(0.7, 0.001), t)  # narrower than the grid: one sample
    assert narrow.max() == 1.0


def test_virtual_band_cache_is_reused() -> None:
    t = load_table()
    b = gauss_band(1.1, 0.05, name="cache-me")
    first = t.library_bands([b])
    assert t.library_bands([b]) is not first  # a fresh stack ...
    np.testing.assert_array_equal(first, t.library_bands([b]))  # ... of the cached column


def test_noise_and_voronoi() -> None:
    rng = np.random.default_rng(0)
    f = fractal_noise((64, 80), 3.0, rng)
    assert f.shape == (64, 80) and abs(f.mean()) < 1e-5 and f.std() == pytest.approx(1, rel=1e-3)
    smooth, rough = fractal_noise((64, 64), 4.0, rng), fractal_noise((64, 64), 1.0, rng)
    assert np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(rough, axis=1)).mean()
    ids = voronoi((64, 64), 16, rng)
    assert ids.shape == (64, 64) and 4 <= len(np.unique(ids)) <= 40


@pytest.mark.parametrize("biome", sorted(BIOMES))
def test_layout_biomes(biome: str) -> None:
    lay = make_layout((64, 64), biome, np.random.default_rng(1), 30.0)
    present = {CLASSES[i] for i in np.unique(lay.classes)}
    top = max(BIOMES[biome], key=BIOMES[biome].get)
    assert top in present or biome == "water"  # the dominant cover shows up (rivers/roads may add more)


def test_terrain_shading_faces_the_sun() -> None:
    flat = terrain_shading((32, 32), np.random.default_rng(0), 0.0, 40, 180)
    assert (flat == 1).all()
    hilly = terrain_shading((64, 64), np.random.default_rng(0), 0.5, 30, 180)
    assert hilly.min() < 0.6 and hilly.max() > 1.2


def test_cloud_optics_shape() -> None:
    r = conservative_reflectance(np.array([0.0, 1.0, 5.0, 50.0], "float32"), 0.7)
    assert r[0] == 0 and np.all(np.diff(r) > 0) and r[-1] < 1
    grid = load_table().grid
    water, ice = (absorption_factor(grid, load_table().k_ice, ph, 10) for ph in ("water", "ice"))
    i16 = np.searchsorted(grid, 1600)
    assert water[0] > 0.99 and water[i16] < 0.8 and ice[i16] < water[i16]


def test_haze_veil_is_thin_cloud() -> None:
    bands = get_sensor("sentinel2").select(["B02", "B04", "B8A"])
    sim = simulate_scene(bands, 64, rng=3, cloud_cover=0, cirrus_cover=0, haze_tau=2.0, **QUIET)
    frac = sim.meta["class_fractions"]
    assert frac["thin_cloud"] > 0.2 and frac["thick_cloud"] == 0


def test_boa_level_removes_path_radiance() -> None:
    bands = get_sensor("sentinel2").select(["B02", "B04", "B8A"])
    kw = dict(cloud_cover=0, cirrus_cover=0, haze_tau=0, biome="forest", aerosol_tau550=0.3, **QUIET)
    toa = simulate_scene(bands, 48, rng=2, level="toa", **kw)
    boa = simulate_scene(bands, 48, rng=2, level="boa", **kw)
    assert np.nanmean(boa.data[0]) < np.nanmean(toa.data[0]) - 0.03  # blue path radiance removed
    assert boa.meta["level"] == "boa"
    with pytest.raises(UsageError, match="level"):
        simulate_scene(bands, 32, level="l3")


def test_write_scene(tmp_path: Path) -> None:
    bands = get_sensor("landsat8").select(["B2", "B5", "B10"])
    sim = simulate_scene(bands, 32, rng=9)
    paths = write_scene(sim, tmp_path / "out", "../evil id", "landsat8")
    assert all(Path(p).parent == tmp_path / "out" for p in paths.values())
    assert safe_stem("../evil id") == "evil_id"
    with rasterio.open(paths["image"]) as src:
        np.testing.assert_array_equal(src.read(), sim.data)
        assert list(src.descriptions) == ["B2", "B5", "B10"]
    item = json.loads(Path(paths["json"]).read_text())
    assert item["properties"]["sim:meta"]["seed"] == sim.meta["seed"]
    crs, transform = fake_georeference(9, 30.0)
    assert crs.is_projected and transform.a == 30.0
    # names in other scripts stay apart (both were "my_scene"); a Sensor is tagged by its id
    assert safe_stem("my scene \u00fc") != safe_stem("my scene \u00e9")
    assert safe_stem("../evil/\u00fc id") == "evil_\u00fc_id"
    tagged = write_scene(sim, tmp_path / "out", "s2", get_sensor("landsat8"))
    with rasterio.open(tagged["image"]) as src:
        assert src.tags()["CLOUDMASK_SENSOR"] == "landsat8"


def test_virtual_bands_simulate() -> None:
    from cloudmask.simulate import virtual_bands

    bands = virtual_bands(4, 8, thermal_prob=1.0)
    assert len(bands) == 9 and bands[-1].kind == "thermal"
    centres = [b.wavelength_center for b in bands]
    assert centres == sorted(centres) and 0.4 <= centres[0] and centres[-2] <= 2.4
    for b in bands:
        assert b.wavelength_min < b.wavelength_center < b.wavelength_max and b.fwhm > 0
    assert [b.wavelength_center for b in virtual_bands(4, 8, thermal_prob=1.0)] == centres  # seeded
    sim = simulate_scene(bands, 32, rng=0)
    assert sim.data.shape == (9, 32, 32)


def test_sun_glint_brightens_water() -> None:
    bands = get_sensor("sentinel2").select(["B03", "B8A"])
    kw = dict(biome="water", cloud_cover=0, cirrus_cover=0, haze_tau=0, **QUIET)
    calm = simulate_scene(bands, 64, rng=6, glint_prob=0.0, **kw)
    glint = simulate_scene(bands, 64, rng=6, glint_prob=1.0, **kw)
    assert glint.meta["glint"] > 0 and np.nanmean(glint.data[1]) > np.nanmean(calm.data[1])
    assert (glint.labels == 0).all()  # glint is a confuser, not cloud
