"""Download throughput of ``cloudmask.fetch`` on loopback: N items × 13 Sentinel-2 bands, by worker count.

Run: python benchmarks/fetch_loopback.py [--size 1024] [--items 2]
Prints a table (workers, files, MB, seconds, MB/s). Uses the test file server (child process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fetch_servers as fs  # noqa: E402

from cloudmask import fetch, stac  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024, help="pixels per side of each band file")
    ap.add_argument("--items", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fs.running_file_server(Path(tmp) / "www", Path(tmp) / "ctl") as server:
        items = [fs.write_s2_item(server, f"S2A_bench_{i}", size=args.size, seed=i) for i in range(args.items)]
        (target,) = stac.resolve_targets(["sentinel2"], catalog=server.url, collection="sentinel-2-l2a")
        found = [stac.prepare(it, target) for it in items]
        print(f"{'workers':>7} {'files':>5} {'MB':>7} {'s':>6} {'MB/s':>7}")
        for workers in (1, 2, 4, 8):
            out = Path(tmp) / f"out{workers}"
            plans = fetch.plan(found, out)
            t0 = time.perf_counter()
            fetch.fetch(plans, workers=workers)
            dt = time.perf_counter() - t0
            mb = sum(f.stat().st_size for f in out.rglob("*.tif")) / 1e6
            n = sum(len(p.files) for p in plans)
            print(f"{workers:>7} {n:>5} {mb:>7.1f} {dt:>6.2f} {mb / dt:>7.1f}")


if __name__ == "__main__":
    main()
