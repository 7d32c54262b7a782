"""The seed experiment (docs/experiment.md): does training on more sensors help a sensor it sees?

Trains the same network several ways on simulated scenes only (no real tiles, no virtual bands, so
the comparison is about sensors) and tests each on Sentinel-2: simulated held-out scenes (all 13
bands, and cut to the four bands of the real patches) and the real CloudSEN12 patches; zero-shot on
sensors none of them trained on (MODIS, Sentinel-3 OLCI, simulated); and the pairwise O(n²) vs set
O(n) encoder on accuracy and speed. As in the original study, the Sentinel-2 tests are also scored
per 128×128 window, binned by the window's true cloud cover
(:func:`cloudmask.metrics.window_confusions`): pooled scores hide how a model does on nearly clear
or nearly overcast ground.

    python -m cloudmask.model.experiment --out runs/exp --seed 0 [--real /work/shared/data/real]
    python -m cloudmask.model.experiment --out runs/exp --report     # tables from runs/exp/results.json
    python -m cloudmask.model.experiment --out runs/exp --report --with runs/exp-seed1   # seeds combined
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudmask.errors import CloudmaskError, UsageError, first_line
from cloudmask.metrics import Windows, binned, window_confusions
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


#: Sentinel-2's blue, green, red and NIR: the only bands of the real CloudSEN12 test patches.
FOUR_BANDS = ("B02", "B03", "B04", "B08")


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
        if s == "sentinel2":  # the same scenes with CloudSEN12's four bands: tells sensor transfer from band loss
            keep = [i for i, b in enumerate(bands) if b.name in FOUR_BANDS]
            sets["sim_sentinel2_4band"] = [(x[keep], y, d[keep], sh) for x, y, d, sh in tiles]
    if real_root:
        sets["real_cloudsen12"] = [(t.x, t.y, t.desc, t.shadow) for t in load_real_tiles(real_root, ["cloudsen12/*"])]
    return sets


#: The test sets scored per window as well (the experiment's question is about Sentinel-2).
WINDOW_SETS = ("sim_sentinel2", "real_cloudsen12")
WINDOW = 128
#: The Sentinel-2 test sets of the pooled table.
POOLED_SETS = ("sim_sentinel2", "sim_sentinel2_4band", "real_cloudsen12")


def bin_windows(pairs: list[tuple[np.ndarray, np.ndarray]], size: int = WINDOW) -> list[dict[str, Any]]:
    """Cloud scores per ``size``² window of (truth, prediction) pairs, binned by true cloud cover:
    per non-empty 10 % bin the window count, the pooled accuracy / F1 / precision / recall (percent)
    and the mean per-window F1."""
    windows = Windows.empty(size)
    for i, (truth, pred) in enumerate(pairs):
        windows = windows.extend(window_confusions(truth, pred, size)[0], i)
    rows = []
    for row in binned(windows):
        if row["windows"]:
            rows.append({"bin": row["bin"], "windows": row["windows"],
                         **{m: None if row[m] is None else round(100 * row[m], 1)
                            for m in ("accuracy", "f1", "precision", "recall")},
                         "mean_window_f1": None if row["mean_window_f1"] is None else round(100 * row["mean_window_f1"], 1)})
    return rows


def predictions(net: CloudNet, tiles: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(truth, predicted classes) of every tile: the network's argmax, as the pooled scores use."""
    net.eval()
    out = []
    with torch.no_grad():
        for x, y, d, _ in tiles:
            prob = net.predict_proba(torch.from_numpy(x[None]), torch.from_numpy(d))[0].numpy()
            out.append((y, prob.argmax(0).astype("uint8")))
    return out


def _agg(values: list[float | None], digits: int = 1) -> str:
    """One value as is; several (training seeds) as ``mean (min–max)``."""
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{float(np.mean(v)):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def score(predictor: Any, tests: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]) -> dict[str, Any]:
    """Pooled scores on every test set and the per-window bins of :data:`WINDOW_SETS`."""
    return {"test": evaluate_sets(predictor._infer, tests),
            "windows": {key: bin_windows(predictions(predictor._infer, tests[key])) for key in WINDOW_SETS if key in tests}}


def report(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Markdown tables of one results.json, or of several (one per training seed, combined): pooled
    Sentinel-2 scores, and per window cover bin the cloud F1 (accuracy), seeds' means."""
    seeds = results if isinstance(results, list) else [results]
    names = list(dict.fromkeys(k for r in seeds for k, v in r.items() if isinstance(v, dict) and "test" in v))
    lines = ["| trained on | set | runs | acc | F1 | precision | recall |", "|---|---|---|---|---|---|---|"]
    for name in names:
        for key in POOLED_SETS:
            ms = [r[name]["test"][key] for r in seeds if name in r and key in r[name]["test"]]
            if ms:
                cells = [_agg([m[f"cloud_{k}"] for m in ms]) for k in ("acc", "f1", "precision", "recall")]
                lines.append(f"| {name} | {key} | {len(ms)} | " + " | ".join(cells) + " |")
    zero = [k for k in ("sim_modis", "sim_sentinel3-olci") if any(k in r[n]["test"] for r in seeds for n in names if n in r)]
    if zero:
        lines += ["", "Zero-shot sensors (never trained on): cloud F1", "", "| trained on | " + " | ".join(zero) + " |",
                  "|---|" + "---|" * len(zero)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(
                _agg([r[name]["test"][k]["cloud_f1"] for r in seeds if name in r and k in r[name]["test"]]) for k in zero) + " |")
    for key in WINDOW_SETS:
        rows = {name: [r[name].get("windows", {}).get(key, []) for r in seeds if name in r] for name in names}
        bins = sorted({row["bin"] for runs in rows.values() for run in runs for row in run}, key=lambda b: int(b.split("–")[0]))
        if not bins:
            continue
        lines += ["", f"{key}: cloud F1 (accuracy) per {WINDOW}² window cover bin, pooled over the bin's windows"
                  + (", mean over the runs" if len(seeds) > 1 else ""),
                  "", "| cover | windows | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for b in bins:
            count, cells = "", []
            for name in names:
                found = [x for run in rows[name] for x in run if x["bin"] == b]
                count = count or (str(found[0]["windows"]) if found else "")
                f1 = [x["f1"] for x in found if x["f1"] is not None]
                acc = [x["accuracy"] for x in found if x["accuracy"] is not None]
                cells.append("–" if not found else
                             f"{f'{np.mean(f1):.1f}' if f1 else 'n/a'} ({np.mean(acc):.1f})")
            lines.append(f"| {b} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real", default=None, help="real-data root (for the CloudSEN12 test patches)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--test-scenes", type=int, default=16)
    ap.add_argument("--test-size", type=int, default=256, help="simulated test scenes' size (whole 128² windows: a multiple of 128)")
    ap.add_argument("--report", action="store_true", help="print the tables of an existing results.json and stop")
    ap.add_argument("--with", dest="more", nargs="*", default=[], metavar="DIR",
                    help="with --report: more runs' folders (other training seeds) to combine with --out")
    ap.add_argument("--rescore", action="store_true",
                    help="score the runs already in --out again on the current tests (no training)")
    ap.add_argument("--bundled", action="store_true",
                    help="also score the bundled model on the same tests (not comparable one to one: it trained longer, on more)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (test scenes stay fixed)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except CloudmaskError as exc:  # one line, as from the cloudmask command, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def _read_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{folder}: no results.json (not an experiment run, or it has not finished a variant)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({first_line(exc)})") from None
    if not isinstance(results, dict):
        raise UsageError(f"{path}: not an experiment's results")
    return results


def _run(args: argparse.Namespace) -> int:
    unknown = [v for v in filter(None, args.variants.split(",")) if v not in VARIANTS]
    if unknown:
        raise UsageError(f"--variants: unknown {', '.join(map(repr, unknown))}; the variants are {', '.join(VARIANTS)}")
    if args.steps < 1 or args.test_scenes < 1 or args.threads < 1:
        raise UsageError("--steps, --test-scenes and --threads must be at least 1")
    if args.report:  # reads only: no folder made, every folder named must hold results
        runs = [_read_results(Path(args.out)), *(_read_results(Path(d)) for d in args.more)]
        if not any(isinstance(v, dict) and "test" in v for r in runs for v in r.values()):
            raise UsageError(f"{args.out}: its results hold no trained variant yet")
        print(report(runs if args.more else runs[0]))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = _read_results(out) if results_path.is_file() else {}
    tests = test_sets(args.real, args.test_scenes, args.test_size)
    if args.bundled:
        p = load_model()
        results[f"bundled {p.version}"] = score(p, tests)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"bundled {p.version}", json.dumps({k: round(m["cloud_f1"], 1) for k, m in results[f"bundled {p.version}"]["test"].items()}),
              flush=True)
    for name in filter(None, args.variants.split(",")):
        v = VARIANTS[name]
        run = out / name.replace(" ", "-").replace("+", "_")
        if args.rescore:
            if name in results and (run / "best.safetensors").is_file():
                results[name].update(score(load_model(run / "best.safetensors"), tests))
                results_path.write_text(json.dumps(results, indent=2))
                print(name, "rescored", flush=True)
            continue
        cfg = load_config(None, [
            f"out={run}", f"seed={args.seed}", f"model.encoder={v['encoder']}", f"data.sensors={json.dumps(v['sensors'])}",
            "data.virtual_prob=0", "data.tile=128", "data.batch=6", f"train.steps={args.steps}",
            f"train.val_every={args.steps}", f"train.ckpt_every={args.steps}", f"train.threads={args.threads}",
            "train.warmup=50", "val.sensors=[sentinel2]", "val.scenes=3", "val.size=128",
        ])
        t0 = time.time()
        summary = train(cfg, overwrite=True)  # a variant run again is trained again
        wall = time.time() - t0
        p = load_model(run / "best.safetensors")  # best == last here (one validation at the end)
        scored = score(p, tests)
        metrics = scored["test"]
        results[name] = {"sensors": v["sensors"], "encoder": v["encoder"], "steps": summary["steps"],
                         "train_minutes": round(wall / 60, 1), **scored}
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps({k: round(m["cloud_f1"], 1) for k, m in metrics.items()}), f"{wall / 60:.1f} min", flush=True)
    if not args.rescore and args.variants:  # measured beside the training runs, under the same load
        results["speed_s_per_mpx"] = {enc: round(speed(enc), 3) for enc in ("set", "pairwise")}
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["speed_s_per_mpx"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
