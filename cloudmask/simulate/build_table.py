"""Build the compact spectral table the simulator ships (``cloudmask/simulate/data/spectra.npz``).

Run once by a developer (``python -m cloudmask.simulate.build_table``) with the ``simulate`` extra
installed. The simulator itself then never imports earthlib, snowoptics or pyrsr: the table holds
every surface spectrum resampled to one grid (400-2500 nm at 5 nm, float16, grouped by class) and
every pyrsr band response resampled to the same grid, so run time is a few matrix products.

Sources (all permissively licensed, recorded in docs/simulator.md):
  * earthlib 1.1 (MIT): soils (ICRAF-ISRIC), PROSAIL canopies, Santa Barbara urban, NPV, burned, sand.
  * snowoptics (MIT): snow albedo from the Kokhanovsky & Zege (2004) theory with ice refractive index
    (Picard 2016), by specific surface area and black-carbon / dust impurities.
  * A semi-analytic water model (Gordon et al. 1988 Rrs ~ bb/(a+bb)) using pure-water absorption from
    the imaginary refractive index of water (Hale & Querry 1973, tabulated in :mod:`.spectra`).
  * Synthetic salt pans (flat, very bright, hydration dips at 1.45/1.94 µm).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cloudmask.simulate.spectra import GRID_NM, water_reflectance

OUT = Path(__file__).with_name("data") / "spectra.npz"

#: Spectra kept per class (a random subset keeps the file small but the variety large).
_KEEP = {"vegetation": 700, "soil": 700, "npv": 104, "burned": 21, "urban": 888, "sand": 39}


def _earthlib(rng: np.random.Generator) -> dict[str, np.ndarray]:
    import earthlib.config as cfg  # reads packaged files only, no network
    import pandas as pd

    meta = pd.read_csv(cfg.full_metadata_path)
    hdr = Path(cfg.header_path_full).read_text()
    wl_txt = hdr.split("wavelength =")[1].split("{")[1].split("}")[0]
    wl = np.array([float(v) for v in wl_txt.split(",")]) * 1000.0
    n = len(meta)
    raw = np.fromfile(cfg.full_endmember_path, dtype="<f4").reshape(n, len(wl))
    grid = GRID_NM.astype(float)
    res = np.stack([np.interp(grid, wl, row) for row in raw])  # fills the 1.35-1.46/1.79-1.96 µm gaps
    res = np.clip(res, 0.0, 1.0)
    l2, l3 = meta["LEVEL_2"].to_numpy(), meta["LEVEL_3"].to_numpy()
    groups = {
        "vegetation": l2 == "vegetation",
        "soil": (l2 == "bare") & (l3 != "sand"),
        "sand": l3 == "sand",
        "npv": l2 == "npv",
        "burned": l2 == "burned",
        "urban": l2 == "built",
    }
    out = {}
    for name, mask in groups.items():
        rows = res[mask]
        rows = rows[np.isfinite(rows).all(1) & (rows.max(1) > 0.005)]
        keep = min(_KEEP[name], len(rows))
        out[name] = rows[np.sort(rng.choice(len(rows), keep, replace=False))]
    return out


def _snow(rng: np.random.Generator) -> np.ndarray:
    import snowoptics

    wl_m = GRID_NM * 1e-9
    rows = []
    for _ in range(200):
        ssa = float(np.exp(rng.uniform(np.log(2.0), np.log(80.0))))  # m²/kg: old coarse ice .. fresh snow
        imp = {"BC": float(np.exp(rng.uniform(np.log(1e-9), np.log(3e-7))))}
        if rng.random() < 0.3:
            imp["dust"] = float(np.exp(rng.uniform(np.log(1e-6), np.log(2e-4))))
        sza = np.deg2rad(rng.uniform(30, 75))
        try:
            alb = snowoptics.albedo_KZ04(wl_m, sza, ssa, r_difftot=0.2, impurities=imp)
        except Exception:  # dust formulation may be unavailable in some versions: fall back to BC only
            alb = snowoptics.albedo_KZ04(wl_m, sza, ssa, r_difftot=0.2, impurities={"BC": imp["BC"]})
        alb = np.asarray(alb, dtype=float)
        if rng.random() < 0.25:  # glacier ice / wet old snow: darker overall
            alb = alb * rng.uniform(0.55, 0.85)
        rows.append(np.clip(alb, 0, 1))
    return np.stack(rows)


def _water(rng: np.random.Generator) -> np.ndarray:
    rows = []
    for _ in range(300):
        kind = rng.choice(["clear", "turbid", "deep"], p=[0.35, 0.4, 0.25])
        chl = float(np.exp(rng.uniform(np.log(0.05), np.log(30))))
        cdom = float(np.exp(rng.uniform(np.log(0.005), np.log(1.0))))
        spm = {"clear": rng.uniform(0.2, 3), "turbid": np.exp(rng.uniform(np.log(5), np.log(200))),
               "deep": rng.uniform(0.0, 0.5)}[kind]
        if kind == "deep":
            chl, cdom = chl * 0.1, cdom * 0.1
        rows.append(water_reflectance(GRID_NM, chl=chl, cdom440=cdom, spm=float(spm)))
    return np.stack(rows)


def _salt(rng: np.random.Generator) -> np.ndarray:
    wl = GRID_NM / 1000.0
    rows = []
    for _ in range(60):
        base = rng.uniform(0.45, 0.85)
        slope = rng.uniform(-0.15, 0.02)  # gentle fall into the SWIR
        r = base + slope * (wl - 0.5) - rng.uniform(0.0, 0.12) * np.exp(-((wl - 0.42) / 0.06) ** 2)
        for c, w, d in ((1.45, 0.04, 0.25), (1.94, 0.05, 0.35), (1.75, 0.02, 0.05), (2.2, 0.04, 0.1)):
            r = r - rng.uniform(0.3, 1.0) * d * base * np.exp(-((wl - c) / w) ** 2)
        rows.append(np.clip(r, 0.02, 1.0))
    return np.stack(rows)


def _ice_k() -> np.ndarray:
    """Imaginary refractive index of ice on the grid (cirrus and ice-cloud absorption)."""
    from snowoptics.refractive_index import refice

    return np.asarray(refice(GRID_NM * 1e-9, "p2016")[1], dtype="float32")


def _responses() -> dict[str, np.ndarray]:
    import pyrsr

    root = Path(pyrsr.__file__).parent / "data"
    out = {}
    for band_file in sorted(root.glob("*/*/band_*")):
        sat, sensor = band_file.parent.parent.name, band_file.parent.name
        arr = np.loadtxt(band_file, skiprows=1)
        wl, resp = arr[:, 0], arr[:, 1]
        if wl.max() < 100:  # micrometres
            wl = wl * 1000.0
        if wl.min() > GRID_NM[-1]:
            continue  # thermal: the simulator treats thermal bands by brightness temperature
        # integrate onto the 5 nm grid (bin average) so narrow responses keep their area
        edges = np.concatenate([[GRID_NM[0] - 2.5], GRID_NM + 2.5])
        fine = np.arange(wl.min(), wl.max() + 0.5, 0.5)
        fr = np.interp(fine, wl, resp, left=0, right=0)
        idx = np.digitize(fine, edges) - 1
        ok = (idx >= 0) & (idx < len(GRID_NM))
        binned = np.bincount(idx[ok], weights=fr[ok], minlength=len(GRID_NM))
        if binned.sum() <= 0:
            continue
        out[f"{sat}/{sensor}/{band_file.name.removeprefix('band_')}"] = (binned / binned.max()).astype("float32")
    return out


def build(path: Path = OUT, seed: int = 20261125) -> Path:
    """Write the table and return its path."""
    rng = np.random.default_rng(seed)
    groups = _earthlib(rng)
    groups["snow"] = _snow(rng)
    groups["water"] = _water(rng)
    groups["salt"] = _salt(rng)
    arrays: dict[str, np.ndarray] = {"grid_nm": GRID_NM.astype("float32"), "k_ice": _ice_k()}
    for name, rows in groups.items():
        arrays[f"class/{name}"] = rows.astype("float16")
    for key, resp in _responses().items():
        arrays[f"srf/{key}"] = resp.astype("float16")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    p = build()
    with np.load(p) as z:
        for k in z.files:
            if k.startswith("class/"):
                print(k, z[k].shape)
        print(sum(k.startswith("srf/") for k in z.files), "band responses;", p.stat().st_size // 1024, "KiB")
