"""Scene readers on rasters made in tmp_path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fetch_servers import write_s2_item

from cloudmask.errors import BandError, SceneError
from cloudmask.scene import read_scene
from cloudmask.testing import random_reflectance, stac_item, write_item, write_raster, write_safe
from cloudmask.testing import test_transform as grid_transform


def test_multiband_uint16_is_scaled_with_the_product_offset(s2_l2a_tif):
    scene = read_scene(s2_l2a_tif, "sentinel2")
    assert scene.data.dims == ("band", "y", "x")
    assert list(scene.data.band.values)[:3] == ["B01", "B02", "B03"]
    values = scene.data.values
    assert np.isnan(values[:, :4]).all()  # nodata strip
    refl = random_reflectance(13, 80, 96, seed=1)
    np.testing.assert_allclose(values[:, 4:], refl[:, 4:], atol=6e-5)
    assert scene.descriptors.shape == (13, 5)
    assert not bool(scene.valid[:4].any()) and bool(scene.valid[4:].all())
    # pixel-centre coordinates of the file's grid (as rioxarray gives them), one band per chunk
    t = scene.transform
    np.testing.assert_allclose(scene.data.x.values, t.c + t.a * (np.arange(96) + 0.5))
    np.testing.assert_allclose(scene.data.y.values, t.f + t.e * (np.arange(80) + 0.5))
    assert set(scene.data.data.chunks[0]) == {1}


def test_raw_bands_convert_to_the_physical_values(s2_l2a_tif):
    """``scene.raw`` (stored DNs + per-band conversion) gives exactly ``scene.data``, also for a
    band subset, by ``into`` (no temporaries) as by calling the converter."""
    scene = read_scene(s2_l2a_tif, "sentinel2")
    for sc in (scene, scene.subset(["B8A", "B02", "B11"])):
        assert sc.raw is not None and sc.raw.data.dtype == np.uint16 and sc.raw.data.chunks == sc.data.data.chunks
        raw, want = sc.raw.data.compute(), sc.data.values
        out = np.empty(want.shape, "float32")
        for i, f in enumerate(sc.raw.convert):
            f.into(raw[i], out[i])
            np.testing.assert_array_equal(f(raw[i]), want[i])
        np.testing.assert_array_equal(out, want)
        assert np.isnan(out[:, :4]).all()  # nodata DNs (the top rows) become NaN


def test_raw_bands_name_the_file_band_behind_each_unwarped_layer(s2_l2a_tif, tmp_path):
    """``raw.files`` lets a reader go to the file directly: set for a multi-band file and for band
    files on the scene's grid, kept through a band subset, None for bands that are warped."""
    scene = read_scene(s2_l2a_tif, "sentinel2")
    assert scene.raw.files == tuple((str(s2_l2a_tif), i) for i in range(1, 14))
    assert scene.subset(["B8A", "B02"]).raw.files == ((str(s2_l2a_tif), 9), (str(s2_l2a_tif), 2))
    assert read_scene(s2_l2a_tif, "sentinel2", resolution=40).raw.files is None  # resampled
    folder = _band_folder(tmp_path, (("B02", 20), ("B11", 20), ("B01", 60)))
    files = read_scene(folder).raw.files
    assert files[0] is None  # B01 at 60 m, warped onto the 20 m grid
    assert files[1] == (str(folder / "T32TMT_20240101T103021_B02_20m.tif"), 1) and files[2][1] == 1


def test_sensor_guessed_from_file_name(s2_l2a_tif):
    assert read_scene(s2_l2a_tif).sensor.id == "sentinel2"


def test_bands_named_by_descriptions_in_any_order(tmp_path):
    arr = random_reflectance(4, 32, 40)
    path = write_raster(tmp_path / "x.tif", arr, descriptions=["nir", "red", "green", "blue"])
    scene = read_scene(path, "sentinel2")
    assert list(scene.data.band.values) == ["B08", "B04", "B03", "B02"]
    np.testing.assert_allclose(scene.data.values, arr)  # float files are physical already


def test_band_count_mismatch_is_a_clear_error(tmp_path):
    path = write_raster(tmp_path / "x.tif", random_reflectance(5, 16, 16))
    with pytest.raises(BandError, match="has 5 bands"):
        read_scene(path, "sentinel2")
    with pytest.raises(BandError, match="--bands names 2"):
        read_scene(path, "sentinel2", bands=["red", "nir"])


@pytest.mark.parametrize("descriptions, match", [
    (["blue", "blue", "red", "nir"], "B02 described twice"),
    (["blue", "green", "red", "nir", "udm"], "'udm' not a band of sentinel2"),
    (["red", "green", "blue", None], "layer 4 undescribed"),
])
def test_descriptions_naming_some_layers_wrongly_are_an_error_not_registry_order(tmp_path, descriptions, match):
    """Some descriptions name bands, so the file says what it holds: a duplicate or a stray layer
    must not fall back to the registry's order, which would put layers under the wrong band."""
    path = write_raster(tmp_path / "x.tif", random_reflectance(len(descriptions), 16, 16), descriptions=descriptions)
    with pytest.raises(BandError, match=match):
        read_scene(path, "sentinel2")


def test_a_single_band_file_says_how_band_files_make_a_scene(tmp_path):
    path = write_raster(tmp_path / "band1.tif", random_reflectance(1, 16, 16))
    with pytest.raises(BandError, match="single band; a scene stored one band per file"):
        read_scene(path, "sentinel2")


def test_descriptions_that_agree_with_the_registry_order_still_read(tmp_path):
    """13 layers, one description a label that names no band but every named one in its registry
    place (e.g. "B10 cirrus"): the registry order, as before."""
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10 cirrus", "B11", "B12"]
    path = write_raster(tmp_path / "x.tif", random_reflectance(13, 16, 16), descriptions=names)
    assert list(read_scene(path, "sentinel2").data.band.values)[10] == "B10"


@pytest.mark.parametrize("resolution", [None, 40])
def test_bands_option_leaves_out_layers_marked_dash(tmp_path, resolution):
    """A 5-layer file whose 4th layer is a UDM: '-' leaves it out, the others read as named."""
    arr = random_reflectance(5, 16, 16)
    path = write_raster(tmp_path / "x.tif", arr, transform=grid_transform(20.0))
    scene = read_scene(path, "sentinel2", bands=["blue", "green", "red", "-", "nir"], resolution=resolution)
    assert list(scene.data.band.values) == ["B02", "B03", "B04", "B08"]
    if resolution is None:
        np.testing.assert_allclose(scene.data.values, arr[[0, 1, 2, 4]])
    else:
        assert scene.shape == (8, 8)
        np.testing.assert_allclose(scene.data.sel(band="B08").values, arr[4].reshape(8, 2, 8, 2).mean(axis=(1, 3)), rtol=1e-5)
    with pytest.raises(BandError, match="'-' for one to leave out"):
        read_scene(path, "sentinel2", bands=["blue", "green", "red", "nir"])


def test_bands_option_contradicting_the_descriptions_warns(tmp_path):
    path = write_raster(tmp_path / "x.tif", random_reflectance(4, 16, 16), descriptions=["nir", "red", "green", "blue"])
    with pytest.warns(UserWarning, match="overrides the file's band descriptions"):
        scene = read_scene(path, "sentinel2", bands=["blue", "green", "red", "nir"])
    assert list(scene.data.band.values) == ["B02", "B03", "B04", "B08"]


def _band_folder(tmp_path, bands: tuple[tuple[str, int], ...]):
    """A Sentinel-2 style folder of single-band uint16 files, 1200 m square, each at its own resolution."""
    folder = tmp_path / "T32TMT_20240101T103021"
    folder.mkdir()
    for band, res in bands:
        n = int(1200 / res)
        dn = (random_reflectance(1, n, n) * 10000 + 1000).astype("uint16")
        write_raster(folder / f"T32TMT_20240101T103021_{band}_{res}m.tif", dn, transform=grid_transform(res), nodata=0)
    return folder


def test_band_folder_resampled_to_one_grid(tmp_path):
    folder = _band_folder(tmp_path, (("B02", 10), ("B11", 20), ("B01", 60)))
    scene = read_scene(folder)
    assert scene.sensor.id == "sentinel2"
    assert scene.shape == (60, 60)
    assert [b.name for b in scene.bands] == ["B01", "B02", "B11"]
    assert scene.transform.a == 20



S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_a_south_up_grid_resampled_stays_the_scene_flipped(tmp_path):
    """A south-up file (positive y pixel size) at a given resolution: the same grid, south-up, and
    the same pixels as the north-up file upside down (a north-up-only grid had made it one row)."""
    from affine import Affine

    dn = (random_reflectance(13, 40, 50, seed=5) * 10000 + 1000).astype("uint16")
    north = write_raster(tmp_path / "north.tif", dn, transform=Affine(20, 0, 500000, 0, -20, 5200800), nodata=0,
                         descriptions=S2_NAMES)
    south = write_raster(tmp_path / "south.tif", dn[:, ::-1], transform=Affine(20, 0, 500000, 0, 20, 5200000),
                         nodata=0, descriptions=S2_NAMES)
    a = read_scene(north, sensor="sentinel2", resolution=20)
    b = read_scene(south, sensor="sentinel2", resolution=20)
    assert b.shape == a.shape == (40, 50)
    assert tuple(b.transform)[:6] == (20, 0, 500000, 0, 20, 5200000)
    np.testing.assert_array_equal(b.data.values, a.data.values[:, ::-1])
    folder = tmp_path / "S2A_MSIL2A_south"
    folder.mkdir()
    for i, name in enumerate(S2_NAMES):
        write_raster(folder / f"T32TMT_{name}.tif", dn[i, ::-1], transform=Affine(20, 0, 500000, 0, 20, 5200000), nodata=0)
    c = read_scene(folder)
    assert c.shape == (40, 50) and c.transform.e == 20
    np.testing.assert_array_equal(c.data.values, b.data.values)


def test_a_geographic_band_folder_is_resampled_to_metres_not_degrees(tmp_path):
    """The sensor's 20 m on an EPSG:4326 grid is ~0.00018° of latitude, not 20°."""
    from affine import Affine
    from rasterio.crs import CRS

    dn = (random_reflectance(13, 50, 50, seed=6) * 10000 + 1000).astype("uint16")
    folder = tmp_path / "S2A_MSIL2A_geo"
    folder.mkdir()
    for i, name in enumerate(S2_NAMES):
        write_raster(folder / f"T32TMT_{name}.tif", dn[i], crs=CRS.from_epsg(4326),
                     transform=Affine(0.0002, 0, 9.0, 0, -0.0002, 46.0), nodata=0)
    scene = read_scene(folder)
    t = scene.transform
    assert t.e == pytest.approx(-20 / 111_320) and t.a == pytest.approx(20 / 111_320 / np.cos(np.radians(45.995)), rel=1e-4)
    assert scene.shape == (round(0.01 / -t.e), round(0.01 / t.a)) == (56, 39)
    assert np.isfinite(scene.data.values).mean() > 0.95


def test_band_files_named_by_a_sensors_own_band_names(tmp_path):
    """Not only B4-style names: OLCI's Oa01… as the stem's last part (the registry entry is all a
    sensor needs), in a folder the archive walk takes for one scene."""
    from cloudmask.mask import is_band_folder

    folder = tmp_path / "S3A_OL_1_EFR____20240601"
    folder.mkdir()
    for i, name in enumerate(("Oa03", "Oa06", "Oa08", "Oa17")):
        dn = (random_reflectance(1, 32, 32, seed=i) * 10000).astype("uint16") + 1
        write_raster(folder / f"S3A_OL_1_EFR_{name}.tif", dn, transform=grid_transform(300), nodata=0)
    assert is_band_folder(folder)
    scene = read_scene(folder, sensor="olci")
    assert [b.name for b in scene.bands] == ["Oa03", "Oa06", "Oa08", "Oa17"] and scene.shape == (32, 32)


def test_a_band_file_cut_short_is_named_before_any_work(tmp_path):
    """A band of a folder downloaded in part: its block map points past its end."""
    import rasterio

    folder = _band_folder(tmp_path, (("B02", 10), ("B11", 20), ("B01", 60)))
    band = folder / "T32TMT_20240101T103021_B11_20m.tif"
    with rasterio.open(band) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data = band.read_bytes()
    assert offset + size <= len(data) and offset > 8  # the header comes first
    band.write_bytes(data[: offset + size // 2])
    with pytest.raises(SceneError, match=r"_B11_20m.tif: file is truncated"):
        read_scene(folder)

L2A_SAFE = "S2A_MSIL2A_20240612T103031_N0510_R108_T32TMT_20240612T140342.SAFE"
L1C_SAFE = "S2B_MSIL1C_20200612T103029_N0209_R108_T32TMT_20200612T123456.SAFE"


def test_a_safe_is_one_scene_from_its_20m_folder_with_its_products_offset(tmp_path):
    scene = read_scene(write_safe(tmp_path, L2A_SAFE, dn=2000))
    assert scene.sensor.id == "sentinel2" and scene.product == "l2a" and scene.source.endswith(".SAFE")
    assert [b.name for b in scene.bands] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"]
    assert scene.shape == (60, 60) and scene.transform.a == 20
    np.testing.assert_allclose(scene.data.values, 2000 * 1e-4 - 0.1, rtol=1e-5)  # baseline 05.10: DN - 1000


def test_an_old_l1c_safe_reads_every_band_without_the_0400_offset(tmp_path):
    scene = read_scene(write_safe(tmp_path, L1C_SAFE, dn=2000))
    assert scene.product == "l1c-pre0400" and len(scene.bands) == 13 and scene.shape == (60, 60)
    np.testing.assert_allclose(scene.data.values, 2000 * 1e-4, rtol=1e-5)  # baseline 02.09: no offset yet
    assert read_scene(scene.source, product="l1c").product == "l1c"  # an explicit product wins


def test_a_safe_without_one_granule_is_a_clear_error(tmp_path):
    (tmp_path / L2A_SAFE / "GRANULE").mkdir(parents=True)
    with pytest.raises(SceneError, match="one granule"):
        read_scene(tmp_path / L2A_SAFE)


def _landsat_l1_files(folder, dn: int = 20000):
    name = "LC08_L1TP_195028_20240612_20240620_02_T1"
    folder.mkdir(parents=True)
    for b in range(1, 8):
        write_raster(folder / f"{name}_B{b}.TIF", np.full((1, 20, 20), dn, "uint16"), transform=grid_transform(30), nodata=0)
    (folder / f"{name}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
    return name


@pytest.mark.parametrize("mtl_json", [False, True])
def test_a_landsat_l1_band_folder_is_scaled_as_l1_not_the_default_l2(tmp_path, mtl_json):
    """Also beside USGS's ``*_MTL.json`` (metadata, not a STAC item: it must not decide the product)."""
    import json

    folder = tmp_path / "LC08_L1TP_195028_20240612_20240620_02_T1"
    _landsat_l1_files(folder)
    if mtl_json:
        meta = {"LANDSAT_METADATA_FILE": {"IMAGE_ATTRIBUTES": {"SUN_AZIMUTH": "140.5", "SUN_ELEVATION": "55.2"}}}
        (folder / f"{folder.name}_MTL.json").write_text(json.dumps(meta))
    scene = read_scene(folder)
    assert scene.sensor.id == "landsat8" and scene.product == "l1" and scene.item is None
    np.testing.assert_allclose(scene.data.values, 20000 * 2e-5 - 0.1, rtol=1e-5)
    if mtl_json:
        assert scene.sun == pytest.approx((140.5, 55.2))


def test_zip_and_tar_archives_are_read_in_place(tmp_path):
    import tarfile
    safe = write_safe(tmp_path / "src", L1C_SAFE, dn=2000)
    zipped = tmp_path / f"{L1C_SAFE}.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for p in sorted(safe.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(safe.parent))
    scene = read_scene(zipped)
    assert scene.product == "l1c-pre0400" and len(scene.bands) == 13 and scene.source == str(zipped)
    np.testing.assert_allclose(scene.data.values, 0.2, rtol=1e-5)

    name = _landsat_l1_files(tmp_path / "ls")
    bundle = tmp_path / f"{name}.tar"
    with tarfile.open(bundle, "w") as t:
        for p in sorted((tmp_path / "ls").iterdir()):
            t.add(p, arcname=p.name)
    scene = read_scene(bundle)
    assert scene.sensor.id == "landsat8" and scene.product == "l1" and scene.shape == (20, 20)
    assert [b.name for b in scene.bands] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7"]
    np.testing.assert_allclose(scene.data.values, 20000 * 2e-5 - 0.1, rtol=1e-5)


def test_a_zipped_multiband_file_is_read_as_that_file(tmp_path, s2_l2a_tif):
    with zipfile.ZipFile(tmp_path / "one.zip", "w") as z:
        z.write(s2_l2a_tif, f"data/{s2_l2a_tif.name}")
    scene, plain = read_scene(tmp_path / "one.zip"), read_scene(s2_l2a_tif)
    assert scene.source == str(tmp_path / "one.zip") and scene.product == plain.product
    np.testing.assert_array_equal(scene.data.values, plain.data.values)


MTD_TL = """<n1:Level-2A_Tile_ID><n1:Geometric_Info><Tile_Angles>
  <Mean_Sun_Angle>
    <ZENITH_ANGLE unit="deg">27.6</ZENITH_ANGLE>
    <AZIMUTH_ANGLE unit="deg">152.3</AZIMUTH_ANGLE>
  </Mean_Sun_Angle>
</Tile_Angles></n1:Geometric_Info></n1:Level-2A_Tile_ID>
"""


def test_the_sun_is_read_from_stac_items_landsat_mtl_and_safe_metadata(tmp_path):
    from cloudmask.scene import Scene, sun_from_metadata

    assert sun_from_metadata("GROUP = IMAGE_ATTRIBUTES\n  SUN_AZIMUTH = 151.288\n  SUN_ELEVATION = 62.215\n") == (151.288, 62.215)
    assert sun_from_metadata('{"IMAGE_ATTRIBUTES": {"SUN_AZIMUTH": "151.288", "SUN_ELEVATION": "62.215"}}') == (151.288, 62.215)
    assert sun_from_metadata(MTD_TL) == pytest.approx((152.3, 62.4))  # elevation = 90 - zenith
    assert sun_from_metadata("SUN_AZIMUTH = 400\nSUN_ELEVATION = -2") is None and sun_from_metadata("none") is None
    # Landsat MTLs give azimuths within -180..180: the same direction, within 0..360
    assert sun_from_metadata("SUN_AZIMUTH = -37.5\nSUN_ELEVATION = 21.7") == (322.5, 21.7)
    # STAC view extension; untrusted values (not a number, out of range) count as unknown
    item = {"properties": {"view:sun_azimuth": 151.2, "view:sun_elevation": 38.5}}
    assert Scene(None, None, [], "x", item=item).sun == (151.2, 38.5)
    for bad in ({}, {"view:sun_azimuth": "east", "view:sun_elevation": -3}, {"view:sun_azimuth": True},
                {"view:sun_azimuth": float("nan"), "view:sun_elevation": 95}):
        assert Scene(None, None, [], "x", item={"properties": bad}).sun is None
    # a SAFE's granule metadata; a Landsat folder's and bundle's MTL
    safe = write_safe(tmp_path, L2A_SAFE)
    next((safe / "GRANULE").iterdir()).joinpath("MTD_TL.xml").write_text(MTD_TL)
    assert read_scene(safe).sun == pytest.approx((152.3, 62.4))
    name = _landsat_l1_files(tmp_path / "ls")
    (tmp_path / "ls" / f"{name}_MTL.txt").write_text("SUN_AZIMUTH = 140.5\nSUN_ELEVATION = 55.25\n")
    assert read_scene(tmp_path / "ls").sun == (140.5, 55.25)
    import tarfile

    with tarfile.open(tmp_path / f"{name}.tar", "w") as t:
        for p in sorted((tmp_path / "ls").iterdir()):
            t.add(p, arcname=p.name)
    assert read_scene(tmp_path / f"{name}.tar").sun == (140.5, 55.25)
    assert read_scene(write_raster(tmp_path / "S2A_MSIL2A_x.tif", random_reflectance(13, 8, 8))).sun is None


def test_broken_and_empty_archives_are_clear_errors(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SceneError, match="cannot read archive"):
        read_scene(tmp_path / "broken.zip", "sentinel2")
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as z:
        z.writestr("readme.txt", "no bands here")
    with pytest.raises(SceneError, match="no raster files"):
        read_scene(tmp_path / "docs.zip", "sentinel2")


def test_empty_folder_and_corrupt_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="no raster files"):
        read_scene(tmp_path / "empty", "sentinel2")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(SceneError, match="bad.tif"):
        read_scene(bad, "sentinel2")


@pytest.mark.parametrize("fault", ["missing", "range request"])
def test_a_remote_asset_answering_404_is_named_by_its_http_status(file_server, tmp_path, fault):
    """GDAL reports a range request answered 404 as "not recognized as being in a supported file
    format"; the status itself is what the user needs (a missing file fails GDAL's HEAD already)."""
    item = write_s2_item(file_server, "S2A_gone", bands=["B04", "B8A"])
    if fault == "missing":
        (file_server.root / "S2A_gone" / "red.tif").unlink()
    else:
        file_server.faults["/S2A_gone/red.tif"] = ["404"] * 4
    with pytest.raises(SceneError) as err:
        read_scene(write_item(tmp_path / "item.json", item))
    assert str(err.value) == f"{file_server.url}/S2A_gone/red.tif: cannot read raster (HTTP 404 Not Found)"


def test_a_range_request_answered_503_is_retried_not_the_scenes_end(file_server, tmp_path):
    """One failed range request (GDAL retries 429, 500, 502, 503 and 504 once told to)."""
    item = write_s2_item(file_server, "S2A_flaky", bands=["B04", "B8A"])
    file_server.faults["/S2A_flaky/red.tif"] = ["503"]
    red = read_scene(write_item(tmp_path / "item.json", item)).data.sel(band="B04").values
    with rasterio.open(file_server.root / "S2A_flaky" / "red.tif") as src:
        dn = src.read(1).astype("float32")
    np.testing.assert_allclose(red, np.where(dn == 0, np.nan, (dn - 1000) * 1e-4), atol=1e-6)
    first, again = file_server.gets("/S2A_flaky/red.tif")[:2]
    assert first is not None and again == first  # the range answered 503 was asked for again


def test_product_from_tag_and_landsat_name(tmp_path):
    dn = np.full((7, 16, 16), 20000, dtype="uint16")
    l1 = write_raster(tmp_path / "LC08_L1TP_195028_20240612_20240620_02_T1.tif", dn, nodata=0)
    scene = read_scene(l1, bands=["B1", "B2", "B3", "B4", "B5", "B6", "B7"])
    assert scene.sensor.id == "landsat8" and scene.product == "l1"
    np.testing.assert_allclose(scene.data.values, 20000 * 2e-5 - 0.1, rtol=1e-5)
    l2 = write_raster(tmp_path / "x.tif", dn, nodata=0, tags={"CLOUDMASK_SENSOR": "landsat8", "CLOUDMASK_PRODUCT": "l2"})
    scene = read_scene(l2, bands=["B1", "B2", "B3", "B4", "B5", "B6", "B7"])
    np.testing.assert_allclose(scene.data.values, 20000 * 2.75e-5 - 0.2, rtol=1e-5)


def test_truncated_file_is_reported_when_opened(tmp_path):
    path = write_raster(tmp_path / "t.tif", random_reflectance(4, 128, 128), descriptions=["red", "green", "blue", "nir"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneError, match="t.tif"):
        read_scene(path, "sentinel2")
    # bands interleaved by band: a file cut inside the last band's last block is found as well,
    # from the block map alone; read through GDAL's /vsizip/ (no local size), by decoding that block
    import rasterio

    from cloudmask.testing import TEST_CRS

    band_path = tmp_path / "b.tif"
    with rasterio.open(band_path, "w", driver="GTiff", width=128, height=128, count=4, dtype="float32", tiled=True,
                       blockxsize=64, blockysize=64, interleave="band", compress="deflate", crs=TEST_CRS,
                       transform=grid_transform(20.0)) as dst:
        dst.descriptions = ("red", "green", "blue", "nir")  # before the pixels: the header stays in front
        dst.write(random_reflectance(4, 128, 128, seed=2))
    read_scene(band_path, "sentinel2")  # whole: no complaint
    with rasterio.open(band_path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=4))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=4))
    data = band_path.read_bytes()
    assert offset + size == len(data)  # GDAL stores the last band's last block last
    band_path.write_bytes(data[: offset + size // 2])
    with pytest.raises(SceneError, match=rf"b.tif: file is truncated \({offset + size // 2} bytes; its blocks reach byte {offset + size}\)"):
        read_scene(band_path, "sentinel2")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.write(band_path, "b.tif")
    with pytest.raises(SceneError, match="b.tif: file is corrupt or truncated"):
        read_scene(tmp_path / "b.zip", "sentinel2")


def test_not_georeferenced_file_is_read_with_a_warning(tmp_path):
    path = write_raster(tmp_path / "plain.tif", random_reflectance(4, 16, 16), crs=None, descriptions=["red", "green", "blue", "nir"])
    with pytest.warns(UserWarning, match="not georeferenced"):
        scene = read_scene(path, "sentinel2")
    assert scene.crs is None and scene.shape == (16, 16)


@pytest.mark.parametrize("shape", [(1, 300, 512), (2, 7, 5), (37,)])
def test_dn_conversion_into_strided_windows_matches_plain_maths(shape):
    """DN → reflectance in cache-sized row slabs: every slab scaled, offset and nodata-masked."""
    from cloudmask.registry import Scaling
    from cloudmask.scene import ToPhysical

    rng = np.random.default_rng(0)
    dn = rng.integers(1, 12000, shape, dtype=np.uint16)
    dn.reshape(-1)[-3] = 0  # nodata in the last slab only
    conv = ToPhysical(Scaling(scale=1e-4, offset=-0.1, nodata=0.0), True, 0.0)
    want = dn.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    want[dn == 0] = np.nan
    big = np.full((3, *shape[:-1], shape[-1] + 9), 7.0, np.float32)  # a strided destination
    dst = big[1, ..., 4 : 4 + shape[-1]]
    conv.into(dn, dst)
    np.testing.assert_array_equal(dst, want)
    assert (big[0] == 7.0).all() and (big[1, ..., :4] == 7.0).all() and (big[1, ..., 4 + shape[-1] :] == 7.0).all()
    np.testing.assert_array_equal(conv(dn), want)


def test_an_integer_files_own_nodata_is_nodata_besides_the_registrys(tmp_path):
    """A uint16 file declaring nodata 65535: those pixels are missing (NaN), and so is DN 0, the
    sensor's own nodata; the model is then handed physical values, not stored ones."""
    dn = (random_reflectance(13, 40, 48, seed=3) * 10000 + 1000).astype("uint16")
    dn[:, :, :20] = 65535  # the file's fill
    dn[:, 30:, 30:] = 0  # the registry's
    path = write_raster(tmp_path / "S2A_MSIL2A_fill.tif", dn, nodata=65535)
    scene = read_scene(path)
    phys = scene.data.values
    assert np.isnan(phys[:, :, :20]).all() and np.isnan(phys[:, 30:, 30:]).all()
    assert np.isfinite(phys[:, :30, 20:]).all()
    assert scene.raw.convert[0].affine is None  # both values checked on conversion


def test_a_float_files_nodata_holds_in_chunks_with_a_nan(tmp_path):
    x = random_reflectance(13, 40, 48, seed=4)
    x[:, :, :24] = -9999.0
    x[2, 5, 30] = np.nan
    path = write_raster(tmp_path / "S2A_MSIL2A_float.tif", x, nodata=-9999.0)
    phys = read_scene(path).data.values
    assert np.isnan(phys[:, :, :24]).all()
    assert np.isnan(phys[2, 5, 30]) and np.isfinite(np.delete(phys[:, :, 24:], 2, axis=0)).all()


def _one_asset_item(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A 4-band GeoTIFF and a STAC item whose one asset lists its layers in ``eo:bands``."""
    dn = np.round(random_reflectance(len(names), 40, 48, seed=3) * 10000 + 1000).astype("uint16")
    tif = write_raster(tmp_path / "analytic.tif", dn, nodata=0)
    item = stac_item("one-asset", {"ortho_analytic_4b_sr": "analytic.tif"}, collection=None)
    item["assets"]["ortho_analytic_4b_sr"]["eo:bands"] = [{"name": n} for n in names]
    return tif, write_item(tmp_path / "item.json", item)


def test_a_multiband_asset_gives_each_band_its_own_layer(tmp_path):
    names = ["B02", "B03", "B04", "B08"]
    tif, item = _one_asset_item(tmp_path, names)
    from_item = read_scene(item, sensor="sentinel2")
    direct = read_scene(tif, sensor="sentinel2", bands=names)
    assert list(from_item.data.band.values) == names
    assert from_item.shape == direct.shape and from_item.transform == direct.transform
    np.testing.assert_array_equal(from_item.data.values, direct.data.values)
    assert from_item.raw.files == tuple((str(tif), i) for i in range(1, 5))
    # in another order, the list's positions still say the layers
    tif, item = _one_asset_item(tmp_path, ["B08", "B04", "B03", "B02"])
    np.testing.assert_array_equal(read_scene(item, sensor="sentinel2").data.sel(band="B08").values,
                                  direct.data.sel(band="B02").values)


def test_an_asset_listing_more_bands_than_its_file_holds_is_a_clear_error(tmp_path):
    tif, item_path = _one_asset_item(tmp_path, ["B02", "B03", "B04", "B08"])
    item = json.loads(item_path.read_text())
    item["assets"]["ortho_analytic_4b_sr"]["eo:bands"].insert(0, {"name": "B01"})
    write_item(item_path, item)
    with pytest.raises(SceneError, match="has 4 band"):
        read_scene(item_path, sensor="sentinel2")


def test_an_items_cloudmask_sensor_picks_the_sensor(tmp_path):
    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene
    from cloudmask.simulate.io import write_scene

    # neither a platform nor a recognisable id: only cloudmask:sensor says superdove
    sim = simulate_scene(list(get_sensor("superdove").bands), 32, rng=1)
    paths = write_scene(sim, tmp_path, "scene_0001", "superdove")
    scene = read_scene(paths["json"])
    assert scene.sensor.id == "superdove" and list(scene.data.band.values) == get_sensor("superdove").band_names
    with rasterio.open(paths["image"]) as ds:
        np.testing.assert_allclose(scene.data.values, ds.read(), equal_nan=True)


def test_a_sensor_the_registry_lacks_is_named_not_guessed_at(tmp_path):
    from cloudmask.errors import UnknownSensorError

    tif, item_path = _one_asset_item(tmp_path, ["B1", "B2", "B3", "B4"])
    item = json.loads(item_path.read_text())
    item["properties"] = {"datetime": item["properties"]["datetime"], "cloudmask:sensor": "dove4"}
    write_item(item_path, item)
    with pytest.raises(UnknownSensorError, match=r"cloudmask:sensor says sensor 'dove4', which the registry does not "
                                                 r"have \(add its YAML with --sensors-dir or CLOUDMASK_SENSORS"):
        read_scene(item_path)
    tagged = write_raster(tmp_path / "x.tif", np.ones((4, 16, 16), "uint16"), tags={"CLOUDMASK_SENSOR": "dove4"})
    with pytest.raises(UnknownSensorError, match="CLOUDMASK_SENSOR tag says sensor 'dove4'"):
        read_scene(tagged)
    assert read_scene(item_path, sensor="superdove", bands=["B1", "B2", "B3", "B4"]).sensor.id == "superdove"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_scene_opened_by_a_relative_path_still_reads_from_another_folder(tmp_path, monkeypatch, s2_l2a_tif, kind):
    """Dask cluster workers run in their own folder: the lazy graph must not hold the relative path."""
    if kind == "folder":
        src = _band_folder(tmp_path, (("B02", 10), ("B11", 20), ("B01", 60)))
    else:
        src = s2_l2a_tif
    expected = read_scene(src, "sentinel2").data.values
    monkeypatch.chdir(src.parent)
    scene = read_scene(src.name, "sentinel2")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    np.testing.assert_array_equal(scene.data.values, expected)


def test_a_multiband_geotiff_url_is_read_in_place_like_the_file(file_server):
    """``cloudmask mask https://…/scene.tif``: a raster URL (not a STAC item) is opened with range
    requests, its name tells the sensor, and it reads as the same file does locally."""
    dn = np.round(random_reflectance(13, 300, 260, seed=7) * 10000 + 1000).astype("uint16")
    local = write_raster(file_server.root / "S2B_MSIL2A_20240601_cog.tif", dn, nodata=0)
    url = f"{file_server.url}/S2B_MSIL2A_20240601_cog.tif"
    remote, here = read_scene(url), read_scene(local)
    assert remote.sensor.id == "sentinel2" and remote.product == here.product == "l2a" and remote.source == url
    assert remote.raw.remote and not here.raw.remote and remote.raw.files[0] == (url, 1)
    assert (remote.crs, remote.transform) == (here.crs, here.transform)
    np.testing.assert_array_equal(remote.data.values, here.data.values)
    assert all(r is not None for r in file_server.gets("/S2B_MSIL2A_20240601_cog.tif"))  # only range requests
    with pytest.raises(SceneError) as err:
        read_scene(f"{file_server.url}/gone.tif", "sentinel2")
    assert str(err.value) == f"{file_server.url}/gone.tif: cannot read raster (HTTP 404 Not Found)"


def test_gdal_names_a_url_by_its_scheme_for_dropping_its_cache():
    """A retry must drop the cache entry GDAL keyed the file by: /vsis3/ and /vsigs/ for object
    stores, /vsicurl/ for HTTP."""
    from cloudmask.scene import _gdal_vsi_path

    assert _gdal_vsi_path("https://h/a/b.tif?sig=1") == "/vsicurl/https://h/a/b.tif?sig=1"
    assert _gdal_vsi_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    assert _gdal_vsi_path("gs://bucket/x.tif") == "/vsigs/bucket/x.tif"
    assert _gdal_vsi_path("/vsiaz/c/x.tif") == "/vsiaz/c/x.tif"


def test_read_scene_refuses_impossible_resolution_and_chunks_and_takes_a_bands_string(tmp_path):
    """resolution=-5 gave a flipped 1×1 grid and 0 was ignored; chunks=0 raised ZeroDivisionError;
    bands="blue,green,red,nir" was read as 18 one-letter names."""
    from cloudmask.errors import UsageError

    dn = np.round(random_reflectance(4, 20, 24, seed=3) * 10000).astype("uint16")
    src = write_raster(tmp_path / "four.tif", dn)
    for res in (-5.0, 0.0):
        with pytest.raises(UsageError, match="resolution must be positive"):
            read_scene(src, sensor="sentinel2", bands=["blue", "green", "red", "nir"], resolution=res)
    with pytest.raises(UsageError, match="chunks must be a positive"):
        read_scene(src, sensor="sentinel2", bands=["blue", "green", "red", "nir"], chunks=0)
    scene = read_scene(src, sensor="sentinel2", bands="blue, green,red,nir")
    assert [b.common_name for b in scene.bands] == ["blue", "green", "red", "nir"]


def test_resolution_is_metres_in_a_crs_measured_in_feet(tmp_path) -> None:
    """--resolution 60 on a US-survey-feet grid made 60 ft pixels (3.3× too many)."""
    from affine import Affine
    from rasterio.crs import CRS

    ft = 1200 / 3937  # metres per US survey foot
    dn = (random_reflectance(13, 60, 60, seed=5) * 10000 + 1000).astype("uint16")
    path = write_raster(tmp_path / "feet.tif", dn, crs=CRS.from_epsg(2225), nodata=0, descriptions=S2_NAMES,
                        transform=Affine(20 / ft, 0, 6000000, 0, -20 / ft, 2000000))
    scene = read_scene(path, sensor="sentinel2", resolution=60)
    assert scene.shape == (20, 20)
    assert scene.transform.a == pytest.approx(60 / ft)


def test_a_band_folder_whose_files_carry_internal_masks(tmp_path) -> None:
    """Per-band files with GDAL internal masks (no nodata value): masked pixels are nodata (NaN)."""
    import rasterio
    from affine import Affine

    folder = tmp_path / "S2A_MSIL2A_masks"
    folder.mkdir()
    dn = (random_reflectance(13, 32, 32, seed=3) * 10000 + 1000).astype("uint16")
    for i, name in enumerate(S2_NAMES):
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
                folder / f"T32TMT_{name}.tif", "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16",
                crs="EPSG:32632", transform=Affine(20, 0, 500000, 0, -20, 5200000)) as dst:
            dst.write(dn[i], 1)
            valid = np.full((32, 32), 255, np.uint8)
            valid[:8] = 0
            dst.write_mask(valid)
    values = read_scene(folder).data.values
    assert np.isnan(values[:, :8]).all() and not np.isnan(values[:, 8:]).any()


def test_a_sensor_option_that_contradicts_the_item_is_warned_about(tmp_path) -> None:
    """`--sensor landsat8` on a Sentinel-2 item read it with Landsat's bands and scaling, silently."""
    import contextlib

    from cloudmask.errors import CloudmaskError

    tif = write_raster(tmp_path / "B04.tif", (random_reflectance(1, 32, 32)[0] * 10000).astype("uint16"), nodata=0)
    item = write_item(tmp_path / "item.json", stac_item("S2A_x", {"B04": tif.name}, platform="sentinel-2a"))
    with pytest.warns(UserWarning, match=r"read as landsat8 \(--sensor\), though .* says sentinel2"):
        with contextlib.suppress(CloudmaskError):
            read_scene(item, "landsat8")
