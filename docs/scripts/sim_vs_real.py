"""Compare simulated class spectra with real labelled Landsat 8 Biome tiles (docs only, never tests).

    python docs/scripts/sim_vs_real.py [--real /work/shared/data/real] [--n 60] [--out docs/img]

Classes: the labels' thick cloud, thin cloud and shadow, and the label's clear pixels split by the
same spectral rules on both sides into water (NDWI > 0.2, NIR < 0.12), snow (NDSI > 0.4, green > 0.3)
and land (the rest), so real and simulated classes are defined identically. Prints a markdown table
(mean ± std per band, real vs simulated) and writes a plot and quick-looks into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BANDS = ["blue", "green", "red", "nir08", "swir16", "swir22", "cirrus", "lwir11"]
CLASSES = ["land", "water", "snow", "thick", "thin", "shadow"]


def split_classes(data: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks per comparison class from labels + identical spectral rules."""
    g, n, s = data["green"], data["nir08"], data["swir16"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndwi = (g - n) / (g + n)
        ndsi = (g - s) / (g + s)
    ok = np.isfinite(np.stack(list(data.values()))).all(0)
    clear = (labels == 0) & ok
    water = clear & (ndwi > 0.2) & (n < 0.12)
    snow = clear & ~water & (ndsi > 0.4) & (g > 0.3)
    return {
        "land": clear & ~water & ~snow,
        "water": water,
        "snow": snow,
        "thick": (labels == 1) & ok,
        "thin": (labels == 2) & ok,
        "shadow": (labels == 3) & ok,
    }


FRACTIONS: list[list[float]] = []


def collect(tiles, cap: int = 4000, seed: int = 0, fractions: list | None = None) -> dict[str, np.ndarray]:
    """Per class, a (pixels, bands) sample pooled over tiles (at most ``cap`` pixels per tile and class);
    per-tile label fractions (clear, thick, thin, shadow) are appended to ``fractions``."""
    rng = np.random.default_rng(seed)
    pools: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    for data, labels in tiles:
        valid = labels != 255
        if fractions is not None and valid.any():
            fractions.append([float((labels[valid] == k).mean()) for k in (0, 1, 2, 3)])
        for c, m in split_classes(data, labels).items():
            idx = np.flatnonzero(m)
            if idx.size == 0:
                continue
            idx = rng.choice(idx, min(cap, idx.size), replace=False)
            pools[c].append(np.stack([data[b].ravel()[idx] for b in BANDS], 1))
    return {c: np.concatenate(v) if v else np.zeros((0, len(BANDS))) for c, v in pools.items()}


def real_tiles(root: Path, fix_order: bool = True):
    """Landsat 8 Biome tiles as {band: array}, labels.

    The manifest (and the files' band descriptions) list the first three bands as red, green, blue,
    but the data are in blue, green, red order: clear water reads 0.117 / 0.064 / 0.038 and dense
    vegetation 0.10 / 0.08 / 0.055 in file order, which only fits blue > green > red at TOA (Rayleigh
    path radiance; water and leaves absorb red). ``fix_order`` swaps them back.
    """
    import rasterio

    manifest = json.loads((root / "manifest.json").read_text())
    for e in manifest:
        if e["sensor"] != "landsat8":
            continue
        with rasterio.open(root / e["image"]) as src:
            arr = src.read().astype("float32")
        with rasterio.open(root / e["label"]) as src:
            lab = src.read(1)
        names = list(e["bands"])
        if fix_order and names[:3] == ["red", "green", "blue"]:
            names[:3] = ["blue", "green", "red"]
        yield {b: arr[names.index(b)] for b in BANDS}, lab


def sim_tiles(n: int, size: int = 256, seed: int = 0):
    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene

    l8 = get_sensor("landsat8")
    bands = [l8.band(b) for b in BANDS]
    for i in range(n):
        sim = simulate_scene(bands, size, rng=seed + i, pixel_size=30.0)
        yield {b: sim.data[j] for j, b in enumerate(BANDS)}, sim.labels


def summarise(pool: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    return {c: (np.nanmean(v, 0) if len(v) else np.full(len(BANDS), np.nan),
                np.nanstd(v, 0) if len(v) else np.full(len(BANDS), np.nan), len(v)) for c, v in pool.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=Path("/work/shared/data/real"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--trust-manifest-order", action="store_true", help="do not swap the red/blue bands")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "img")
    args = ap.parse_args()
    fr_real: list = []
    fr_sim: list = []
    real = summarise(collect(real_tiles(args.real, fix_order=not args.trust_manifest_order), fractions=fr_real))
    sim = summarise(collect(sim_tiles(args.n), fractions=fr_sim))

    print("| label fractions per tile | clear | thick | thin | shadow | tiles with thin | tiles with shadow |")
    print("|---|---|---|---|---|---|---|")
    for name, fr in (("real (mean)", np.array(fr_real)), ("sim (mean)", np.array(fr_sim))):
        m = fr.mean(0)
        print(f"| {name} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | {(fr[:, 2] > 0).mean():.2f} | "
              f"{(fr[:, 3] > 0).mean():.2f} |")
    print()

    print("| class | source | n px | " + " | ".join(BANDS) + " |")
    print("|---|---|---|" + "---|" * len(BANDS))
    for c in CLASSES:
        for name, s in (("real", real), ("sim", sim)):
            mean, std, n = s[c]
            cells = [f"{m:.1f}±{d:.1f}" if b == "lwir11" else f"{m:.3f}±{d:.3f}" for b, m, d in zip(BANDS, mean, std)]
            print(f"| {c} | {name} | {n} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    x = np.arange(len(BANDS) - 1)
    for ax, c in zip(axes.ravel(), CLASSES):
        for name, s, col in (("real (L8 Biome)", real, "k"), ("simulated", sim, "tab:orange")):
            mean, std, n = s[c]
            ax.plot(x, mean[:-1], "-o", color=col, label=f"{name}, n={n}")
            ax.fill_between(x, (mean - std)[:-1], (mean + std)[:-1], color=col, alpha=0.2)
        rt, st = real[c][0][-1], sim[c][0][-1]
        ax.set_title(f"{c}  (BT real {rt:.0f} K / sim {st:.0f} K)")
        ax.set_ylim(0, 1.0)
        ax.set_xticks(x, BANDS[:-1], rotation=30)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("TOA reflectance")
    axes[1, 0].set_ylabel("TOA reflectance")
    fig.suptitle("Class spectra: real Landsat 8 Biome tiles (31) vs simulated Landsat 8 scenes (mean ± 1 std)")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "sim_vs_real.png", dpi=90)
    print(f"wrote {args.out / 'sim_vs_real.png'}")
    landsat5_table(args.real, max(10, args.n // 3))
    spatial_table(args.real, args.n)


def spatial_stats(labels: np.ndarray) -> tuple[float, int, float] | None:
    """Cloud texture from a label map: share of cloud pixels on an edge (4-neighbourhood), number of
    cloud objects, and the thin share of cloud; None when a tile is (almost) all cloud or all clear."""
    from scipy import ndimage

    cloud = (labels == 1) | (labels == 2)
    valid = labels != 255
    if cloud.sum() < 200 or (~cloud & valid).sum() < 200:
        return None
    edge = (cloud & ~ndimage.binary_erosion(cloud)).sum() / cloud.sum()
    return float(edge), int(ndimage.label(cloud)[1]), float((labels == 2).sum() / cloud.sum())


def spatial_table(root: Path, n: int) -> None:
    import rasterio

    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene

    real = []
    for e in json.loads((root / "manifest.json").read_text()):
        if e["sensor"] == "landsat8":
            with rasterio.open(root / e["label"]) as src:
                real.append(spatial_stats(src.read(1)))
    blue = get_sensor("landsat8").select(["B2"])
    sim = [spatial_stats(simulate_scene(blue, 256, rng=i, pixel_size=30.0, noise=0).labels) for i in range(n)]
    print("\n| partly cloudy 256² tiles | tiles | cloud pixels on an edge | cloud objects | thin share of cloud |")
    print("|---|---|---|---|---|")
    for name, rows in (("real L8 Biome", real), ("simulated L8", sim)):
        arr = np.array([r for r in rows if r is not None])
        print(f"| {name} (median) | {len(arr)} | {np.median(arr[:, 0]):.3f} | {np.median(arr[:, 1]):.0f} | "
              f"{np.median(arr[:, 2]):.2f} |")


L5_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def landsat5_table(root: Path, n: int) -> None:
    """Second check on the Landsat 5 tile (cloud = thick and thin together, shadow labelled)."""
    import rasterio

    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene

    entry = next(e for e in json.loads((root / "manifest.json").read_text()) if e["sensor"] == "landsat5")
    with rasterio.open(root / entry["image"]) as src:
        arr = src.read().astype("float32")
    with rasterio.open(root / entry["label"]) as src:
        lab = src.read(1)
    real = {b: arr[entry["bands"].index(b)] for b in L5_BANDS}
    l5 = get_sensor("landsat5")
    bands = [l5.band(b) for b in L5_BANDS]
    sims = [simulate_scene(bands, 256, rng=1000 + i, pixel_size=30.0) for i in range(n)]

    def masks(labels: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.isfinite(np.stack(list(data.values()))).all(0)
        return {"clear": (labels == 0) & ok, "cloud": ((labels == 1) | (labels == 2)) & ok, "shadow": (labels == 3) & ok}

    print(f"\nLandsat 5 tile {entry['image']} vs {n} simulated Landsat 5 scenes\n")
    print("| class | source | " + " | ".join(L5_BANDS) + " |")
    print("|---|---|" + "---|" * len(L5_BANDS))
    for c in ("clear", "cloud", "shadow"):
        m = masks(lab, real)[c]
        cells = [f"{real[b][m].mean():.3f}±{real[b][m].std():.3f}" for b in L5_BANDS]
        print(f"| {c} | real | " + " | ".join(cells) + " |")
        vals = [np.concatenate([s.data[j][masks(s.labels, {b: s.data[k] for k, b in enumerate(L5_BANDS)})[c]]
                                for s in sims]) for j in range(len(L5_BANDS))]
        print(f"| {c} | sim | " + " | ".join(f"{v.mean():.3f}±{v.std():.3f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
