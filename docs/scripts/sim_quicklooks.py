"""Quick-look PNGs of simulated scenes for docs/simulator.md.

    python docs/scripts/sim_quicklooks.py [--out docs/img]

Landsat 8 bands, a few fixed seeds/biomes: true colour, SWIR false colour (B6/B5/B4), cirrus band
(B9), thermal (B10) and the labels (clear grey, thick white, thin cyan, shadow purple, nodata black).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CASES = [
    ("cropland, cumulus + shadows", dict(biome="cropland", cloud_cover=0.35, sun_elevation=40, cirrus_cover=0.0, haze_tau=0.0), 3),
    ("snow/ice under cloud", dict(biome="snow_ice", cloud_cover=0.3, cirrus_cover=0.0), 5),
    ("barren + bright salt, cirrus", dict(biome="barren", cloud_cover=0.1, cirrus_cover=0.6, cirrus_tau_max=1.5), 8),
    ("forest, haze veil", dict(biome="forest", cloud_cover=0.15, haze_tau=2.0, cirrus_cover=0.0), 11),
    ("water/coast, overcast edge", dict(biome="water", cloud_cover=0.6, cirrus_cover=0.0), 2),
    ("urban, tilted footprint", dict(biome="urban", cloud_cover=0.25, nodata_border_prob=1.0), 4),
]
LABEL_RGB = {0: (0.45, 0.45, 0.45), 1: (1, 1, 1), 2: (0.3, 0.9, 0.95), 3: (0.45, 0.15, 0.6), 255: (0, 0, 0)}


def stretch(rgb: np.ndarray, hi: float) -> np.ndarray:
    return np.clip(np.nan_to_num(rgb / hi), 0, 1) ** 0.8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "img")
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene

    l8 = get_sensor("landsat8")
    names = ["B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10"]
    bands = l8.select(names)
    idx = {n: i for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(CASES), 5, figsize=(15, 3.1 * len(CASES)))
    for row, (title, opts, seed) in zip(axes, CASES):
        sim = simulate_scene(bands, args.size, rng=seed, pixel_size=30.0, **opts)
        d = sim.data
        row[0].imshow(stretch(np.stack([d[idx["B4"]], d[idx["B3"]], d[idx["B2"]]], -1), 0.45))
        row[1].imshow(stretch(np.stack([d[idx["B6"]], d[idx["B5"]], d[idx["B4"]]], -1), 0.6))
        row[2].imshow(np.nan_to_num(d[idx["B9"]]), cmap="magma", vmin=0, vmax=0.08)
        row[3].imshow(d[idx["B10"]], cmap="inferno")
        lab = np.zeros(sim.labels.shape + (3,))
        for k, c in LABEL_RGB.items():
            lab[sim.labels == k] = c
        row[4].imshow(lab)
        m = sim.meta
        row[0].set_ylabel(f"{title}\nseed {seed}", fontsize=8)
        row[4].set_title(f"sun {m['sun_elevation']:.0f}° az {m['sun_azimuth']:.0f}°, cloud {m['cloud_height_km']:.1f} km",
                         fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, t in zip(axes[0], ("true colour", "SWIR16/NIR/red", "cirrus 1.37 µm", "thermal 10.9 µm (K)", "labels")):
        ax.set_title(t, fontsize=9) if ax is not axes[0][4] else None
    fig.suptitle("Simulated Landsat 8 scenes (labels: grey clear, white thick, cyan thin, purple shadow, black nodata)",
                 fontsize=10)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sim_quicklooks.png"
    fig.savefig(path, dpi=55)
    from PIL import Image  # palette PNG keeps the repository small

    Image.open(path).convert("RGB").quantize(colors=192).save(path, optimize=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
