"""Where one window's time goes: the network's stages on a 16-bit window, on one thread.

``cloudmask mask`` runs the model on windows of ``tile + 2 × (halo + feather)`` px whose middle
(the tile plus the feather zone) is the output region. This times, on one such window of random
Sentinel-2 L2A-like DNs, the stages of ``CloudNet.predict_proba`` as the tiler calls it (16-bit
values converted by the network, output region only):

* convert: DNs → float32, per row chunk (for the pooling over the whole window and again for the
  head's rows; the scale and offset are applied after the first linear step where no pixel needs
  masking);
* pool: 4×4 means over the whole window (stage A);
* context: the 1/4- and 1/8-resolution network over the whole window (stage B);
* head: the full-resolution head over the output region (stage C);
* other: the rest (softmax, copies, chunk bookkeeping).

For the bundled model, or for an architecture given as ``ModelConfig`` overrides (random weights:
the same cost), to see what a slimmer network would save before training one. Best of
``--repeat`` runs; per-stage times are from the fastest run.

    python benchmarks/bench_window.py                         # bundled model, tile 768
    python benchmarks/bench_window.py --arch c8=48 enc_width=16 --arch-only
    python benchmarks/bench_window.py --tile 1376 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _parse_arch(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--arch takes key=value pairs, got {item!r}")
        out[key] = tuple(int(v) for v in value.split(",")) if key == "dilations" else (
            value if key == "encoder" else int(value))
    return out


def time_window(predictor: Any, tile: int, repeat: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per stage (fastest run) for one window of ``tile`` px of output."""
    import torch

    from cloudmask.model import network
    from cloudmask.registry import get_sensor

    torch.set_num_threads(1)
    net = predictor._infer
    margin = predictor.halo + 8  # the tiler's default overlap: halo + an 8 px feather
    size = tile + 2 * margin
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(200, 6000, (1, 13, size, size)).astype("uint16"))
    desc = torch.as_tensor(np.asarray(get_sensor("sentinel2").descriptors()), dtype=torch.float32)
    stored = (torch.full((13,), 1e-4), torch.full((13,), -0.1), torch.zeros(13))
    c = predictor.halo
    region = (c, size - c, c, size - c)

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return run

    saved = network.stored_to_float  # the window holds no nodata: every chunk is only cast
    net._pool, net._context, net._head = timed("pool", net._pool), timed("context", net._context), timed("head", net._head)
    network.stored_to_float = timed("convert", saved)
    try:
        best: dict[str, float] | None = None
        for _ in range(repeat + 1):  # the first run makes oneDNN's kernels for this shape
            spent.clear()
            t = time.perf_counter()
            net.predict_proba(x, desc, region=region, finite=True, stored=stored)
            total = time.perf_counter() - t
            if best is None or total < best["total"]:
                best = {**spent, "total": total}
    finally:
        network.stored_to_float = saved
        for name in ("_pool", "_context", "_head"):
            delattr(net, name)  # back to the class's methods
    assert best is not None
    out = {k: 1e3 * best.get(k, 0.0) for k in ("convert", "pool", "context", "head", "total")}
    out["other"] = out["total"] - sum(out[k] for k in ("convert", "pool", "context", "head"))
    out["window_px"] = size
    out["ms_per_output_mpx"] = out["total"] / ((size - 2 * c) ** 2 / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=768, help="output px per window side (cloudmask mask's --tile-size, default 1024 there; 768 here keeps figures comparable with earlier runs)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--weights", default=None, help="weights file (default: bundled)")
    ap.add_argument("--arch", nargs="*", default=[], metavar="KEY=VALUE",
                    help="ModelConfig overrides for a random-weight variant, e.g. c8=48 dilations=1,2,4")
    ap.add_argument("--arch-only", action="store_true", help="time only the --arch variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from cloudmask.model import Predictor, load_model

    models: dict[str, Any] = {}
    if not args.arch_only:
        p = load_model(args.weights)
        models[f"{p.config.encoder} {p.version}"] = p
    if args.arch or args.arch_only:
        arch = _parse_arch(args.arch)
        models["variant " + " ".join(args.arch) if args.arch else "default (random)"] = Predictor.random(0, **arch)
    rows = []
    for name, p in models.items():
        r = time_window(p, args.tile, args.repeat)
        rows.append({"model": name, "halo": p.halo, **r})
    if args.json:
        print(json.dumps({"tile": args.tile, "rows": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"one window of {args.tile} px output (16-bit, 13 bands, 1 thread; ms, best of {args.repeat})")
    cols = ("model", "halo", "window_px", "convert", "pool", "context", "head", "other", "total", "ms_per_output_mpx")
    for col in cols:
        t.add_column(col.replace("_", " "), justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(*(str(r[c]) if isinstance(r[c], (str, int)) else f"{r[c]:.1f}" for c in cols))
    Console(width=150).print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
