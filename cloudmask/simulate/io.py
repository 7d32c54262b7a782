"""Writing simulated scenes: image GeoTIFF, label GeoTIFF and a STAC-like JSON per scene.

Files go to temporary names in the destination folder and are renamed when complete, so a crashed
or interrupted run never leaves a half-written scene that looks valid.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from affine import Affine

from cloudmask.errors import OutputError, UsageError
from cloudmask.files import safe_name, usual_permissions
from cloudmask.registry import Sensor
from cloudmask.simulate.scene import LABEL_NAMES, NODATA, SimScene


def fake_georeference(seed: int, pixel_size: float) -> tuple[CRS, Any]:
    """A plausible UTM grid (zone and origin from the seed) so GIS tools place the scene somewhere."""
    r = np.random.default_rng(seed)
    zone = int(r.integers(1, 61))
    north = bool(r.random() < 0.75)
    crs = CRS.from_epsg((32600 if north else 32700) + zone)
    x0 = float(np.round(r.uniform(200_000, 700_000), -2))
    y0 = float(np.round(r.uniform(1_000_000, 7_000_000) if north else r.uniform(3_000_000, 9_000_000), -2))
    return crs, Affine(pixel_size, 0.0, x0, 0.0, -pixel_size, y0)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_stem(text: str) -> str:
    """File-name-safe version of an id (letters of any script kept: "my scene ü" and "my scene é"
    both became "my_scene", the second overwriting the first)."""
    return safe_name(text, "scene")


def write_scene(sim: SimScene, out_dir: str | os.PathLike[str], stem: str, sensor_id: str | Sensor) -> dict[str, str]:
    """Write ``<stem>_image.tif``, ``<stem>_labels.tif`` and ``<stem>.json``; return their paths."""
    if isinstance(sensor_id, Sensor):  # its repr (several KB) went into the files' sensor tag
        sensor_id = sensor_id.id
    if not isinstance(sensor_id, str) or not sensor_id.strip():
        raise UsageError(f"sensor_id must be a sensor's id, got {sensor_id!r}")
    if "seed" not in sim.meta or "pixel_size" not in sim.meta:
        raise UsageError("write_scene needs a scene from simulate_scene (its meta has no seed or pixel_size)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    stem = safe_stem(stem)
    crs, transform = fake_georeference(int(sim.meta["seed"]), float(sim.meta["pixel_size"]))
    n, h, w = sim.data.shape
    common = {"driver": "GTiff", "width": w, "height": h, "crs": crs, "transform": transform, "tiled": True,
              "blockxsize": 256 if w >= 256 else 16 * max(1, w // 16), "blockysize": 256 if h >= 256 else 16 * max(1, h // 16),
              "compress": "deflate"}
    if w < 16 or h < 16:
        common.pop("tiled"), common.pop("blockxsize"), common.pop("blockysize")
    img_path, lab_path, json_path = out_dir / f"{stem}_image.tif", out_dir / f"{stem}_labels.tif", out_dir / f"{stem}.json"

    def write_image(tmp: Path) -> None:
        with rasterio.open(tmp, "w", count=n, dtype="float32", nodata=float("nan"), predictor=3, **common) as dst:
            dst.write(sim.data)
            for i, name in enumerate(sim.meta["bands"], start=1):
                dst.set_band_description(i, name)
            dst.update_tags(CLOUDMASK_SENSOR=sensor_id, CLOUDMASK_SIMULATED="yes", CLOUDMASK_SEED=str(sim.meta["seed"]))

    def write_labels(tmp: Path) -> None:
        with rasterio.open(tmp, "w", count=1, dtype="uint8", nodata=NODATA, **common) as dst:
            dst.write(sim.labels[None])
            dst.set_band_description(1, "label")
            dst.update_tags(CLASSES=";".join(f"{k}={v}" for k, v in LABEL_NAMES.items()) + f";{NODATA}=nodata")

    def write_json(tmp: Path) -> None:
        tmp.write_text(json.dumps(stac_item(sim, stem, sensor_id, img_path.name, lab_path.name, crs, transform),
                                  indent=2, default=_jsonable))

    try:
        _atomic_write(img_path, write_image)
        _atomic_write(lab_path, write_labels)
        _atomic_write(json_path, write_json)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise OutputError(f"cannot write scene {stem} to {out_dir}: {exc}") from None
    return {"image": str(img_path), "labels": str(lab_path), "json": str(json_path)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


#: The ``datetime`` of every simulated item. The simulator has no acquisition time (it draws the sun's
#: angles directly, not from a date and place), so a fixed instant stands in: STAC requires one, and
#: a constant keeps a seed's files identical from run to run; ``cloudmask:simulated`` says it is no date.
SIM_DATETIME = "2000-01-01T00:00:00Z"


def footprint(crs: CRS, transform: Any, width: int, height: int) -> tuple[list[float], dict[str, Any]]:
    """The grid's WGS84 ``bbox`` and a matching Polygon. Why: STAC's bbox and geometry are lon/lat;
    the UTM metres written before were read by catalogues as degrees far outside ±180/±90."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    bounds = array_bounds(height, width, transform)  # west, south, east, north
    w, s, e, n = (float(v) for v in transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
    return [w, s, e, n], {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _eo_bands(sensor_id: str, names: list[str]) -> list[dict[str, Any]]:
    """``eo:bands`` of the image: name, and where the registry knows the band, its common name,
    centre wavelength and FWHM (µm), so a STAC tool can tell the bands apart without cloudmask."""
    from cloudmask.errors import CloudmaskError
    from cloudmask.registry import get_sensor

    try:
        sensor = get_sensor(sensor_id)
    except CloudmaskError:
        return [{"name": b} for b in names]
    out = []
    for name in names:
        band = next((b for b in sensor.bands if b.name == name), None)
        entry: dict[str, Any] = {"name": name}
        if band is not None:
            if band.common_name:
                entry["common_name"] = band.common_name
            entry["center_wavelength"] = band.wavelength_center
            entry["full_width_half_max"] = band.fwhm
        out.append(entry)
    return out


def stac_item(sim: SimScene, stem: str, sensor_id: str, image: str, labels: str, crs: CRS, transform: Any) -> dict:
    """A STAC item describing one simulated scene (footprint in WGS84, datetime :data:`SIM_DATETIME`)."""
    m = sim.meta
    h, w = sim.labels.shape
    bbox, geometry = footprint(crs, transform, w, h)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [  # the fields below are theirs (STAC tools validate them by these)
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
        ],
        "id": stem,
        "bbox": bbox,
        "geometry": geometry,
        "links": [],
        "properties": {
            "datetime": SIM_DATETIME,
            "cloudmask:sensor": sensor_id,
            "cloudmask:simulated": True,
            "proj:epsg": crs.to_epsg(),
            "proj:shape": [h, w],
            "proj:transform": list(transform)[:6],
            "view:sun_elevation": m["sun_elevation"],
            "view:sun_azimuth": m["sun_azimuth"],
            "eo:cloud_cover": 100 * (m["class_fractions"]["thick_cloud"] + m["class_fractions"]["thin_cloud"]),
            "sim:cloud_height_km": m["cloud_height_km"],
            "sim:class_fractions": m["class_fractions"],
            "sim:meta": m,
        },
        "assets": {
            "image": {"href": image, "type": "image/tiff; application=geotiff", "roles": ["data"],
                      "eo:bands": _eo_bands(sensor_id, m["bands"])},
            "labels": {"href": labels, "type": "image/tiff; application=geotiff", "roles": ["labels"],
                       "classes": {str(k): v for k, v in {**LABEL_NAMES, NODATA: "nodata"}.items()}},
        },
    }
