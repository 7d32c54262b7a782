"""Compare predicted masks with reference masks: reading, value mappings, grid checks, pairing.

The numbers themselves come from :mod:`cloudmask.metrics`; this module gets two rasters onto the
same footing first. Reference datasets encode classes differently (Landsat 8 Biome uses 0/64/128/
192/255, SPARCS 0–6 with water and snow classes), so each input is passed through an
:class:`Encoding` into cloudmask's codes (0 clear, 1 thick, 2 thin, 3 shadow, 255 nodata). Pixels
whose raw value the encoding does not know are an error, not silently "clear": a wrong
``--truth-format`` otherwise produces plausible-looking but meaningless scores.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import reproject as _rio_reproject

from cloudmask import metrics
from cloudmask.errors import AmbiguousSceneError, EvaluateError, SceneError, UsageError, first_line
from cloudmask.metrics import CLEAR, NODATA, SHADOW, THICK, THIN, Labelled

MASK_SUFFIXES = (".tif", ".tiff", ".png", ".jp2", ".img", ".vrt")

_CODE_NAMES = {"clear": CLEAR, "thick": THICK, "cloud": THICK, "thin": THIN, "shadow": SHADOW, "nodata": NODATA}


@dataclass(frozen=True)
class Encoding:
    """How a raster's values map to cloudmask classes, and which classes it labels at all."""

    name: str
    values: dict[int, int]  # raw value -> cloudmask code
    labelled: Labelled = metrics.ALL
    description: str = ""
    # Raw value -> meaning in the source dataset, for the docs table and error messages.
    meanings: dict[int, str] = field(default_factory=dict)


FORMATS: dict[str, Encoding] = {
    "cloudmask": Encoding(
        "cloudmask",
        {0: CLEAR, 1: THICK, 2: THIN, 3: SHADOW, 255: NODATA},
        metrics.ALL,
        "cloudmask's own masks",
        {0: "clear", 1: "thick cloud", 2: "thin cloud", 3: "cloud shadow", 255: "nodata"},
    ),
    "cloudsen12": Encoding(
        "cloudsen12",
        {0: CLEAR, 1: THICK, 2: THIN, 3: SHADOW, 255: NODATA},
        metrics.ALL,
        "CloudSEN12 manual labels",
        {0: "clear", 1: "thick cloud", 2: "thin cloud", 3: "cloud shadow", 255: "nodata (not in the dataset; tolerated)"},
    ),
    "biome": Encoding(
        "biome",
        {0: NODATA, 64: SHADOW, 128: CLEAR, 192: THIN, 255: THICK},
        metrics.ALL,
        "Landsat 8 Biome (USGS L8 CCA) *_fixedmask",
        {0: "fill", 64: "cloud shadow", 128: "clear", 192: "thin cloud", 255: "cloud"},
    ),
    "sparcs": Encoding(
        "sparcs",
        {0: SHADOW, 1: SHADOW, 2: CLEAR, 3: CLEAR, 4: CLEAR, 5: THICK, 6: CLEAR},
        Labelled(thin=False, shadow=True),
        "SPARCS (Landsat 8) *_mask.png class codes",
        {0: "shadow", 1: "shadow over water", 2: "water", 3: "snow/ice", 4: "land", 5: "cloud", 6: "flooded"},
    ),
}


def load_encoding(spec: str | os.PathLike[str] | None) -> Encoding:
    """A named format or a YAML mapping file (``values: {raw: class}``, optional ``classes:``)."""
    spec = os.fspath(spec) if spec else "cloudmask"
    if spec.lower() in FORMATS:
        return FORMATS[spec.lower()]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown mask format {spec!r}; use one of {', '.join(FORMATS)} or a YAML mapping file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:  # e.g. the truth raster itself given as the format
        raise UsageError(f"{path}: not a YAML mapping file (not text); a format is a name "
                         f"({', '.join(FORMATS)}) or a YAML file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read mapping ({first_line(exc)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict) or not doc["values"]:
        raise UsageError(f"{path}: a mapping file needs a 'values:' table of raw value -> clear|thick|thin|shadow|nodata")
    values: dict[int, int] = {}
    for raw, target in doc["values"].items():
        try:
            key = int(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: raw value {raw!r} is not an integer") from None
        if isinstance(target, str) and target.strip().lower() in _CODE_NAMES:
            values[key] = _CODE_NAMES[target.strip().lower()]
        elif isinstance(target, int) and target in (CLEAR, THICK, THIN, SHADOW, NODATA):
            values[key] = target
        else:
            raise UsageError(f"{path}: value {raw} maps to {target!r}; use clear, thick, thin, shadow or nodata")
    classes = doc.get("classes")
    if classes is None:
        mapped = set(values.values())
        labelled = Labelled(thin=THIN in mapped, shadow=SHADOW in mapped)
    else:
        labelled = Labelled.parse(classes if isinstance(classes, (str, list)) else str(classes))
    return Encoding(str(doc.get("name") or path.stem), values, labelled, f"mapping file {path.name}")


# --------------------------------------------------------------------------- reading


@dataclass
class Mask:
    """A class raster in cloudmask codes, with the grid it lives on."""

    data: np.ndarray  # (y, x) uint8
    crs: Any
    transform: Affine
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def _unknown_values_error(unknown: list[Any], encoding: Encoding, where: str) -> EvaluateError:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in unknown[:8])
    more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
    return EvaluateError(
        f"{where or 'mask'} holds value(s) {shown}{more} that the {encoding.name!r} encoding does not map "
        f"(it knows {', '.join(str(k) for k in sorted(encoding.values))}); pick another format or pass a YAML mapping"
    )


def _warn_nodata_is_a_class(value: int, count: int, encoding: Encoding, where: str) -> None:
    """The file's nodata value is a class of its format (e.g. a Biome mask tagged nodata=255, its
    cloud): the file's word wins, as documented, but silently dropping a class would skew scores."""
    code = encoding.values.get(value, NODATA)
    if code != NODATA and count:
        name = {CLEAR: "clear", THICK: "thick cloud", THIN: "thin cloud", SHADOW: "cloud shadow"}.get(code, str(code))
        warnings.warn(f"{where or 'mask'}: its nodata value {value} means {name} in the {encoding.name} format; "
                      f"its {count} pixels are left out as nodata", stacklevel=3)


def apply_encoding(raw: np.ndarray, encoding: Encoding, file_nodata: float | None = None, where: str = "") -> np.ndarray:
    """Raw values → cloudmask codes; the file's own nodata value and NaN become 255."""
    has_nodata = file_nodata is not None and not (isinstance(file_nodata, float) and math.isnan(file_nodata))
    if raw.dtype in (np.uint8, np.uint16):
        # One lookup-table pass: class masks are usually byte rasters of 100+ Mpx.
        size = 256 if raw.dtype == np.uint8 else 65536
        counts = np.bincount(raw.ravel(), minlength=size)
        lut = np.full(size, NODATA, np.uint8)
        for value, code in encoding.values.items():
            if 0 <= value < size:
                lut[value] = code
        nodata_value = int(file_nodata) if has_nodata and float(file_nodata).is_integer() and 0 <= file_nodata < size else None
        if nodata_value is not None:
            _warn_nodata_is_a_class(nodata_value, int(counts[nodata_value]), encoding, where)
            lut[nodata_value] = NODATA
        unknown = [v for v in np.flatnonzero(counts).tolist() if v != nodata_value and v not in encoding.values]
        if unknown:
            raise _unknown_values_error(unknown, encoding, where)
        return lut[raw]
    nodata_mask = np.zeros(raw.shape, bool)
    if np.issubdtype(raw.dtype, np.floating):
        nodata_mask |= ~np.isfinite(raw)
    if has_nodata:
        nodata_mask |= raw == file_nodata
        if float(file_nodata).is_integer():
            _warn_nodata_is_a_class(int(file_nodata), int((raw == file_nodata).sum()), encoding, where)
    present = np.unique(raw[~nodata_mask])
    unknown = [v for v in present.tolist() if not float(v).is_integer() or int(v) not in encoding.values]
    if unknown:
        raise _unknown_values_error(unknown, encoding, where)
    out = np.full(raw.shape, NODATA, np.uint8)
    for value, code in encoding.values.items():
        if code != NODATA:
            out[(raw == value) & ~nodata_mask] = code
    return out


def read_mask(path: str | Path, encoding: Encoding) -> Mask:
    """Band 1 of a class raster, mapped to cloudmask codes."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                raw = ds.read(1)
                crs, transform, nodata = ds.crs, ds.transform, ds.nodata
    except RasterioIOError as exc:
        raise SceneError(f"{path}: cannot read raster ({first_line(exc)})") from None
    return Mask(apply_encoding(raw, encoding, nodata, str(path)), crs, transform, path)


def is_binary_mask(path: str | Path) -> bool:
    """Whether ``path`` is a mask ``cloudmask mask --binary`` wrote (0 clear, 1 cloud, 255 nodata),
    known by its band-1 description. Such a mask cannot say thin or shadow, so it is scored as
    cloud / not cloud. A file that cannot be opened is "no": :func:`read_mask` says what is wrong."""
    from cloudmask.cog import BINARY_MASK_DESCRIPTION

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                description = ds.descriptions[0] if ds.count else None
    except RasterioIOError:
        return False
    return (description or "").strip().lower() == BINARY_MASK_DESCRIPTION


# --------------------------------------------------------------------------- grids


def _num(x: float) -> str:
    return f"{x:.6g}"


def grid_difference(pred: Mask, truth: Mask) -> str | None:
    """``None`` when both masks share a grid, else an exact, human-readable list of the differences."""
    diffs: list[str] = []
    if pred.georeferenced != truth.georeferenced:
        # one without georeferencing (e.g. a SPARCS PNG): compared pixel for pixel, so only the size
        # can differ
        if pred.shape == truth.shape:
            return None
        which = "the prediction" if truth.georeferenced else "the truth"
        diffs.append(f"{which} has no CRS while the other has {(pred.crs or truth.crs).to_string()}")
    elif pred.georeferenced and pred.crs != truth.crs:
        diffs.append(f"CRS {pred.crs.to_string()} vs {truth.crs.to_string()}")
    if pred.shape != truth.shape:
        (ph, pw), (th, tw) = pred.shape, truth.shape
        diffs.append(f"size {pw}×{ph} px vs {tw}×{th} px (width×height)")
    if pred.georeferenced and truth.georeferenced:
        p, t = pred.transform, truth.transform
        if not (math.isclose(p.a, t.a, rel_tol=1e-9) and math.isclose(p.e, t.e, rel_tol=1e-9)):
            diffs.append(f"pixel size {_num(p.a)}×{_num(-p.e)} vs {_num(t.a)}×{_num(-t.e)}")
        if (p.b, p.d) != (t.b, t.d):
            diffs.append(f"rotation terms ({_num(p.b)}, {_num(p.d)}) vs ({_num(t.b)}, {_num(t.d)})")
        tol = 1e-6 * max(abs(t.a), abs(t.e), 1e-12)
        if abs(p.c - t.c) > tol or abs(p.f - t.f) > tol:
            dx, dy = p.c - t.c, p.f - t.f
            diffs.append(
                f"origin ({_num(p.c)}, {_num(p.f)}) vs ({_num(t.c)}, {_num(t.f)}), "
                f"shifted by ({dx + 0.0:+.6g}, {dy + 0.0:+.6g}) = ({dx / t.a + 0.0:+.3g}, {dy / t.e + 0.0:+.3g}) "
                "truth pixels (x, y)"
            )
    if not diffs:
        return None
    return f"{pred.path.name} and {truth.path.name} are on different grids: " + "; ".join(diffs)


def align(pred: Mask, truth: Mask) -> Mask:
    """Resample the prediction onto the truth grid (mode when shrinking, nearest otherwise)."""
    if not (pred.georeferenced and truth.georeferenced):
        raise EvaluateError(
            f"cannot reproject {pred.path.name} onto {truth.path.name}: both need a CRS and geotransform "
            "(un-georeferenced masks must already have the same size)"
        )
    if not _overlap(pred, truth):
        raise EvaluateError(f"{pred.path.name} does not overlap {truth.path.name} (compared in {truth.crs}): nothing to score")
    finer = abs(pred.transform.a) < abs(truth.transform.a) * 0.999
    out = np.full(truth.shape, NODATA, np.uint8)
    _rio_reproject(
        source=pred.data,
        destination=out,
        src_transform=pred.transform,
        src_crs=pred.crs,
        dst_transform=truth.transform,
        dst_crs=truth.crs,
        src_nodata=NODATA,
        dst_nodata=NODATA,
        resampling=Resampling.mode if finer else Resampling.nearest,
    )
    return Mask(out, truth.crs, truth.transform, pred.path)


def _overlap(pred: Mask, truth: Mask) -> bool:
    """Whether the two grids' footprints meet (the prediction's bounds taken into the truth's CRS)."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    def bounds(m: Mask) -> tuple[float, float, float, float]:
        w, s, e, n = array_bounds(m.shape[0], m.shape[1], m.transform)
        return min(w, e), min(s, n), max(w, e), max(s, n)

    try:
        w, s, e, n = transform_bounds(pred.crs, truth.crs, *bounds(pred), densify_pts=21)
    except Exception:  # noqa: BLE001 - a transform GDAL cannot do: let the reprojection itself say so
        return True
    tw, ts, te, tn = bounds(truth)
    return w < te and tw < e and s < tn and ts < n


# --------------------------------------------------------------------------- pairing

_TAIL = re.compile(
    r"[._\-](label|labels|mask|masks|truth|gt|reference|ref|pred|prediction|predictions|cloudmask|classes|"
    r"fixedmask|cloud|clouds|image|img|csmask|s2cloudless|ukis)$",
    re.I,
)


def scene_key(path: str | Path) -> str:
    """The part of a file name that identifies a scene: ``patch00.label.tif`` → ``patch00``.
    Unicode-normalised (NFC): macOS writes "ü" as "u" + a combining accent, Linux usually as one
    character, and a prediction made on one must pair with a truth copied from the other."""
    name = unicodedata.normalize("NFC", Path(path).name)
    for suffix in MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    while True:
        stripped = _TAIL.sub("", name)
        if stripped == name or not stripped:
            break
        name = stripped
    return name.lower()


def list_masks(folder: Path) -> list[Path]:
    """Class rasters of a folder; ``cloudmask mask --probabilities``'s ``*_cloudprob.tif`` beside the
    masks are probabilities, not masks (they were listed as predictions without truth)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
                  and not p.name.startswith(".") and not p.stem.lower().endswith("_cloudprob"))


_IMAGE_TAIL = re.compile(r"[._\-](image|img)$", re.I)
#: words that name a reference mask (not a prediction: ``_cloudmask``, ``_mask``, ``_pred`` may be either)
LABEL_WORDS = ("label", "labels", "truth", "gt", "reference", "ref")
_LABEL_TAIL = re.compile(rf"[._\-]({'|'.join(LABEL_WORDS)})$", re.I)


def _name_kind(path: Path) -> str:
    """"image" for ``x.image.tif``, "label" for a reference-mask word (``x.label.tif``, ``x_gt.tif``),
    "mask" for another mask word (``x_cloudmask.tif``, ``x_mask.tif``), "plain" for ``x.tif``. Only the token right before the extension counts:
    ``x_image_cloudmask.tif`` is the mask *of* image ``x_image`` (what ``cloudmask mask`` writes)."""
    name = path.name
    for suffix in MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if _IMAGE_TAIL.search(name):
        return "image"
    if _LABEL_TAIL.search(name):
        return "label"
    return "mask" if _TAIL.search(name) else "plain"


def _names(paths: Sequence[Path]) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _index(folder: Path, images: bool = False) -> dict[str, Path]:
    """scene key → file. Where images and masks share a folder (``x.image.tif`` next to ``x.label.tif``,
    or the scene ``x.tif`` next to ``x.label.tif`` as ``cloudmask sample`` writes them) the mask wins:
    a name with a mask word, else a plain one (the image with ``images=True``: a name with an image
    word, else a plain one); two masks for one scene are an error, not a guess."""
    groups: dict[str, list[Path]] = {}
    for p in list_masks(folder):
        groups.setdefault(scene_key(p), []).append(p)
    out: dict[str, Path] = {}
    for key, paths in groups.items():
        if len(paths) > 1:
            kinds = {p: _name_kind(p) for p in paths}
            wanted = [p for p in paths if (kinds[p] == "image") == images]
            # the scene itself (a plain name) beside its reference mask (a label word): e.g.
            # `cloudmask sample`'s x.tif and x.label.tif. Not beside a prediction (x_cloudmask.tif
            # in a truth folder is a mistake to report, not a truth to take)
            pick = "plain" if images else "label"
            if len(wanted) != 1 and sorted(kinds.values()) == sorted(["label", "plain"]):
                wanted = [p for p in paths if kinds[p] == pick]
            if len(wanted) == 1:
                paths = wanted
            else:  # several of the wanted kind, or none of it and several of the other
                clash = wanted or paths
                raise AmbiguousSceneError(f"{folder}: {_names(clash)} {'both' if len(clash) == 2 else 'all'} "
                                          f"look like scene {key!r}; keep one per scene")
        out[key] = paths[0]
    return out


def pair(pred: str | os.PathLike[str], truth: str | os.PathLike[str]) -> dict[str, tuple[Path, Path]]:
    """scene key → (prediction file, truth file). Directories are paired by file name."""
    pred, truth = Path(pred), Path(truth)
    if not pred.exists():
        raise UsageError(f"{pred}: no such file or directory")
    if not truth.exists():
        raise UsageError(f"{truth}: no such file or directory")
    if pred.is_file() and truth.is_file():
        return {scene_key(truth): (pred, truth)}
    if pred.is_dir() and truth.is_file():
        raise UsageError(f"{pred} is a directory but --truth {truth} is one file; pass a truth directory too")
    truths = _index(truth)
    if pred.is_file():
        key = scene_key(pred)
        exact = truth / pred.name
        if exact.is_file():
            return {scene_key(exact): (pred, exact)}
        if key not in truths:
            raise EvaluateError(f"no truth file in {truth} matches {pred.name} (looked for a name starting {key!r})")
        return {key: (pred, truths[key])}
    preds = _index(pred)
    pairs = {k: (preds[k], truths[k]) for k in sorted(preds) if k in truths}
    if not pairs:
        raise EvaluateError(
            f"no file in {pred} matches a file in {truth} by name "
            f"(e.g. {next(iter(preds), '-')} vs {next(iter(truths), '-')})"
        )
    return pairs


def without_truth(pred: Path, truth: Path) -> list[str]:
    """Scene keys of a prediction folder that no truth file matches (left out of the scores; said,
    so that a missing truth file is not mistaken for a smaller test set)."""
    if not (pred.is_dir() and truth.is_dir()):
        return []
    truths = _index(truth)
    return sorted(k for k in _index(pred) if k not in truths)


# --------------------------------------------------------------------------- RGB for quick-looks

_RGB_NAMES = {"red": ("red", "b04", "b4"), "green": ("green", "b03", "b3"), "blue": ("blue", "b02", "b2")}


def read_rgb(path: str | Path, bands: Sequence[int] | None = None, step: int = 1) -> np.ndarray:
    """(y, x, 3) float in [0, 1] for display: bands named red/green/blue (or B04/B03/B02), else 1, 2, 3."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if bands is None:
                    desc = [(d or "").strip().lower() for d in ds.descriptions]
                    found = []
                    for names in _RGB_NAMES.values():
                        hit = next((i + 1 for i, d in enumerate(desc) if d in names), None)
                        found.append(hit)
                    if all(found):
                        bands = found
                    elif ds.count >= 3:
                        bands = [1, 2, 3]
                    else:
                        bands = [1, 1, 1]
                if max(bands) > ds.count or min(bands) < 1:
                    raise UsageError(f"--rgb {','.join(map(str, bands))}: {path.name} has bands 1-{ds.count}")
                out_shape = (3, -(-ds.height // step), -(-ds.width // step))
                data = ds.read(list(bands), out_shape=out_shape, resampling=Resampling.nearest, masked=True)
    except RasterioIOError as exc:
        raise SceneError(f"{path}: cannot read image ({first_line(exc)})") from None
    arr = data.astype("float32").filled(np.nan)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros((*arr.shape[1:], 3), "float32")
    # One linear stretch from 0 (or the darkest value, if negative) to the 99th percentile for all three
    # bands: per-band or 2–98 % stretches tint bright clouds and turn uniform snow fields psychedelic.
    lo, hi = min(0.0, float(np.percentile(finite, 1))), float(np.percentile(finite, 99))
    rgb = np.clip((arr - lo) / (hi - lo if hi > lo else 1.0), 0, 1).astype("float32")
    rgb[~np.isfinite(rgb)] = 0
    return np.moveaxis(rgb, 0, -1)


# --------------------------------------------------------------------------- the evaluation


@dataclass
class Preview:
    """Decimated arrays of one scene for the quick-look figure."""

    scene: str
    truth: np.ndarray
    preds: dict[str, np.ndarray]
    image: Path | None = None
    step: int = 1


@dataclass
class Evaluation:
    """Everything ``cloudmask evaluate`` reports: a JSON-able ``report`` plus arrays for plots."""

    report: dict[str, Any]
    windows: dict[str, metrics.Windows]
    confusions: dict[str, np.ndarray]
    previews: list[Preview]


def model_names(preds: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    """Column names: ``--name`` values, else file/dir names (made unique)."""
    if names:
        if len(names) != len(preds):
            raise UsageError(f"--name given {len(names)} time(s) for {len(preds)} prediction(s)")
        out = list(names)
    else:
        out = [scene_key(p) if p.is_file() else (p.name or p.resolve().name or str(p)) for p in preds]  # '.': its folder's name
    if len(set(out)) != len(out):
        out = [f"{n}#{i + 1}" if out.count(n) > 1 else n for i, n in enumerate(out)]
    return out


def evaluate(
    preds: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    truth: str | Path,
    *,
    names: Sequence[str] | None = None,
    truth_format: str | None = None,
    pred_format: str | None = None,
    classes: str | None = None,
    reproject: bool = False,
    window: int = 128,
    min_valid: float = 0.5,
    image: str | Path | None = None,
    previews: int = 0,
    preview_px: int = 800,
    on_scene: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """Score every prediction against the truth; several predictions are compared on the same scenes.

    ``preds``: one prediction (file or folder) or several; ``names``: one name, or one per prediction."""
    if isinstance(preds, (str, os.PathLike)):  # one prediction, not a sequence of its characters
        preds = [preds]
    if isinstance(names, str):
        names = [names]
    if not preds:
        raise UsageError("give at least one prediction")
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool):
        raise UsageError(f"--window must be a whole number of pixels, got {window!r}")
    if not (isinstance(min_valid, numbers.Real) and 0.0 < min_valid <= 1.0):
        raise UsageError(f"min_valid must be a fraction above 0 and at most 1, got {min_valid!r}")
    if preview_px < 16:
        raise UsageError(f"preview_px must be at least 16, got {preview_px}")
    if window < 8:
        raise UsageError(f"--window {window} is too small; use at least 8 px")
    window, min_valid = int(window), float(min_valid)  # plain numbers in the report (JSON)
    pred_paths = [Path(p) for p in preds]
    truth_path = Path(truth)
    t_enc, p_enc = load_encoding(truth_format), load_encoding(pred_format)
    labelled = Labelled.parse(classes) if classes else t_enc.labelled
    cols = model_names(pred_paths, names)
    pairings = [pair(p, truth_path) for p in pred_paths]
    common = sorted(set.intersection(*(set(pp) for pp in pairings)))
    skipped = sorted(set().union(*(set(pp) for pp in pairings)) - set(common))
    if not common:
        raise EvaluateError("the predictions share no scene with a truth file; nothing to compare")
    # A cloudmask --binary mask read with the cloudmask encoding has its 1 = "cloud" counted as thick:
    # score every column as cloud / not cloud instead (the same terms for all of them).
    binary = sorted({
        str(f)
        for key in common
        for f, enc in [*((pp[key][0], p_enc) for pp in pairings), (pairings[0][key][1], t_enc)]
        if enc is FORMATS["cloudmask"] and is_binary_mask(f)
    })
    if binary:
        labelled = Labelled(thin=False, shadow=False)
    image_path = Path(image) if image else None
    images = _index(image_path, images=True) if image_path and image_path.is_dir() else {}

    per_scene: dict[str, list[dict[str, Any]]] = {c: [] for c in cols}
    wins = {c: metrics.Windows.empty(window) for c in cols}
    totals = {c: np.zeros((4, 4), np.int64) for c in cols}
    shown: list[Preview] = []
    aligned_count = 0
    for si, key in enumerate(common):
        if on_scene:
            on_scene(key, si, len(common))
        t_file = pairings[0][key][1]
        t_mask = read_mask(t_file, t_enc)
        step = max(1, math.ceil(max(t_mask.shape) / preview_px))
        preview = Preview(key, t_mask.data[::step, ::step].copy(), {}, step=step) if len(shown) < previews else None
        for col, pp in zip(cols, pairings):
            p_file = pp[key][0]
            p_mask = read_mask(p_file, p_enc)
            diff = grid_difference(p_mask, t_mask)
            if diff:
                if not reproject:
                    if not (p_mask.georeferenced and t_mask.georeferenced):  # --reproject could not help
                        raise EvaluateError(diff + "; masks without a CRS and geotransform must have the same size")
                    raise EvaluateError(diff + "; pass --reproject to resample the prediction onto the truth grid")
                p_mask = align(p_mask, t_mask)
                aligned_count += 1
            w, cm = metrics.window_confusions(t_mask.data, p_mask.data, window, labelled, min_valid)
            wins[col] = wins[col].extend(w, si)
            totals[col] += cm
            row = {"scene": key, "prediction": str(p_file), "truth": str(t_file), **metrics.summarize(cm, labelled)}
            per_scene[col].append(row)
            if preview is not None:
                preview.preds[col] = p_mask.data[::step, ::step].copy()
        if preview is not None:
            if image_path is not None:
                preview.image = images.get(key) if images else (image_path if len(common) == 1 else None)
            shown.append(preview)

    if not len(wins[cols[0]].cover):
        warnings.warn(f"no {window} px window holds at least {min_valid:.0%} valid truth, so the per-window "
                      "analysis (cloud-cover bins) is empty; a smaller --window fits these masks", stacklevel=2)
    models = []
    for col, src in zip(cols, pred_paths):
        scenes = per_scene[col]
        models.append({
            "name": col,
            "source": str(src),
            "scenes_evaluated": len(scenes),
            "pooled": metrics.summarize(totals[col], labelled),
            "per_scene_spread": {
                f"cloud_{m}": metrics.spread(s["cloud"][m] for s in scenes) for m in metrics.METRICS
            },
            "windows": {"size": window, "count": int(len(wins[col].cover)), "bins": metrics.binned(wins[col])},
            "scenes": scenes,
        })
    comparisons = []
    ref = cols[0]
    for col in cols[1:]:
        comparisons.append({
            "reference": ref,
            "model": col,
            "pooled": metrics.difference(models[0]["pooled"], models[cols.index(col)]["pooled"]),
            "bins": metrics.compare_windows(wins[ref], wins[col]),
        })
    report = {
        "truth": str(truth_path),
        "truth_format": t_enc.name,
        "prediction_format": p_enc.name,
        "labelled": {"cloud": True, "thin": labelled.thin, "shadow": labelled.shadow},
        "binary_masks": binary,
        "scenes": common,
        "skipped_scenes": skipped,
        "no_truth": sorted(set().union(*(without_truth(p, truth_path) for p in pred_paths))),
        "reprojected": aligned_count,
        "window": window,
        "models": models,
        "comparisons": comparisons,
    }
    return Evaluation(report, wins, totals, shown)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows (model, scope, subject, metric, value) covering pooled, per-scene, per-bin and differences.

    ``subject`` is ``cloud`` for the binary cloud/not-cloud scores, ``class:<name>`` for one-vs-rest
    per-class scores, ``all`` for pixel counts and the per-class overall accuracy.
    """
    rows: list[dict[str, Any]] = []

    def add(model: str, scope: str, subject: str, metric: str, value: Any) -> None:
        rows.append({"model": model, "scope": scope, "subject": subject, "metric": metric, "value": "" if value is None else value})

    for m in report["models"]:
        name = m["name"]
        for scope, res in [("pooled", m["pooled"])] + [(f"scene:{s['scene']}", s) for s in m["scenes"]]:
            add(name, scope, "all", "pixels", res["pixels"])
            add(name, scope, "all", "overall_accuracy", res["overall_accuracy"])
            for k in (*metrics.METRICS, "tp", "fp", "fn", "tn"):
                add(name, scope, "cloud", k, res["cloud"][k])
            for cls, sc in res["classes"].items():
                for k in metrics.METRICS:
                    add(name, scope, f"class:{cls}", k, sc[k])
        for key, sp in m["per_scene_spread"].items():
            for stat, v in sp.items():
                add(name, "per_scene_spread", key, stat, v)
        for b in m["windows"]["bins"]:
            for k in ("windows", *metrics.METRICS, "mean_window_accuracy", "mean_window_f1"):
                add(name, f"bin:{b['bin']}", "cloud", k, b[k])
    for c in report["comparisons"]:
        name = f"{c['model']}-{c['reference']}"
        for k, v in c["pooled"].items():
            add(name, "pooled", "cloud", f"d_{k}", v)
        for b in c["bins"]:
            for k, v in b.items():
                if k.startswith(("d_", "paired_")):
                    add(name, f"bin:{b['bin']}", "cloud", k, v)
    return rows
