"""Training data: simulated scenes for any band set, plus optional real labelled tiles.

Every batch shares one band set (the network takes one descriptor table per batch). Band sets come
from registry sensors or are made up ("virtual" bands with random wavelengths), then a random
subset of >= ``min_bands`` bands is kept and shuffled, so the network cannot memorise a sensor or an
order. Descriptor jitter and gain/brightness jitter happen here too.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloudmask.errors import UsageError, first_line
from cloudmask.evaluate import FORMATS, Encoding
from cloudmask.registry import Band, get_sensor

CLEAR, THICK, THIN, SHADOW, IGNORE = 0, 1, 2, 3, 255

#: Training name -> label encoding of a common dataset (values -> cloudmask class, and which
#: classes it labels at all), shared with ``cloudmask evaluate`` so both read datasets alike.
#: A class a dataset does not label hides inside another (unlabelled shadow inside "clear",
#: unlabelled thin cloud inside "cloud"); see the partial-label loss.
LABEL_MAPPINGS: dict[str, Encoding] = {
    "cloudmask": FORMATS["cloudmask"],
    "cloudsen12": FORMATS["cloudsen12"],
    "l8biome": FORMATS["biome"],
    "sparcs": FORMATS["sparcs"],
}


def map_labels(raw: np.ndarray, mapping: str) -> np.ndarray:
    """Re-encode a dataset's label raster to cloudmask classes (unknown values -> 255 ignore)."""
    if mapping not in LABEL_MAPPINGS:
        raise UsageError(f"unknown label mapping {mapping!r}; choose one of {', '.join(LABEL_MAPPINGS)}")
    lut = np.full(256, IGNORE, dtype="uint8")
    for k, v in LABEL_MAPPINGS[mapping].values.items():
        lut[k] = v
    return lut[np.clip(raw, 0, 255).astype("uint8")]


@dataclass
class Batch:
    """One training batch: physical values, labels, descriptors, and which classes are labelled."""

    x: np.ndarray  # (B, n, h, w) float32 physical, NaN nodata
    y: np.ndarray  # (B, h, w) uint8
    desc: np.ndarray  # (n, 5) float32 (possibly jittered)
    thin_labelled: np.ndarray  # (B,) bool
    shadow_labelled: np.ndarray  # (B,) bool
    source: str


# --------------------------------------------------------------------------- band sets


def virtual_bands(rng: np.random.Generator, n: int | None = None, thermal_prob: float = 0.4) -> list[Band]:
    """A made-up sensor: random centres (log-uniform 0.4–2.35 µm), widths, optional thermal band."""
    n = int(n or rng.integers(4, 14))
    bands = []
    for i in range(n):
        mid = float(np.exp(rng.uniform(np.log(0.41), np.log(2.3))))
        fwhm = float(np.clip(mid * np.exp(rng.uniform(np.log(0.015), np.log(0.12))), 0.008, 0.25))
        bands.append(
            Band(name=f"V{i}", kind="reflectance", wavelength_min=mid - fwhm / 2, wavelength_center=mid,
                 wavelength_max=mid + fwhm / 2, fwhm=fwhm, resolution=float(rng.choice([10.0, 20.0, 30.0, 60.0])))
        )
    if rng.random() < thermal_prob:
        mid = float(rng.uniform(10.4, 12.2))
        fwhm = float(rng.uniform(0.5, 1.2))
        bands.append(Band(name="VT", kind="thermal", wavelength_min=mid - fwhm / 2, wavelength_center=mid,
                          wavelength_max=mid + fwhm / 2, fwhm=fwhm, resolution=float(rng.choice([30.0, 60.0, 100.0]))))
    return bands


def sensor_bands(sensor_id: str, drop_pan: bool = True) -> list[Band]:
    """A registry sensor's bands (panchromatic bands dropped: they duplicate the visible bands)."""
    s = get_sensor(sensor_id)
    return [b for b in s.bands if not (drop_pan and (b.common_name == "pan" or b.name.lower() == "pan"))]


def pick_subset(bands: Sequence[Band], rng: np.random.Generator, min_bands: int, p_subset: float) -> list[int]:
    """Indices of a random band subset (size >= min_bands, or all) in random order."""
    n = len(bands)
    k = n
    if n > min_bands and rng.random() < p_subset:
        k = int(rng.integers(min_bands, n + 1))
    idx = rng.permutation(n)[:k]
    return [int(i) for i in idx]


def jitter(x: np.ndarray, desc: np.ndarray, rng: np.random.Generator, cfg: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Gain/brightness jitter on values and centre/width jitter on descriptors (training only)."""
    x = x.copy()
    d = desc.copy()
    thermal = d[:, 4] > 0.5
    n = d.shape[0]
    gain = np.exp(rng.normal(0, cfg.get("gain", 0.05), n)) * np.exp(rng.normal(0, cfg.get("brightness", 0.08)))
    gain[thermal] = 1.0
    offset = np.where(thermal, rng.normal(0, cfg.get("thermal_k", 2.0), n), 0.0)
    x *= gain[None, :, None, None].astype("float32")
    x += offset[None, :, None, None].astype("float32")
    s = cfg.get("wavelength", 0.015)
    shift = 1.0 + rng.uniform(-s, s, n)
    width = np.exp(rng.uniform(-10 * s, 10 * s, n))
    mid = d[:, 1] * shift
    lo, hi = (d[:, 1] - d[:, 0]) * width, (d[:, 2] - d[:, 1]) * width
    d[:, 0], d[:, 1], d[:, 2], d[:, 3] = mid - lo, mid, mid + hi, np.maximum(d[:, 3] * width, 1e-3)
    return x, d.astype("float32")


# --------------------------------------------------------------------------- simulated batches


def standin_scene(bands: Sequence[Band], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A crude, fast stand-in for the simulator (tests, and when it is unavailable).

    Smooth blobs of bright flat cloud, thin haze, and darkened shadow over a vegetation/soil
    mixture; enough structure for tests of the training loop, not for a useful model.
    """
    from scipy.ndimage import gaussian_filter, shift

    h = w = size
    wl = np.array([b.wavelength_center for b in bands])
    thermal = np.array([b.kind == "thermal" for b in bands])
    veg = np.where(wl < 0.7, 0.04 + 0.04 * (np.abs(wl - 0.55) < 0.04), np.where(wl < 1.3, 0.35, 0.18))
    soil = np.clip(0.1 + 0.15 * (wl - 0.4), 0.05, 0.4)
    f = gaussian_filter(rng.random((h, w)), 6)
    f = (f - f.min()) / (np.ptp(f) + 1e-6)
    surf = veg[:, None, None] * f[None] + soil[:, None, None] * (1 - f[None])
    c = gaussian_filter(rng.random((h, w)), 8)
    c = (c - c.mean()) / (c.std() + 1e-6)
    thr = rng.uniform(0.3, 1.8)
    thick = c > thr
    thin = (c > thr - 0.5) & ~thick
    sh = shift(thick.astype(float), (rng.integers(3, 9), rng.integers(3, 9)), order=0) > 0.5
    sh &= ~thick & ~thin
    cloud_refl = np.where(wl > 1.5, 0.35, 0.7)[:, None, None]
    x = surf.copy()
    x = np.where(sh[None], x * 0.35, x)
    x = np.where(thin[None], 0.6 * x + 0.4 * cloud_refl, x)
    x = np.where(thick[None], cloud_refl, x)
    t = 290 + 5 * f
    t = np.where(thick, 255.0, np.where(thin, 275.0, t))
    x[thermal] = t
    x = (x + rng.normal(0, 0.005, x.shape)).astype("float32")
    y = np.zeros((h, w), "uint8")
    y[sh], y[thin], y[thick] = SHADOW, THIN, THICK
    return x, y


def get_simulator(name: str, options: dict[str, Any] | None = None) -> Callable[[Sequence[Band], int, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """``"simulator"`` (cloudmask.simulate, with ``options`` from its DEFAULTS, e.g. label
    thresholds) or ``"standin"`` (fast crude scenes for tests)."""
    if name == "standin":
        return standin_scene
    if name == "simulator":
        from cloudmask.simulate import simulate_scene
        from cloudmask.simulate.scene import DEFAULTS

        opts = dict(options or {})
        unknown = sorted(set(opts) - set(DEFAULTS))
        if unknown:
            raise UsageError(f"unknown data.sim_options {unknown} (see cloudmask.simulate.scene.DEFAULTS)")

        def sim(bands: Sequence[Band], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            s = simulate_scene(bands, size, rng, **opts)
            return s.data, s.labels

        return sim
    raise UsageError(f"unknown data.simulator {name!r} (expected 'simulator' or 'standin')")


class SimSource:
    """Draws batches of simulated scenes for a mix of registry sensors and virtual band sets."""

    def __init__(self, cfg: dict[str, Any], rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        self.simulate = get_simulator(cfg.get("simulator", "simulator"), cfg.get("sim_options"))
        self.sensors = list(cfg.get("sensors", ["sentinel2", "landsat8"]))
        self.sensor_bands = {s: sensor_bands(s) for s in self.sensors}
        self.p_virtual = float(cfg.get("virtual_prob", 0.3))

    def batch(self, batch_size: int, size: int) -> Batch:
        rng = self.rng
        if not self.sensors or rng.random() < self.p_virtual:
            bands, source = virtual_bands(rng), "virtual"
        else:
            source = self.sensors[int(rng.integers(len(self.sensors)))]
            bands = self.sensor_bands[source]
        idx = pick_subset(bands, rng, int(self.cfg.get("min_bands", 4)), float(self.cfg.get("subset_prob", 0.6)))
        chosen = [bands[i] for i in idx]
        xs, ys = zip(*(self._scene(chosen, size, rng) for _ in range(batch_size)))
        x, y = np.stack(xs).astype("float32"), np.stack(ys)
        desc = np.stack([b.descriptor() for b in chosen])
        ones = np.ones(batch_size, bool)
        return Batch(x, y, desc, ones, ones.copy(), source)

    def _scene(self, bands: Sequence[Band], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One ``size``² scene. With ``overscan`` > 0 it is a random crop of a scene that much larger.

        Why: simulated fields are periodic, so in a scene simulated at the tile's own size every
        shadow's cloud is in the tile (wrapped round if need be). In a crop, as in real tiles and
        scene edges, some shadows' clouds lie outside it and some clouds' shadows do too."""
        over = float(self.cfg.get("overscan", 0.0) or 0.0)
        if over <= 0:
            return self.simulate(bands, size, rng)
        big = int(-(-size * (1.0 + over) // 8) * 8)
        x, y = self.simulate(bands, big, rng)
        oy, ox = (int(v) for v in rng.integers(0, big - size + 1, 2))
        return x[:, oy : oy + size, ox : ox + size], y[oy : oy + size, ox : ox + size]


class PooledSimSource:
    """Simulated batches made ahead by worker processes (``data.workers``), for machines whose
    accelerator outruns one simulating core.

    Batch ``k`` is drawn from its own generator seeded by ``(seed, k)``, so the stream is the same
    for any number of workers and a resumed run continues it from the count already consumed.
    """

    def __init__(self, cfg: dict[str, Any], seed: int, workers: int, batch_size: int, size: int, start: int = 0):
        import multiprocessing as mp

        self.seed, self.batch_size, self.size = int(seed), int(batch_size), int(size)
        self.consumed = int(start)
        self._next = self.consumed
        # spawn: workers never inherit a CUDA context or torch's thread pools from the trainer
        self._pool = mp.get_context("spawn").Pool(int(workers), initializer=_worker_init, initargs=(dict(cfg),))
        self._pending: deque[Any] = deque()
        self._depth = 2 * int(workers)

    def batch(self, batch_size: int, size: int) -> Batch:
        if (batch_size, size) != (self.batch_size, self.size):
            raise ValueError("PooledSimSource makes batches of one shape")
        while len(self._pending) < self._depth:
            self._pending.append(self._pool.apply_async(_worker_batch, (self.seed, self._next, batch_size, size)))
            self._next += 1
        out = self._pending.popleft().get()
        self.consumed += 1
        return out

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def random_dihedral(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and labels under one random rotation by a multiple of 90° and an optional flip of
    their last two (spatial) axes, as views."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[..., ::-1]
    return x, y


class ReusingSource:
    """Hands out each batch of ``inner`` ``times`` times: as drawn, then under a fresh random
    rotation/flip (the training loop jitters every use anew).

    Why: on a GPU the simulator, not the network, sets the pace (~60–120 tiles per second from
    14 processes), so each simulated scene is worth more than one step. Resuming restarts
    at a fresh batch, so a resumed run with ``times`` > 1 is not bit-identical to an unbroken one.
    """

    def __init__(self, inner: SimSource | PooledSimSource, times: int, rng: np.random.Generator):
        if times < 1:
            raise UsageError(f"data.reuse must be at least 1, got {times}")
        self.inner, self.times, self.rng = inner, int(times), rng
        self._held: Batch | None = None
        self._left = 0

    @property
    def consumed(self) -> int:
        return int(getattr(self.inner, "consumed", 0))

    def batch(self, batch_size: int, size: int) -> Batch:
        if self._held is None or self._left == 0 or self._held.x.shape[0] != batch_size or self._held.x.shape[-1] != size:
            self._held, self._left = self.inner.batch(batch_size, size), self.times - 1
            return self._held
        self._left -= 1
        x, y = random_dihedral(self._held.x, self._held.y, self.rng)
        return replace(self._held, x=np.ascontiguousarray(x), y=np.ascontiguousarray(y))

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


_WORKER_SOURCE: SimSource | None = None


def _worker_init(cfg: dict[str, Any]) -> None:
    global _WORKER_SOURCE
    import torch

    torch.set_num_threads(1)
    _WORKER_SOURCE = SimSource(cfg, np.random.default_rng(0))


def _worker_batch(seed: int, k: int, batch_size: int, size: int) -> Batch:
    assert _WORKER_SOURCE is not None
    _WORKER_SOURCE.rng = np.random.default_rng([seed, k])
    return _WORKER_SOURCE.batch(batch_size, size)


# --------------------------------------------------------------------------- real tiles

#: Known band-order problems in shared tiles. The l8biome crops list red, green, blue but their
#: first three bands behave as blue, green, red (deep water and forest are brightest in the first
#: band, as blue is at top of atmosphere); swap so descriptors match the pixels.
BAND_ORDER_FIXES: dict[str, dict[str, str]] = {"l8biome/": {"red": "blue", "blue": "red"}}


@dataclass
class RealTile:
    name: str
    x: np.ndarray  # (n, h, w) physical
    y: np.ndarray  # (h, w) cloudmask classes
    bands: list[Band]
    thin: bool
    shadow: bool

    @property
    def desc(self) -> np.ndarray:
        return np.stack([b.descriptor() for b in self.bands])


def load_real_tiles(root: str | Path, patterns: Sequence[str], mapping: str = "cloudmask", fix_band_order: bool = True) -> list[RealTile]:
    """Read manifest entries whose image path matches any glob in ``patterns``."""
    import fnmatch
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    root = Path(root)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise UsageError(f"real-data manifest not found: {manifest}")
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{manifest}: not readable JSON ({first_line(exc)})") from None
    if not isinstance(entries, list):
        raise UsageError(f"{manifest}: expected a list of tiles, got {type(entries).__name__}")
    tiles = []
    for i, e in enumerate(entries):
        missing = [k for k in ("image", "label", "sensor", "bands") if not isinstance(e, dict) or k not in e]
        if missing:
            raise UsageError(f"{manifest}: entry {i} lacks {', '.join(missing)}")
        if not any(fnmatch.fnmatch(e["image"], p) for p in patterns):
            continue
        names = list(e["bands"])
        if fix_band_order:
            for prefix, swap in BAND_ORDER_FIXES.items():
                if e["image"].startswith(prefix):
                    names = [swap.get(n, n) for n in names]
        sensor = get_sensor(e["sensor"])
        bands = [sensor.band(n) for n in names]
        with warnings.catch_warnings():  # dataset crops often carry no georeferencing: irrelevant here
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                with rasterio.open(root / e["image"]) as src:
                    x = src.read().astype("float32")
                    if src.nodata is not None:
                        x[x == src.nodata] = np.nan
                with rasterio.open(root / e["label"]) as src:
                    y = map_labels(src.read(1), mapping)
            except (rasterio.errors.RasterioError, OSError) as exc:
                raise UsageError(f"{manifest}: tile {e['image']}: cannot read ({first_line(exc)})") from None
        if x.shape[0] != len(bands) or y.shape != x.shape[1:]:
            raise UsageError(f"{manifest}: tile {e['image']}: {x.shape[0]} bands of {x.shape[1]}×{x.shape[2]} px, "
                             f"but {len(bands)} band names and a {y.shape[0]}×{y.shape[1]} label")
        lab = e.get("labelled", {})
        shadow = bool(lab.get("shadow", True)) and not shadow_label_missing(y)
        tiles.append(RealTile(e["image"], x, y, bands, bool(lab.get("thin", True)), shadow))
    return tiles


def shadow_label_missing(y: np.ndarray, low: float = 0.01, high: float = 0.95) -> bool:
    """True for a tile that shows both cloud and clear ground but has not one shadow pixel.

    Why: some annotators (Landsat 8 Biome among them) marked shadow in only part of their scenes, so
    a partly cloudy tile with zero shadow most likely has its shadows inside "clear". Training on it
    as if labelled teaches that shadows are clear ground; the partial-label loss treats its clear
    pixels as "clear or shadow" instead.
    """
    ok = y != IGNORE
    n = int(ok.sum())
    if n == 0:
        return False
    cloud = float(((y == THICK) | (y == THIN)).sum()) / n
    return low < cloud < high and not bool((y == SHADOW).any())


class RealSource:
    """Random crops of real tiles, with the same band-subset/order augmentation as simulated data."""

    def __init__(self, tiles: list[RealTile], cfg: dict[str, Any], rng: np.random.Generator):
        if not tiles:
            raise UsageError("the real-data patterns matched no tiles")
        self.tiles, self.cfg, self.rng = tiles, cfg, rng

    def batch(self, batch_size: int, size: int) -> Batch:
        rng = self.rng
        # one tile's band set per batch; different crops/flips of tiles that share it
        t0 = self.tiles[int(rng.integers(len(self.tiles)))]
        same = [t for t in self.tiles if [b.name for b in t.bands] == [b.name for b in t0.bands]]
        idx = pick_subset(t0.bands, rng, int(self.cfg.get("min_bands", 4)), float(self.cfg.get("subset_prob", 0.6)))
        xs, ys, th, sh = [], [], [], []
        for _ in range(batch_size):
            t = same[int(rng.integers(len(same)))]
            h, w = t.y.shape
            s = min(size, h, w)
            r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            x, y = t.x[idx, r : r + s, c : c + s], t.y[r : r + s, c : c + s]
            x, y = random_dihedral(x, y, rng)
            if s < size:
                x = np.pad(x, ((0, 0), (0, size - s), (0, size - s)), constant_values=np.nan)
                y = np.pad(y, ((0, size - s), (0, size - s)), constant_values=IGNORE)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
            th.append(t.thin)
            sh.append(t.shadow)
        desc = t0.desc[idx]
        return Batch(np.stack(xs), np.stack(ys), desc, np.array(th), np.array(sh), "real")


def four_band_indices(desc: np.ndarray) -> list[int] | None:
    """Indices of the bands nearest blue, green, red and NIR (0.49, 0.56, 0.665, 0.84 µm centres,
    each within 0.03 µm of it; a reflective band), or None when one is missing. By descriptor, so
    it works for any band set, registry names or not."""
    out: list[int] = []
    centre, thermal = desc[:, 1], desc[:, 4] > 0.5
    for target in (0.49, 0.56, 0.665, 0.84):
        dist = np.where(thermal, np.inf, np.abs(centre - target))
        i = int(np.argmin(dist))
        if dist[i] > 0.03 or i in out:
            return None
        out.append(i)
    return out
