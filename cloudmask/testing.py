"""Helpers that build small rasters and STAC items in memory or in a temp dir, for tests and docs.

Kept in the package (like ``odc.stac.testing``) so users can write tests of their own pipelines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

#: A UTM zone 32N grid at 20 m, the default for synthetic test scenes.
TEST_CRS = CRS.from_epsg(32632)


def test_transform(resolution: float = 20.0, left: float = 500000.0, top: float = 5200000.0) -> Affine:
    return Affine(resolution, 0.0, left, 0.0, -resolution, top)


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: CRS | None = TEST_CRS,
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    tiled: bool = True,
) -> Path:
    """Write a (bands, y, x) or (y, x) array as a GeoTIFF; ``crs=None`` writes an un-georeferenced file."""
    path = Path(path)
    arr = data[None] if data.ndim == 2 else data
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": arr.shape[2],
        "height": arr.shape[1],
        "count": arr.shape[0],
        "dtype": arr.dtype,
        "nodata": nodata,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform or test_transform())
    if tiled and arr.shape[1] >= 16 and arr.shape[2] >= 16:
        profile.update(tiled=True, blockxsize=16 * max(1, min(arr.shape[2] // 16, 16)), blockysize=16 * max(1, min(arr.shape[1] // 16, 16)))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


def random_reflectance(n_bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random reflectance in [0.02, 0.6] (float32), enough texture for readers and tilers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    out = np.empty((n_bands, height, width), dtype="float32")
    for b in range(n_bands):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.28)
        out[b] = 0.31 + 0.25 * np.sin(fx * xx + ph) * np.cos(fy * yy) + rng.normal(0, 0.02, (height, width))
    return np.clip(out, 0.02, 0.6)


def stac_item(
    item_id: str,
    assets: dict[str, str],
    *,
    platform: str = "sentinel-2a",
    bbox: Sequence[float] = (9.0, 46.0, 9.1, 46.1),
    datetime: str = "2024-06-15T10:30:00Z",
    cloud_cover: float = 10.0,
    collection: str | None = "sentinel-2-l2a",
    extra_properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A minimal valid STAC item whose assets point at ``assets`` (key -> href)."""
    w, s, e, n = bbox
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "bbox": list(bbox),
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": datetime, "platform": platform, "eo:cloud_cover": cloud_cover, **(extra_properties or {})},
        "assets": {k: {"href": v, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]} for k, v in assets.items()},
        "links": [],
    }
    if collection:
        item["collection"] = collection
    return item


def write_item(path: str | Path, item: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(item, indent=1))
    return path


#: Band files of the IMG_DATA folders of a Sentinel-2 L2A SAFE, by resolution (plus non-band layers).
SAFE_L2A_BANDS = {10: ("B02", "B03", "B04", "B08", "TCI"),
                  20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"),
                  60: ("B01", "B02", "B09")}


def write_safe(folder: str | Path, name: str, dn: int = 2000, extent_m: int = 1200) -> Path:
    """A Sentinel-2 ``.SAFE`` product tree of uniform uint16 GeoTIFF band files (real ones are JPEG 2000).

    ``name`` says the level: ``…MSIL2A…`` gives ``IMG_DATA/R10m``, ``R20m`` and ``R60m`` folders,
    ``…MSIL1C…`` one ``IMG_DATA`` folder with every band at its native resolution.
    """
    safe = Path(folder) / name
    tile = "T32TMT_20240101T103021"
    img = safe / "GRANULE" / f"L2A_T32TMT_A000001_{tile[7:]}" / "IMG_DATA"
    if "MSIL2A" in name.upper():
        layers = [(img / f"R{res}m", f"{band}_{res}m", res) for res, bands in SAFE_L2A_BANDS.items() for band in bands]
    else:
        native = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20,
                  "B11": 20, "B12": 20, "B01": 60, "B09": 60, "B10": 60, "TCI": 10}
        layers = [(img, band, res) for band, res in native.items()]
    for sub, stem, res in layers:
        sub.mkdir(parents=True, exist_ok=True)
        n = extent_m // res
        write_raster(sub / f"{tile}_{stem}.tif", np.full((1, n, n), dn, "uint16"), transform=test_transform(res), nodata=0)
    (safe / f"MTD_{'MSIL2A' if 'MSIL2A' in name.upper() else 'MSIL1C'}.xml").write_text("<metadata/>\n")
    return safe
