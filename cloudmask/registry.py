"""The sensor registry: one YAML file per sensor, validated into frozen dataclasses.

The registry is what makes the model sensor-independent: every band a scene carries is described by
its spectral facts (:meth:`Band.descriptor`), so a sensor the model never saw only needs a YAML file.
Files are read with YAML's safe loader (libyaml's C build when present: ~10× faster, same
safe subset) and checked field by field, so a user's typo is reported with
the file and field that hold it rather than as a crash deep in inference.

Search order (later wins for the same ``id``): the bundled ``sensors/`` directory, each directory in
``$CLOUDMASK_SENSORS`` (``os.pathsep``-separated), then directories passed by the caller
(``--sensors-dir``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from cloudmask.errors import BandError, RegistryError, UnknownSensorError

BandKind = Literal["reflectance", "thermal"]

#: Thermal (emitted) bands lie at or beyond this many micrometres (mid-wave infrared onwards).
THERMAL_MIN_UM = 3.0
#: Wavelength plausibility window in micrometres (UV edge to far thermal infrared).
_WL_MIN_UM, _WL_MAX_UM = 0.3, 15.0

# The keys each level of a sensor file may hold; anything else is a typo (``ofset:`` would otherwise
# silently leave the offset at 0). Mappings keyed by user names (products, stac catalogues, assets,
# collections, srf variants, band scaling products) are checked by what they hold, not their keys.
_SENSOR_KEYS = ("id", "name", "source", "description", "platforms", "aliases", "default_resolution",
                "products", "default_product", "stac", "srf", "bands")
_BAND_KEYS = ("name", "common_name", "aliases", "type", "resolution", "wavelength", "assets", "scaling", "srf")
_WAVELENGTH_KEYS = ("min", "center", "max", "fwhm")
_SCALING_KEYS = ("scale", "offset", "nodata", "k1", "k2")
_CATALOGUE_KEYS = ("url", "collections")
_SRF_KEYS = ("package", "variants")

#: STAC ``eo`` common band names (eo extension v1.1). A band's common name is matched against the
#: ``common_name`` of a STAC item's ``eo:bands`` and accepted by ``--bands``, so it must be one of these.
COMMON_NAMES = ("pan", "coastal", "blue", "green", "green05", "yellow", "red", "rededge", "rededge071",
                "rededge075", "rededge078", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22", "lwir",
                "lwir11", "lwir12")


@dataclass(frozen=True)
class Scaling:
    """How stored integers become physical values: ``value = dn * scale + offset``.

    Thermal bands stored as radiance carry ``k1``/``k2`` (Landsat's Planck constants) so that
    brightness temperature is ``k2 / ln(k1 / radiance + 1)``.
    """

    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    k1: float | None = None
    k2: float | None = None

    def apply(self, dn: np.ndarray) -> np.ndarray:
        """Scale an integer array to physical units (float32)."""
        value = dn.astype("float32") * np.float32(self.scale) + np.float32(self.offset)
        if self.k1 is not None and self.k2 is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.float32(self.k2) / np.log(np.float32(self.k1) / value + 1).astype("float32")
        return value


@dataclass(frozen=True)
class Band:
    """One spectral band and everything needed to read it and describe it to the model."""

    name: str
    kind: BandKind
    wavelength_min: float  # micrometres
    wavelength_center: float
    wavelength_max: float
    fwhm: float
    resolution: float  # metres
    common_name: str | None = None
    aliases: tuple[str, ...] = ()
    assets: Mapping[str, str] = field(default_factory=dict)
    scaling: Mapping[str, Scaling] = field(default_factory=dict)  # per-product overrides
    srf: str | None = None  # band key in the sensor's pyrsr response table, if any

    def __post_init__(self) -> None:
        # the registry's YAML checker refuses these too; a Band built in Python must not slip by
        # (an unknown kind would be described to the model as reflective)
        if self.kind not in ("reflectance", "thermal"):
            raise BandError(f"band {self.name!r}: kind must be 'reflectance' or 'thermal', got {self.kind!r}")
        if not 0 < self.wavelength_center < 100:  # 100 µm is far infrared: no imaging sensor's band
            unit = " (looks like nanometres: wavelengths are in micrometres)" if self.wavelength_center >= 100 else ""
            raise BandError(f"band {self.name!r}: centre wavelength {self.wavelength_center} µm is out of range{unit}")
        if not self.wavelength_min <= self.wavelength_center <= self.wavelength_max:
            raise BandError(f"band {self.name!r}: wavelengths must satisfy min <= centre <= max, got "
                            f"{self.wavelength_min}, {self.wavelength_center}, {self.wavelength_max}")

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this band answers to (case-insensitive matching uses these)."""
        extra = (self.common_name,) if self.common_name else ()
        return (self.name, *extra, *self.aliases)

    def descriptor(self) -> np.ndarray:
        """The band's spectral facts as the model sees them: min, centre, max, FWHM (µm), thermal flag."""
        return np.array(
            [
                self.wavelength_min,
                self.wavelength_center,
                self.wavelength_max,
                self.fwhm,
                1.0 if self.kind == "thermal" else 0.0,
            ],
            dtype="float32",
        )


@dataclass(frozen=True)
class Catalogue:
    """Where a sensor's scenes live in one STAC catalogue."""

    collections: Mapping[str, str]  # product -> collection id
    url: str | None = None


@dataclass(frozen=True)
class Sensor:
    """A sensor's registry entry."""

    id: str
    name: str
    bands: tuple[Band, ...]
    default_resolution: float
    default_product: str
    products: Mapping[str, Scaling]
    source: str
    path: Path
    platforms: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    stac: Mapping[str, Catalogue] = field(default_factory=dict)
    srf: Mapping[str, Any] = field(default_factory=dict)  # pyrsr lookup: {satellite, sensor, variants}

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def flown_on(self, platform: Any) -> bool:
        """Whether a STAC item's ``platform`` is one of this sensor's (spelling aside: LANDSAT_8 is
        landsat-8). True when either is unknown: a collection such as landsat-c2-l2 mixes
        Landsat 7, 8 and 9, and an item must be read with its own sensor's bands."""
        if not platform or not isinstance(platform, str) or not self.platforms:
            return True
        return _bare(platform) in {_bare(p) for p in self.platforms}

    def band(self, name: str) -> Band:
        """Find a band by its name, common name or alias (case-insensitive)."""
        key = name.strip().lower()
        for b in self.bands:
            if key in (n.lower() for n in b.names):
                return b
        known = [n for b in self.bands for n in b.names]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {', '.join(self.band_names)}"
        raise BandError(f"sensor {self.id!r} has no band {name!r}{hint}")

    def select(self, names: Iterable[str]) -> list[Band]:
        """Resolve a list of band names, refusing duplicates."""
        bands = [self.band(n) for n in names]
        seen: set[str] = set()
        for b in bands:
            if b.name in seen:
                raise BandError(f"band {b.name!r} of sensor {self.id!r} is named twice")
            seen.add(b.name)
        return bands

    def scaling(self, product: str | None, band: Band) -> Scaling:
        """Scale/offset/nodata for ``band`` in ``product`` (band-level values override the product's)."""
        product = product or self.default_product
        if product not in self.products:
            raise BandError(
                f"sensor {self.id!r} has no product {product!r}; choose one of {', '.join(self.products)}"
            )
        return band.scaling.get(product, self.products[product])

    def descriptors(self, bands: Sequence[Band] | None = None) -> np.ndarray:
        """Stack the descriptors of ``bands`` (default: all) into an (n, 5) array."""
        return np.stack([b.descriptor() for b in (bands or self.bands)])


class Registry(Mapping[str, Sensor]):
    """Sensors by id, with lookup by id, alias or platform name."""

    def __init__(self, sensors: Mapping[str, Sensor]):
        self._sensors = dict(sorted(sensors.items()))

    def __getitem__(self, key: str) -> Sensor:
        return self._sensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sensors)

    def __len__(self) -> int:
        return len(self._sensors)

    def get_sensor(self, name: str) -> Sensor:
        """Resolve an id, alias or platform (e.g. ``sentinel-2b``), suggesting close names on failure."""
        if not isinstance(name, str):
            raise UnknownSensorError(f"a sensor is named by a string (id, alias or platform), got {name!r}")
        key = name.strip().lower()
        names = {n.lower(): s.id for s in self._sensors.values() for n in (s.id, *s.aliases, *s.platforms)}
        if key in names:
            return self._sensors[names[key]]
        # Spelling differences only (LANDSAT_8 in Landsat metadata, "Sentinel 2"): one sensor, so take it.
        same = {sid for n, sid in names.items() if _bare(n) == _bare(key)}
        if len(same) == 1:
            return self._sensors[same.pop()]
        # Suggest sensors one of whose names is close (difflib's usual 0.6: 'bogus' is not 'modis').
        close = list(dict.fromkeys(names[n] for n in difflib.get_close_matches(key, list(names), n=6, cutoff=0.6)))[:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownSensorError(
            f"unknown sensor {name!r}{hint} (known: {', '.join(self._sensors)}; see `cloudmask sensors`)"
        )


def _bare(name: str) -> str:
    """A sensor name without case, spaces, hyphens and underscores."""
    return "".join(c for c in name.lower() if c.isalnum() or c == "+")


def bundled_sensors_dir() -> Path:
    """The shipped YAML directory: inside the wheel, or the repository's top-level ``sensors/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sensors", here.parent / "sensors"):
        if candidate.is_dir():
            return candidate
    raise RegistryError(f"bundled sensor registry not found next to {here}")


def sensor_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Directories searched for sensor YAML files, lowest priority first."""
    dirs = [bundled_sensors_dir()]
    env = os.environ.get("CLOUDMASK_SENSORS", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    if isinstance(extra, (str, os.PathLike)):  # one folder, not a sequence of its characters
        extra = [extra]
    dirs += [Path(p) for p in extra]
    for d in dirs[1:]:
        if not d.is_dir():
            raise RegistryError(f"sensor directory {d} does not exist")
    return dirs


def load_registry(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> Registry:
    """Load and validate every ``*.yaml``/``*.yml`` in the registry directories."""
    key = tuple(str(Path(d).resolve()) for d in sensor_dirs(extra_dirs))
    return _load_cached(key, os.environ.get("CLOUDMASK_SENSORS", ""))


@lru_cache(maxsize=8)
def _load_cached(dirs: tuple[str, ...], _env: str) -> Registry:
    """A later directory's file replaces an earlier one's sensor of the same id (a user's own
    sentinel2.yaml wins over the bundled one); within one directory an id is one file. No name
    (id, alias, platform) may then lead to two sensors: which one won would depend on file order."""
    sensors: dict[str, Sensor] = {}
    for d in dirs:
        here: dict[str, Path] = {}
        for path in sorted(Path(d).glob("*.y*ml")):
            sensor = load_sensor_file(path)
            if sensor.id in here:
                raise RegistryError(f"{path}: sensor id {sensor.id!r} is already defined by {here[sensor.id].name}")
            here[sensor.id] = path
            sensors[sensor.id] = sensor
    claimed: dict[str, Sensor] = {}
    for sensor in sensors.values():
        for n in dict.fromkeys(x.lower() for x in (sensor.id, *sensor.aliases, *sensor.platforms)):
            other = claimed.setdefault(n, sensor)
            if other is not sensor:
                raise RegistryError(f"{sensor.path}: {n!r} already names sensor {other.id!r} ({other.path}); "
                                    "ids, aliases and platforms must name one sensor")
    return Registry(sensors)


def get_sensor(name: str, extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> Sensor:
    """Shortcut for ``load_registry(extra_dirs).get_sensor(name)``."""
    return load_registry(extra_dirs).get_sensor(name)


# --------------------------------------------------------------------------- validation


class _Checker:
    """Reads typed fields out of parsed YAML, naming the file and field on every failure."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, msg: str) -> RegistryError:
        return RegistryError(f"{self.path}: {where}: {msg}")  # the whole path: a user folder may hold it

    def mapping(self, obj: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(obj, Mapping):
            raise self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        return obj

    def keys(self, obj: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
        """Refuse keys outside ``allowed``, suggesting the closest allowed one."""
        for key in obj:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.fail(where, f"unknown key {str(key)!r} ({hint})")

    def get(self, obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in obj or obj[key] is None:
            if default is ...:
                raise self.fail(f"{where}.{key}" if where else key, "missing required field")
            return default
        value = obj[key]
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"{where}.{key}" if where else key, f"expected {name}, got {value!r}")
        return value

    def positive(self, obj: Mapping[str, Any], key: str, where: str) -> float:
        """A required finite number above zero (a pixel size)."""
        value = self.get(obj, key, where, float)
        if not (math.isfinite(value) and value > 0):
            raise self.fail(f"{where}.{key}" if where else key, f"must be a finite number above 0, got {value}")
        return value

    def finite(self, obj: Mapping[str, Any], key: str, where: str, default: float | None) -> float | None:
        value = self.get(obj, key, where, float, default)
        if value is not None and not math.isfinite(value):
            raise self.fail(f"{where}.{key}", f"must be a finite number, got {value}")
        return value

    def scaling(self, obj: Any, where: str) -> Scaling:
        obj = self.mapping(obj, where)
        self.keys(obj, where, _SCALING_KEYS)
        nodata = obj.get("nodata")
        if nodata is not None and (not isinstance(nodata, (int, float)) or isinstance(nodata, bool)):
            raise self.fail(f"{where}.nodata", f"expected a number, got {nodata!r}")
        scale = self.finite(obj, "scale", where, 1.0)
        if scale == 0:
            raise self.fail(f"{where}.scale", "must not be 0 (every value would be the offset)")
        k1, k2 = self.finite(obj, "k1", where, None), self.finite(obj, "k2", where, None)
        if (k1 is None) != (k2 is None):  # one alone: radiance would be read as kelvin, silently
            raise self.fail(f"{where}.{'k2' if k2 is None else 'k1'}",
                            "k1 and k2 (the Planck constants) go together; give both or neither")
        return Scaling(
            scale=scale,
            offset=self.finite(obj, "offset", where, 0.0),
            nodata=None if nodata is None else float(nodata),
            k1=k1,
            k2=k2,
        )

    def names(self, obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        """A list of plain names (strings or numbers), e.g. aliases and platforms."""
        values = self.get(obj, key, where, list, [])
        for v in values:
            if not isinstance(v, (str, int)) or isinstance(v, bool) or not str(v).strip():
                raise self.fail(f"{where}.{key}" if where else key, f"expected names, got {v!r}")
        return tuple(str(v).strip() for v in values)


# libyaml's C parser when PyYAML was built with it: the registry is read at every start of the CLI
# (the bundled files: 0.068 s with the pure-Python parser, 0.007 s with this one). Both build only
# plain Python objects (safe loading).
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_sensor_file(path: Path) -> Sensor:
    """Parse and validate one sensor YAML file."""
    c = _Checker(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise RegistryError(f"{path}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read ({exc})") from None
    if raw is None:
        raise c.fail("top level", "the file is empty")
    raw = c.mapping(raw, "top level")
    c.keys(raw, "top level", _SENSOR_KEYS)

    sid = c.get(raw, "id", "", str)
    if not sid.replace("-", "").replace("_", "").isalnum() or sid != sid.lower():
        raise c.fail("id", f"{sid!r} must be lower-case letters, digits, '-' or '_'")

    products = {
        str(k): c.scaling(v, f"products.{k}") for k, v in c.mapping(c.get(raw, "products", "", dict), "products").items()
    }
    if not products:
        raise c.fail("products", "at least one product is required")
    default_product = c.get(raw, "default_product", "", str, next(iter(products)))
    if default_product not in products:
        raise c.fail("default_product", f"{default_product!r} is not one of the products {list(products)}")

    stac = {}
    for cat, spec in c.mapping(c.get(raw, "stac", "", dict, {}), "stac").items():
        spec = c.mapping(spec, f"stac.{cat}")
        c.keys(spec, f"stac.{cat}", _CATALOGUE_KEYS)
        cols = c.mapping(c.get(spec, "collections", f"stac.{cat}", dict), f"stac.{cat}.collections")
        stac[str(cat)] = Catalogue(collections={str(k): str(v) for k, v in cols.items()}, url=spec.get("url"))

    raw_bands = c.get(raw, "bands", "", list)
    if not raw_bands:
        raise c.fail("bands", "at least one band is required")
    bands = [_parse_band(c, b, i, products) for i, b in enumerate(raw_bands)]
    owner: dict[str, int] = {}  # name or alias → the band that has it
    for i, b in enumerate(bands):
        for n in b.names:
            if owner.setdefault(n.lower(), i) != i:
                raise c.fail(f"bands.{b.name}", f"name or alias {n!r} is used by two bands")

    return Sensor(
        id=sid,
        name=c.get(raw, "name", "", str),
        description=c.get(raw, "description", "", str, ""),
        source=c.get(raw, "source", "", str),
        platforms=tuple(p.lower() for p in c.names(raw, "platforms", "")),
        aliases=tuple(a.lower() for a in c.names(raw, "aliases", "")),
        default_resolution=c.positive(raw, "default_resolution", ""),
        default_product=default_product,
        products=products,
        stac=stac,
        srf=_srf(c, raw),
        bands=tuple(bands),
        path=path,
    )


def _srf(c: _Checker, raw: Mapping[str, Any]) -> dict[str, Any]:
    srf = c.mapping(c.get(raw, "srf", "", dict, {}), "srf")
    c.keys(srf, "srf", _SRF_KEYS)
    return dict(srf)


def _parse_band(c: _Checker, raw: Any, index: int, products: Mapping[str, Scaling]) -> Band:
    raw = c.mapping(raw, f"bands[{index}]")
    named = raw.get("name")
    c.keys(raw, f"bands.{named}" if isinstance(named, str) else f"bands[{index}]", _BAND_KEYS)
    name = c.get(raw, "name", f"bands[{index}]", str)
    where = f"bands.{name}"
    kind = c.get(raw, "type", where, str)
    if kind not in ("reflectance", "thermal"):
        raise c.fail(f"{where}.type", f"must be 'reflectance' or 'thermal', got {kind!r}")
    wl = c.mapping(c.get(raw, "wavelength", where, dict), f"{where}.wavelength")
    c.keys(wl, f"{where}.wavelength", _WAVELENGTH_KEYS)
    lo, mid, hi = (c.get(wl, k, f"{where}.wavelength", float) for k in ("min", "center", "max"))
    # max - min as written (0.54 - 0.45 is 0.08999999999999997 in binary floating point)
    fwhm = c.get(wl, "fwhm", f"{where}.wavelength", float, round(hi - lo, 6))
    for k, v in (("min", lo), ("center", mid), ("max", hi)):
        if not _WL_MIN_UM <= v <= _WL_MAX_UM:
            unit = " (looks like nanometres: wavelengths are in micrometres)" if v > 100 else ""
            raise c.fail(f"{where}.wavelength.{k}", f"{v} is outside {_WL_MIN_UM}-{_WL_MAX_UM} µm{unit}")
    if not lo < mid < hi:
        raise c.fail(f"{where}.wavelength", f"need min < center < max, got {lo}, {mid}, {hi}")
    if kind == "thermal" and mid < THERMAL_MIN_UM:  # the Earth emits next to nothing below it
        raise c.fail(f"{where}.type", f"a thermal band lies at {THERMAL_MIN_UM} µm or beyond; this one's centre is "
                                      f"{mid} µm (type: reflectance?)")
    if not 0 < fwhm <= (hi - lo) * 1.5:
        raise c.fail(f"{where}.wavelength.fwhm", f"{fwhm} µm does not fit the band edges {lo}-{hi}")
    common_name = c.get(raw, "common_name", where, str, None)
    if common_name is not None and common_name not in COMMON_NAMES:
        close = difflib.get_close_matches(common_name.lower(), COMMON_NAMES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(COMMON_NAMES)}"
        raise c.fail(f"{where}.common_name", f"{common_name!r} is not a STAC eo common name ({hint})")
    scaling = {}
    for prod, spec in c.mapping(c.get(raw, "scaling", where, dict, {}), f"{where}.scaling").items():
        if prod not in products:
            raise c.fail(f"{where}.scaling.{prod}", f"unknown product (products: {', '.join(products)})")
        base = products[prod]
        c.keys(c.mapping(spec, f"{where}.scaling.{prod}"), f"{where}.scaling.{prod}", _SCALING_KEYS)
        merged = {"scale": base.scale, "offset": base.offset, "nodata": base.nodata, "k1": base.k1, "k2": base.k2,
                  **c.mapping(spec, f"{where}.scaling.{prod}")}
        scaling[str(prod)] = c.scaling(merged, f"{where}.scaling.{prod}")
    return Band(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        wavelength_min=lo,
        wavelength_center=mid,
        wavelength_max=hi,
        fwhm=fwhm,
        resolution=c.positive(raw, "resolution", where),
        common_name=common_name,
        aliases=c.names(raw, "aliases", where),
        assets={str(k): str(v) for k, v in c.mapping(c.get(raw, "assets", where, dict, {}), f"{where}.assets").items()},
        scaling=scaling,
        srf=c.get(raw, "srf", where, str, None),
    )
