"""Model speed, FLOPs and memory: cloudmask (set and pairwise encoders) vs ukis-csmask, side by side.

Times ``Predictor.predict_proba`` on a random 13-band Sentinel-2-like scene (physical reflectance)
and ukis-csmask's 6-band ONNX model on the same pixels, in one process, alternating runs so machine
load hits both alike. Peak memory is measured per scene size in child processes (ru_maxrss), to show
it stays flat when tiles are fed through the model. Prints a table (``--json`` for machine output).

    python benchmarks/bench_model.py [--size 1024] [--repeat 3] [--threads 2] [--weights PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cloudmask.model import Predictor, count_flops_per_pixel, load_model
from cloudmask.registry import get_sensor
from cloudmask.testing import random_reflectance


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _ukis(img6: np.ndarray, threads: int):
    try:
        from ukis_csmask.mask import CSmask
    except ImportError:
        return None

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CSmask(img6, band_order=["blue", "green", "red", "nir", "swir16", "swir22"], product_level="l1c",
                   nodata_value=None, invalid_buffer=0, intra_op_num_threads=threads, inter_op_num_threads=1)

    return run


def _peak_mem_child(size: int, tile: int, weights: str | None) -> float:
    """Peak RSS (MiB) of a fresh process that masks a size² scene tile by tile with halo."""
    code = f"""
import resource, numpy as np, torch
torch.set_num_threads(2)
from cloudmask.model import load_model
from cloudmask.registry import get_sensor
p = load_model({weights!r})
d = get_sensor('sentinel2').descriptors()
size, tile, halo = {size}, {tile}, p.halo
out = np.zeros((size, size), np.uint8)
for r in range(0, size, tile):
    for c in range(0, size, tile):
        r0, c0 = max(r - halo, 0), max(c - halo, 0)
        r1, c1 = min(r + tile + halo, size), min(c + tile + halo, size)
        x = np.random.default_rng(r * 7 + c).uniform(0.02, 0.6, (13, r1 - r0, c1 - c0)).astype('float32')
        pr = p.predict_proba(x, d)
        out[r:r + tile, c:c + tile] = pr.argmax(0)[r - r0:r - r0 + tile, c - c0:c - c0 + tile]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None, help="weights file (default: bundled)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    s2 = get_sensor("sentinel2")
    desc = s2.descriptors()
    x = random_reflectance(13, args.size, args.size, seed=0)
    mpx = args.size * args.size / 1e6
    rows = []
    bundled = load_model(args.weights)
    models = {f"cloudmask {bundled.config.encoder} ({bundled.version})": bundled,
              "cloudmask pairwise (random init)": Predictor.random(0, encoder="pairwise"),
              "cloudmask set (random init)": Predictor.random(0, encoder="set")}
    names6 = ["blue", "green", "red", "nir", "swir16", "swir22"]
    idx6 = [s2.band_names.index(s2.band(n).name) for n in names6]
    img6 = np.ascontiguousarray(np.moveaxis(x[idx6], 0, -1))
    ukis = _ukis(img6, args.threads)
    timings: dict[str, float] = {}
    for _ in range(2):  # alternate so background load affects both
        for name, p in models.items():
            t = _time(lambda p=p: p.predict_proba(x, desc), args.repeat)
            timings[name] = min(timings.get(name, t), t)
        if ukis is not None:
            t = _time(ukis, args.repeat)
            timings["ukis-csmask 6-band (ONNX)"] = min(timings.get("ukis-csmask 6-band (ONNX)", t), t)
    ref = timings.get("ukis-csmask 6-band (ONNX)")
    for name, t in timings.items():
        p = models.get(name)
        flops = count_flops_per_pixel(p._infer, 13) if p is not None else None
        rows.append({"model": name, "bands": 13 if p is not None else 6, "s_per_mpx": t / mpx,
                     "kflop_per_px": None if flops is None else flops / 1e3,
                     "speedup_vs_ukis": None if ref is None else ref / t})
    mem = []
    if not args.no_memory:
        for size in (1024, 2048, 4096):
            mem.append({"scene_px": size, "tile": 1024, "peak_rss_mib": _peak_mem_child(size, 1024, args.weights)})
    if args.json:
        print(json.dumps({"size": args.size, "threads": args.threads, "timings": rows, "memory": mem}, indent=2))
        return 0
    con = Console()
    t = Table(title=f"model speed on a {args.size}² scene, {args.threads} threads (best of {args.repeat}, alternating)")
    for col in ("model", "bands", "s / Mpx", "kFLOP / px", "× faster than ukis-csmask"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(r["model"], str(r["bands"]), f"{r['s_per_mpx']:.3f}",
                  "-" if r["kflop_per_px"] is None else f"{r['kflop_per_px']:.2f}",
                  "-" if r["speedup_vs_ukis"] is None else f"{r['speedup_vs_ukis']:.1f}")
    con.print(t)
    if mem:
        m = Table(title="peak memory, 1024² tiles with halo (fresh process each)")
        m.add_column("scene"), m.add_column("peak RSS MiB", justify="right")
        for r in mem:
            m.add_row(f"{r['scene_px']}²", f"{r['peak_rss_mib']:.0f}")
        con.print(m)
    _ = resource  # (ru_maxrss is read in the children)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
