"""Model speed, FLOPs and memory: cloudmask (set and pairwise encoders) vs ukis-csmask, side by side.

Times ``Predictor.predict_proba`` on a random 13-band Sentinel-2-like scene (physical reflectance)
and ukis-csmask's 6-band ONNX model on the same pixels. Each model runs in a fresh child process
(onnxruntime's spinning thread pool would otherwise steal CPU from whatever runs next), in two
alternating rounds so background load on a shared machine hits all of them alike. Reports best
wall-clock and best CPU time (all threads of the process): on a shared machine the CPU-time ratio
is the robust one. Peak memory is measured per scene size in child processes (ru_maxrss) masking
1024² tiles with halo, to show it stays flat with scene size. Prints a table (``--json``).

    python benchmarks/bench_model.py [--size 1024] [--repeat 3] [--threads 2] [--weights PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from cloudmask.model import Predictor, count_flops_per_pixel, load_model

_TIME_CHILD = """
import sys, time, warnings, numpy as np, torch
kind, size, repeat, threads, weights = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] or None
torch.set_num_threads(threads)
from cloudmask.registry import get_sensor
from cloudmask.testing import random_reflectance
s2 = get_sensor("sentinel2")
x = random_reflectance(13, size, size, seed=0)
d = s2.descriptors()
if kind == "ukis":
    try:
        from ukis_csmask.mask import CSmask
    except ImportError:
        print("skip"); raise SystemExit(0)
    names = ["blue", "green", "red", "nir", "swir16", "swir22"]
    img = np.ascontiguousarray(np.moveaxis(x[[s2.band_names.index(s2.band(n).name) for n in names]], 0, -1))
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CSmask(img, band_order=names, product_level="l1c", nodata_value=None, invalid_buffer=0,
                   intra_op_num_threads=threads, inter_op_num_threads=1)
else:
    from cloudmask.model import Predictor, load_model
    p = load_model(weights) if kind == "bundled" else Predictor.random(0, encoder=kind)
    def run():
        p.predict_proba(x, d)
run()
wall = cpu = float("inf")
for _ in range(repeat):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
print(wall, cpu)
"""

_MEM_CHILD = """
import resource, sys, numpy as np, torch
size, tile, weights = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] or None
torch.set_num_threads(2)
from cloudmask.model import load_model
from cloudmask.registry import get_sensor
p = load_model(weights)
d = get_sensor('sentinel2').descriptors()
halo = p.halo
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


def _child(code: str, *args: str) -> str:
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def _child_time(kind: str, size: int, repeat: int, threads: int, weights: str | None) -> tuple[float, float] | None:
    """(best wall s, best CPU s) of one model in a fresh process; None when the peer is not installed."""
    last = _child(_TIME_CHILD, kind, str(size), str(repeat), str(threads), weights or "")
    if last == "skip":
        return None
    w, c = (float(v) for v in last.split())
    return w, c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None, help="weights file (default: bundled)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    mpx = args.size * args.size / 1e6
    bundled = load_model(args.weights)
    specs = {f"cloudmask {bundled.config.encoder} ({bundled.version})": ("bundled", bundled),
             "cloudmask set (random init)": ("set", Predictor.random(0, encoder="set")),
             "cloudmask pairwise (random init)": ("pairwise", Predictor.random(0, encoder="pairwise")),
             "ukis-csmask 6-band (ONNX)": ("ukis", None)}
    timings: dict[str, tuple[float, float]] = {}
    for _ in range(2):
        for name, (kind, _p) in specs.items():
            res = _child_time(kind, args.size, args.repeat, args.threads, args.weights)
            if res is None:
                continue
            old = timings.get(name, res)
            timings[name] = (min(old[0], res[0]), min(old[1], res[1]))
    ref = timings.get("ukis-csmask 6-band (ONNX)")
    rows = []
    for name, (w, c) in timings.items():
        p = specs[name][1]
        flops = count_flops_per_pixel(p._infer, 13) if p is not None else None
        rows.append({"model": name, "bands": 13 if p is not None else 6, "s_per_mpx": w / mpx, "cpu_s_per_mpx": c / mpx,
                     "kflop_per_px": None if flops is None else flops / 1e3,
                     "speedup_vs_ukis": None if ref is None else ref[0] / w,
                     "cpu_speedup_vs_ukis": None if ref is None else ref[1] / c})
    mem = []
    if not args.no_memory:
        for size in (2048, 4096, 8192):
            mem.append({"scene_px": size, "tile": 1024,
                        "peak_rss_mib": float(_child(_MEM_CHILD, str(size), "1024", args.weights or ""))})
    if args.json:
        print(json.dumps({"size": args.size, "threads": args.threads, "timings": rows, "memory": mem}, indent=2))
        return 0
    con = Console(width=140)
    t = Table(title=f"model speed on a {args.size}² scene, {args.threads} threads (best of {args.repeat} × 2 rounds)")
    for col in ("model", "bands", "wall s / Mpx", "CPU s / Mpx", "kFLOP / px", "× ukis (wall)", "× ukis (CPU)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(r["model"], str(r["bands"]), f"{r['s_per_mpx']:.3f}", f"{r['cpu_s_per_mpx']:.3f}",
                  "-" if r["kflop_per_px"] is None else f"{r['kflop_per_px']:.2f}",
                  "-" if r["speedup_vs_ukis"] is None else f"{r['speedup_vs_ukis']:.1f}",
                  "-" if r["cpu_speedup_vs_ukis"] is None else f"{r['cpu_speedup_vs_ukis']:.1f}")
    con.print(t)
    if mem:
        m = Table(title="peak memory: 1024² tiles with halo, fresh process per scene size")
        m.add_column("scene")
        m.add_column("peak RSS MiB", justify="right")
        for r in mem:
            m.add_row(f"{r['scene_px']}²", f"{r['peak_rss_mib']:.0f}")
        con.print(m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
