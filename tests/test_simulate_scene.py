"""simulate_scene end to end: API contract, reproducibility, labels, options."""

from __future__ import annotations

import numpy as np
import pytest

from cloudmask.errors import BandError, UsageError
from cloudmask.registry import Band, get_sensor
from cloudmask.simulate import SimScene, simulate_scene


@pytest.fixture(scope="module")
def s2_bands() -> list[Band]:
    return list(get_sensor("sentinel2").bands)


def virtual(name: str, center: float, fwhm: float, kind: str = "reflectance") -> Band:
    return Band(name=name, kind=kind, wavelength_min=center - fwhm, wavelength_center=center,
                wavelength_max=center + fwhm, fwhm=fwhm, resolution=20)


def test_contract(s2_bands: list[Band]) -> None:
    sim = simulate_scene(s2_bands, 64, rng=3)
    assert isinstance(sim, SimScene)
    assert sim.data.shape == (13, 64, 64) and sim.data.dtype == np.float32
    assert sim.labels.shape == (64, 64) and sim.labels.dtype == np.uint8
    assert set(np.unique(sim.labels)) <= {0, 1, 2, 3, 255}
    valid = sim.labels != 255
    assert np.isfinite(sim.data[:, valid]).all()
    assert np.isnan(sim.data[:, ~valid]).all()
    assert -0.02 < np.nanmin(sim.data) and np.nanmax(sim.data) < 1.5
    for key in ("sun_elevation", "sun_azimuth", "cloud_height_km", "aerosol_tau550", "class_fractions", "seed"):
        assert key in sim.meta
    assert abs(sum(sim.meta["class_fractions"].values()) - 1) < 1e-6


def test_reproducible_and_seed_in_meta(s2_bands: list[Band]) -> None:
    a = simulate_scene(s2_bands[:4], (40, 56), rng=11)
    b = simulate_scene(s2_bands[:4], (40, 56), rng=11)
    c = simulate_scene(s2_bands[:4], (40, 56), rng=12)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(np.nan_to_num(a.data), np.nan_to_num(c.data))
    # a Generator is turned into a recorded seed that replays the same scene
    d = simulate_scene(s2_bands[:4], 32, rng=np.random.default_rng(5))
    e = simulate_scene(s2_bands[:4], 32, rng=d.meta["seed"])
    np.testing.assert_array_equal(d.data, e.data)


def test_virtual_and_thermal_bands() -> None:
    bands = [virtual("v1", 0.51, 0.03), virtual("v2", 0.87, 0.05), virtual("v3", 1.62, 0.09),
             virtual("t", 10.9, 0.6, kind="thermal")]
    sim = simulate_scene(bands, 48, rng=1, cloud_cover=0.5, nodata_border_prob=0)
    assert sim.data.shape == (4, 48, 48)
    assert 180 < np.nanmin(sim.data[3]) and np.nanmax(sim.data[3]) < 340  # kelvin


def test_labels_follow_cloud_cover(s2_bands: list[Band]) -> None:
    clear = simulate_scene(s2_bands[:3], 64, rng=2, cloud_cover=0.0, cirrus_cover=0.0, haze_tau=0.0,
                           nodata_border_prob=0)
    assert (clear.labels == 0).all()
    cloudy = simulate_scene(s2_bands[:3], 64, rng=2, cloud_cover=0.6, cirrus_cover=0.0, nodata_border_prob=0,
                            cloud_tau_max=40, haze_tau=0.0)
    frac = cloudy.meta["class_fractions"]
    assert 0.3 < frac["thick_cloud"] + frac["thin_cloud"] < 0.9


def test_nodata_border_and_dropout(s2_bands: list[Band]) -> None:
    border = simulate_scene(s2_bands[:3], 64, rng=4, nodata_border_prob=1.0)
    assert (border.labels == 255).any() and (border.labels != 255).any()
    assert np.array_equal(border.labels == 255, np.isnan(border.data).all(axis=0))
    sim = simulate_scene(s2_bands[:3], 64, rng=4, nodata_border_prob=1.0, band_dropout=1.0)
    assert np.isnan(sim.data).all()
    assert (sim.labels == 255).all()  # no band left, no class (the labels still said 0-3)
    assert sim.meta["dropped_bands"] == [b.name for b in s2_bands[:3]]


def test_bad_input(s2_bands: list[Band]) -> None:
    with pytest.raises(UsageError, match="unknown simulator option"):
        simulate_scene(s2_bands, 32, rng=0, clouds=3)
    with pytest.raises(BandError):
        simulate_scene([], 32)
    with pytest.raises(UsageError, match="size"):
        simulate_scene(s2_bands, 4)
    with pytest.raises(UsageError, match="biome"):
        simulate_scene(s2_bands, 32, biome="moon")
    # label thresholds that lose a class or call everything cloud; a non-boolean switch; band names
    for opts, words in (({"thick_tau": 0.1, "thin_min_tau": 2.0}, "thin_min_tau <= thick_tau"),
                        ({"thick_tau": 0.0}, "thin_min_tau <= thick_tau"), ({"quantise": "yes"}, "true or false")):
        with pytest.raises(UsageError, match=words):
            simulate_scene(s2_bands, 32, rng=0, **opts)
    for bad in (["B02", "B03", "B04"], "sentinel2", None):
        with pytest.raises(UsageError, match="takes a Sensor"):
            simulate_scene(bad, 32)
    with pytest.raises(UsageError, match="cloud_cover"):
        simulate_scene(s2_bands, 32, cloud_cover=2)
    with pytest.raises(UsageError, match="seed must be a whole number >= 0"):
        simulate_scene(s2_bands, 32, rng=-1)
    for bad in (0, -20, float("nan")):
        with pytest.raises(UsageError, match="pixel_size"):
            simulate_scene(s2_bands, 32, rng=0, pixel_size=bad)


def test_ambiguous_penumbra_is_labelled_ignore(s2_bands: list[Band]) -> None:
    kw = dict(rng=5, cloud_cover=0.5, cirrus_cover=0.0, haze_tau=0.0, nodata_border_prob=0, cloud_tau_max=40)
    plain = simulate_scene(s2_bands[:4], 96, **kw)
    strict = simulate_scene(s2_bands[:4], 96, shadow_max_sun=0.6, shadow_ambiguous_sun=0.9, **kw)
    np.testing.assert_array_equal(plain.data, strict.data)  # same pixels, only the labels differ
    assert (plain.labels != 255).all() and (strict.labels == 255).any()
    assert ((strict.labels == 3) <= (plain.labels == 3)).all()  # fewer, darker shadows labelled
    changed = plain.labels != strict.labels
    assert set(np.unique(plain.labels[changed]).tolist()) <= {0, 3}  # only clear/shadow become 255


def test_training_simulator_options_are_checked() -> None:
    from cloudmask.model.data import get_simulator

    sim = get_simulator("simulator", {"shadow_ambiguous_sun": 0.9})
    x, y = sim(list(get_sensor("landsat8").bands)[:4], 32, np.random.default_rng(0))
    assert x.shape == (4, 32, 32) and y.shape == (32, 32)
    with pytest.raises(UsageError, match="sim_options"):
        get_simulator("simulator", {"shadow_max_son": 0.5})


def test_impossible_numeric_options_are_refused_and_a_sensor_is_its_bands() -> None:
    """NaN cloud thickness gave a scene of NaN labelled clear, aerosol -1 reflectance in the tens of
    thousands, 20 K air thermal bands at 60 K, all without an error; np.float32 pixel sizes were refused."""
    import numpy as np
    import pytest

    from cloudmask.errors import UsageError
    from cloudmask.registry import get_sensor
    from cloudmask.simulate.scene import simulate_scene

    l8 = get_sensor("landsat8")
    for bad in (dict(cloud_tau_max=float("nan")), dict(aerosol_tau550=-1), dict(air_temperature=20),
                dict(cloud_cover="0.5"), dict(noise=True), dict(second_layer_km=-2)):
        with pytest.raises(UsageError, match=next(iter(bad))):
            simulate_scene(l8.bands, 16, rng=1, **bad)
    a = simulate_scene(l8, 16, rng=1, pixel_size=np.float32(30))
    b = simulate_scene(l8.bands, 16, rng=1, pixel_size=30)
    np.testing.assert_array_equal(a.data, b.data)
