"""The seed experiment (docs/experiment.md): does training on more sensors help a sensor it sees?

Trains the same network several ways on simulated scenes only (no real tiles, no virtual bands, so
the comparison is about sensors) and tests each on Sentinel-2: simulated held-out scenes and the
real CloudSEN12 patches; zero-shot on sensors none of them trained on (MODIS, Sentinel-3 OLCI,
simulated); and the pairwise O(n²) vs set O(n) encoder on accuracy and speed.

    python -m cloudmask.model.experiment --out runs/exp --steps 400 [--real /work/shared/data/real]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudmask.model.data import get_simulator, load_real_tiles, sensor_bands
from cloudmask.model.network import CloudNet, ModelConfig
from cloudmask.model.predictor import load_model
from cloudmask.model.train import evaluate_sets, load_config, train

LANDSAT = ["landsat5", "landsat7", "landsat8", "landsat9"]
VARIANTS: dict[str, dict[str, Any]] = {
    "landsat-only": {"sensors": LANDSAT, "encoder": "set"},
    "sentinel2-only": {"sensors": ["sentinel2"], "encoder": "set"},
    "landsat+sentinel2": {"sensors": [*LANDSAT, "sentinel2"], "encoder": "set"},
    "landsat+sentinel2 pairwise": {"sensors": [*LANDSAT, "sentinel2"], "encoder": "pairwise"},
}


def test_sets(real_root: str | None, scenes: int, size: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]:
    """Held-out test scenes (seeds far from training and validation seeds)."""
    sim = get_simulator("simulator")
    sets: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]] = {}
    for i, s in enumerate(["sentinel2", "modis", "sentinel3-olci"]):
        bands = sensor_bands(s)
        d = np.stack([b.descriptor() for b in bands])
        rng = np.random.default_rng(987_000 + i)
        tiles = []
        for _ in range(scenes):
            x, y = sim(bands, size, rng)
            tiles.append((x.astype("float32"), y, d, True))
        sets[f"sim_{s}"] = tiles
    if real_root:
        sets["real_cloudsen12"] = [(t.x, t.y, t.desc, t.shadow) for t in load_real_tiles(real_root, ["cloudsen12/*"])]
    return sets


def speed(encoder: str, size: int = 1024, repeat: int = 3) -> float:
    """Seconds per megapixel of predict_proba on a 13-band input."""
    from cloudmask.model.network import fold_batchnorm

    net = fold_batchnorm(CloudNet(ModelConfig(encoder=encoder)))
    x = torch.rand(1, 13, size, size) * 0.5
    d = torch.from_numpy(np.stack([b.descriptor() for b in sensor_bands("sentinel2")]))
    net.predict_proba(x, d)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        net.predict_proba(x, d)
        best = min(best, time.perf_counter() - t0)
    return best / (size * size / 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/exp")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real", default=None, help="real-data root (for the CloudSEN12 test patches)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--test-scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="training seed (test scenes stay fixed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    tests = test_sets(args.real, args.test_scenes, 192)
    for name in args.variants.split(","):
        v = VARIANTS[name]
        run = out / name.replace(" ", "-").replace("+", "_")
        cfg = load_config(None, [
            f"out={run}", f"seed={args.seed}", f"model.encoder={v['encoder']}", f"data.sensors={json.dumps(v['sensors'])}",
            "data.virtual_prob=0", "data.tile=128", "data.batch=6", f"train.steps={args.steps}",
            f"train.val_every={args.steps}", f"train.ckpt_every={args.steps}", f"train.threads={args.threads}",
            "train.warmup=50", "val.sensors=[sentinel2]", "val.scenes=3", "val.size=128",
        ])
        t0 = time.time()
        summary = train(cfg)
        wall = time.time() - t0
        p = load_model(run / "best.safetensors")  # best == last here (one validation at the end)
        metrics = evaluate_sets(p._infer, tests)
        results[name] = {"sensors": v["sensors"], "encoder": v["encoder"], "steps": summary["steps"],
                         "train_minutes": round(wall / 60, 1), "test": metrics}
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps({k: round(m["cloud_f1"], 1) for k, m in metrics.items()}), f"{wall / 60:.1f} min", flush=True)
    results["speed_s_per_mpx"] = {enc: round(speed(enc), 3) for enc in ("set", "pairwise")}
    results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["speed_s_per_mpx"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
