"""Writing simulated scenes: the files, and an item that STAC tools can place on the globe."""

from __future__ import annotations

import json

import pystac
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from cloudmask.registry import get_sensor
from cloudmask.simulate import simulate_scene
from cloudmask.simulate.io import SIM_DATETIME, write_scene


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_the_item_footprint_is_wgs84_around_the_image(tmp_path, seed: int) -> None:
    bands = get_sensor("sentinel2").select(["B02", "B03", "B04", "B8A"])
    sim = simulate_scene(bands, 32, rng=seed)
    paths = write_scene(sim, tmp_path, f"sim_sentinel2_{seed}_0000", "sentinel2")
    item = json.loads(open(paths["json"]).read())
    pystac.Item.from_dict(item)  # parses as STAC
    assert any("/eo/" in e for e in item["stac_extensions"]) and item["links"] == []
    nir = item["assets"]["image"]["eo:bands"][3]  # B8A: named, and described for tools without cloudmask
    assert (nir["name"], nir["common_name"], nir["center_wavelength"]) == ("B8A", "nir08", pytest.approx(0.865, abs=0.01))
    west, south, east, north = item["bbox"]
    assert -180 <= west < east <= 180 and -90 <= south < north <= 90
    with rasterio.open(paths["image"]) as ds:
        cx, cy = ds.xy(ds.height // 2, ds.width // 2)
        (lon,), (lat,) = warp_transform(ds.crs, "EPSG:4326", [cx], [cy])
    assert west <= lon <= east and south <= lat <= north
    lons, lats = zip(*item["geometry"]["coordinates"][0])
    assert item["geometry"]["type"] == "Polygon"
    assert (min(lons), min(lats), max(lons), max(lats)) == pytest.approx((west, south, east, north))
    assert item["properties"]["datetime"] == SIM_DATETIME  # fixed: the simulator has no acquisition time


def test_written_files_get_the_usual_permissions_not_mkstemps_owner_only(tmp_path) -> None:
    """Shared training data: colleagues must be able to read it (mkstemp made 0600 files)."""
    import os
    import stat

    from cloudmask import files

    sim = simulate_scene(get_sensor("sentinel2").select(["B02", "B03", "B04", "B8A"]), 16, rng=1)
    paths = write_scene(sim, tmp_path, "sim_perm", "sentinel2")
    usual = 0o666 & ~files._UMASK  # the process's umask, as a plain new file gets it
    if not usual & 0o044:
        pytest.skip("this process's umask hides new files from others: nothing to compare with 0600")
    for p in paths.values():
        assert stat.S_IMODE(os.stat(p).st_mode) == usual, p
