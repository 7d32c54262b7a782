"""How far can shadow F1 go on the real validation tiles? A ceiling study, in two tables.

Why: the model's shadow F1 target (≥ 80 on l8biome val, the Landsat 5 tile and CloudSEN12) has stayed
out of reach through many trainings (docs/model.md, experiments A–P). This asks what the *labels*
allow, independent of any network:

1. **Rules given the labels' help** (an upper bound for rule-based shadow finding, not a method):
   per tile, with the *labelled* clouds and the *labelled* clear ground, the best of
   * *geometry*: the labelled clouds cast along one direction (every 15°, ±10° wide) over one range
     of distances (49 ranges, 5–80 px wide, up to 160 px), onto non-cloud ground;
   * *darkness*: non-cloud ground whose NIR is below r × the mean NIR of the labelled-clear pixels
     within 65 px (r in 0.5–0.9);
   * *both*: geometry ∩ darkness.
   Each is chosen per tile by its F1 against the very labels it is scored on, so a method without
   the labels cannot do better with the same rule.
2. **The shipped matching's two knobs** (``ShadowOptions.boost`` and ``.darkness``) on a model's
   probabilities (bundled weights unless ``--weights``), all bands and blue/green/red/NIR.

Shadow F1 is pooled over each set's shadow-labelled tiles (the missing-shadow-label rule of
docs/model.md), as ``python -m cloudmask.model.report`` pools it.

    python benchmarks/shadow_ceiling.py --real ../shared/data/real [--weights W] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve

CLEAR, THICK, THIN, SHADOW, IGNORE = 0, 1, 2, 3, 255
from cloudmask.model.report import VAL_PATTERNS  # noqa: E402 - the report's held-out sets, and the train split

SETS = {"l8biome train": ["l8biome/train_*"], **VAL_PATTERNS}
DIRECTIONS = range(0, 360, 15)
RANGES = [(r0, r0 + w) for r0 in (0, 5, 10, 15, 20, 30, 40, 60, 80, 120) for w in (5, 10, 20, 40, 80) if r0 + w <= 160]
RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)
BOX_PX = 65
BOOSTS = (0.0, 1.0, 3.0)
DARKNESS = (None, 0.6, 0.7, 0.8)


def _f1(c: np.ndarray) -> float:
    tp, fp, fn = (float(v) for v in c)
    return 200.0 * tp / max(2 * tp + fp + fn, 1.0)


def _counts(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    ok = y != IGNORE
    lab = (y == SHADOW) & ok
    p = pred & ok
    return np.array([(p & lab).sum(), (p & ~lab).sum(), (~p & lab).sum()], dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _fan(direction_deg: float, r0: float, r1: float, spread_deg: float = 10.0) -> np.ndarray:
    """Kernel of every displacement within ±spread of a direction and r0–r1 px long (centred)."""
    r = int(np.ceil(r1)) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for a in np.deg2rad(np.arange(direction_deg - spread_deg, direction_deg + spread_deg + 0.1, 2.5)):
        for d in np.arange(r0, r1 + 0.01, 0.5):
            k[int(round(r + d * np.sin(a))), int(round(r + d * np.cos(a)))] = 1.0
    return k


def _dark_maps(nir: np.ndarray, y: np.ndarray, ground: np.ndarray) -> dict[float, np.ndarray]:
    """Non-cloud ground darker in NIR than r × the labelled-clear ground around it, per ratio r."""
    clear = (y == CLEAR) & np.isfinite(nir)
    if not clear.any():
        return {r: np.zeros_like(ground) for r in RATIOS}
    v = np.where(clear, nir, 0.0).astype("float64")
    num = uniform_filter(v, BOX_PX, mode="constant")
    den = uniform_filter(clear.astype("float64"), BOX_PX, mode="constant")
    ref = np.where(den > 0.05, num / np.maximum(den, 1e-12), v.sum() / clear.sum())
    with np.errstate(invalid="ignore"):
        ratio = np.where(np.isfinite(nir), nir / np.maximum(ref, 1e-6), np.inf)
    return {r: (ratio < r) & ground for r in RATIOS}


def ceiling(tile: Any) -> dict[str, np.ndarray]:
    """Best (tp, fp, fn) per rule for one tile, each rule chosen by its F1 against the labels."""
    from cloudmask.shadows import nir_band

    y = tile.y
    cloud = (y == THICK) | (y == THIN)
    ground = ~cloud & (y != IGNORE)
    none = _counts(np.zeros_like(cloud), y)
    best = {"geometry": none, "darkness": none, "both": none}
    if cloud.sum() < 20 or not ground.any():
        return best
    i = nir_band(tile.desc)
    darks = _dark_maps(tile.x[i], y, ground) if i is not None else {}
    for d in darks.values():
        c = _counts(d, y)
        if _f1(c) > _f1(best["darkness"]):
            best["darkness"] = c
    for direction in DIRECTIONS:
        for r0, r1 in RANGES:
            if r1 >= max(y.shape):
                continue
            cast = (fftconvolve(cloud.astype(np.float32), _fan(direction, r0, r1), mode="same") > 0.5) & ground
            c = _counts(cast, y)
            if _f1(c) > _f1(best["geometry"]):
                best["geometry"] = c
            for d in darks.values():
                c = _counts(cast & d, y)
                if _f1(c) > _f1(best["both"]):
                    best["both"] = c
    return best


def knobs(tiles: list[Any], predictor: Any) -> dict[str, dict[str, float]]:
    """Shadow F1 of the network alone and after matching, per (boost, darkness), all bands and 4."""
    import torch

    from cloudmask.metrics import confusion
    from cloudmask.model.data import four_band_indices
    from cloudmask.shadows import ShadowOptions, match_shadows, nir_band

    out: dict[str, dict[str, float]] = {}
    for mode in ("all bands", "4 bands"):
        runs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        for t in tiles:
            x, d = t.x, t.desc
            if mode == "4 bands":
                idx = four_band_indices(d)
                if idx is None or len(idx) == len(t.bands):
                    runs = []
                    break
                x, d = x[idx], d[idx]
            with torch.no_grad():
                prob = predictor.predict_proba(torch.from_numpy(x[None]), torch.from_numpy(d))[0].numpy()
            i = nir_band(d)
            runs.append((prob, t.y, None if i is None else x[i]))
        if not runs:
            continue
        row: dict[str, float] = {}
        for boost in (None, *BOOSTS):
            for dark in DARKNESS if boost is not None else (None,):
                cm = np.zeros((4, 4), np.int64)
                for prob, y, nir in runs:
                    pred = prob.argmax(0).astype("uint8")
                    if boost is not None:
                        pred = match_shadows(prob, pred, ShadowOptions(boost=boost, darkness=dark), nir=nir)
                    cm += confusion(pred, y)
                tp = cm[SHADOW, SHADOW]  # confusion: rows predicted, columns labelled
                row["network" if boost is None else f"boost {boost:g}, darkness {dark or 'off'}"] = _f1(
                    np.array([tp, cm[SHADOW].sum() - tp, cm[:, SHADOW].sum() - tp]))
        out[mode] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", required=True, help="folder of the real tiles (manifest.json)")
    ap.add_argument("--weights", default=None, help="weights for the knobs table (default: bundled)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from cloudmask.model.data import load_real_tiles
    from cloudmask.model.predictor import load_model

    torch.set_num_threads(args.threads)
    predictor = load_model(args.weights)
    res: dict[str, Any] = {"weights": {"version": predictor.version, "sha256": predictor.sha256}, "sets": {}}
    for name, patterns in SETS.items():
        tiles = [t for t in load_real_tiles(args.real, patterns) if t.shadow]
        labelled = [t for t in tiles if (t.y == SHADOW).any()]
        totals = {k: np.zeros(3, np.int64) for k in ("geometry", "darkness", "both")}
        for t in tiles:
            for k, c in ceiling(t).items():
                totals[k] += c
        entry: dict[str, Any] = {"tiles": len(tiles), "with_shadow": len(labelled),
                                 "ceiling": {k: _f1(c) for k, c in totals.items()}}
        if name != "l8biome train":  # the knobs table is for the held-out sets only
            entry["knobs"] = knobs(tiles, predictor._infer)
        res["sets"][name] = entry
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"model {res['weights']['version']} sha256 {res['weights']['sha256'][:12]}\n")
    print("Rules given the labels' help (per-tile best; an upper bound for such rules), shadow F1:\n")
    print("| set (shadow-labelled tiles / with shadow) | geometry | darkness | both |")
    print("|---|---:|---:|---:|")
    for name, e in res["sets"].items():
        c = e["ceiling"]
        print(f"| {name} ({e['tiles']} / {e['with_shadow']}) | {c['geometry']:.1f} | {c['darkness']:.1f} | {c['both']:.1f} |")
    cols = [(f"{name}, {mode}", r) for name, e in res["sets"].items() for mode, r in e.get("knobs", {}).items()]
    if cols:
        print("\nThe matching's knobs on the model's probabilities, shadow F1:\n")
        print("| matching | " + " | ".join(label for label, _ in cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for setting in cols[0][1]:
            print(f"| {setting} | " + " | ".join(f"{r[setting]:.1f}" for _, r in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
