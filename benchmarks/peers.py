"""Run peer cloud maskers on the same scenes as cloudmask, write their masks in cloudmask's encoding, time them.

Peers (optional installs, kept out of cloudmask's runtime dependencies: ``pip install "cloudmask[peers]"``):

* **ukis-csmask** (DLR, Apache-2.0): a CNN with bundled ONNX weights. 6-band model on
  blue, green, red, nir, swir16, swir22; falls back to its 4-band model (blue, green, red, nir) when the
  SWIR bands are missing. Classes 0 background, 1 cloud, 2 cloud shadow → cloudmask 0, 1 (thick), 3.
* **s2cloudless** (Sinergise, MIT/CC-BY-SA weights): a LightGBM pixel classifier for Sentinel-2 L1C
  that needs 10 bands B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12. Classes 0/1 → cloudmask 0, 1.
  Neither peer distinguishes thin cloud, and s2cloudless has no shadow class: score them with
  ``cloudmask evaluate ... --classes cloud,shadow`` (ukis) or ``--classes cloud`` (s2cloudless).

Scenes are read with :func:`cloudmask.scene.read_scene` (any GeoTIFF, band folder or STAC item it
understands); masks are written as ``OUT/<peer>/<scene>.tif`` (uint8, 255 = nodata) on the scene's grid
so ``cloudmask evaluate OUT/ukis-csmask OUT/s2cloudless --truth LABELS`` can compare them directly.

Usage::

    python benchmarks/peers.py SCENE... --out DIR [--sensor ID] [--bands a,b,...] [--level l1c|l2a]
    python benchmarks/peers.py --synthetic 1024 --out DIR      # timing only, random S2 reflectance

``--bands`` names the file's layers in order and overrides its band descriptions. Use it whenever the
descriptions are wrong: the Landsat 8 Biome crops in ``shared/data/real/l8biome`` store blue, green, red
first although their descriptions say red, green, blue, so run them with
``--bands blue,green,red,nir08,swir16,swir22,cirrus,lwir11`` (see docs/evaluate.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rich.console import Console
from rich.table import Table

from cloudmask.errors import CloudmaskError
from cloudmask.evaluate import scene_key
from cloudmask.scene import Scene, read_scene
from cloudmask.testing import random_reflectance, write_raster

UKIS_BANDS = {  # ukis band name -> cloudmask common names that can serve it, in order of preference
    "blue": ("blue",), "green": ("green",), "red": ("red",), "nir": ("nir", "nir08"),
    "swir16": ("swir16",), "swir22": ("swir22",),
}
S2CLOUDLESS_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")

err = Console(stderr=True)


class Skip(Exception):
    """This peer cannot run on this scene (missing bands, not installed); the reason goes in the table."""


def _pick(scene: Scene, wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Index in ``scene.data`` of each wanted band, matched by common name."""
    by_common = {(b.common_name or "").lower(): i for i, b in enumerate(scene.bands)}
    out = {}
    for name, options in wanted.items():
        hit = next((by_common[o] for o in options if o in by_common), None)
        if hit is not None:
            out[name] = hit
    return out


#: "auto" uses the 6-band model when the scene has SWIR bands; "4" forces the 4-band (RGB + NIR) model.
UKIS_MODEL = {"bands": "auto"}


def _read_bands(scene: Scene, bands: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """The bands a peer needs as (y, x, band) float32 with nodata zeroed, its valid map, and the
    seconds spent reading them (reading counts for a peer as it does for cloudmask)."""
    t0 = time.perf_counter()
    img = np.moveaxis(scene.data.isel(band=bands).values, 0, -1).astype("float32")  # NaN = nodata
    valid = np.isfinite(img).all(axis=-1)
    img[~valid] = 0
    return img, valid, time.perf_counter() - t0


def run_ukis(scene: Scene, level: str, threads: int) -> tuple[np.ndarray, float, float, str]:
    try:
        from ukis_csmask.mask import CSmask
    except ImportError as exc:
        raise Skip(f"not installed ({exc.__class__.__name__}: pip install 'ukis-csmask[cpu]')") from None
    idx = _pick(scene, UKIS_BANDS)
    six = all(k in idx for k in UKIS_BANDS) and UKIS_MODEL["bands"] != "4"
    four = all(k in idx for k in ("blue", "green", "red", "nir"))
    if not four:
        raise Skip(f"needs blue, green, red, nir (has {', '.join(b.common_name or b.name for b in scene.bands)})")
    names = list(UKIS_BANDS) if six else ["blue", "green", "red", "nir"]
    img, valid, read_s = _read_bands(scene, [idx[n] for n in names])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-image warning on 128 px patches
        cs = CSmask(img, band_order=names, product_level=level, nodata_value=None, invalid_buffer=0,
                    intra_op_num_threads=threads, inter_op_num_threads=1)
    seconds = time.perf_counter() - t0
    raw = cs.csm[..., 0]
    out = np.select([raw == 1, raw == 2], [1, 3], 0).astype("uint8")
    out[~valid] = 255
    return out, read_s, seconds, f"{len(names)}-band {level} model"


def run_s2cloudless(scene: Scene, level: str, threads: int) -> tuple[np.ndarray, float, float, str]:
    if scene.sensor.id != "sentinel2":
        raise Skip(f"Sentinel-2 only (scene is {scene.sensor.id})")
    have = {b.name: i for i, b in enumerate(scene.bands)}
    missing = [b for b in S2CLOUDLESS_BANDS if b not in have]
    if missing:
        raise Skip(f"needs 10 S2 bands; missing {', '.join(missing)}")
    try:
        from s2cloudless import S2PixelCloudDetector
    except ImportError as exc:
        raise Skip(f"not installed ({exc.__class__.__name__}: pip install s2cloudless)") from None
    img, valid, read_s = _read_bands(scene, [have[b] for b in S2CLOUDLESS_BANDS])
    t0 = time.perf_counter()
    det = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=False)
    mask = det.get_cloud_masks(img[None])[0]
    seconds = time.perf_counter() - t0
    out = (mask > 0).astype("uint8")
    out[~valid] = 255
    note = "L1C model" + ("" if level == "l1c" else f" on {level} input (trained on L1C TOA)")
    return out, read_s, seconds, note


#: peer -> run(scene, level, threads) -> (mask, seconds reading its bands, seconds in its model, note)
PEERS: dict[str, Callable[[Scene, str, int], tuple[np.ndarray, float, float, str]]] = {
    "ukis-csmask": run_ukis,
    "s2cloudless": run_s2cloudless,
}


def _write(mask: np.ndarray, scene: Scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    georef = scene.crs is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_raster(tmp, mask, crs=scene.crs if georef else None, transform=scene.transform if georef else None,
                     nodata=255, descriptions=["class"], tags={"CLOUDMASK_CLASSES": "0 clear,1 thick cloud,2 thin cloud,3 cloud shadow,255 nodata"})
    tmp.replace(path)


def synthetic_scene(size: int, folder: Path) -> Path:
    """A random 13-band Sentinel-2 L1C-like GeoTIFF (reflectance 0–1), only for timing."""
    refl = random_reflectance(13, size, size, seed=3)
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    path = folder / f"S2A_synthetic_{size}.tif"
    write_raster(path, refl, descriptions=names)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenes", nargs="*", help="scene files/folders/STAC items readable by cloudmask")
    ap.add_argument("--out", required=True, type=Path, help="output folder; masks go to OUT/<peer>/<scene>.tif")
    ap.add_argument("--sensor", help="sensor id when file names do not say it (e.g. landsat5)")
    ap.add_argument("--bands", help="comma-separated band names of the file's layers, in order; overrides its band descriptions")
    ap.add_argument("--level", choices=["l1c", "l2a"], default="l1c", help="ukis-csmask model: TOA (l1c) or BOA (l2a)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {', '.join(PEERS)}")
    ap.add_argument("--ukis-bands", choices=["auto", "4"], default="auto", help="force ukis-csmask's 4-band model")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads for ukis-csmask")
    ap.add_argument("--synthetic", type=int, metavar="PX", help="also time both peers on a random PX×PX S2 scene")
    ap.add_argument("--json", action="store_true", help="print the timing table as JSON")
    args = ap.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    UKIS_MODEL["bands"] = args.ukis_bands
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}")
    sources: list[tuple[str, str | None]] = [(s, args.sensor) for s in args.scenes]
    if args.synthetic:
        args.out.mkdir(parents=True, exist_ok=True)
        sources.append((str(synthetic_scene(args.synthetic, args.out)), "sentinel2"))
    if not sources:
        ap.error("give scenes or --synthetic PX")

    rows: list[dict[str, Any]] = []
    for src, sensor in sources:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scene = read_scene(src, sensor=sensor, bands=args.bands.split(",") if args.bands else None)
        except CloudmaskError as exc:
            err.print(f"[red]{src}: {exc}[/]")
            rows.append({"scene": Path(src).name, "peer": "-", "status": f"unreadable: {exc}"})
            continue
        h, w = scene.shape
        key = scene_key(src)
        for peer in peers:
            row: dict[str, Any] = {"scene": key, "peer": peer, "pixels": h * w}
            try:
                mask, read_s, seconds, note = PEERS[peer](scene, args.level, args.threads)
            except Skip as why:
                row["status"] = f"skipped: {why}"
                rows.append(row)
                continue
            out = args.out / peer / f"{key}.tif"
            t0 = time.perf_counter()
            _write(mask, scene, out)
            io_s = read_s + time.perf_counter() - t0
            row.update(seconds=seconds, s_per_mpx=seconds / (h * w / 1e6), status=note, mask=str(out),
                       io_seconds=io_s, e2e_s_per_mpx=(seconds + io_s) / (h * w / 1e6),
                       cloud_fraction=float(np.isin(mask, (1, 2)).sum() / max(1, (mask != 255).sum())))
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="Peer cloud maskers (CPU; seconds = the model, I/O = reading its bands + writing its mask)", title_justify="left")
    for col, just in (("scene", "left"), ("peer", "left"), ("Mpx", "right"), ("seconds", "right"),
                      ("s / Mpx", "right"), ("I/O s", "right"), ("cloud %", "right"), ("model / status", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        done = "seconds" in r
        table.add_row(
            r["scene"], r["peer"], f"{r['pixels'] / 1e6:.3f}" if "pixels" in r else "",
            f"{r['seconds']:.2f}" if done else "", f"{r['s_per_mpx']:.2f}" if done else "",
            f"{r['io_seconds']:.2f}" if done else "",
            f"{100 * r['cloud_fraction']:.1f}" if done else "", r["status"],
        )
    Console().print(table)
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "seconds" in r:
            by_peer.setdefault(r["peer"], []).append(r)
    for peer, rs in by_peer.items():
        total_s = sum(r["seconds"] for r in rs)
        total_px = sum(r["pixels"] for r in rs)
        Console().print(f"{peer}: {len(rs)} scene(s), {total_px / 1e6:.2f} Mpx in {total_s:.2f} s = {total_s / (total_px / 1e6):.2f} s/Mpx")
    _ = rasterio  # rasterio is imported so GDAL drivers are registered before threads start
    return 0


if __name__ == "__main__":
    sys.exit(main())
