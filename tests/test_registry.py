"""Sensor registry: the shipped YAML facts, lookups, validation errors and user sensor directories."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloudmask import registry as reg
from cloudmask.errors import BandError, RegistryError, UnknownSensorError, UsageError
from cloudmask.registry import Scaling, Sensor, bundled_sensors_dir, get_sensor, load_registry, load_sensor_file

SHIPPED = sorted(bundled_sensors_dir().glob("*.y*ml"))
EXPECTED_IDS = {"sentinel2", "landsat5", "landsat7", "landsat8", "landsat9", "modis", "sentinel3-olci", "superdove"}


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees only the bundled registry unless it adds directories itself (the cache is per dirs+env)."""
    monkeypatch.setenv("CLOUDMASK_SENSORS", "")
    reg._load_cached.cache_clear()
    yield
    reg._load_cached.cache_clear()


def _all_sensors() -> list[Sensor]:
    return [load_sensor_file(p) for p in SHIPPED]


# --------------------------------------------------------------------------- shipped files


def test_every_expected_sensor_ships() -> None:
    assert EXPECTED_IDS <= set(load_registry())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_yaml_loads_and_is_physically_plausible(path: Path) -> None:
    s = load_sensor_file(path)
    assert s.id == path.stem, "file name and id should agree so users can find the file"
    assert s.source.strip() and s.name.strip()
    assert path.read_text(encoding="utf-8").startswith("#"), "each file starts with a header comment naming its sources"
    assert s.default_resolution > 0
    for b in s.bands:
        lo, mid, hi, fwhm = b.wavelength_min, b.wavelength_center, b.wavelength_max, b.fwhm
        assert lo < mid < hi, b.name
        assert 0 < fwhm <= 1.5 * (hi - lo), b.name
        assert 0.3 <= lo and hi <= 15.0, b.name
        if b.kind == "thermal":
            assert lo > 3.0, f"{s.id} {b.name}: thermal band below 3 µm"
        else:
            assert hi < 2.6, f"{s.id} {b.name}: reflectance band beyond 2.6 µm"
        assert b.resolution > 0
        for product in s.products:
            sc = s.scaling(product, b)
            assert sc.scale > 0
        d = b.descriptor()
        assert d.dtype == np.float32 and d.shape == (5,)
        assert d[4] == (1.0 if b.kind == "thermal" else 0.0)
    common = [b.common_name for b in s.bands if b.common_name]
    assert len(common) == len(set(common)), f"{s.id}: duplicate common names"
    assert s.descriptors().shape == (len(s.bands), 5)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_reflectance_products_map_typical_dn_to_plausible_reflectance(path: Path) -> None:
    """Reflectance 0.3 must be a representable unsigned 16-bit DN that scales back to 0.3 in every integer product."""
    s = load_sensor_file(path)
    for product, base in s.products.items():
        if base.scale == 1.0 and base.offset == 0.0:
            continue  # float-only products (values used as they are)
        for b in s.bands:
            sc = s.scaling(product, b)
            if b.kind == "thermal" or sc.k1 is not None:
                continue
            dn = round((0.3 - sc.offset) / sc.scale)
            assert 1 <= dn <= 65535, f"{s.id} {product} {b.name}: reflectance 0.3 is not a uint16 DN"
            assert sc.apply(np.array([dn]))[0] == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("sensor_id", ["landsat5", "landsat7", "landsat8", "landsat9"])
def test_landsat_facts(sensor_id: str) -> None:
    s = get_sensor(sensor_id)
    # agency band-number order
    numbers = [int(n[1:]) for n in s.band_names]
    assert numbers == sorted(numbers)
    assert s.platforms == (f"landsat-{sensor_id[-1]}",)
    assert s.default_product == "l2"
    sr = s.products["l2"]
    assert (sr.scale, sr.offset, sr.nodata) == (2.75e-05, -0.2, 0.0)
    for key in ("blue", "green", "red", "nir08", "swir16", "swir22"):
        b = s.band(key)
        assert b.assets["earth-search"] == key and b.assets["planetary-computer"] == key
        assert s.scaling("l2", b) == sr
        assert b.kind == "reflectance" and b.resolution == 30
    assert s.stac["earth-search"].collections["l2"] == "landsat-c2-l2"
    assert s.stac["planetary-computer"].collections["l2"] == "landsat-c2-l2"
    tir = s.band("lwir11")
    assert tir.kind == "thermal"
    st = s.scaling("l2", tir)
    assert (st.scale, st.offset, st.nodata) == (0.00341802, 149.0, 0.0)
    assert st.k1 is None
    l1 = s.scaling("l1", tir)
    assert l1.k1 is not None and l1.k2 is not None and l1.k2 > l1.k1 > 400
    assert s.band(f"SR_B{s.band('red').name[1:]}") is s.band("red")


def test_landsat_oli_details() -> None:
    l8, l9 = get_sensor("landsat8"), get_sensor("landsat9")
    for s in (l8, l9):
        assert s.band_names == [f"B{i}" for i in range(1, 12)]
        assert s.band("coastal").name == "B1" and s.band("pan").resolution == 15
        assert s.band("cirrus").wavelength_center == pytest.approx(1.374, abs=0.002)
        assert s.band("ST_B10").name == "B10" and s.band("lwir12").name == "B11"
        toa = s.products["l1"]
        assert (toa.scale, toa.offset, toa.nodata) == (2.0e-05, -0.1, 0.0)
    b10, b11 = l8.scaling("l1", l8.band("B10")), l8.scaling("l1", l8.band("B11"))
    assert (b10.scale, b10.offset, b10.k1, b10.k2) == (3.342e-4, 0.1, 774.8853, 1321.0789)
    assert (b11.k1, b11.k2) == (480.8883, 1201.1442)
    # the USGS band designations (µm), to the tolerance of RSR half-maximum edges
    assert l8.band("B4").wavelength_min == pytest.approx(0.636, abs=0.003)
    assert l8.band("B4").wavelength_max == pytest.approx(0.673, abs=0.003)
    assert l8.band("B10").wavelength_min == pytest.approx(10.60, abs=0.05)
    assert l8.band("B11").wavelength_max == pytest.approx(12.51, abs=0.05)


def test_tm_and_etm_thermal_band() -> None:
    for sid, k1, k2 in (("landsat7", 666.09, 1282.71), ("landsat5", 607.76, 1260.56)):
        s = get_sensor(sid)
        b6 = s.band("B6")
        assert b6.common_name == "lwir" and b6.kind == "thermal" and s.band("ST_B6") is b6
        assert b6.assets["planetary-computer"] == "lwir"
        sc = s.scaling("l1", b6)
        assert (sc.k1, sc.k2) == (k1, k2)
    # TM L1 radiance coefficients reproduce the MTL's RADIANCE_MULT_BAND_1 (0.76583) via the reflectance scale
    b1 = get_sensor("landsat5").scaling("l1", get_sensor("landsat5").band("B1"))
    assert b1.scale * 1983.0 / np.pi == pytest.approx(0.76583, rel=1e-4)


def test_zero_shot_sensors() -> None:
    olci = get_sensor("sentinel3-olci")
    assert olci.band_names == [f"Oa{i:02d}" for i in range(1, 22)]
    assert {b.resolution for b in olci.bands} == {300.0}
    assert olci.band("oa17").wavelength_center == pytest.approx(0.865)
    assert get_sensor("olci") is olci and get_sensor("sentinel-3b") is olci

    modis = get_sensor("modis")
    assert get_sensor("terra") is modis and get_sensor("Aqua") is modis
    assert modis.band("cirrus").name == "B26"
    assert [b.name for b in modis.bands if b.kind == "thermal"] == ["B31", "B32"]
    assert modis.products["mod09"] == Scaling(scale=0.0001, offset=0.0, nodata=-28672.0)
    assert modis.band("sur_refl_b07").resolution == 500 and modis.band("red").resolution == 250

    sd = get_sensor("superdove")
    assert len(sd.bands) == 8 and {b.resolution for b in sd.bands} == {3.0}
    assert sd.products["sr"].scale == 1e-4
    assert sd.band("green_i").name == "B3" and sd.band("green").name == "B4"
    assert all(b.kind == "reflectance" for b in sd.bands)


def test_centres_agree_with_pyrsr_response_tables() -> None:
    """Every band with an ``srf`` key matches the RSR-weighted centre and half-maximum edges of pyrsr's table."""
    rsr = pytest.importorskip("pyrsr.rsr")
    checked = 0
    for s in _all_sensors():
        if not s.srf:
            continue
        assert s.srf.get("package") == "pyrsr"
        for platform in s.platforms:
            if platform not in s.srf["variants"]:
                continue
            satellite, instrument = s.srf["variants"][platform].split("/")
            for b in s.bands:
                if not b.srf:
                    continue
                table = rsr.RSR_reader(satellite, instrument, LayerBandsAssignment=[b.srf])[b.srf]
                wl, r = table[:, 0], np.clip(table[:, 1], 0, None)
                wl = wl / 1000 if wl.max() > 100 else wl
                order = np.argsort(wl)
                wl, r = wl[order], r[order] / r.max()
                centre = np.trapezoid(wl * r, wl) / np.trapezoid(r, wl)
                above = wl[r >= 0.5]
                tol_edge = max(0.015, 0.1 * b.fwhm)
                where = f"{s.id} {platform} {b.name}"
                if platform != s.platforms[0]:
                    # the file documents its first platform; siblings (S2B vs S2A B12: 16 nm) differ a little
                    assert abs(b.wavelength_center - centre) < b.fwhm / 4, where
                    continue
                assert b.wavelength_center == pytest.approx(centre, abs=max(0.004, 0.005 * centre)), where
                assert b.wavelength_min == pytest.approx(above.min(), abs=tol_edge), where
                assert b.wavelength_max == pytest.approx(above.max(), abs=tol_edge), where
                checked += 1
    assert checked > 40


def test_centres_agree_with_spyndex_bands_table() -> None:
    spyndex = pytest.importorskip("spyndex")
    platforms = {"landsat8": "landsat8", "landsat9": "landsat9", "landsat7": "landsat7", "landsat5": "landsat5",
                 "sentinel2a": "sentinel2", "sentinel2b": "sentinel2", "modis": "modis", "planetscope": "superdove"}
    reg_ = load_registry()
    checked = 0
    for key in spyndex.bands:
        entry = spyndex.bands[key]
        for attr, sid in platforms.items():
            info = getattr(entry, attr, None)
            if info is None:
                continue
            try:
                b = reg_[sid].band(info.band)
            except BandError:
                continue  # e.g. MODIS ocean band 11: not in our file
            assert abs(b.wavelength_center * 1000 - info.wavelength) <= info.bandwidth / 2, f"{sid} {b.name} vs {key}"
            checked += 1
    assert checked > 50


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    ("name", "sensor_id"),
    [("landsat8", "landsat8"), ("LC08", "landsat8"), ("Landsat-8", "landsat8"), (" l9 ", "landsat9"),
     ("LE07", "landsat7"), ("landsat-5", "landsat5"), ("SENTINEL-2B", "sentinel2"), ("S2", "sentinel2"),
     ("Sentinel3-OLCI", "sentinel3-olci"), ("PlanetScope", "superdove"), ("TERRA", "modis"),
     ("LANDSAT_8", "landsat8"), ("Sentinel 2", "sentinel2"), ("sentinel3_olci", "sentinel3-olci")],
)
def test_sensor_lookup_by_id_alias_or_platform_is_case_insensitive(name: str, sensor_id: str) -> None:
    assert get_sensor(name).id == sensor_id


@pytest.mark.parametrize(("name", "band"), [("b4", "B4"), ("RED", "B4"), ("sr_b4", "B4"), ("Nir08", "B5"),
                                             ("st_b10", "B10"), ("LWIR12", "B11"), ("swir1", "B6")])
def test_band_lookup_is_case_insensitive(name: str, band: str) -> None:
    assert get_sensor("landsat8").band(name).name == band


def test_unknown_sensor_suggests_close_names() -> None:
    with pytest.raises(UnknownSensorError, match=r"did you mean landsat8") as err:
        get_sensor("landsat88")
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    assert "\n" not in str(err.value)
    with pytest.raises(UnknownSensorError, match="known: .*superdove"):
        get_sensor("worldview3")
    with pytest.raises(UnknownSensorError, match="did you mean sentinel2"):
        get_sensor("sentinal-2")  # a misspelt platform name
    with pytest.raises(UnknownSensorError) as err:
        get_sensor("bogus")  # only names that are close are suggested
    assert "did you mean" not in str(err.value)


def test_unknown_band_and_product_and_duplicates() -> None:
    s = get_sensor("landsat8")
    with pytest.raises(BandError, match="did you mean"):
        s.band("B12x")
    with pytest.raises(BandError, match="named twice"):
        s.select(["B4", "red"])
    with pytest.raises(BandError, match="no product 'l3'"):
        s.scaling("l3", s.band("B4"))
    assert [b.name for b in s.select(["red", "nir08", "swir16"])] == ["B4", "B5", "B6"]


# --------------------------------------------------------------------------- scaling


def test_scaling_apply_linear_and_brightness_temperature() -> None:
    sr = Scaling(scale=2.75e-05, offset=-0.2, nodata=0)
    out = sr.apply(np.array([7273, 10000, 43636], dtype="uint16"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.075, 1.0], atol=1e-4)

    l8 = get_sensor("landsat8")
    b10 = l8.scaling("l1", l8.band("B10"))
    radiance = 10.0  # W m-2 sr-1 µm-1: a warm land surface
    dn = np.array([round((radiance - b10.offset) / b10.scale)], dtype="uint16")
    bt = b10.apply(dn)[0]
    assert bt == pytest.approx(300.0, abs=10.0)
    assert bt == pytest.approx(b10.k2 / np.log(b10.k1 / radiance + 1), abs=0.05)
    # brighter radiance -> warmer; the l2 ST product is already kelvin
    assert b10.apply(dn + 1000)[0] > bt
    st = l8.scaling("l2", l8.band("B10"))
    assert st.apply(np.array([44000]))[0] == pytest.approx(44000 * 0.00341802 + 149.0, rel=1e-6)
    for sid in ("landsat9", "landsat7", "landsat5"):
        s = get_sensor(sid)
        sc = s.scaling("l1", s.band("lwir11"))
        dn = np.array([round((radiance - sc.offset) / sc.scale)])
        assert sc.apply(dn)[0] == pytest.approx(300.0, abs=10.0), sid


def test_sentinel2_baseline_offset() -> None:
    s2 = get_sensor("sentinel2")
    red = s2.band("red")
    dn = np.array([3000], dtype="uint16")  # rho 0.2 in baseline >= 04.00
    assert s2.scaling("l2a", red).apply(dn)[0] == pytest.approx(0.2)
    assert s2.scaling("l2a-pre0400", red).apply(dn)[0] == pytest.approx(0.3)


# --------------------------------------------------------------------------- validation of bad files

GOOD = """\
# a user's sensor
id: {id}
name: Test Sensor
source: unit test
default_resolution: 10
products:
  toa: {{scale: 0.0001, offset: 0, nodata: 0}}
bands:
  - name: B1
    common_name: red
    type: reflectance
    resolution: 10
    wavelength: {{min: 0.63, center: 0.66, max: 0.69, fwhm: 0.06}}
  - name: T1
    type: thermal
    resolution: 30
    wavelength: {{min: 10.5, center: 11.0, max: 11.5}}
    scaling: {{toa: {{scale: 0.01, offset: 150}}}}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_good_user_file_parses_with_defaults(tmp_path: Path) -> None:
    s = load_sensor_file(_write(tmp_path, "mysat.yaml", GOOD.format(id="mysat")))
    assert s.default_product == "toa" and s.platforms == () and s.stac == {}
    t1 = s.band("t1")
    assert t1.fwhm == pytest.approx(1.0)  # fwhm defaults to max - min
    sc = s.scaling(None, t1)
    assert (sc.scale, sc.offset, sc.nodata) == (0.01, 150.0, 0.0)  # band override merged over the product


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("name: Test Sensor\n", "", "name", "missing required field"),
        ("    resolution: 10\n", "", "bands.B1.resolution", "missing required field"),
        ("{min: 0.63, center: 0.66, max: 0.69, fwhm: 0.06}", "{min: 630, center: 660, max: 690, fwhm: 60}",
         "bands.B1.wavelength.min", "nanometres"),
        ("{min: 0.63, center: 0.66, max: 0.69, fwhm: 0.06}", "{min: 0.69, center: 0.66, max: 0.63, fwhm: 0.06}",
         "bands.B1.wavelength", "min < center < max"),
        ("fwhm: 0.06", "fwhm: 0.5", "bands.B1.wavelength.fwhm", "does not fit"),
        ("scaling: {toa: {scale: 0.01, offset: 150}}", "scaling: {l2: {scale: 0.01}}",
         "bands.T1.scaling.l2", "unknown product"),
        ("type: reflectance", "type: radiance", "bands.B1.type", "must be 'reflectance' or 'thermal'"),
        ("default_resolution: 10", "default_resolution: ten", "default_resolution", "expected float"),
        ("id: mysat", "id: My Sat", "id", "lower-case"),
        ("    type: thermal\n", "    type: thermal\n    common_name: red\n", "bands.T1", "used by two bands"),
        ("source: unit test\n", "source: unit test\ndefault_product: l1\n", "default_product", "not one of"),
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: 0.0001, nodata: none}",
         "products.toa.nodata", "expected a number"),
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: 0.0001, nodata: true}",
         "products.toa.nodata", "expected a number"),
        # two bands may not share a name, whether as name or alias
        ("  - name: T1\n", "  - name: b1\n", "bands.b1", "used by two bands"),
        # sizes and factors: finite, sizes above 0, scale not 0
        ("default_resolution: 10", "default_resolution: 0", "default_resolution", "above 0"),
        ("    resolution: 30\n", "    resolution: -30\n", "bands.T1.resolution", "above 0"),
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: .nan}", "products.toa.scale", "finite"),
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: .inf}", "products.toa.scale", "finite"),
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: 0}", "products.toa.scale", "not be 0"),
        ("scaling: {toa: {scale: 0.01, offset: 150}}", "scaling: {toa: 5}", "bands.T1.scaling.toa", "expected a mapping"),
        ("source: unit test\n", "source: unit test\naliases: [[a, b]]\n", "aliases", "expected names"),
        # physics the simulator and the reader rely on: a thermal band emits (>= 3 µm); Planck's
        # constants come in pairs (one alone and radiance would be read as kelvin)
        ("{min: 10.5, center: 11.0, max: 11.5}", "{min: 0.78, center: 0.84, max: 0.90}", "bands.T1.type", "3.0 µm or beyond"),
        ("scaling: {toa: {scale: 0.01, offset: 150}}", "scaling: {toa: {scale: 0.01, k1: 774.9}}",
         "bands.T1.scaling.toa.k2", "go together"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, old: str, new: str, field: str, message: str) -> None:
    msg = _load_error(tmp_path, "broken.yaml", old, new)
    assert msg.startswith(f"{tmp_path / 'broken.yaml'}: "), msg  # the whole path: which folder holds it
    assert field in msg and message in msg, msg


def _load_error(tmp_path: Path, name: str, old: str, new: str) -> str:
    """The one-line error of loading GOOD with ``old`` replaced by ``new``."""
    text = GOOD.format(id="mysat")
    assert old in text
    path = _write(tmp_path, name, text.replace(old, new, 1))
    with pytest.raises(RegistryError) as err:
        load_sensor_file(path)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a typo'd optional key would otherwise be silently ignored (offset 0: every value off by 0.1)
        ("toa: {scale: 0.0001, offset: 0, nodata: 0}", "toa: {scale: 0.0001, ofset: -0.1, nodata: 0}",
         "products.toa: unknown key 'ofset' (did you mean 'offset'?)"),
        ("source: unit test\n", "source: unit test\ndefault_prodcut: toa\n",
         "top level: unknown key 'default_prodcut' (did you mean 'default_product'?)"),
        ("source: unit test\n", "source: unit test\nalias: [ts]\n",
         "top level: unknown key 'alias' (did you mean 'aliases'?)"),
        ("source: unit test\n", "source: unit test\npixel_size: 10\n", "top level: unknown key 'pixel_size'"),
        ("    common_name: red\n", "    comon_name: red\n",
         "bands.B1: unknown key 'comon_name' (did you mean 'common_name'?)"),
        ("center: 0.66,", "centre: 0.66,", "bands.B1.wavelength: unknown key 'centre' (did you mean 'center'?)"),
        ("scaling: {toa: {scale: 0.01, offset: 150}}", "scaling: {toa: {scale: 0.01, ofset: 150}}",
         "bands.T1.scaling.toa: unknown key 'ofset' (did you mean 'offset'?)"),
        # a typo in a required field's name names the typo, not only the missing field
        ("    resolution: 10\n", "    resolutoin: 10\n",
         "bands.B1: unknown key 'resolutoin' (did you mean 'resolution'?)"),
        ("  - name: B1\n", "  - nmae: B1\n", "bands[0]: unknown key 'nmae' (did you mean 'name'?)"),
        ("default_resolution: 10", "default_resolutoin: 10",
         "top level: unknown key 'default_resolutoin' (did you mean 'default_resolution'?)"),
        ("source: unit test\n", "source: unit test\nstac: {cat: {url: x, colections: {toa: c}}}\n",
         "stac.cat: unknown key 'colections' (did you mean 'collections'?)"),
        ("source: unit test\n", "source: unit test\nsrf: {package: pyrsr, variant: {}}\n",
         "srf: unknown key 'variant' (did you mean 'variants'?)"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(tmp_path: Path, old: str, new: str, expected: str) -> None:
    msg = _load_error(tmp_path, "dove4.yaml", old, new)
    assert msg.startswith(f"{tmp_path / 'dove4.yaml'}: " + expected), msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nearinfrared", "bands.B1.common_name: 'nearinfrared' is not a STAC eo common name (use one of "),
        ("rededge1", "bands.B1.common_name: 'rededge1' is not a STAC eo common name (did you mean 'rededge'?)"),
        ("swir1", "bands.B1.common_name: 'swir1' is not a STAC eo common name (did you mean "),
    ],
)
def test_common_name_must_be_a_stac_eo_common_name(tmp_path: Path, value: str, expected: str) -> None:
    text = GOOD.format(id="mysat").replace("common_name: red\n", f"common_name: {value}\n")
    with pytest.raises(RegistryError) as err:
        load_sensor_file(_write(tmp_path, "dove4.yaml", text))
    assert str(err.value).startswith(f"{tmp_path / 'dove4.yaml'}: " + expected), str(err.value)


def test_documented_common_names_match_the_registry_and_the_shipped_files() -> None:
    from cloudmask.registry import COMMON_NAMES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sensors.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `common_name`"))
    assert set(re.findall(r"`([a-z0-9]+)`", row.split("one of:")[1].split("(")[0])) == set(COMMON_NAMES)
    used = {b.common_name for s in _all_sensors() for b in s.bands if b.common_name}
    assert used <= set(COMMON_NAMES)
    s2 = get_sensor("sentinel2")
    assert s2.band("rededge1").name == "B05" and s2.band("rededge078").name == "B07"


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    """A file using every key the schema documents (at every level) loads."""
    text = GOOD.format(id="mysat").replace("source: unit test\n", """\
source: unit test
description: all keys
platforms: [mysat-1]
aliases: [ms]
default_product: toa
stac: {cat: {url: https://example.invalid, collections: {toa: my-toa}}}
srf: {package: pyrsr, variants: {mysat-1: Mysat/One}}
""").replace("    common_name: red\n", \
        "    common_name: red\n    aliases: [R]\n    assets: {cat: red}\n    srf: \"4\"\n"
        "    scaling: {toa: {scale: 0.001, offset: 0.1, nodata: 1, k1: 1.0, k2: 2.0}}\n")
    s = load_sensor_file(_write(tmp_path, "mysat.yaml", text))
    assert s.stac["cat"].url == "https://example.invalid" and s.band("R").srf == "4"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- just\n- a list\n", "top level: expected a mapping, got list"),
        ("id: x\nname: [unclosed\n", "not valid YAML"),
        ("id: x\nproducts: {a: 1}\n", "products.a: expected a mapping"),
        ("", "top level: the file is empty"),
        ("# only a comment\n", "top level: the file is empty"),
        # safe loading (C or Python): a tag that would build a Python object is refused, not run
        ("id: !!python/object/apply:os.system ['echo owned']\n", "not valid YAML"),
    ],
)
def test_structurally_bad_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(RegistryError) as err:
        load_sensor_file(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


def test_a_band_override_inherits_the_products_planck_constants(tmp_path: Path) -> None:
    text = GOOD.format(id="mysat").replace("toa: {scale: 0.0001, offset: 0, nodata: 0}",
                                           "toa: {scale: 0.0001, offset: 0, nodata: 0, k1: 774.9, k2: 1321.1}")
    text = text.replace("scaling: {toa: {scale: 0.01, offset: 150}}", "scaling: {toa: {nodata: 65535}}")
    s = load_sensor_file(_write(tmp_path, "mysat.yaml", text))
    sc = s.scaling(None, s.band("T1"))
    assert (sc.scale, sc.k1, sc.k2, sc.nodata) == (0.0001, 774.9, 1321.1, 65535.0)


def test_one_name_may_not_lead_to_two_sensors(tmp_path: Path) -> None:
    """An alias or platform naming another sensor, or one id in two files of a folder, is an error
    naming both files (which sensor won depended on file order)."""
    d = tmp_path / "a"
    _write(d, "mysat.yaml", GOOD.format(id="mysat").replace("source: unit test\n", "source: unit test\naliases: [landsat8]\n"))
    with pytest.raises(RegistryError, match=r"mysat.yaml: 'landsat8' already names sensor 'landsat8'"):
        load_registry([d])
    d = tmp_path / "b"
    _write(d, "one.yaml", GOOD.format(id="twin"))
    _write(d, "two.yaml", GOOD.format(id="twin"))
    with pytest.raises(RegistryError, match=r"two.yaml: sensor id 'twin' is already defined by one.yaml"):
        load_registry([d])


def test_bad_file_in_a_user_dir_fails_the_registry_load(tmp_path: Path) -> None:
    _write(tmp_path / "s", "oops.yaml", "id: oops\nproducts: {l1: {}}\n")
    with pytest.raises(RegistryError, match=r"/s/oops.yaml: bands: missing required field"):
        load_registry([tmp_path / "s"])


def test_missing_sensor_dir_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry([tmp_path / "nowhere"])
    monkeypatch.setenv("CLOUDMASK_SENSORS", str(tmp_path / "nowhere"))
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry()


# --------------------------------------------------------------------------- user sensor directories


def test_user_sensor_via_extra_dirs(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    _write(d, "mysat.yaml", GOOD.format(id="mysat"))
    assert "mysat" not in load_registry()
    assert get_sensor("MYSAT", [d]).path == d / "mysat.yaml"


def test_user_sensor_via_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "sat-a.yml", GOOD.format(id="sat-a"))
    _write(b, "sat-b.yaml", GOOD.format(id="sat-b"))
    monkeypatch.setenv("CLOUDMASK_SENSORS", f"{a}{os.pathsep}{b}")
    r = load_registry()
    assert {"sat-a", "sat-b"} <= set(r) and EXPECTED_IDS <= set(r)


def test_user_file_overrides_a_bundled_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, cli_dir = tmp_path / "env", tmp_path / "cli"
    _write(env_dir, "my-landsat8.yaml", GOOD.format(id="landsat8"))
    monkeypatch.setenv("CLOUDMASK_SENSORS", str(env_dir))
    assert get_sensor("landsat8").name == "Test Sensor"
    assert get_sensor("landsat8").path == env_dir / "my-landsat8.yaml"
    # a caller's directory wins over $CLOUDMASK_SENSORS
    _write(cli_dir, "l8.yaml", GOOD.format(id="landsat8").replace("name: Test Sensor", "name: CLI Sensor"))
    assert get_sensor("landsat8", [cli_dir]).name == "CLI Sensor"
    monkeypatch.setenv("CLOUDMASK_SENSORS", "")
    assert get_sensor("landsat8").name == "Landsat 8 OLI/TIRS"


def test_registry_cache_sees_new_files_after_clear(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    assert "late" not in load_registry([d])
    _write(d, "late.yaml", GOOD.format(id="late"))
    assert "late" not in load_registry([d])  # cached per (dirs, env)
    reg._load_cached.cache_clear()
    assert "late" in load_registry([d])


def test_library_calls_with_the_wrong_types_get_clear_errors(tmp_path) -> None:
    """get_sensor(None) raised AttributeError ('strip'); get_sensor(x, "./dir") read the folder name
    character by character ("sensor directory m does not exist"); Band(kind="lidar") was built and
    described to the model as reflective."""
    import pytest

    from cloudmask.errors import BandError, RegistryError, UnknownSensorError
    from cloudmask.registry import Band, get_sensor

    for bad in (None, 5):
        with pytest.raises(UnknownSensorError, match="named by a string"):
            get_sensor(bad)
    assert get_sensor("sentinel2", str(tmp_path)).id == "sentinel2"  # one folder as a str
    with pytest.raises(RegistryError, match=f"sensor directory {tmp_path / 'nope'} does not exist"):
        get_sensor("sentinel2", str(tmp_path / "nope"))
    with pytest.raises(BandError, match="kind must be"):
        Band("b1", "lidar", 0.4, 0.5, 0.6, 0.1, 10.0)
    with pytest.raises(BandError, match="min <= centre <= max"):
        Band("b1", "reflectance", 0.6, 0.5, 0.4, 0.1, 10.0)
    # nanometres in Python (the YAML checker says so too): the model caught it only at prediction
    with pytest.raises(BandError, match="490.0 µm is out of range.*nanometres"):
        Band("b1", "reflectance", 455.0, 490.0, 525.0, 70.0, 10.0)
    with pytest.raises(BandError, match="out of range"):
        Band("b1", "reflectance", -0.2, 0.0, 0.2, 0.4, 10.0)
