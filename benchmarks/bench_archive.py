"""``cloudmask mask`` over an archive of small scenes (chips): the per-scene cost in one process.

Why: a cron job over tens of thousands of 256²–512² patches pays every per-scene step (opening the
file, building the lazy scene, the Dask graph, the COG, the STAC item, the lock) once per chip,
which the large-scene benchmark (``bench_mask.py``) hides. The floor is the same per-chip I/O done
plainly: read the bands, write a same-size uint8 COG (``bench_mask.case_raw``).

    python benchmarks/bench_archive.py [--n 40] [--size 256] [--workdir DIR] [--json]

Each case runs in a fresh process; the model is loaded before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_mask import case_raw, write_scene  # noqa: E402  (a sibling script, not a package)


def _child(kind: str, folder: Path, out: Path) -> dict[str, Any]:
    from cloudmask.mask import MaskOptions, mask_many
    from cloudmask.model import load_model
    from cloudmask.tiles import limit_memory_growth

    limit_memory_growth()
    chips = sorted(folder.glob("*.tif"))
    if kind == "raw":
        t0 = time.perf_counter()
        per = []
        for c in chips:
            t1 = time.perf_counter()
            case_raw(str(c), str(out / c.name), threads=2)
            per.append(time.perf_counter() - t1)
        return {"seconds": time.perf_counter() - t0, "per_scene": per}
    predictor = load_model()
    t0 = time.perf_counter()
    results = mask_many([str(folder)], out, MaskOptions(overwrite=True), predictor)
    seconds = time.perf_counter() - t0
    if any(r.status != "masked" for r in results):
        raise RuntimeError([r.message for r in results if r.status != "masked"])
    return {"seconds": seconds, "per_scene": [r.seconds for r in results]}


def run(kind: str, folder: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE), "--child", kind, str(folder), str(out)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} failed:\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="number of chips")
    ap.add_argument("--size", type=int, default=256, help="chip edge in pixels")
    ap.add_argument("--workdir", type=Path, default=None, help="where chips are written (kept for reuse)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, folder, out = args.child
        Path(out).mkdir(parents=True, exist_ok=True)
        print("RESULT " + json.dumps(_child(kind, Path(folder), Path(out))))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cloudmask-archive-"))
    chips = work / f"chips_{args.size}"
    chips.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        write_scene(chips / f"S2A_MSIL2A_chip{i:04d}.tif", args.size, seed=i)
    rows = []
    for kind in ("raw", "mask"):
        r = run(kind, chips, work / f"out_{kind}_{args.size}")
        per = r["per_scene"]
        rows.append({"case": kind, "scenes": len(per), "size": args.size, "total_s": round(r["seconds"], 3),
                     "median_s_per_scene": round(statistics.median(per), 4),
                     "mpx_per_s": round(len(per) * args.size**2 / 1e6 / r["seconds"], 3)})
    rows[1]["x_floor"] = round(rows[1]["total_s"] / rows[0]["total_s"], 1)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    keys = list(rows[1])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
