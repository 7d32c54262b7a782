"""Rebuild the bundled sample scene (cloudmask/data/S2A_MSIL2A_sample.tif) and its label raster.

A simulated Sentinel-2 L2A-style scene stored exactly like the real product (uint16 DN with the
processing-baseline 04.00 offset of +1000, nodata 0, band descriptions B01..B12), so the README's
first command exercises the same scaling path as real data. Run: python docs/scripts/make_sample.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from cloudmask.registry import get_sensor
from cloudmask.simulate import simulate_scene
from cloudmask.testing import test_transform, write_raster

OUT = Path(__file__).resolve().parents[2] / "cloudmask" / "data" / "S2A_MSIL2A_sample.tif"
LABEL = OUT.with_name("S2A_MSIL2A_sample.label.tif")


def main() -> None:
    s2 = get_sensor("sentinel2")
    sim = simulate_scene(
        s2.bands, size=256, rng=20240612, pixel_size=20.0, biome="cropland", cloud_cover=0.3,
        sun_elevation=55.0, sun_azimuth=150.0, nodata_border_prob=0.0, cirrus_cover=0.1,
    )
    dn = np.where(np.isfinite(sim.data), np.clip(np.round(sim.data * 10000 + 1000), 1, 65535), 0).astype("uint16")
    tmp = OUT.with_suffix(".tmp.tif")
    write_raster(
        tmp, dn, crs=CRS.from_epsg(32632), transform=test_transform(20.0, 499980.0, 5200020.0), nodata=0,
        descriptions=s2.band_names, tags={"CLOUDMASK_SENSOR": "sentinel2", "CLOUDMASK_PRODUCT": "l2a"},
    )
    # Re-encode compactly: deflate with a horizontal predictor keeps the wheel small.
    import rasterio
    from rasterio.shutil import copy as rio_copy

    rio_copy(tmp, OUT, driver="GTiff", compress="deflate", predictor=2, tiled=True, blockxsize=256, blockysize=256, zlevel=9)
    tmp.unlink()
    tmp = LABEL.with_suffix(".tmp.tif")
    write_raster(tmp, sim.labels, crs=CRS.from_epsg(32632), transform=test_transform(20.0, 499980.0, 5200020.0), nodata=255)
    rio_copy(tmp, LABEL, driver="GTiff", compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    tmp.unlink()
    with rasterio.open(OUT) as src:
        print(OUT, src.count, src.shape, OUT.stat().st_size // 1024, "KiB", dict(zip(*np.unique(sim.labels, return_counts=True))))


if __name__ == "__main__":
    main()
