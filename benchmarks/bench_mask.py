"""End-to-end ``cloudmask mask`` speed and memory against the I/O floor, on synthetic Sentinel-2 scenes.

For each size a 13-band 20 m uint16 L2A-style GeoTIFF (tiled 512, deflate, like a typical COG input)
is written once, then each case runs in its own subprocess so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own:

* ``floor``: read every band through the same lazy reader and write a uint8 COG of the same size
  (the nodata mask) through the same streaming writer — everything but the model;
* ``raw``: the strictest floor: GDAL reads every band as stored (uint16, block-aligned strips, GDAL
  decoding on all threads; no conversion to reflectance, no Dask) and the same uint8 COG is written —
  what any tool that reads these bands and writes a mask must pay;
* ``mask``: :func:`cloudmask.mask.mask_scene` with the default tiling (COG + STAC item);
* ``cluster`` (with ``--cluster``): the same mask through ``--scheduler``, on a local Dask cluster of
  one worker process with the same threads, started before the clock (its RSS is the worker's own,
  not counted).

Usage::

    python benchmarks/bench_mask.py                       # 1024, 4096, 8192
    python benchmarks/bench_mask.py --sizes 1024,2048     # quick
    python benchmarks/bench_mask.py --sizes 1024 --peers  # + ukis-csmask / s2cloudless via peers.py
    python benchmarks/bench_mask.py --repeat 3            # best of 3 runs per case (steadier ratios)
    python benchmarks/bench_mask.py --sizes 2048 --cluster # + the --scheduler path (cluster_s)

The model is the bundled one when it loads, else ``Predictor.random`` with the default architecture
(same cost per pixel). Numbers depend on the machine and its load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- synthetic input


def write_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A size×size 13-band uint16 scene written strip by strip (memory stays small at 8192²)."""
    import rasterio

    from cloudmask.testing import TEST_CRS, test_transform

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "uint16", "nodata": 0,
        "crs": TEST_CRS, "transform": test_transform(20.0), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }
    base = rng.uniform(0.03, 0.35, 13).astype("float32")
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        xx = np.arange(size, dtype="float32")[None, :]
        for y0 in range(0, size, 512):
            h = min(512, size - y0)
            yy = np.arange(y0, y0 + h, dtype="float32")[:, None]
            cloud = np.clip(np.sin(xx / 97.0) * np.cos(yy / 131.0) * 1.5 - 0.4, 0, 1)  # bright blobs
            strip = np.empty((13, h, size), dtype="uint16")
            for b in range(13):
                refl = base[b] + 0.05 * np.sin(xx / (40.0 + 7 * b)) + 0.6 * cloud + rng.normal(0, 0.01, (h, size))
                strip[b] = np.clip(refl * 10000 + 1000, 1, 65535).astype("uint16")
            if y0 == 0:
                strip[:, :64, :] = 0  # a nodata strip, as at a swath edge
            dst.write(strip, window=((y0, y0 + h), (0, size)))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- cases (run in children)


def _predictor() -> tuple[Any, str]:
    from cloudmask.errors import CloudmaskError
    from cloudmask.model import Predictor, load_model

    try:
        p = load_model()
        return p, f"bundled {p.version}"
    except CloudmaskError as exc:
        return Predictor.random(seed=0), f"random init ({exc})"


@contextlib.contextmanager
def _uint8_cog(dst: Path, width: int, height: int, crs: Any, transform: Any) -> Iterator[Any]:
    """The mask's streaming uint8 writer; a COG at ``dst`` when the block ends (both floors)."""
    from cloudmask import cog

    sink = cog.RasterSink(dst, width=width, height=height, count=1, dtype="uint8", crs=crs,
                          transform=transform, nodata=255)
    try:
        yield sink
        sink.close()
        part = cog.translate(sink.path, dst, "mode")
        cog.commit([(part, dst)])
    finally:
        sink.discard()


def case_floor(scene_path: str, out: str, threads: int) -> dict[str, Any]:
    """Read all bands lazily, write a same-size uint8 COG through the same sink + translate."""
    import dask
    import dask.array as da

    from cloudmask.scene import read_scene

    t0 = time.perf_counter()
    scene = read_scene(scene_path, "sentinel2")
    h, w = scene.shape
    valid = da.isfinite(scene.data.data).all(axis=0).astype("uint8")
    with _uint8_cog(Path(out), w, h, scene.crs, scene.transform) as sink:
        with dask.config.set(scheduler="threads", num_workers=threads):
            da.store(valid, sink, lock=True)
    return {"seconds": time.perf_counter() - t0, "pixels": h * w}


def case_raw(scene_path: str, out: str, threads: int) -> dict[str, Any]:
    """The strict I/O floor: raw uint16 strips straight from GDAL, the same uint8 COG written."""
    import rasterio
    from rasterio.windows import Window

    t0 = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS=str(threads)), rasterio.open(scene_path) as src:
        h, w = src.height, src.width
        step = src.block_shapes[0][0]
        with _uint8_cog(Path(out), w, h, src.crs, src.transform) as sink:
            for y0 in range(0, h, step):
                strip = src.read(window=Window(0, y0, w, min(step, h - y0)))
                sink[y0 : y0 + strip.shape[1], 0:w] = (strip != src.nodata).all(axis=0).astype("uint8")
    return {"seconds": time.perf_counter() - t0, "pixels": h * w}


def case_mask(scene_path: str, out: str, threads: int, tile: int, matching: bool = True) -> dict[str, Any]:
    from cloudmask.mask import MaskOptions, mask_scene
    from cloudmask.tiles import TileOptions

    predictor, note = _predictor()
    t0 = time.perf_counter()
    r = mask_scene(scene_path, out, predictor, MaskOptions(tiles=TileOptions(tile_size=tile, threads=threads),
                                                             shadow_matching=matching, overwrite=True))
    return {"seconds": time.perf_counter() - t0, "pixels": int(r.megapixels * 1e6), "model": note, "halo": predictor.halo}


def case_cluster(scene_path: str, out: str, threads: int, tile: int) -> dict[str, Any]:
    """``mask --scheduler`` on a LocalCluster (one worker process, ``threads`` threads)."""
    import distributed

    from cloudmask.mask import MaskOptions, mask_many
    from cloudmask.tiles import TileOptions

    predictor, note = _predictor()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=threads, processes=True,
                                  dashboard_address=None) as cluster:
        options = MaskOptions(tiles=TileOptions(tile_size=tile), scheduler=cluster.scheduler_address, overwrite=True)
        t0 = time.perf_counter()
        (r,) = mask_many([scene_path], Path(out).parent, options, predictor)
        seconds = time.perf_counter() - t0
    if r.status != "masked":
        raise RuntimeError(r.message)
    return {"seconds": seconds, "pixels": int(r.megapixels * 1e6), "model": note, "halo": predictor.halo}


def _child(argv: list[str]) -> None:
    from cloudmask.tiles import limit_memory_growth

    limit_memory_growth()  # what `cloudmask mask` does; applied to both cases alike
    kind, scene_path, out, threads, tile = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    if kind == "floor":
        res = case_floor(scene_path, out, threads)
    elif kind == "raw":
        res = case_raw(scene_path, out, threads)
    elif kind == "cluster":
        res = case_cluster(scene_path, out, threads, tile)
    else:
        res = case_mask(scene_path, out, threads, tile, matching=kind != "mask-nomatch")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = ru.ru_maxrss / 1024.0
    res["cpu_s"] = ru.ru_utime + ru.ru_stime  # less sensitive than wall time to other load on the machine
    print("RESULT " + json.dumps(res))


def run_case(kind: str, scene: Path, out: Path, threads: int, tile: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", kind, str(scene), str(out), str(threads), str(tile)],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} on {scene.name} failed:\n{proc.stderr[-2000:]}")


def run_peers(scene: Path, out: Path) -> list[dict[str, Any]]:
    peers = HERE.parent / "peers.py"
    if not peers.exists():
        return []
    proc = subprocess.run([sys.executable, str(peers), str(scene), "--out", str(out), "--level", "l2a", "--json"],
                          capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        print(proc.stderr[-1000:], file=sys.stderr)
        return []


def best_of(n: int, kind: str, scene: Path, out: Path, threads: int, tile: int) -> dict[str, Any]:
    """Fastest of ``n`` runs (wall and CPU time each at their minimum; peak RSS at its maximum):
    short runs on a shared machine are easily slowed, never sped up, by other load."""
    runs = [run_case(kind, scene, out, threads, tile) for _ in range(max(1, n))]
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["cpu_s"] = min(r["cpu_s"] for r in runs)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,4096,8192", help="comma-separated scene edges in pixels")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tile-size", type=int, default=None, help="default: cloudmask's default")
    ap.add_argument("--workdir", type=Path, help="where scenes are written (kept for reuse); default a temp dir")
    ap.add_argument("--peers", action="store_true", help="also time ukis-csmask and s2cloudless (on one size)")
    ap.add_argument("--peers-size", type=int, default=None, help="scene edge the peers run on (default: the smallest)")
    ap.add_argument("--matching-cost", action="store_true",
                    help="also time the mask without cloud–shadow matching (column nomatch_s)")
    ap.add_argument("--cluster", action="store_true",
                    help="also time the mask through a local Dask cluster, as --scheduler runs it (column cluster_s)")
    ap.add_argument("--repeat", type=int, default=1, help="run each case N times, keep the fastest")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.tile_size is None:
        from cloudmask.tiles import TileOptions

        args.tile_size = TileOptions().tile_size
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cloudmask-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    peer_rows: list[dict[str, Any]] = []
    for size in sizes:
        scene = write_scene(work / f"S2A_MSIL2A_synthetic_{size}.tif", size)
        floor = best_of(args.repeat, "floor", scene, work / f"floor_{size}.tif", args.threads, args.tile_size)
        raw = best_of(args.repeat, "raw", scene, work / f"raw_{size}.tif", args.threads, args.tile_size)
        masked = best_of(args.repeat, "mask", scene, work / f"mask_{size}_cloudmask.tif", args.threads, args.tile_size)
        mpx = size * size / 1e6
        rows.append({
            "size": size, "mpx": round(mpx, 2),
            "floor_s": round(floor["seconds"], 2), "floor_mpx_s": round(mpx / floor["seconds"], 2),
            "floor_rss_mb": round(floor["peak_rss_mb"]),
            "mask_s": round(masked["seconds"], 2), "mask_mpx_s": round(mpx / masked["seconds"], 3),
            "mask_rss_mb": round(masked["peak_rss_mb"]),
            "ratio_to_floor": round(masked["seconds"] / floor["seconds"], 1),
            "raw_s": round(raw["seconds"], 2), "ratio_to_raw": round(masked["seconds"] / raw["seconds"], 1),
            "floor_cpu_s": round(floor["cpu_s"], 1), "mask_cpu_s": round(masked["cpu_s"], 1),
            "cpu_ratio": round(masked["cpu_s"] / floor["cpu_s"], 1),
            "model": masked["model"][:60], "halo": masked["halo"],
        })
        if args.matching_cost:
            nm = best_of(args.repeat, "mask-nomatch", scene, work / f"nomatch_{size}_cloudmask.tif", args.threads, args.tile_size)
            rows[-1]["nomatch_s"] = round(nm["seconds"], 2)
        if args.cluster:
            cl = best_of(args.repeat, "cluster", scene, work / "cluster" / f"S2A_MSIL2A_synthetic_{size}_cloudmask.tif",
                         args.threads, args.tile_size)
            rows[-1]["cluster_s"] = round(cl["seconds"], 2)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.peers and size == (args.peers_size or min(sizes)):
            peer_rows = run_peers(scene, work / "peers")
            for r in peer_rows:
                if "seconds" in r:
                    r["cloudmask_end_to_end_s_per_mpx"] = round(masked["seconds"] / mpx, 3)
                    r["speedup_cloudmask"] = round(r["s_per_mpx"] / (masked["seconds"] / mpx), 1)
                    r["speedup_cloudmask_e2e"] = round(r["e2e_s_per_mpx"] / (masked["seconds"] / mpx), 1)
    if args.json:
        print(json.dumps({"cases": rows, "peers": peer_rows, "threads": args.threads}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cloudmask mask vs I/O floor ({args.threads} threads, tile {args.tile_size})", title_justify="left")
    cols = ["size", "mpx", "floor_s", "floor_mpx_s", "floor_rss_mb", "mask_s", "mask_mpx_s", "mask_rss_mb",
            "ratio_to_floor", "raw_s", "ratio_to_raw", "floor_cpu_s", "mask_cpu_s", "cpu_ratio"]
    if args.matching_cost:
        cols.append("nomatch_s")
    if args.cluster:
        cols.append("cluster_s")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    Console(width=160).print(table)
    if rows:
        Console(width=160).print(f"model: {rows[0]['model']} (halo {rows[0]['halo']} px)")
    if peer_rows:
        pt = Table(title=f"peers on the {args.peers_size or min(sizes)}² scene (cloudmask end to end; peers: model only, "
                         "and with reading their bands + writing their mask)", title_justify="left")
        for c in ("peer", "s_per_mpx", "e2e_s_per_mpx", "cloudmask_end_to_end_s_per_mpx", "speedup_cloudmask",
                  "speedup_cloudmask_e2e", "status"):
            pt.add_column(c)
        for r in peer_rows:
            pt.add_row(str(r.get("peer")), str(round(r.get("s_per_mpx", float("nan")), 3)),
                       str(round(r.get("e2e_s_per_mpx", float("nan")), 3)),
                       str(r.get("cloudmask_end_to_end_s_per_mpx", "")), str(r.get("speedup_cloudmask", "")),
                       str(r.get("speedup_cloudmask_e2e", "")), str(r.get("status", "")))
        Console(width=160).print(pt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
