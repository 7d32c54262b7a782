"""Real-tile validation report for a weights file: all bands, blue/green/red/NIR only, bands shuffled.

Shadow F1 is given for the network alone and after cloud–shadow matching (what ``cloudmask mask``
writes); cloud scores are the same for both (matching never touches clouds).

Uses only the validation tiles (l8biome val, the ukis Landsat 5 tile, the CloudSEN12 patches), never
the l8biome train split. Cloud scores pool thick+thin vs everything else over each set; shadow F1
pools only tiles whose source labels shadow.

    python -m cloudmask.model.report --real /work/shared/data/real [--weights PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from cloudmask.model.data import RealTile, four_band_indices, load_real_tiles
from cloudmask.model.predictor import load_model
from cloudmask.model.train import evaluate_sets

VAL_PATTERNS = {"l8biome val": ["l8biome/val_*"], "ukis landsat5": ["ukis/*"], "cloudsen12 (S2)": ["cloudsen12/*"]}


def _sets(tiles: list[RealTile], mode: str, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    out = []
    for t in tiles:
        x, d = t.x, t.desc
        if mode == "4 bands":
            idx = four_band_indices(d)
            if idx is None:
                raise ValueError(f"{t.name}: no blue, green, red and NIR bands")
            x, d = x[idx], d[idx]
        if mode == "shuffled":
            perm = rng.permutation(len(t.bands))
            x, d = x[perm], d[perm]
        out.append((x, t.y, d, t.shadow))
    return out


def report(real_root: str, weights: str | None = None, threads: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    p = load_model(weights)
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"version": p.version, "sha256": p.sha256, "sets": {}}
    for name, pats in VAL_PATTERNS.items():
        tiles = load_real_tiles(real_root, pats)
        res["sets"][name] = {"tiles": len(tiles)}
        for mode in ("all bands", "4 bands", "shuffled"):
            res["sets"][name][mode] = evaluate_sets(p._infer, {"x": _sets(tiles, mode, rng)}, match=True)["x"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = report(args.real, args.weights)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"model {res['version']} sha256 {res['sha256'][:12]}")
    print("| set | bands | cloud F1 | precision | recall | accuracy | shadow F1 (network) | shadow F1 (matched) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in res["sets"].items():
        for mode in ("all bands", "4 bands", "shuffled"):
            m = s[mode]
            sh = f"{m['shadow_f1_network']:.1f} | {m['shadow_f1']:.1f}" if "shadow_f1" in m else "– | –"
            print(f"| {name} ({s['tiles']}) | {mode} | {m['cloud_f1']:.1f} | {m['cloud_precision']:.1f} | "
                  f"{m['cloud_recall']:.1f} | {m['cloud_acc']:.1f} | {sh} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
