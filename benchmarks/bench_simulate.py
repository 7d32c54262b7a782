"""Simulator speed: seconds per scene (median of repeats) for registry sensors and virtual bands.

    python benchmarks/bench_simulate.py [--repeats 5] [--threads 1]

Runs on one core by default (BLAS/OpenMP threads pinned to 1 before numpy loads) because training
generates scenes in data-loader workers, one core each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if "numpy" in sys.modules:
        print("warning: numpy already imported, thread pinning may not apply", file=sys.stderr)

    import numpy as np

    from cloudmask.registry import Band, get_sensor
    from cloudmask.simulate import simulate_scene
    from cloudmask.simulate.spectra import load_table

    t0 = time.perf_counter()
    load_table()
    print(f"spectra table load: {1000 * (time.perf_counter() - t0):.0f} ms")
    rng = np.random.default_rng(0)

    def virtual_bands(n: int) -> list[Band]:
        out = []
        for i in range(n):
            c = float(rng.uniform(0.42, 2.3))
            f = float(rng.uniform(0.01, 0.15))
            out.append(Band(name=f"v{i}", kind="reflectance", wavelength_min=c - f, wavelength_center=c,
                            wavelength_max=c + f, fwhm=f, resolution=20))
        return out

    cases = [
        ("sentinel2 (13 bands)", list(get_sensor("sentinel2").bands), 256),
        ("sentinel2 (13 bands)", list(get_sensor("sentinel2").bands), 512),
        ("landsat8 (11 bands, 2 thermal)", list(get_sensor("landsat8").bands), 512),
        ("virtual 13 bands, same set", virtual_bands(13), 512),
    ]
    rows = []
    for name, bands, size in cases:
        simulate_scene(bands, size, rng=123)  # warm the per-band caches
        times = []
        for r in range(args.repeats):
            t = time.perf_counter()
            simulate_scene(bands, size, rng=r)
            times.append(time.perf_counter() - t)
        rows.append((name, size, float(np.median(times)), float(np.max(times))))
    # fresh virtual bands every scene: includes integrating the library for each new band
    times = []
    for r in range(args.repeats):
        bands = virtual_bands(13)
        t = time.perf_counter()
        simulate_scene(bands, 512, rng=r)
        times.append(time.perf_counter() - t)
    rows.append(("virtual 13 bands, new each scene", 512, float(np.median(times)), float(np.max(times))))

    print(f"\n{'case':<36} {'size':>5} {'median s':>9} {'max s':>7}")
    for name, size, med, mx in rows:
        print(f"{name:<36} {size:>5} {med:>9.3f} {mx:>7.3f}")


if __name__ == "__main__":
    main()
