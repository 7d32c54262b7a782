"""Masking scenes: one scene to a COG, or a whole archive with skip/resume, locks and a summary.

Why the archive logic lives in the library (not the CLI): cron jobs and notebooks need the same
guarantees — an output exists only when complete (temp file + rename), a rerun skips finished
scenes and resumes the rest, two runs never write the same output (lock file), and one bad scene is
reported without stopping the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import glob
import hashlib
import json
import math
import os
import re
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlparse

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from cloudmask import cog
from cloudmask.evaluate import LABEL_WORDS
from cloudmask.errors import (ClusterError, CloudmaskError, ModelError, OutputBusyError, OutputError, SceneError, SchedulerLostError,
                              UsageError, first_line)
from cloudmask.files import OutputLock, _locks_set_aside
from cloudmask.registry import Sensor
from cloudmask.scene import (ARCHIVE_SUFFIXES, Scene, _is_url, archive_rasters, degrees_within, is_safe, read_scene,
                             stem_last_part)
from cloudmask.shadows import ShadowMatcher, ShadowOptions, nir_band, shadow_prior
from cloudmask.tiles import (
    CLASSES,
    NODATA,
    REMOTE_RETRIES,
    DistributedRunner,
    LocalRunner,
    TileOptions,
    limit_memory_growth,
    stream_mask,
    weighted_graph,
)

MASK_SUFFIX = "_cloudmask.tif"
PROBA_SUFFIX = "_cloudprob.tif"
ITEM_SUFFIX = "_cloudmask.json"
_OUR_SUFFIXES = (MASK_SUFFIX, PROBA_SUFFIX, ITEM_SUFFIX)
_RASTERS = {".tif", ".tiff", ".jp2", ".vrt", ".img"}
#: Files that hold a scene: rasters and archives of band files (``.SAFE.zip``, Landsat ``.tar``).
_SCENE_FILES = _RASTERS | set(ARCHIVE_SUFFIXES)
#: Read granularity: small enough that a window's reads barely exceed the window itself.
READ_CHUNK = 512

#: Event callback: (kind, payload). Kinds: "run-start" (scenes: count, sources: every scene in order),
#: "scene-start", "blocks" (done, total), "scene-end" (result).
Callback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class MaskOptions:
    """Everything that shapes one run besides inputs and outputs."""

    # an id, alias or platform from the registry (bundled + $CLOUDMASK_SENSORS), or a Sensor object,
    # e.g. ``get_sensor("mysat", ["./my-sensors"])`` for a user sensor folder
    sensor: str | Sensor | None = None
    bands: Sequence[str] | None = None
    product: str | None = None
    resolution: float | None = None
    tiles: TileOptions = field(default_factory=TileOptions)
    scheduler: str | None = None  # dask.distributed address, e.g. tcp://host:8786
    probabilities: bool = False
    threshold: float | None = None
    dilate: int = 0
    binary: bool = False
    shadow_matching: bool = True  # cloud–shadow geometry step (cloudmask.shadows)
    shadow_boost: float = ShadowOptions.boost  # its strength: in the zone P(shadow) counts (1 + boost)×
    # opt-in darkness test: in the zone a clear pixel with NIR under this × its clear surroundings'
    # NIR turns shadow too (e.g. 0.7; None: off)
    shadow_darkness: float | None = None
    # the sun's position for matching (degrees; azimuth clockwise from north), or with
    # ``sun_from_metadata`` each scene's own (Scene.sun: STAC view:sun_*, Landsat MTL, SAFE
    # MTD_TL.xml); unknown: the shift is learnt alone (the default: on simulated scenes the sun
    # gained on one set, lost on another)
    sun_azimuth: float | None = None
    sun_elevation: float | None = None
    sun_from_metadata: bool = False
    overwrite: bool = False
    weights: str | None = None  # a weights file from `cloudmask train`; default: the bundled model
    device: str = "auto"  # where the model runs locally: cpu, cuda, cuda:N, auto (CUDA if torch sees one)

    def shadow_options(self, scene: Scene | None = None) -> ShadowOptions | None:
        """The cloud–shadow matching this run applies, or None (turned off, or ``binary``: no shadow
        class); with ``scene``, narrowed to the shifts its sun allows when the sun is known."""
        if not self.shadow_matching or self.binary:
            return None
        opts = ShadowOptions(boost=self.shadow_boost, darkness=self.shadow_darkness or None)
        if scene is not None and opts.darkness and nir_band(scene.descriptors) is None:
            warnings.warn(f"{Path(scene.source).name}: no NIR band near 0.84 µm; --shadow-darkness is off for "
                          "this scene", stacklevel=2)
            opts = replace(opts, darkness=None)
        if scene is not None:
            azimuth, elevation = self.sun_for(scene)
            if self.sun_from_metadata and azimuth is None:
                warnings.warn(f"{Path(scene.source).name}: no usable sun azimuth in its metadata (missing or out of "
                              "range); shadow matching learns the shift from the scene alone", stacklevel=2)
            elif self.sun_from_metadata and elevation is None:
                warnings.warn(f"{Path(scene.source).name}: no usable sun elevation in its metadata (missing or out "
                              "of range); shadow matching holds the shift to the sun's direction only", stacklevel=2)
            if azimuth is not None:
                opts = replace(opts, prior=shadow_prior(azimuth, elevation, scene.transform, scene.crs))
        return opts

    def sun_for(self, scene: Scene) -> tuple[float | None, float | None]:
        """(azimuth, elevation) for ``scene``: these options' values, else (with ``sun_from_metadata``)
        what its metadata says (checked when read: missing or out of range is unknown)."""
        az, el = (scene.sun or (None, None)) if self.sun_from_metadata else (None, None)
        return (self.sun_azimuth if self.sun_azimuth is not None else az,
                self.sun_elevation if self.sun_elevation is not None else el)

    def check(self) -> None:
        """Reject impossible values before touching any scene (exit code 2)."""
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise UsageError(f"--threshold must be above 0 and below 1 (0: all cloud, 1: none), got {self.threshold}")
        if self.dilate < 0:
            raise UsageError(f"--dilate must be zero or positive, got {self.dilate}")
        if not self.shadow_boost >= 0.0:
            raise UsageError(f"--shadow-boost must be zero or positive, got {self.shadow_boost}")
        if self.shadow_darkness is not None and not 0.0 <= self.shadow_darkness <= 1.0:
            raise UsageError(f"--shadow-darkness must be between 0 and 1, got {self.shadow_darkness}")
        if self.sun_azimuth is not None and degrees_within(self.sun_azimuth, 0.0, 360.0) is None:
            raise UsageError(f"--sun-azimuth must be within 0..360 degrees, got {self.sun_azimuth}")
        if self.sun_elevation is not None and degrees_within(self.sun_elevation, 0.0, 90.0, open_low=True) is None:
            raise UsageError(f"--sun-elevation must be above 0 and at most 90 degrees, got {self.sun_elevation}")
        if self.binary or not self.shadow_matching:
            unused = [name for name, given in (
                ("--shadow-boost", self.shadow_boost != ShadowOptions.boost), ("--shadow-darkness", bool(self.shadow_darkness)),
                ("--sun-azimuth", self.sun_azimuth is not None), ("--sun-elevation", self.sun_elevation is not None),
                ("--sun-from-metadata", self.sun_from_metadata)) if given]
            if unused:
                why = "--binary (no shadow class)" if self.binary else "--no-shadow-matching"
                warnings.warn(f"{', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with {why}",
                              stacklevel=2)
        from cloudmask.model.predictor import resolve_device

        resolve_device(self.device)  # a GPU torch cannot see fails here, before any scene
        if self.tiles.threads is not None and self.tiles.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.tiles.threads}")
        if self.resolution is not None and not (math.isfinite(self.resolution) and self.resolution > 0):
            raise UsageError(f"--resolution must be a positive number of metres, got {self.resolution}")
        if isinstance(self.sensor, str) and self.sensor:
            from cloudmask.registry import load_registry

            load_registry().get_sensor(self.sensor)  # UnknownSensorError with suggestions
        elif self.sensor is not None and not isinstance(self.sensor, (str, Sensor)):
            raise UsageError(f"sensor must be a name or a cloudmask.registry.Sensor, got {type(self.sensor).__name__}")


@dataclass
class MaskResult:
    """What happened to one scene (also the JSON the CLI prints)."""

    source: str
    output: str | None
    status: str  # "masked", "skipped", "busy" (another run is writing it) or "failed"
    message: str = ""
    seconds: float = 0.0
    megapixels: float = 0.0
    sensor: str | None = None
    cloud_cover: float | None = None
    fractions: dict[str, float] | None = None
    probabilities: str | None = None
    item: str | None = None
    exit_code: int = 0
    error: BaseException | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "error"}


@dataclass(frozen=True)
class OutputPaths:
    """The files one scene produces, all in the same folder."""

    mask: Path

    @property
    def stem(self) -> str:
        return self.mask.name[: -len(MASK_SUFFIX)] if self.mask.name.endswith(MASK_SUFFIX) else self.mask.stem

    @property
    def proba(self) -> Path:
        return self.mask.with_name(self.stem + PROBA_SUFFIX)

    @property
    def item(self) -> Path:
        return self.mask.with_name(self.stem + ITEM_SUFFIX)

    @property
    def lock(self) -> Path:
        return self.mask.with_name("." + self.mask.name + ".lock")

    def complete(self, probabilities: bool) -> bool:
        """A finished earlier run: mask and item present, COGs valid (renames happen last-to-mask),
        the item readable JSON (one cut short by hand or a copy is redone, not skipped for good)."""
        if not (self.mask.is_file() and self.item.is_file() and cog.is_valid_cog(self.mask)):
            return False
        try:
            json.loads(self.item.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return not probabilities or cog.is_valid_cog(self.proba)

    def source(self) -> str | None:
        """The scene the finished output was made from (its item's ``cloudmask:source``), if it says."""
        try:
            props = json.loads(self.item.read_text(encoding="utf-8")).get("properties") or {}
        except (OSError, ValueError, AttributeError):
            return None
        src = props.get("cloudmask:source")
        return src if isinstance(src, str) and src else None


# --------------------------------------------------------------------------- locks


def _tidy(paths: OutputPaths) -> None:
    """Remove a killed run's temporaries (and its stale lock) beside a finished output; skipped
    quietly when another run holds the lock or the folder is read-only."""
    temps = [t for dst in (paths.mask, paths.proba, paths.item) for t in cog.stale_temps(dst)]
    if not temps and not paths.lock.exists() and not _locks_set_aside(paths.lock):
        return
    try:
        with OutputLock(paths.lock, paths.mask):
            for t in [t for dst in (paths.mask, paths.proba, paths.item) for t in cog.stale_temps(dst)]:
                cog.remove_quietly(t)
    except (OutputError, OSError):
        pass



# --------------------------------------------------------------------------- inputs → outputs


def _sanitise(name: str) -> str:
    """A safe file name from an untrusted id (STAC ids, URLs)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return clean[:180] or "scene"


def _source_name(source: str) -> str:
    """What says two runs masked the same scene: a file's (or folder's) name, so an archive may
    move; a URL's host and path (not its query: signed URLs change), as URLs share names
    (``…/a/item.json``, ``…/b/item.json``)."""
    if _is_url(source):
        u = urlparse(source)
        return f"{u.netloc}{u.path}"
    return Path(source).name


def _scene_stem(source: str) -> str:
    if _is_url(source):
        path = PurePosixPath(urlparse(source).path)
        name = path.name or urlparse(source).netloc
        if name.lower() == "item.json" and path.parent.name:  # `cloudmask fetch`'s <id>/item.json, served
            name = path.parent.name  # outputs of a URL are not mirrored: "item" would name them all
    else:
        name = Path(source).name
        if name.lower() == "item.json":  # `cloudmask fetch`'s <id>/item.json: "item" named them all
            name = Path(source).resolve().parent.name or name
    for suffix in (".json", *_SCENE_FILES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower().endswith(".safe"):  # a SAFE folder, or what remains of a .SAFE.zip
        name = name[: -len(".safe")]
    if _is_url(source):
        return _sanitise(name)
    # a local file's own name, as the docs promise (NAME_cloudmask.tif): made ASCII, "a b.tif",
    # "a#b.tif" and "a_b.tif" collided and "scène" lost its letter; only control characters go
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return _sanitise(name)
    if len(name.encode("utf-8")) > _MAX_STEM_BYTES:  # "<stem>_cloudprob.tif" and ".<…>.lock" must fit in 255 bytes
        cut = name.encode("utf-8")[: _MAX_STEM_BYTES - 9].decode("utf-8", "ignore")
        name = f"{cut}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"  # long names stay apart
    return name


#: Longest output stem (bytes): file systems allow 255 per name; the temporaries add ~60.
_MAX_STEM_BYTES = 180


_BAND_STEM = re.compile(r"(^|[_.\-])((SR_|ST_)?B\d{1,2}A?)(_\d+m)?$", re.I)


def _band_names() -> set[str]:
    from cloudmask.registry import load_registry

    names: set[str] = set()
    try:
        for sensor in load_registry().values():
            for band in sensor.bands:
                names.update(n.lower() for n in band.names)
    except Exception:  # noqa: BLE001 - a broken user YAML must not break discovery
        pass
    return names


def is_band_folder(path: Path, band_names: set[str] | None = None) -> bool:
    """A folder holding one scene as per-band files (``*_B04.tif``, ``red.tif``…)."""
    names = band_names if band_names is not None else _band_names()
    hits = 0
    for f in path.iterdir():
        if f.is_file() and f.suffix.lower() in _RASTERS and not f.name.startswith(".") and not f.name.endswith(_OUR_SUFFIXES):
            if _BAND_STEM.search(f.stem) or f.stem.lower() in names or stem_last_part(f.stem).lower() in names:
                hits += 1
    return hits >= 2


def _is_stac_item_file(path: Path) -> bool:
    if path.suffix.lower() != ".json" or path.name.endswith(ITEM_SUFFIX) or path.name.startswith("."):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"Feature"' in head and '"assets"' in head or ('"Feature"' in head and path.stat().st_size > 4096)


def _walk(root: Path, band_names: set[str]) -> list[str]:
    """Scenes under a directory tree: band folders and Sentinel-2 SAFEs (not descended), multi-band
    rasters, STAC items."""
    found: list[str] = []
    if is_safe(root) or is_band_folder(root, band_names):
        return [str(root)]
    # linked folders are followed (archives spread over disks), each real folder once: no loops
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        d = Path(dirpath)
        dirnames.sort()
        keep = []
        for name in dirnames:
            sub = d / name
            if name.startswith("."):
                continue
            real = os.path.realpath(sub)
            if real in seen:
                continue
            seen.add(real)
            if is_safe(sub) or is_band_folder(sub, band_names):
                found.append(str(sub))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = d / name
            if name.startswith(".") or name.endswith(_OUR_SUFFIXES):
                continue
            if _is_truth_labels(f):
                continue
            if f.suffix.lower() in _RASTERS or _is_stac_item_file(f) or _is_scene_archive(f):
                found.append(str(f))
    return found


#: A label raster's name: the scene's stem, then a word that names a reference mask, the same words
#: ``cloudmask evaluate`` pairs by (``x_labels.tif`` as ``cloudmask simulate`` writes it,
#: ``x.label.tif`` as ``cloudmask sample`` and many datasets do).
_TRUTH_NAME = re.compile(rf"^(?P<stem>.+)[._\-]({'|'.join(LABEL_WORDS)})(?P<ext>\.tiff?)$", re.I)


def _is_truth_labels(path: Path) -> bool:
    """A label raster beside its scene (``x.tif``, ``x_image.tif``, ``x.image.tif`` or the item
    ``x.json``): truth for ``cloudmask evaluate``, not a scene to mask, in a tree walk or a glob."""
    m = _TRUTH_NAME.match(path.name)
    if m is None:
        return False
    stem, ext = m["stem"], m["ext"]
    return any((path.parent / f"{stem}{tail}").is_file()
               for tail in (ext, ".tif", ".tiff", "_image.tif", ".image.tif", "-image.tif", ".json"))


def _item_local_files(path: Path) -> set[str]:
    """The resolved local files a STAC item's assets point at (URLs left out)."""
    try:
        item = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    assets = item.get("assets") if isinstance(item, dict) else None
    files = set()
    for asset in (assets.values() if isinstance(assets, dict) else ()):
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or (_is_url(href) and not href.startswith("file://")):
            continue
        target = Path(unquote(href.removeprefix("file://")))  # hrefs are URLs: "%20" is a space
        files.add(str((target if target.is_absolute() else path.parent / target).resolve()))
    return files


def _items_over_their_files(found: list[str]) -> list[str]:
    """``found`` without the rasters that a STAC item among them reads. Why: the item and its image
    are one scene; masking both wrote two masks of it under two names. The item is kept: it carries
    the sensor, product and sun that the bare image may not."""
    taken: set[str] = set()
    for source in found:
        if source.lower().endswith(".json"):
            taken |= _item_local_files(Path(source))
    if not taken:
        return found
    return [s for s in found if s.lower().endswith(".json") or str(Path(s).resolve()) not in taken]


def _is_scene_archive(path: Path) -> bool:
    """A zip or tar holding rasters (a tree walk passes over other archives, e.g. zipped shapefiles)."""
    if path.suffix.lower() not in ARCHIVE_SUFFIXES:
        return False
    try:
        return bool(archive_rasters(path))
    except CloudmaskError:  # unreadable: reported when masked, like any broken scene
        return True


def _static_prefix(pattern: str) -> Path:
    parts = Path(pattern).parts
    static = []
    for part in parts:
        if glob.has_magic(part):
            break
        static.append(part)
    return Path(*static) if static else Path(".")


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but a ``**`` follows each linked folder once: glob's own
    walk followed a symlink loop round and round (masks written 40 folders deep, or no end with two).
    As glob: components match one name each (fnmatch), hidden names only for a pattern starting with
    ".", ``**`` skips hidden folders, and a trailing "/" keeps folders only."""
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    base = _static_prefix(pattern)
    parts = Path(pattern).parts[len(base.parts) if str(base) != "." else 0:]
    found: set[str] = set()
    walked: set[tuple[str, int]] = set()  # (real folder, pattern position) a ** has descended from

    def entries(folder: str) -> list[os.DirEntry[str]]:
        try:
            return sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return []

    def is_dir(entry: os.DirEntry[str]) -> bool:
        try:
            return entry.is_dir()  # follows links
        except OSError:
            return False

    def visit(folder: str, i: int) -> None:
        if i == len(parts):
            found.add(folder)
            return
        pat = parts[i]
        if pat == "**":
            visit(folder, i + 1)  # no folder at all
            key = (os.path.realpath(folder), i)
            if key in walked:  # reached again (a link back up): its names are already in
                return
            walked.add(key)
            for e in entries(folder):
                if e.name.startswith("."):
                    continue
                path = os.path.join(folder, e.name)
                if is_dir(e):
                    visit(path, i)
                elif i + 1 == len(parts):
                    found.add(path)
            return
        for e in entries(folder):
            if e.name.startswith(".") and not pat.startswith("."):
                continue
            if fnmatch.fnmatchcase(e.name, pat) and (i + 1 == len(parts) or is_dir(e)):
                visit(os.path.join(folder, e.name), i + 1)

    visit(str(base), 0)
    out = (p[2:] if str(base) == "." and p.startswith("./") else p for p in found)
    if pattern.endswith(("/", os.sep)):
        return sorted(p for p in out if os.path.isdir(p))
    return sorted(out)


def expand_inputs(inputs: Iterable[str]) -> list[tuple[str, Path | None]]:
    """Inputs → (scene, root) pairs. ``root`` is the folder the output tree mirrors (None for URLs).

    Accepts files, band folders, directory trees, globs (``**`` recursive), URLs and ``@list.txt``
    files (one input per line, ``#`` comments). Loose files share their common parent as root.
    """
    band_names = _band_names()
    pairs: list[tuple[str, Path | None]] = []
    loose: list[int] = []
    folders: dict[Path, bool] = {}  # folder → is it one scene (band folder, SAFE)
    queue = list(inputs)
    while queue:
        item = queue.pop(0).strip()
        if not item:
            continue
        if item.startswith("@"):
            if not item[1:].strip():
                raise UsageError("@ needs the list file's name after it, e.g. @scenes.txt")
            queue = read_list_file(item[1:]) + queue
            continue
        if _is_url(item):
            pairs.append((item, None))
            continue
        if glob.has_magic(item) and not os.path.lexists(item):  # an existing "B[1].tif" is that file
            matches = _glob(item)
            if not matches:
                raise UsageError(f"{item}: no file matches this pattern")
            base = _static_prefix(item)
            for m in matches:
                p = Path(m)
                if p.name.startswith(".") or p.name.endswith(_OUR_SUFFIXES) or _is_truth_labels(p):
                    continue
                if p.is_dir():
                    pairs.extend((s, base) for s in _walk(p, band_names))
                elif p.suffix.lower() in _SCENE_FILES or p.suffix.lower() == ".json":
                    # a band file of a band folder or SAFE ('**/*.tif' reaches them) means its scene
                    pairs.append((str(_scene_holding(p, base, band_names, folders)), base))
            continue
        p = Path(item)
        if p.is_dir():
            if is_safe(p) or is_band_folder(p, band_names):
                pairs.append((str(p), None))
                loose.append(len(pairs) - 1)
            else:
                scenes = _walk(p, band_names)
                if not scenes:
                    raise UsageError(f"{p}: no scenes found in this folder")
                pairs.extend((s, p) for s in scenes)
        else:
            pairs.append((item, None))  # missing files are reported per scene
            loose.append(len(pairs) - 1)
    if loose:
        parents = [str(Path(pairs[i][0]).resolve().parent) for i in loose]
        try:
            common = Path(os.path.commonpath(parents))
        except ValueError:
            common = None
        for i in loose:
            pairs[i] = (pairs[i][0], common)
    # the same scene named twice (a repeated argument, overlapping globs): masked once
    unique: dict[str, tuple[str, Path | None]] = {}
    for source, root in pairs:
        unique.setdefault(source if _is_url(source) else str(Path(source).resolve()), (source, root))
    # an item and the raster it reads, both named (e.g. `sims/*`): one scene, masked through the item
    kept = set(_items_over_their_files([s for s, _ in unique.values() if not _is_url(s)]))
    return [(s, r) for s, r in unique.values() if _is_url(s) or s in kept]


def _scene_holding(path: Path, base: Path | None, band_names: set[str], folders: dict[Path, bool]) -> Path:
    """``path``, or the SAFE or band folder (below ``base``) that it is one band of; a SAFE wins
    over the band folders inside it (its R10m/R20m/R60m folders are one scene)."""
    stop = base.resolve() if base is not None else None
    band_folder = None
    for folder in path.parents:
        if stop is not None and not folder.resolve().is_relative_to(stop):
            break
        if is_safe(folder):
            return folder
        if band_folder is None:
            if folder not in folders:
                folders[folder] = is_band_folder(folder, band_names)
            if folders[folder]:
                band_folder = folder
    return band_folder or path


def read_list_file(path: str) -> list[str]:
    """Lines of a text file of inputs (blank lines and ``#`` comments ignored; a BOM, which Windows
    editors write, too)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the list of inputs ({exc.strerror or exc})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _below(source: str, root: Path) -> bool:
    """Whether ``source`` lies in ``root``'s tree, as given or with links resolved (see :func:`output_for`)."""
    src = Path(source)
    return (Path(os.path.abspath(src)).is_relative_to(os.path.abspath(root))
            or src.resolve().is_relative_to(Path(root).resolve()))


def output_for(source: str, root: Path | None, out_dir: Path | None) -> Path:
    """Where the mask of ``source`` goes: ``out_dir`` mirroring ``root``, else beside the input."""
    stem = _scene_stem(source)
    if _is_url(source):
        return (out_dir or Path.cwd()) / (stem + MASK_SUFFIX)
    src = Path(source)
    if out_dir is None:  # beside the path named: a link's target may lie on another (read-only) disk
        return Path(os.path.abspath(src)).parent / (stem + MASK_SUFFIX)
    rel_parent = Path(".")
    if root is not None:
        # the tree as given first: a scene that is a link into another disk keeps its place (its
        # resolved path lies outside the root); resolved second, for roots made of resolved paths
        for parent, top in ((Path(os.path.abspath(src)).parent, Path(os.path.abspath(root))),
                            (src.resolve().parent, Path(root).resolve())):
            try:
                rel_parent = parent.relative_to(top)
                break
            except ValueError:
                continue
    return Path(out_dir) / rel_parent / (stem + MASK_SUFFIX)


# --------------------------------------------------------------------------- one scene


def load_predictor(path: str | os.PathLike[str] | None = None) -> Any:
    """The bundled model (or a weights file). Separate so tests and callers can swap it."""
    from cloudmask.model import load_model

    return load_model(path)


def _model_for(options: MaskOptions) -> Any:
    """``options.weights`` (default: the bundled model) on ``options.device``: local inference runs
    there; Dask cluster workers get a CPU copy."""
    predictor = load_predictor(options.weights)
    if hasattr(predictor, "to"):
        predictor.to(options.device)
    return predictor


def _bounds_wgs84(scene: Scene) -> list[float] | None:
    if scene.crs is None:
        return None
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    h, w = scene.shape
    west, south, east, north = array_bounds(h, w, scene.transform)  # rasterio's order
    try:
        w, s, e, n = (float(v) for v in transform_bounds(scene.crs, "EPSG:4326", west, south, east, north))
    except Exception:  # noqa: BLE001 - odd CRS: the item simply carries no footprint
        return None
    if e - w >= 360:
        return [-180.0, s, 180.0, n]
    # longitudes beyond ±180 (a grid past the antimeridian, 0-360 longitudes) are not GeoJSON: wrapped,
    # a box across the antimeridian has west > east, as STAC writes it
    def wrap(lon: float) -> float:
        return lon if -180 <= lon <= 180 else (lon + 180) % 360 - 180

    return [wrap(w), s, wrap(e), n]


def stac_item_for_mask(
    scene: Scene, paths: OutputPaths, counts: np.ndarray, predictor: Any, options: MaskOptions, seconds: float,
    matcher: ShadowMatcher | None = None,
) -> dict[str, Any]:
    """A small STAC item describing the mask: source, sensor, model, class fractions, and what
    cloud–shadow matching learnt (its cloud → shadow shift points away from the sun)."""
    valid = int(counts[:255].sum())
    total = int(counts.sum())
    names = {0: "clear", 1: "cloud"} if options.binary else CLASSES
    shadows = matcher.opt if matcher is not None else options.shadow_options()  # as applied to this scene
    # no valid pixel: no class fraction and no cloud cover (not 0 %: a filter on cloud cover
    # must not take an empty scene for a clear one)
    fractions: dict[str, float | None] = {name: (float(counts[v]) / valid if valid else None) for v, name in names.items()}
    fractions["nodata"] = float(counts[NODATA]) / total if total else 1.0
    cloudy = (float(counts[1] + counts[2]) / valid) if valid else None  # binary: 1 = cloud, no 2
    src_item = scene.item or {}
    src_id = src_item.get("id") or _scene_stem(scene.source)
    bbox = src_item.get("bbox") or _bounds_wgs84(scene)
    geometry = src_item.get("geometry")
    if geometry is None and bbox:
        w, s, e, n = bbox[:4]
        if w <= e:
            geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        else:  # across the antimeridian: one box on each side of it
            geometry = {"type": "MultiPolygon", "coordinates": [
                [[[w, s], [180.0, s], [180.0, n], [w, n], [w, s]]], [[[-180.0, s], [e, s], [e, n], [-180.0, n], [-180.0, s]]]]}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    colormap = cog.BINARY_COLORMAP if options.binary else cog.MASK_COLORMAP
    classes = [
        {"value": v, "name": n, "color_hint": "{:02X}{:02X}{:02X}".format(*colormap[v][:3])} for v, n in names.items()
    ] + [{"value": NODATA, "name": "nodata", "nodata": True}]
    h, w = scene.shape
    props: dict[str, Any] = {
        "datetime": (src_item.get("properties") or {}).get("datetime") or now,
        "created": now,
        "platform": (src_item.get("properties") or {}).get("platform"),
        **({"eo:cloud_cover": round(100.0 * cloudy, 3)} if cloudy is not None else {}),
        "cloudmask:source": scene.source,
        "cloudmask:sensor": scene.sensor.id,
        "cloudmask:bands": [b.name for b in scene.bands],
        # what the model was told about each band (min, centre, max, FWHM in µm, thermal flag) and how
        # DNs were scaled: a user's sensor YAML edited later cannot make an old mask ambiguous
        "cloudmask:band_descriptors": [[round(float(v), 6) for v in row] for row in scene.descriptors],
        "cloudmask:product": scene.product,
        "cloudmask:model_version": getattr(predictor, "version", "unknown"),
        "cloudmask:model_sha256": getattr(predictor, "sha256", None),
        "cloudmask:class_fractions": {k: (round(v, 6) if v is not None else None) for k, v in fractions.items()},
        "cloudmask:options": {
            "threshold": options.threshold, "dilate": options.dilate, "binary": options.binary,
            "shadow_matching": shadows is not None,
            "shadow_boost": shadows.boost if shadows is not None else None,
            "shadow_darkness": shadows.darkness if shadows is not None else None,
            "tile_size": options.tiles.tile_size, "overlap": options.tiles.overlap,
        },
        "cloudmask:seconds": round(seconds, 3),
        **({"cloudmask:shadow_matching": {
            "applied": matcher.active, "excess": round(matcher.peak, 4),
            "shift_px": list(matcher.shift) if matcher.active and matcher.shift else None,
            "sun_azimuth": matcher.opt.prior.sun_azimuth if matcher.opt.prior else None,
            "sun_elevation": matcher.opt.prior.sun_elevation if matcher.opt.prior else None,
        }} if matcher is not None else {}),
        "proj:shape": [h, w],
        "proj:transform": list(scene.transform)[:6],
    }
    if scene.crs is not None:
        epsg = scene.crs.to_epsg()
        if epsg:
            props["proj:code"] = f"EPSG:{epsg}"
        else:
            props["proj:wkt2"] = scene.crs.to_wkt(version="WKT2_2019")  # (GDAL's default is WKT1)
    props = {k: v for k, v in props.items() if v is not None}
    assets: dict[str, Any] = {
        "mask": {
            "href": quote(paths.mask.name),  # a relative URL: "#", "?" and spaces encoded
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": "Cloud mask" + (" (binary)" if options.binary else ""),
            "roles": ["data", "cloud"],
            "classification:classes": classes,
        }
    }
    if options.probabilities:
        assets["probabilities"] = {
            "href": quote(paths.proba.name),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": "Class probabilities in percent (bands: clear, thick, thin, shadow)",
            "roles": ["data"],
        }
    links = []
    if _is_url(scene.source):
        links.append({"rel": "derived_from", "href": scene.source, "type": "application/json"})
    elif scene.item is not None:  # a local item (or a fetched folder's item.json), absolute: the
        # path as typed was relative to the shell's folder, not to this item
        src = Path(scene.source).resolve()
        if src.is_dir() and (src / "item.json").is_file():
            src = src / "item.json"
        links.append({"rel": "derived_from", "href": src.as_uri(),
                      **({"type": "application/json"} if src.suffix.lower() == ".json" else {})})
    else:
        links.append({"rel": "derived_from", "href": Path(scene.source).resolve().as_uri()})
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        ],
        "id": _sanitise(f"{src_id}_cloudmask"),
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
        "assets": assets,
        "links": links,
    } if bbox else {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [],
        "id": _sanitise(f"{src_id}_cloudmask"), "geometry": None, "properties": props, "assets": assets, "links": links,
    }


def _finished(paths: OutputPaths, source: str, options: MaskOptions) -> bool:
    """Whether a complete output of this scene exists (and ``overwrite`` is off). A complete output
    of another scene under this name (``x.tif``, then ``x.tiff``; a list that changed) is an error:
    skipping would report this scene done with someone else's mask."""
    if options.overwrite or not paths.complete(options.probabilities):
        return False
    made_from = paths.source()
    if made_from is not None and _source_name(made_from) != _source_name(source):
        raise UsageError(f"{source}: its output {paths.mask} is the mask of another scene ({made_from}); "
                         "--overwrite replaces it")
    return True


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns those made, deepest first."""
    made = []
    d = folder
    while not os.path.lexists(d) and d.parent != d:
        made.append(d)
        d = d.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cog.output_error(exc, folder) from None
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove what :func:`_make_folders` made, deepest first, while empty (another run may have
    put something in one since: that one and its parents stay)."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def mask_scene(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    predictor: Any = None,
    options: MaskOptions | None = None,
    *,
    client: Any = None,
    on_event: Callback | None = None,
) -> MaskResult:
    """Mask one scene into ``output`` (a ``*_cloudmask.tif`` path). Raises CloudmaskError on failure.

    Returns a "skipped" result when a complete output exists and ``overwrite`` is off. Without a
    ``predictor`` the model is ``options.weights`` (default: the bundled one) on ``options.device``;
    without a ``client``, ``options.scheduler`` (if set) is connected to for this scene.
    """
    if isinstance(predictor, MaskOptions) and options is None:  # mask_scene(src, dst, MaskOptions(...))
        predictor, options = None, predictor
    options = options or MaskOptions()
    options.check()  # the values mask_many and the CLI refuse, refused before any file is touched
    own = connect(options.scheduler) if options.scheduler and client is None else None
    try:
        return _mask_scene(source, output, predictor, options, client=client or own, on_event=on_event)
    finally:
        if own is not None:
            own.close()


def _mask_scene(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    predictor: Any,
    options: MaskOptions,
    *,
    client: Any = None,
    on_event: Callback | None = None,
) -> MaskResult:
    """mask_scene with its options checked (once per run: mask_many checks them before the scenes)."""
    t0 = time.perf_counter()
    source = str(source)
    paths = OutputPaths(Path(output))
    skipped = MaskResult(source, str(paths.mask), "skipped", "output exists (use --overwrite to redo)", item=str(paths.item))
    if _finished(paths, source, options):
        _tidy(paths)  # a killed --overwrite run may have left temporaries beside a finished output
        return skipped
    # the scene is opened (lazily) before its output folder is made: one that cannot be read (a
    # missing path, a corrupt file) leaves no empty folder in the mirror of the tree
    scene = read_scene(
        source, sensor=options.sensor, bands=list(options.bands) if options.bands else None,
        product=options.product, resolution=options.resolution, chunks=READ_CHUNK,
    )
    h, w = scene.shape
    if h == 0 or w == 0:
        raise SceneError(f"{source}: scene has no pixels")
    made = _make_folders(paths.mask.parent)
    try:
        if not paths.mask.parent.is_dir():  # a concurrent run's failed scene removed it, empty, just now
            made = _make_folders(paths.mask.parent)
        if not os.access(paths.mask.parent, os.W_OK):
            raise OutputError(f"{paths.mask.parent}: output folder is not writable")
        # rasterio.Env: GDAL's errors in this thread go to rasterio's logger (they also become the
        # exceptions cloudmask reports in one line), not to stderr as "ERROR 1: …" beside that line
        with OutputLock(paths.lock, paths.mask), rasterio.Env():
            for dst in (paths.mask, paths.proba, paths.item):
                for stale in cog.stale_temps(dst):
                    cog.remove_quietly(stale)
            if _finished(paths, source, options):
                return skipped  # another run finished it between our first check and our lock
            if predictor is None:
                predictor = _model_for(options)
            if on_event:
                on_event("scene-start", {"source": source, "shape": [h, w], "sensor": scene.sensor.id})
            graph = weighted_graph(scene.data, scene.descriptors, predictor, options.tiles, raw=scene.raw)
            grid = dict(width=w, height=h, crs=scene.crs, transform=scene.transform)
            sinks: list[cog.RasterSink] = []
            parts: list[Path] = []
            item_tmp = None
            try:  # from the first temporary on: an error or Ctrl-C anywhere leaves none behind
                mask_sink = cog.RasterSink(
                    paths.mask, count=1, dtype="uint8", nodata=NODATA, count_values=True, tag="mask",
                    descriptions=[cog.BINARY_MASK_DESCRIPTION if options.binary else cog.MASK_DESCRIPTION],
                    colormap=cog.BINARY_COLORMAP if options.binary else cog.MASK_COLORMAP,
                    tags={"CLOUDMASK_MODEL_VERSION": str(getattr(predictor, "version", "unknown")),
                          "CLOUDMASK_SENSOR": scene.sensor.id, "CLOUDMASK_SOURCE": source},
                    **grid,
                )
                sinks.append(mask_sink)
                shadows = options.shadow_options(scene)
                scratch = None
                if shadows is not None:  # pass-1 classes, re-read once the scene's shadow geometry is known
                    scratch = cog.RasterSink(paths.mask, count=1, dtype="uint8", nodata=NODATA, tag="pass1", readable=True,
                                             **grid)
                    sinks.append(scratch)
                write_proba = None
                if options.probabilities:
                    prob_sink = cog.RasterSink(
                        paths.proba, count=4, dtype="uint8", nodata=NODATA, tag="prob",
                        descriptions=[f"P({name}) percent" for name in CLASSES.values()], scales=[0.01] * 4, **grid,
                    )
                    sinks.append(prob_sink)

                    def write_proba(y0: int, rows: np.ndarray) -> None:
                        prob_sink[:, y0 : y0 + rows.shape[1], 0:w] = rows

                def write_mask(y0: int, rows: np.ndarray) -> None:
                    mask_sink[y0 : y0 + rows.shape[0], 0:w] = rows

                def on_block(done: int, total: int) -> None:
                    if on_event:
                        on_event("blocks", {"done": done, "total": total})

                remote = scene.raw is not None and scene.raw.remote
                runner = (DistributedRunner(client, retries=REMOTE_RETRIES if remote else 0) if client is not None
                          else LocalRunner(options.tiles.threads))
                try:
                    matcher = stream_mask(
                        graph, runner, write_mask, write_proba, threshold=options.threshold,
                        dilate=options.dilate, binary=options.binary, on_block=on_block,
                        shadows=shadows, scratch=scratch,
                        nir_band=nir_band(scene.descriptors) if shadows is not None and shadows.darkness else None,
                    )
                except ClusterError as exc:
                    raise type(exc)(f"{source}: {exc}") from None
                except CloudmaskError:
                    raise
                except (RasterioError, OSError) as exc:
                    # The sinks raise OutputError for their own writes, so what lands here was a read,
                    # unless the system ran out of space on the way (e.g. GDAL's temporary files).
                    if cog.is_disk_full(exc, paths.mask):
                        raise cog.output_error(exc, paths.mask) from None
                    text = first_line(exc)
                    if client is not None and ("No such file" in text or "does not exist" in text):
                        # this machine opened it (the scene's size and bands were read here)
                        raise SceneError(f"{source}: a cluster worker cannot open it ({text}); the workers must see "
                                         "every input at the same path (a shared file system, or URLs)") from None
                    raise SceneError(f"{source}: reading failed mid-scene ({text})") from None
                except (RuntimeError, ValueError) as exc:
                    raise ModelError(f"{source}: inference failed ({first_line(exc)})") from None
                for s in sinks:
                    s.close()
                commits: list[tuple[Path, Path]] = []
                if options.probabilities:
                    part = cog.translate(prob_sink.path, paths.proba, "average")
                    parts.append(part)
                    commits.append((part, paths.proba))
                mask_part = cog.translate(mask_sink.path, paths.mask, "nearest" if options.binary else "mode")
                parts.append(mask_part)
                seconds = time.perf_counter() - t0
                item = stac_item_for_mask(scene, paths, mask_sink.counts, predictor, options, seconds, matcher)
                item_tmp = paths.item.with_name(f".{paths.item.name}.cmtmp-{os.getpid()}")
                try:
                    item_tmp.write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")
                except OSError as exc:
                    raise cog.output_error(exc, paths.item) from None
                # The mask goes last: its presence (with the item) marks the scene as done. An old mask
                # (--overwrite) goes first, so a run killed between the renames never leaves the new
                # item beside the old mask looking done.
                # A probability COG left by an earlier run (with --probabilities) would sit beside the
                # new mask describing another run's output: it goes with the old mask.
                stale = [paths.mask] if options.probabilities else [paths.mask, paths.proba]
                for old in stale:
                    try:
                        old.unlink(missing_ok=True)
                    except OSError as exc:
                        raise cog.output_error(exc, old) from None
                cog.commit([*commits, (item_tmp, paths.item), (mask_part, paths.mask)])
                parts.clear()
                item_tmp = None
            finally:
                for s in sinks:
                    s.discard()
                for p in parts:
                    cog.remove_quietly(p)
                cog.remove_quietly(item_tmp)
    except BaseException:  # a failed scene leaves no empty folder in the output tree
        _remove_empty(made)
        raise
    props = item["properties"]
    return MaskResult(
        source, str(paths.mask), "masked", seconds=time.perf_counter() - t0, megapixels=h * w / 1e6,
        sensor=scene.sensor.id, cloud_cover=props.get("eo:cloud_cover"), fractions=props["cloudmask:class_fractions"],
        probabilities=str(paths.proba) if options.probabilities else None, item=str(paths.item),
    )


# --------------------------------------------------------------------------- many scenes


#: Seconds to wait for a Dask scheduler to connect and answer.
SCHEDULER_TIMEOUT = 10.0
#: What a timed-out wait raises (one class from Python 3.11, three before).
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)


def _scheduler_identity(address: str, timeout: float) -> dict[str, Any]:
    """Ask ``address`` who it is, within ``timeout`` seconds in all.

    Why not just ``Client(address, timeout=...)``: a server that accepts the connection but does not
    speak Dask's protocol (a web server on that port) made the client wait forever in its handshake.
    Run on a thread of its own, so it works under a running event loop too (a notebook)."""
    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    tls = Security().get_connection_args("client")  # dask config's TLS settings, as Client uses them

    async def ask() -> Any:
        comm = await comm_connect(address, timeout=timeout, **tls)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> Any:
        return await asyncio.wait_for(ask(), timeout)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(asyncio.run, bounded()).result()
    return reply if isinstance(reply, dict) else {}


def connect(address: str) -> Any:
    """A dask.distributed client for ``--scheduler``; a clear error when it cannot be reached."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'cloudmask[distributed]'") from None
    if "://" not in address or address.split("://", 1)[0] not in ("tcp", "tls", "inproc", "ucx", "ws", "wss"):
        raise UsageError(f"--scheduler {address!r}: expected an address such as tcp://host:8786")
    try:
        identity = _scheduler_identity(address, SCHEDULER_TIMEOUT)
    except _TIMEOUTS:
        raise UsageError(f"no answer from a Dask scheduler at {address} within {SCHEDULER_TIMEOUT:g} s (is it one?)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address} ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - whatever else a non-Dask server's bytes make the protocol raise
        raise UsageError(f"{address} does not answer as a Dask scheduler ({type(exc).__name__}: {first_line(exc)})") from None
    if identity.get("type") != "Scheduler":
        raise UsageError(f"{address} is not a Dask scheduler (it says it is {identity.get('type') or 'nothing known'})")
    if not identity.get("workers"):
        warnings.warn(f"the Dask scheduler at {address} has no workers yet: scenes wait until one joins", stacklevel=2)
    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address} ({first_line(exc)})") from None


def check_output_folder(out: Path) -> None:
    """Fail now if ``out`` cannot hold outputs: a file, or under an unwritable folder. Checked
    without making it (each scene makes its folder once read), so a run that stops before any
    scene, or whose scenes all fail, leaves no empty folder behind."""
    top = out
    while not os.path.lexists(top) and top.parent != top:  # the nearest existing ancestor
        top = top.parent
    if not top.is_dir():
        raise OutputError(f"{top}: not a folder" + (f" (cannot hold -o {out})" if top != out else ""))
    if not os.access(top, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: output folder is not writable")


def mask_many(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    options: MaskOptions | None = None,
    predictor: Any = None,
    on_event: Callback | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[MaskResult]:
    """Mask every scene the inputs name, mirroring the input tree under ``out_dir``.

    ``root``: the folder whose tree ``out_dir`` mirrors, for every local scene (which must lie
    below it). Without it the mirror starts at each folder or glob given and, for loose files, at
    their common parent: a list that grows by a scene elsewhere would move every output, and a
    cron job's rerun would redo the lot.

    A failing scene is recorded and the run goes on; the caller decides the exit status. The model
    is loaded only when some scene actually needs masking, so a finished archive reruns in seconds.
    """
    if isinstance(inputs, (str, os.PathLike)):  # one input, not a sequence of its characters
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    options = options or MaskOptions()
    options.check()
    if root is not None and out_dir is None:
        raise UsageError("--root needs -o/--output (without it each mask goes beside its scene)")
    if root is not None and not Path(root).is_dir():
        raise UsageError(f"--root {root}: not a folder")
    limit_memory_growth()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_output_folder(out)
    pairs = expand_inputs(inputs)
    if not pairs:  # e.g. a glob that matched only masks
        raise UsageError("no input scenes: what the inputs name is only cloudmask's own outputs or label rasters")
    if root is not None:
        pairs = [(source, None if _is_url(source) else Path(root)) for source, _ in pairs]
    if on_event:
        on_event("run-start", {"scenes": len(pairs), "sources": [source for source, _ in pairs]})
    client = connect(options.scheduler) if options.scheduler else None
    results: list[MaskResult] = []
    seen: dict[Path, str] = {}
    try:
        for source, top in pairs:
            t0 = time.perf_counter()
            outside = root is not None and top is not None and not _below(source, top)
            dst = output_for(source, top, out)
            if not outside and predictor is None and (options.overwrite or not OutputPaths(dst).complete(options.probabilities)):
                predictor = _model_for(options)  # a broken model stops the run
            try:
                if outside:
                    raise UsageError(f"{source}: not below --root {top}")
                if dst.resolve() in seen:
                    raise UsageError(f"{source}: its output {dst} is already produced by {seen[dst.resolve()]}")
                seen[dst.resolve()] = source
                result = _mask_scene(source, dst, predictor, options, client=client, on_event=on_event)
            except SchedulerLostError as exc:  # no later scene can run: this one failed, the run stops
                if on_event:
                    on_event("scene-end", {"result": MaskResult(source, str(dst), "failed", str(exc), exit_code=1,
                                                                seconds=time.perf_counter() - t0, error=exc)})
                raise
            except OutputBusyError as exc:
                held = _lock_age(OutputPaths(dst).lock)
                if held is not None and held > BUSY_LOCK_MAX_S:  # a run dead on another host (or no /proc)
                    stuck = OutputError(f"{exc}; locked for {held / 3600:.1f} h: a crashed run? remove the lock file "
                                        "if no run is masking it")
                    result = MaskResult(source, str(dst), "failed", str(stuck), exit_code=stuck.exit_code,
                                        seconds=time.perf_counter() - t0, error=stuck)
                else:  # overlapping cron runs: the other run is masking it, nothing failed
                    result = MaskResult(source, str(dst), "busy", f"another run is writing it ({exc.owner})",
                                        seconds=time.perf_counter() - t0)
            except CloudmaskError as exc:  # (a message that does not name its scene gets its name, for cron logs)
                said = str(exc) if Path(source).name in str(exc) or source in str(exc) else f"{source}: {exc}"
                result = MaskResult(source, None if outside else str(dst), "failed", said,
                                    seconds=time.perf_counter() - t0, exit_code=exc.exit_code, error=exc)
            except Exception as exc:  # noqa: BLE001 - one scene's bug must not end an archive run
                msg = f"{source}: internal error {type(exc).__name__}: {str(exc).strip()[:200]}"
                result = MaskResult(source, str(dst), "failed", msg, seconds=time.perf_counter() - t0, exit_code=1, error=exc)
            results.append(result)
            if on_event:
                on_event("scene-end", {"result": result})
    finally:
        if client is not None:
            client.close()
    return results


#: A lock held longer than this by a live-looking run is reported as a failure, not "busy": masking one
#: scene takes minutes, so it is most likely a crashed run's on another host (or where /proc is missing).
BUSY_LOCK_MAX_S = 3600.0


def _lock_age(lock: Path) -> float | None:
    try:
        return time.time() - lock.stat().st_mtime
    except OSError:
        return None


def summarise(results: Sequence[MaskResult]) -> dict[str, Any]:
    """Counts and throughput for the run summary (table or JSON)."""
    masked = [r for r in results if r.status == "masked"]
    secs = sum(r.seconds for r in masked)
    mpx = sum(r.megapixels for r in masked)
    return {
        "scenes": len(results),
        "masked": len(masked),
        "skipped": sum(r.status == "skipped" for r in results),
        "busy": sum(r.status == "busy" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "megapixels": round(mpx, 3),
        "seconds": round(sum(r.seconds for r in results), 3),
        "megapixels_per_second": round(mpx / secs, 3) if secs else None,
    }


__all__ = [
    "MaskOptions", "MaskResult", "OutputPaths", "OutputLock", "mask_scene", "mask_many", "expand_inputs",
    "output_for", "read_list_file", "summarise", "load_predictor", "stac_item_for_mask", "is_band_folder",
]
