"""Scene reading: any input the user has → one lazy ``(band, y, x)`` array of physical values.

A :class:`Scene` is the hand-over point between the registry and the model: a dask-backed
:class:`xarray.DataArray` of float32 reflectance (thermal bands in kelvin) with NaN wherever a band
has no data, plus the :class:`~cloudmask.registry.Band` objects whose descriptors tell the model what
each layer is. Three input shapes are understood:

* one multi-band GeoTIFF (band names from ``bands=``, else the file's band descriptions, else the
  registry's full band order when the count matches);
* a folder of per-band files (Landsat ``*_B4.TIF``, Sentinel-2 ``B04.jp2``/``T32TMT_..._B04_20m.jp2``,
  or files named by common name as ``cloudmask fetch`` writes them);
* a STAC item JSON (path or URL) whose assets are read in place with HTTP range requests.

A Sentinel-2 ``.SAFE`` product folder is read as the band folder inside it (L2A: ``R20m``; L1C:
``IMG_DATA``), with its product and processing baseline taken from the product name; a ``.zip``
(ESA's ``.SAFE.zip``) or ``.tar`` (USGS Landsat bundles) is read in place, without extraction.

Bands at different resolutions are warped lazily (rasterio ``WarpedVRT``) onto one grid.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import tarfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import dask.array as dask_array
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT

from cloudmask.errors import BandError, SceneError, UnknownSensorError, UsageError, first_line
from cloudmask.files import FETCH_MARKER
from cloudmask.registry import Band, Registry, Scaling, Sensor, load_registry

#: The item property naming the registry sensor (``cloudmask fetch`` and ``cloudmask simulate`` write it).
SENSOR_PROPERTY = "cloudmask:sensor"

#: Default dask chunk edge in pixels for lazily read scenes.
CHUNK = 1024

_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img"}


#: Elements per slab in :meth:`ToPhysical.into` (float32: 256 KB, well inside L2).
_SLAB = 65536


@dataclass(frozen=True)
class ToPhysical:
    """DN → physical float32 with NaN for nodata, elementwise (any block shape). Float files are
    taken as physical values already. A picklable callable, so Dask workers can run it."""

    scaling: Scaling
    is_int: bool
    nodata: float | None
    #: a second nodata value: an integer file's own, where it differs from the registry's (both
    #: mark missing data; such a band is converted here, never handed to the model as stored)
    also: float | None = None

    def __call__(self, block: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype="float32")
        self.into(block, out)
        return out

    @property
    def affine(self) -> tuple[float, float] | None:
        """(scale, offset) when the stored values are integers mapped affinely (the common case),
        so a consumer may convert them itself; None for float files and thermal radiance."""
        sc = self.scaling
        if self.is_int and sc.k1 is None and sc.k2 is None and self.also is None:
            return float(sc.scale), float(sc.offset)
        return None

    def into(self, block: np.ndarray, out: np.ndarray) -> None:
        """Write the physical values of ``block`` into ``out`` (float32, same shape). A plain affine
        map of integers needs no temporaries: scaled integer DNs are always finite."""
        sc = self.scaling
        nodata, also = (_occurring(block, v) for v in (self.nodata, self.also))
        if nodata is None:
            nodata, also = also, None
        if self.is_int and sc.k1 is None and sc.k2 is None:
            scale, offset = np.float32(sc.scale), np.float32(sc.offset)
            # in row slabs of ~256 KB: every pass after the first finds the slab still in cache (a
            # window is tens of MB, so whole-array passes would each go to memory)
            b2, o2 = (block, out) if block.ndim >= 2 else (block[None], out[None])
            step = max(1, _SLAB // max(1, b2[..., 0, :].size))
            for r in range(0, b2.shape[-2], step):
                o, b = o2[..., r : r + step, :], b2[..., r : r + step, :]
                np.multiply(b, scale, out=o, casting="unsafe")
                if offset:
                    o += offset
                if nodata is not None:
                    np.copyto(o, np.float32(np.nan), where=b == nodata)
                if also is not None:
                    np.copyto(o, np.float32(np.nan), where=b == also)
            return
        # float files as they are; thermal radiance through Planck's law (may be non-finite)
        out[...] = sc.apply(block) if self.is_int else block
        np.copyto(out, np.float32(np.nan), where=~np.isfinite(out))
        for value in (nodata, also):
            if value is not None:
                np.copyto(out, np.float32(np.nan), where=block == value)


def _occurring(block: np.ndarray, value: float | None) -> float | None:
    """``value`` if it may occur in ``block`` (within its range; NaNs in a float block ignored),
    else None: usually one cheap pass over the stored values that spares a comparison pass."""
    if value is None or not np.isfinite(value) or not block.size:
        return None
    if block.dtype.kind == "f":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block
            lo, hi = np.nanmin(block), np.nanmax(block)
    else:
        lo, hi = block.min(), block.max()
    return value if lo <= value <= hi else None


@dataclass(frozen=True)
class BandwisePhysical:
    """:class:`ToPhysical` per band over a (band, y, x) Dask array of one band per chunk: one
    ``map_blocks`` for the scene instead of one per band (each costs ~1 ms of graph building).
    The band comes from ``block_id``, not ``block_info``, whose per-chunk dictionaries cost 0.08 s
    to build for an 8192² scene (3 328 chunks). (Not as a second array of band numbers either: that
    reorders Dask's tasks band by band, and a pixel-interleaved file's tiles were decoded again for
    every band once GDAL's block cache was full: 4× slower.)"""

    convert: tuple[ToPhysical, ...]

    def __call__(self, block: np.ndarray, block_id: tuple[int, ...] = (0,)) -> np.ndarray:
        return self.convert[block_id[0]](block)

    def over(self, stored: Any) -> Any:
        """The lazy float32 array of ``stored`` (band, y, x), one band per chunk."""
        return stored.map_blocks(self, dtype="float32")


@dataclass(frozen=True)
class RawBands:
    """The stored values behind :attr:`Scene.data`, band by band, and how each becomes physical.

    Why: a reader that caches decoded input chunks (cloudmask.tiles.ChunkReader) holds twice as
    many of them as 16-bit DNs as it would as float32, and converts only what a window copies.
    """

    data: Any  # dask (band, y, x), the file's dtype(s), chunked like Scene.data
    convert: tuple[ToPhysical, ...]
    #: per band, (file, 1-based band index) when the band is that file's band on the scene's grid
    #: (no warping), so a reader may read its chunks with rasterio directly; None where warped
    files: tuple[tuple[str, int] | None, ...] | None = None
    #: some band is read over the network (HTTP range requests): a failed chunk read is worth repeating
    remote: bool = False

    def select(self, index: Sequence[int]) -> RawBands:
        files = tuple(self.files[i] for i in index) if self.files is not None else None
        return RawBands(self.data[list(index)], tuple(self.convert[i] for i in index), files, self.remote)


@dataclass
class Scene:
    """A scene ready for the model: physical values, band descriptors and the output grid."""

    data: xr.DataArray  # (band, y, x) float32, NaN = nodata; band coordinate holds band names
    sensor: Sensor
    bands: list[Band]
    source: str
    crs: Any = None
    transform: Affine = field(default_factory=Affine.identity)
    product: str | None = None
    item: dict[str, Any] | None = None  # STAC item JSON, when read from one
    raw: RawBands | None = None  # the stored values behind ``data`` (for readers that cache chunks)
    # (azimuth, elevation) in degrees as the scene's metadata gives them (STAC view:sun_*, a Landsat
    # MTL, a SAFE granule's MTD_TL.xml); None where it gives none
    sun: tuple[float | None, float | None] | None = None

    def __post_init__(self) -> None:
        if self.sun is None and self.item is not None:
            props = self.item.get("properties") or {}
            self.sun = sun_angles(props.get("view:sun_azimuth"), props.get("view:sun_elevation"))

    @property
    def descriptors(self) -> np.ndarray:
        """(n_bands, 5) spectral descriptors in the same order as ``data``'s bands."""
        return self.sensor.descriptors(self.bands)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.sizes["y"]), int(self.data.sizes["x"])

    @property
    def valid(self) -> xr.DataArray:
        """True where every band holds a finite value; the model's nodata mask."""
        return np.isfinite(self.data).all("band")

    def profile(self) -> dict[str, Any]:
        """A rasterio profile for single-band outputs on this scene's grid."""
        h, w = self.shape
        return {"driver": "GTiff", "width": w, "height": h, "count": 1, "crs": self.crs, "transform": self.transform}

    def subset(self, names: Sequence[str]) -> Scene:
        """The same scene restricted to some bands (any order)."""
        bands = self.sensor.select(names)
        data = self.data.sel(band=[b.name for b in bands])
        raw = None
        if self.raw is not None:
            where = {b.name: i for i, b in enumerate(self.bands)}
            raw = self.raw.select([where[b.name] for b in bands])
        return Scene(data, self.sensor, bands, self.source, self.crs, self.transform, self.product, self.item, raw)


# --------------------------------------------------------------------------- entry point


def read_scene(
    source: str | Path,
    sensor: str | Sensor | None = None,
    bands: Sequence[str] | None = None,
    product: str | None = None,
    resolution: float | None = None,
    registry: Registry | None = None,
    chunks: int = CHUNK,
) -> Scene:
    """Open a scene lazily. ``sensor`` may be omitted when the input names it (STAC, file naming)."""
    if resolution is not None and not resolution > 0:  # 0 was ignored, -5 gave a flipped 1×1 grid
        raise UsageError(f"resolution must be positive (metres), got {resolution}")
    if not (isinstance(chunks, int) and chunks > 0):
        raise UsageError(f"chunks must be a positive number of pixels, got {chunks!r}")
    if isinstance(bands, str):  # "blue,green,red,nir" as the CLI's --bands takes it
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    registry = registry or load_registry()
    src = str(source)
    if _is_url(src) and PurePosixPath(urlparse(src).path).suffix.lower() in _RASTER_SUFFIXES:
        return _read_multiband(src, sensor, bands, product, resolution, registry, chunks)  # e.g. a COG
    if _is_url(src) or src.lower().endswith(".json"):
        return _read_stac_item(src, sensor, bands, product, resolution, registry, chunks)
    path = Path(src)
    if not path.exists():
        raise SceneError(f"{path}: no such file or directory")
    if is_safe(path):
        return _read_safe(path, sensor, bands, product, resolution, registry, chunks)
    if is_archive(path):
        return _read_archive(path, sensor, bands, product, resolution, registry, chunks)
    if path.is_dir():
        return _read_band_folder(path, sensor, bands, product, resolution, registry, chunks)
    return _read_multiband(path, sensor, bands, product, resolution, registry, chunks)


def resolve_sensor(sensor: str | Sensor | None, registry: Registry, hint: str = "", source: str = "",
                   declared: Any = None, where: str = "") -> Sensor:
    """The given sensor, else the one the input ``declared`` (``where``: e.g. its item's
    ``cloudmask:sensor``), else one guessed from ``hint`` (a file name or STAC platform). A declared
    sensor the registry lacks is named as such: "cannot tell which sensor" hid a forgotten --sensors-dir."""
    if sensor:
        chosen = sensor if isinstance(sensor, Sensor) else registry.get_sensor(sensor)
        said = None  # what the input says it is, to warn when the option contradicts it
        if isinstance(declared, str) and declared.strip():
            try:
                said = registry.get_sensor(declared.strip())
            except UsageError:
                said = None
        elif hint and "/" not in hint:  # a STAC platform, not a file name
            said = guess_sensor(hint, registry)
        if said is not None and said.id != chosen.id:
            warnings.warn(f"{source or hint}: read as {chosen.id} (--sensor), though {where or 'the scene'} says "
                          f"{said.id}: its bands and scaling are {chosen.id}'s", stacklevel=3)
        return chosen
    if isinstance(declared, str) and declared.strip():
        try:
            return registry.get_sensor(declared.strip())
        except UsageError:
            raise UnknownSensorError(
                f"{source or hint}: {where or 'the scene'} says sensor {declared.strip()!r}, which the registry does "
                "not have (add its YAML with --sensors-dir or CLOUDMASK_SENSORS, or pass --sensor)"
            ) from None
    guessed = guess_sensor(hint, registry)
    if guessed is None:
        raise UsageError(f"{source or hint}: cannot tell which sensor made this scene; pass --sensor")
    return guessed


_NAME_PATTERNS = [
    (re.compile(r"(^|[/_])L[COTEM]0?9(_|$)|landsat[-_ ]?9", re.I), "landsat9"),
    (re.compile(r"(^|[/_])L[COTEM]0?8(_|$)|landsat[-_ ]?8", re.I), "landsat8"),
    (re.compile(r"(^|[/_])LE0?7(_|$)|landsat[-_ ]?7", re.I), "landsat7"),
    (re.compile(r"(^|[/_])L[TM]0?5(_|$)|landsat[-_ ]?5", re.I), "landsat5"),
    (re.compile(r"(^|[/_])S2[ABC]_|sentinel[-_ ]?2|(^|[/_])T\d{2}[A-Z]{3}_\d{8}T", re.I), "sentinel2"),
]


def guess_sensor(hint: str, registry: Registry) -> Sensor | None:
    """Recognise a sensor from a STAC platform or a standard Landsat / Sentinel-2 product name."""
    if not hint:
        return None
    try:
        return registry.get_sensor(hint)
    except UsageError:
        pass
    for pattern, sid in _NAME_PATTERNS:
        if pattern.search(hint) and sid in registry:
            return registry[sid]
    return None


_PRODUCT_PATTERNS = [
    (re.compile(r"_L2SP_|_L2SR_", re.I), "l2"),
    (re.compile(r"_L1(TP|GT|GS)_", re.I), "l1"),
    (re.compile(r"MSIL2A", re.I), "l2a"),
    (re.compile(r"MSIL1C", re.I), "l1c"),
]


def guess_product(sensor: Sensor, tag: str, name: str) -> str | None:
    """The product a file says it is: a ``CLOUDMASK_PRODUCT`` tag, else standard Landsat/S2 naming."""
    if tag in sensor.products:
        return tag
    for pattern, product in _PRODUCT_PATTERNS:
        if pattern.search(name) and product in sensor.products:
            return product
    return None


# --------------------------------------------------------------------------- shared helpers


def _is_url(src: str) -> bool:
    return urlparse(src).scheme in ("http", "https", "s3", "gs", "file") and "://" in src


#: GDAL options for rasters read over HTTP(S) (or S3, GCS): a request answered 429, 500, 502, 503
#: or 504 is asked again up to 3 times, after 0.5 s and growing delays, instead of failing the scene.
REMOTE_READ_OPTIONS: dict[str, str] = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "0.5"}


def configure_remote_reads() -> None:
    """Set the :data:`REMOTE_READ_OPTIONS` that neither the environment nor a ``rasterio.Env`` sets.

    Process-wide (GDAL's config; per thread outside the main one), not a ``rasterio.Env`` around
    the open: a scene's blocks are read later, in Dask's worker threads, after :func:`read_scene`
    has returned."""
    from rasterio.env import get_gdal_config, set_gdal_config

    for key, value in REMOTE_READ_OPTIONS.items():
        if get_gdal_config(key) is None:
            set_gdal_config(key, value)


def _gdal_vsi_path(url: str) -> str:
    """The GDAL virtual file name a URL is read through (its caches are keyed by it)."""
    scheme, _, rest = url.partition("://")
    prefix = {"s3": "/vsis3/", "gs": "/vsigs/"}.get(scheme.lower())
    if url.startswith("/vsi"):
        return url
    return prefix + rest if prefix else "/vsicurl/" + url


def forget_remote_data(url: str | None = None) -> None:
    """Drop what GDAL has cached of ``url`` (of every remote file when None), so the next read asks
    the server again. A response cut short stays in GDAL's cache as if complete: without this,
    reading the same block again would fail again without a request."""
    import ctypes

    import rasterio._env

    try:
        gdal = ctypes.CDLL(rasterio._env.__file__)  # its symbols include the GDAL it links
        if url is None:
            gdal.VSICurlClearCache()
        else:
            gdal.VSICurlPartialClearCache(_gdal_vsi_path(url).encode())
    except (OSError, AttributeError):  # a GDAL without the function: the retry reads the cache
        pass


def _open(path: str) -> rasterio.io.DatasetReader:
    if _is_url(path):
        configure_remote_reads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise SceneError(f"{path}: cannot read raster ({_read_failure(path, exc)})") from None


def _read_failure(path: Any, exc: BaseException) -> str:
    """Why ``path`` could not be opened, as one line: an http(s) URL's HTTP error where it has one."""
    return (http_error(path, exc) if isinstance(path, str) else None) or first_line(exc)


#: How GDAL names the HTTP status of a failed request (a CPLE_HttpResponse error).
_GDAL_HTTP_CODE = re.compile(r"HTTP response code: (\d{3})")


def http_error(url: str, exc: BaseException | None = None, timeout: float = 10.0) -> str | None:
    """The HTTP error an http(s) URL answers, as ``HTTP 404 Not Found``; None when it answers with
    data (or is no http(s) URL). Why: GDAL names the status only when its first HEAD fails; a range
    request answered 404 or 500 it reports as "not recognized as being in a supported file format".
    GDAL's own "HTTP response code: N" (in ``exc`` or its causes) is used when given, else one byte
    of the URL is asked for."""
    if urlparse(url).scheme not in ("http", "https"):
        return None
    seen = exc
    while seen is not None:
        m = _GDAL_HTTP_CODE.search(str(seen))
        if m:
            return _status_line(int(m.group(1)))
        seen = seen.__cause__ or seen.__context__
    import urllib.error
    import urllib.request

    try:
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        err.close()
        return _status_line(err.code)
    except (OSError, ValueError, http.client.HTTPException):
        return None  # unreachable now: GDAL's message says more


def _status_line(code: int) -> str:
    try:
        return f"HTTP {code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def _converter(scaling: Scaling, is_int: bool, file_nodata: float | None) -> ToPhysical:
    """How one band's stored values become physical ones. For integers both the registry's nodata
    (a sensor fact: e.g. DN 0 is never a measurement) and the file's own mark missing data."""
    if not is_int:
        return ToPhysical(scaling, is_int, file_nodata)
    if scaling.nodata is None or file_nodata is None or file_nodata == scaling.nodata:
        return ToPhysical(scaling, is_int, scaling.nodata if scaling.nodata is not None else file_nodata)
    return ToPhysical(scaling, is_int, scaling.nodata, also=file_nodata)


def _open_lazy(path: str | WarpedVRT, chunks: int) -> xr.DataArray:
    """All bands of a raster as a lazy (band, y, x) array; GDAL reads only the blocks asked for."""
    path = _absolute(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rioxarray.open_rasterio(
                path, chunks={"band": 1, "y": chunks, "x": chunks}, mask_and_scale=False, lock=False
            )
    except (RasterioIOError, OSError, ValueError) as exc:
        raise SceneError(f"{path}: cannot read raster ({_read_failure(path, exc)})") from None


def _absolute(path: Any) -> Any:
    """A local file's path made absolute, as the lazy graph will hold it: Dask cluster workers (and
    a caller that changes folder before computing) read it from another working directory."""
    if isinstance(path, str) and not _is_url(path) and not path.startswith("/vsi"):
        return os.path.abspath(path)
    return path


def _lazy_band(
    path: str,
    index: int,
    chunks: int,
    grid: tuple[Any, Affine, int, int] | None = None,
    resampling: Resampling = Resampling.bilinear,
    mask_fill: float | None = None,
) -> tuple[xr.DataArray, np.dtype, float | None, tuple[str, int] | None]:
    """One band as a lazy 2-D array, warped onto ``grid`` = (crs, transform, width, height) if it
    differs; last, ``(path, index)`` when it is not warped (see :attr:`RawBands.files`).

    ``mask_fill``: the file marks nodata with a mask band (GDAL's internal or alpha mask, not a
    nodata value): read through GDAL's warper, which honours it, with this value where masked."""
    path = _absolute(path)
    with _open(path) as src:
        if not 1 <= index <= src.count:
            raise SceneError(f"{path}: has {src.count} band(s); its STAC asset lists band {index}")
        dtype = np.dtype(src.dtypes[index - 1])
        nodata = src.nodata
        _check_readable(src, Path(path), decode=False)
        same = grid is None or (src.width, src.height, src.transform) == (grid[2], grid[3], grid[1])
        if grid is None:
            grid = (src.crs, src.transform, src.width, src.height)
        if mask_fill is None:  # a band file of a folder, SAFE or STAC item with a mask band of its own
            mask_fill = _mask_fill(src)
    same = same and mask_fill is None
    if same:
        da = _open_lazy(path, chunks)
    else:
        crs, transform, width, height = grid
        src = _open(path)
        vrt = WarpedVRT(
            src, crs=crs or src.crs, transform=transform, width=width, height=height,
            resampling=resampling, src_nodata=nodata, nodata=nodata if mask_fill is None else mask_fill,
        )
        da = _open_lazy(vrt, chunks)
        if mask_fill is not None:
            nodata = mask_fill
    return da.isel(band=index - 1, drop=True), dtype, nodata, (path, index) if same else None


def _assemble(
    layers: list[Any] | Any,
    bands: list[Band],
    sensor: Sensor,
    product: str | None,
    dtypes: list[np.dtype],
    nodatas: list[float | None],
    source: str,
    crs: Any,
    transform: Affine,
    item: dict[str, Any] | None = None,
    files: Sequence[tuple[str, int] | None] | None = None,
    coords: Mapping[str, Any] | None = None,
    remote: bool = False,
) -> Scene:
    """The scene from its bands' stored values — lazy 2-D Dask arrays, or one (band, y, x) array
    of one band per chunk — and the grid's ``y``/``x`` (and scalar) coordinates. Built with Dask,
    not ``xr.concat``: aligning 13 DataArrays cost more than masking a small scene (~0.05 s each,
    for archives of chips)."""
    convert = tuple(
        _converter(sensor.scaling(product, band), bool(np.issubdtype(dt, np.integer)), nd)
        for band, dt, nd in zip(bands, dtypes, nodatas)
    )
    if isinstance(layers, list):  # per band: each converted from its own dtype
        stored = dask_array.stack(layers)
        phys = dask_array.stack([layer.map_blocks(f, dtype="float32") for layer, f in zip(layers, convert)])
    else:
        stored = layers
        phys = BandwisePhysical(convert).over(stored)
    data = xr.DataArray(phys, dims=("band", "y", "x"), coords={"band": [b.name for b in bands], **(coords or {})},
                        attrs={"sensor": sensor.id, "source": source})
    raw = RawBands(stored, convert, tuple(files) if files is not None else None, remote)
    return Scene(data, sensor, bands, source, crs, transform, product or sensor.default_product, item, raw)


def _grid_coords(da: xr.DataArray) -> dict[str, Any]:
    """The ``y``/``x`` and scalar (e.g. rioxarray's ``spatial_ref``) coordinates of a (band, y, x) array."""
    return {k: v for k, v in da.coords.items() if k in ("y", "x") or v.ndim == 0}


def _check_valid_product(sensor: Sensor, product: str | None) -> None:
    if product is not None and product not in sensor.products:
        raise UsageError(f"sensor {sensor.id!r} has no product {product!r}; choose one of {', '.join(sensor.products)}")


# --------------------------------------------------------------------------- (a) multi-band GeoTIFF


def _read_multiband(path: Path | str, sensor, bands, product, resolution, registry, chunks) -> Scene:
    """A multi-band raster: a local file or a URL (read in place with range requests)."""
    remote = _is_url(str(path))
    # what messages and the sensor guess call it: the file name (of the URL's path)
    named = PurePosixPath(urlparse(str(path)).path) if remote else Path(path)
    src = _open(str(path))
    with src:
        count, descriptions = src.count, list(src.descriptions)
        crs, transform = src.crs, src.transform
        if crs is None and transform == Affine.identity():
            warnings.warn(f"{named.name} is not georeferenced; the mask will not be either", stacklevel=3)
        tags = src.tags()
        dtypes = [np.dtype(d) for d in src.dtypes]
        nodatas = [src.nodata] * count
        fill = _mask_fill(src)
        _check_readable(src, path)
    sensor = resolve_sensor(sensor, registry, named.name, str(path), tags.get("CLOUDMASK_SENSOR"),
                            "its CLOUDMASK_SENSOR tag")
    _check_valid_product(sensor, product)
    product = product or guess_product(sensor, tags.get("CLOUDMASK_PRODUCT", ""), named.name)
    skip = {i for i, b in enumerate(bands or []) if b.strip() in SKIP_LAYER}
    chosen = _name_file_bands(named, sensor, bands, count, descriptions)
    keep = [i for i in range(count) if i not in skip]  # 0-based layers read, in file order
    dtypes, nodatas = [dtypes[i] for i in keep], [nodatas[i] for i in keep]
    if resolution or fill is not None:
        grid = _grid_at_resolution(src, resolution) if resolution else None
        if grid is not None:
            crs, transform = grid[0], grid[1]
        warped = [_lazy_band(str(path), i + 1, chunks, grid, Resampling.average if resolution else Resampling.nearest,
                             mask_fill=fill)[0] for i in keep]
        layers, coords, files = [w.data for w in warped], _grid_coords(warped[0]), None
        if fill is not None:
            nodatas = [fill] * len(keep)
    else:
        whole = _open_lazy(str(path), chunks)  # one band per chunk
        layers, coords = (whole.data if not skip else whole.data[keep]), _grid_coords(whole)
        files = [(str(_absolute(str(path))), i + 1) for i in keep]
    return _assemble(layers, chosen, sensor, product, dtypes, nodatas, str(path), crs, transform, files=files,
                     coords=coords, remote=remote)


#: In ``--bands`` for a multi-band file, a layer to leave out (e.g. a UDM or alpha layer).
SKIP_LAYER = ("-", "_")


def _name_file_bands(path: PurePosixPath | Path, sensor: Sensor, bands, count: int, descriptions: list[str | None]) -> list[Band]:
    named = _described_bands(sensor, descriptions)
    if bands:
        if len(bands) != count:
            raise BandError(f"{path.name} has {count} bands but --bands names {len(bands)}"
                            f" (name each layer, '-' for one to leave out)")
        kept = [i for i, b in enumerate(bands) if b.strip() not in SKIP_LAYER]
        chosen = sensor.select([bands[i] for i in kept])
        if not chosen:
            raise BandError(f"{path.name}: --bands leaves out every layer")
        described = [named[i] for i in kept] if named is not None else []
        if described and all(described) and chosen != described:
            warnings.warn(f"{path.name}: --bands {','.join(bands)} overrides the file's band descriptions "
                          f"({','.join(n.name for n in described if n)})", stacklevel=3)
        return chosen
    if named is not None:
        unknown = [d or f"(layer {i + 1} undescribed)" for i, (d, n) in enumerate(zip(descriptions, named)) if n is None]
        names = [n.name for n in named if n is not None]
        twice = sorted({b for b in names if names.count(b) > 1})
        if not unknown and not twice:
            return [n for n in named if n is not None]
        if count == len(sensor.bands) and not twice and all(n is None or n is b for n, b in zip(named, sensor.bands)):
            return list(sensor.bands)  # what they do name agrees with the registry's order
        # some descriptions name bands, so the others are not a stray label: taking the registry
        # order instead would silently put layers under the wrong band
        why = f"{', '.join(repr(u) for u in unknown[:3])} not a band of {sensor.id}" if unknown else \
            f"{', '.join(twice)} described twice"
        raise BandError(f"{path.name}: the band descriptions do not name each layer once ({why}); "
                        f"say which they are with --bands (e.g. --bands {','.join(sensor.band_names[:count])})")
    if count == len(sensor.bands):
        return list(sensor.bands)
    if count == 1:  # one band of a scene whose files are not named by band: --bands cannot help
        raise BandError(
            f"{path.name} holds a single band; a scene stored one band per file is a folder whose file "
            f"names end in the band names (e.g. scene_{sensor.band_names[0]}.tif), read as one scene"
        )
    raise BandError(
        f"{path.name} has {count} bands, {sensor.id} has {len(sensor.bands)}, and the file's band descriptions "
        f"do not name them; say which they are with --bands (e.g. --bands {','.join(sensor.band_names[:count])})"
    )


def _described_bands(sensor: Sensor, descriptions: Sequence[str | None]) -> list[Band | None] | None:
    """Per layer the band its description names (None where it names none); None when no
    description names a band at all (no descriptions, or labels such as "Band 1")."""
    found: list[Band | None] = []
    for d in descriptions:
        try:
            found.append(sensor.band(d.strip()) if d and d.strip() else None)
        except BandError:
            found.append(None)
    return found if any(b is not None for b in found) else None


#: Metres per degree of latitude (and of longitude at the equator), for pixel sizes given in metres
#: on a geographic grid.
_M_PER_DEGREE = 111_320.0


def _mask_fill(src: rasterio.io.DatasetReader) -> float | None:
    """For a file whose nodata is a mask band (GDAL's internal per-dataset mask, e.g. ``rio cogeo
    --add-mask``, or an alpha band) rather than a nodata value: the value masked pixels are read as
    (NaN for floats, 0 or the type's minimum for integers), else None. Those pixels were classified."""
    from rasterio.enums import MaskFlags

    if src.nodata is not None:
        return None
    flags = src.mask_flag_enums
    if not any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags):
        return None
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind == "f":
        return float("nan")
    return 0.0 if dtype.kind == "u" else float(np.iinfo(dtype).min)


def _grid_at_resolution(src: rasterio.io.DatasetReader, resolution: float) -> tuple[Any, Affine, int, int]:
    """``src``'s extent on a grid of ``resolution`` metres (in degrees at the extent's mid-latitude
    on a geographic CRS), oriented as ``src`` (north-up or south-up; rotated grids become north-up)."""
    t, w, h = src.transform, src.width, src.height
    if src.crs is None and t == Affine.identity():  # pixel indices, not metres: no grid to resample on
        raise UsageError(f"{Path(str(src.name)).name} is not georeferenced: --resolution has no metres to work with")
    xs, ys = zip(*(t @ corner for corner in ((0, 0), (w, 0), (0, h), (w, h))))
    left, right, south, north = min(xs), max(xs), min(ys), max(ys)
    xres = yres = float(resolution)
    if src.crs is not None and src.crs.is_projected:  # metres in the CRS's own linear unit (US survey feet…)
        xres = yres = float(resolution) / float(src.crs.linear_units_factor[1] or 1.0)
    if src.crs is not None and src.crs.is_geographic:
        yres = resolution / _M_PER_DEGREE
        xres = yres / max(float(np.cos(np.radians((south + north) / 2))), 0.01)
    if (right - left) < xres or (north - south) < yres:  # a 1×1 mask of nodata said nothing
        raise UsageError(f"--resolution {resolution:g} m is coarser than the whole scene "
                         f"({(right - left) * resolution / xres:.0f} × {(north - south) * resolution / yres:.0f} m)")
    width = max(1, int(round((right - left) / xres)))
    height = max(1, int(round((north - south) / yres)))
    if t.b == 0 and t.d == 0 and t.e > 0:  # south-up stays south-up
        return src.crs, Affine(xres, 0, left, 0, yres, south), width, height
    return src.crs, Affine(xres, 0, left, 0, -yres, north), width, height


def _check_readable(ds: rasterio.io.DatasetReader, path: Path | str, decode: bool = True) -> None:
    """Fail now, with a clear message, on a file cut short (an interrupted download or copy), not
    mid-inference.

    A local GeoTIFF says where each block lies (GDAL's ``BLOCK_OFFSET_x_y`` / ``BLOCK_SIZE_x_y``), so
    comparing the block ends with the file's size finds truncation without decoding anything (for a
    256² chip, decoding its one block had cost as much as reading the chip again). Other files
    (archives, URLs, other formats) have the last band's last pixel read: its block is the file's last
    under either interleave, unless ``decode`` is False (one band of many: a range request or a
    JPEG 2000 tile per band is not worth it). A damaged block that is present in full is found where
    it is read."""
    end = _block_data_end(ds) if os.path.isfile(path) else None
    if end is not None:
        size = os.path.getsize(path)
        if end > size:
            raise SceneError(f"{path}: file is truncated ({size} bytes; its blocks reach byte {end})")
        return
    if not decode:
        return
    try:
        h, w = ds.height, ds.width
        ds.read(ds.count, window=((h - 1, h), (w - 1, w)))
    except RasterioIOError as exc:
        raise SceneError(f"{path}: file is corrupt or truncated ({first_line(exc)})") from None


def _block_data_end(ds: rasterio.io.DatasetReader, max_blocks: int = 4096) -> int | None:
    """The byte past the last stored block of a GeoTIFF (None: not a GeoTIFF GDAL can map).

    Every block of every band when there are at most ``max_blocks`` (~6 µs each), else the last
    band's last block, which GDAL and most writers store last."""
    by, bx = ds.block_shapes[-1]
    nx, ny = -(-ds.width // bx), -(-ds.height // by)
    if nx * ny * ds.count <= max_blocks:
        cells = [(b, i, j) for b in range(1, ds.count + 1) for j in range(ny) for i in range(nx)]
    else:
        cells = [(ds.count, nx - 1, ny - 1)]
    end = 0
    try:
        for b, i, j in cells:
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=b)
            size = ds.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=b)
            if offset is None or size is None:
                return None
            end = max(end, int(offset) + int(size))
    except (RasterioError, ValueError):
        return None
    return end


# --------------------------------------------------------------------------- (b) folder of band files


def band_file_key(stem: str) -> list[str]:
    """Candidate band names encoded in a file stem, most specific first: ``LC08_..._B4`` → ``B4``;
    ``T32_..._B8A_20m`` → ``B8A``; ``S3A_OL_1_EFR_Oa01`` → ``Oa01`` (a custom sensor's band names
    work as the stem's last part, after any ``_20m`` resolution suffix)."""
    keys = [stem]
    parts = re.split(r"[_.\-]", stem)
    for part in parts:
        if re.fullmatch(r"B\d{1,2}A?", part, re.I) or re.fullmatch(r"SR_B\d+", part, re.I):
            keys.append(part)
    m = re.search(r"(?:SR_|ST_)?(B\d{1,2}A?)(?:_\d+m)?$", stem, re.I)
    if m:
        keys.append(m.group(1))
    last = stem_last_part(stem)
    if last and last not in keys:
        keys.append(last)
    return keys


def stem_last_part(stem: str) -> str:
    """The last ``_``/``.``/``-`` separated part of a file stem, a ``20m``-style suffix skipped."""
    parts = [p for p in re.split(r"[_.\-]", stem) if p]
    if len(parts) > 1 and re.fullmatch(r"\d+m", parts[-1], re.I):
        parts = parts[:-1]
    return parts[-1] if parts else ""


def degrees_within(value: Any, low: float, high: float, open_low: bool = False) -> float | None:
    """``value`` as degrees within [low, high] (or (low, high]), else None: metadata is untrusted."""
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if (low < v if open_low else low <= v) and v <= high else None


def sun_angles(azimuth: Any, elevation: Any) -> tuple[float | None, float | None] | None:
    """Checked (azimuth, elevation): an azimuth within −180–360 (Landsat MTLs give −180–180),
    returned within 0–360; an elevation above 0 up to 90; None when neither is usable."""
    az, el = degrees_within(azimuth, -180.0, 360.0), degrees_within(elevation, 0.0, 90.0, open_low=True)
    if az is not None:
        az %= 360.0
    return None if az is None and el is None else (az, el)


#: Metadata files that state the sun's position, and how to read it from their text.
_SUN_FILES = re.compile(r"(_MTL\.(txt|json)|MTD_TL\.xml)$", re.I)
_LANDSAT_SUN = tuple(re.compile(rf'{key}"?\s*[=:]\s*"?(-?[\d.]+)') for key in ("SUN_AZIMUTH", "SUN_ELEVATION"))
_S2_SUN = re.compile(r"<Mean_Sun_Angle>\s*<ZENITH_ANGLE[^>]*>\s*([-\d.]+)\s*</ZENITH_ANGLE>\s*"
                     r"<AZIMUTH_ANGLE[^>]*>\s*([-\d.]+)\s*</AZIMUTH_ANGLE>", re.I)
_SUN_FILE_MAX = 4 * 2**20  # a larger "metadata" file is not read


def sun_from_metadata(text: str) -> tuple[float | None, float | None] | None:
    """The sun in a Landsat MTL (txt or json) or a Sentinel-2 granule's MTD_TL.xml, read with
    regular expressions (no XML parser sees untrusted input)."""
    m = _S2_SUN.search(text)
    if m:
        return sun_angles(m.group(2), 90.0 - float(m.group(1)) if degrees_within(m.group(1), 0.0, 90.0) is not None else None)
    az, el = (r.search(text) for r in _LANDSAT_SUN)
    if az or el:
        return sun_angles(az.group(1) if az else None, el.group(1) if el else None)
    return None


def _sun_from_file(path: Path) -> tuple[float | None, float | None] | None:
    try:
        if path.stat().st_size > _SUN_FILE_MAX:
            return None
        return sun_from_metadata(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def is_safe(path: Path) -> bool:
    """A Sentinel-2 product folder as ESA distributes it (``S2A_MSIL2A_….SAFE`` with ``GRANULE/``)."""
    return path.name.upper().endswith(".SAFE") and (path / "GRANULE").is_dir()


_SAFE_NAME = re.compile(r"MSI(L1C|L2A)_\d{8}T\d{6}_N(\d{2})(\d{2})_", re.I)


def _read_safe(path: Path, sensor, bands, product, resolution, registry, chunks) -> Scene:
    """Why: a SAFE holds one scene in up to three band folders (L2A: 10, 20 and 60 m), which a tree
    walk would mask three times, and its DN offset depends on the baseline in its name."""
    granules = sorted(g for g in (path / "GRANULE").iterdir() if (g / "IMG_DATA").is_dir())
    if len(granules) != 1:
        raise SceneError(f"{path}: expected one granule with IMG_DATA in GRANULE/, found {len(granules)}")
    img = granules[0] / "IMG_DATA"
    folder = img / "R20m" if (img / "R20m").is_dir() else img  # L2A keeps every band but B08 at 20 m
    sensor = resolve_sensor(sensor, registry, path.name, str(path))
    scene = _read_band_folder(folder, sensor, bands, product or _safe_product(path.name, sensor), resolution,
                              registry, chunks)
    scene.source = str(path)
    scene.sun = _sun_from_file(granules[0] / "MTD_TL.xml")  # None when missing or unreadable
    return scene


def _safe_product(name: str, sensor: Sensor) -> str | None:
    """The registry product a SAFE's name says: level, and before baseline 04.00 no +1000 DN offset."""
    m = _SAFE_NAME.search(name)
    if not m or sensor.id != "sentinel2":
        return None
    product = m.group(1).lower()
    if int(m.group(2)) < 4 and f"{product}-pre0400" in sensor.products:
        product = f"{product}-pre0400"
    return product


#: Archives read in place through GDAL's virtual file systems (no extraction): ESA's ``.SAFE.zip``,
#: USGS's Landsat ``.tar`` bundles.
ARCHIVE_SUFFIXES = {".zip": "/vsizip/", ".tar": "/vsitar/"}


def is_archive(path: Path) -> bool:
    return path.suffix.lower() in ARCHIVE_SUFFIXES and path.is_file()


def archive_rasters(path: Path) -> list[str]:
    """The raster files in a zip or tar (names inside it; hidden files left out)."""
    return _rasters_among(_archive_members(path))


def _rasters_among(members: Sequence[str]) -> list[str]:
    return [m for m in members
            if PurePosixPath(m).suffix.lower() in _RASTER_SUFFIXES and not PurePosixPath(m).name.startswith(".")]


def _archive_text(path: Path, member: str) -> str | None:
    """A small text member of a zip or tar (a metadata file), or None."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                if z.getinfo(member).file_size > _SUN_FILE_MAX:
                    return None
                return z.read(member).decode("utf-8", errors="replace")
        with tarfile.open(path) as t:
            info = t.getmember(member)
            f = t.extractfile(info) if info.size <= _SUN_FILE_MAX else None
            return f.read().decode("utf-8", errors="replace") if f is not None else None
    except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError):
        return None


def _archive_members(path: Path) -> list[str]:
    """Names of the files in a zip or tar (listing only: nothing is extracted)."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                return [i.filename for i in z.infolist() if not i.is_dir()]
        with tarfile.open(path) as t:
            return [m.name for m in t.getmembers() if m.isfile()]
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise SceneError(f"{path}: cannot read archive ({first_line(exc)})") from None


def _read_archive(path: Path, sensor, bands, product, resolution, registry, chunks) -> Scene:
    """One scene from the band files inside a zip or tar. Why in place: a Sentinel-2 SAFE zip or a
    Landsat bundle is ~1 GB; GDAL reads the bands' blocks straight out of it.

    The folder holding the scene's band files is, in order: a SAFE's ``IMG_DATA/R20m`` (L2A), its
    ``IMG_DATA`` (L1C), else the folder with the most raster files. An archive of one raster is that
    raster (e.g. a zipped multi-band GeoTIFF)."""
    members = _archive_members(path)  # listed once: a tar's listing reads every member's header
    rasters = [PurePosixPath(m) for m in _rasters_among(members)]
    if not rasters:
        raise SceneError(f"{path}: archive holds no raster files (.tif, .jp2)")
    # GDAL's braced form: the archive's own path may hold dots and suffixes of any kind, and the
    # path survives pathlib (which would fold "/vsizip//abs" into "/vsizip/abs")
    vsi = ARCHIVE_SUFFIXES[path.suffix.lower()] + "{" + str(path.resolve()) + "}"
    if len(rasters) == 1:
        scene = _read_multiband(Path(f"{vsi}/{rasters[0]}"), sensor, bands, product, resolution, registry, chunks)
        scene.source = str(path)
        return scene
    folders: dict[PurePosixPath, list[PurePosixPath]] = {}
    for m in rasters:
        folders.setdefault(m.parent, []).append(m)

    def rank(folder: PurePosixPath) -> tuple[int, int]:
        parts = [p.upper() for p in folder.parts]
        safe = 2 if parts[-2:] == ["IMG_DATA", "R20M"] else 1 if parts[-1:] == ["IMG_DATA"] else 0
        return safe, len(folders[folder])

    folder = max(sorted(folders), key=rank)
    safe = next((p for p in folder.parts if p.upper().endswith(".SAFE")), None)
    hint = f"{safe or path.name}/{folders[folder][0].name}"
    sensor = resolve_sensor(sensor, registry, hint, str(path))
    _check_valid_product(sensor, product)
    product = product or _safe_product(safe or path.name, sensor) or guess_product(sensor, "", hint)
    files = [(f"{vsi}/{m}", m.stem) for m in sorted(folders[folder])]
    wanted, chosen = _match_band_files(files, sensor, bands, str(path))
    scene = _stack_files([(p, 1) for p in chosen], wanted, sensor, product, resolution, str(path), chunks)
    meta = next((m for m in sorted(members) if _SUN_FILES.search(m)), None)
    text = _archive_text(path, meta) if meta is not None else None
    scene.sun = sun_from_metadata(text) if text is not None else None
    return scene


def _read_band_folder(path: Path, sensor, bands, product, resolution, registry, chunks) -> Scene:
    entries = sorted(p for p in path.iterdir() if p.is_file())
    unfinished = [p.name for p in entries if p.name == FETCH_MARKER or p.name.endswith(".part")]
    if unfinished:  # masked with the bands it has, a half-fetched scene was then skipped as done for good
        raise SceneError(f"{path}: its download is not complete ({unfinished[0]}): run cloudmask fetch again "
                         "(a run stopped, failed, or still at work)")
    files = [p for p in entries if p.suffix.lower() in _RASTER_SUFFIXES]
    item_json, item = _stac_item_in(path)
    if not files:
        if item_json is not None:
            return _read_stac_item(str(item_json), sensor, bands, product, resolution, registry, chunks)
        raise SceneError(f"{path}: folder holds no raster files (.tif, .jp2)")
    hint = path.name + "/" + files[0].name
    declared = None
    if item is not None:
        hint = item.get("properties", {}).get("platform") or hint
        declared = item.get("properties", {}).get(SENSOR_PROPERTY)
    sensor = resolve_sensor(sensor, registry, hint, str(path), declared, f"its item's {SENSOR_PROPERTY}")
    _check_valid_product(sensor, product)
    if product is None and item is not None:  # `cloudmask fetch` records the registry product it chose
        from cloudmask.stac import item_product

        product = item_product(item, sensor)
    # else what the names say (Landsat L1 vs L2): the sensor's default would scale L1 DNs as L2
    product = product or guess_product(sensor, "", path.name + "/" + files[0].name)
    try:
        wanted, chosen = _match_band_files([(str(f), f.stem) for f in files], sensor, bands, str(path))
    except SceneError:
        if item_json is None:
            raise
        # files not named by band (e.g. `cloudmask fetch` of an asset holding several bands): the
        # item beside them says which file and layer each band is
        return _read_stac_item(str(item_json), sensor, bands, product, resolution, registry, chunks)
    scene = _stack_files([(p, 1) for p in chosen], wanted, sensor, product, resolution, str(path), chunks, item)
    if scene.sun is None:  # no STAC item saying it: a Landsat MTL beside the bands may
        meta = next((f for f in entries if _SUN_FILES.search(f.name)), None)
        scene.sun = _sun_from_file(meta) if meta is not None else None
    return scene


def _stac_item_in(folder: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The first JSON file in ``folder`` that is a STAC item (a GeoJSON Feature), and its content.
    Why not any JSON: USGS ships Landsat metadata as ``*_MTL.json``, which says nothing of the
    product a STAC item records, so taking it for one scaled L1 bands as L2."""
    for candidate in sorted(folder.glob("*.json")):
        if _SUN_FILES.search(candidate.name):
            continue
        try:
            doc = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("type") == "Feature":
            return candidate, doc
    return None, None


def _match_band_files(files: Sequence[tuple[str, str]], sensor: Sensor, bands: Sequence[str] | None,
                      source: str) -> tuple[list[Band], list[str]]:
    """(path, stem) pairs of single-band files → the bands they hold, in registry (or ``bands``) order."""
    found: dict[str, str] = {}
    for path, stem in files:
        for key in band_file_key(stem):
            try:
                band = sensor.band(key)
            except BandError:
                continue
            found.setdefault(band.name, path)
            break
    if not found:
        raise SceneError(f"{source}: no file names a band of {sensor.id} (expected e.g. *_{sensor.band_names[0]}.tif)")
    if bands:
        wanted = sensor.select(bands)
        missing = [b.name for b in wanted if b.name not in found]
        if missing:
            raise BandError(f"{source}: no file for band(s) {', '.join(missing)}")
    else:
        wanted = [b for b in sensor.bands if b.name in found]
    return wanted, [found[b.name] for b in wanted]


def _stack_files(
    paths: list[tuple[str, int]],
    bands: list[Band],
    sensor: Sensor,
    product: str | None,
    resolution: float | None,
    source: str,
    chunks: int,
    item: dict[str, Any] | None = None,
) -> Scene:
    """Warp single-band files onto the grid of the target resolution and stack them."""
    res = float(resolution or sensor.default_resolution)
    # Reference grid: the union extent of the first file at the requested resolution; the file's own
    # grid when every band is a layer of that one file (a multi-band asset has one grid: resampling
    # it to the sensor's default resolution would only blur it or blow it up)
    one_file = resolution is None and len(paths) > 1 and len({p for p, _ in paths}) == 1
    with _open(paths[0][0]) as ref:
        native = (ref.crs, ref.transform, ref.width, ref.height)
        grid = _grid_at_resolution(ref, res) if ref.crs is not None and not one_file else native
    layers, dtypes, nodatas, files = [], [], [], []
    for (p, idx), band in zip(paths, bands):
        with _open(p) as ds:
            coarser = abs(ds.transform.a) > abs(grid[1].a)  # in the grid's units (degrees on a geographic grid)
        resampling = Resampling.bilinear if coarser else Resampling.average
        layer, dt, nd, file = _lazy_band(p, idx, chunks, grid, resampling)
        layers.append(layer.data)
        dtypes.append(dt)
        nodatas.append(nd)
        files.append(file)
    crs, transform, width, height = grid
    return _assemble(layers, bands, sensor, product, dtypes, nodatas, source, crs, transform, item, files,
                     remote=any(_is_url(p) for p, _ in paths))


# --------------------------------------------------------------------------- (c) STAC item


def load_item(source: str) -> dict[str, Any]:
    """Read a STAC item JSON from a path or URL (plain HTTP GET; no pystac-client needed)."""
    try:
        if _is_url(source) and not source.startswith("file://"):
            import urllib.request

            with urllib.request.urlopen(source, timeout=30) as resp:  # noqa: S310 (user-supplied URL)
                item = json.load(resp)
        else:
            item = json.loads(Path(source.removeprefix("file://")).read_text(encoding="utf-8"))
    except (OSError, ValueError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: a dropped connection
        raise SceneError(f"{source}: cannot read STAC item ({first_line(exc) or type(exc).__name__})") from None
    if not isinstance(item, dict) or item.get("type") != "Feature" or "assets" not in item:
        raise SceneError(f"{source}: not a STAC item (expected a GeoJSON Feature with assets)")
    return item


def asset_for_band(item: dict[str, Any], sensor: Sensor, band: Band) -> str | None:
    """The asset key holding ``band``: the registry's catalogue keys first, then ``eo:bands`` names."""
    assets = item.get("assets", {})
    for key in band.assets.values():
        if key in assets:
            return key
    names = {n.lower() for n in band.names}
    for key, asset in assets.items():
        if key.lower() in names:
            return key
        if _listed_band(asset, band) is not None:
            return key
    return None


def _band_lists(asset: Mapping[str, Any]) -> list[list[Any]]:
    """An asset's per-layer band lists, in the order they are trusted to name layers: STAC 1.0's
    ``eo:bands``, STAC 1.1's ``bands``, then ``raster:bands`` (rarely named, but in layer order)."""
    lists = [asset.get(k) for k in ("eo:bands", "bands", "raster:bands")]
    return [v for v in lists if isinstance(v, list) and v]


def _listed_band(asset: Mapping[str, Any], band: Band) -> int | None:
    """The 1-based layer of ``asset`` that its band lists name as ``band`` (by name or common name), or None."""
    names = {n.lower() for n in band.names}
    for entries in _band_lists(asset):
        for i, eo in enumerate(entries, start=1):
            if isinstance(eo, dict) and {str(eo.get("name", "")).lower(), str(eo.get("common_name", "")).lower()} & names:
                return i
    return None


def asset_layer(asset: Mapping[str, Any], band: Band) -> int:
    """The 1-based layer of ``asset`` that holds ``band``. Why: one asset may hold every band (a
    PlanetScope ``ortho_analytic_4b_sr``, a ``cloudmask simulate`` image), and its band list's order
    is the file's layer order; reading layer 1 for each band gave n copies of the first band."""
    return _listed_band(asset, band) or 1


def _read_stac_item(source: str, sensor, bands, product, resolution, registry, chunks) -> Scene:
    item = load_item(source)
    platform = str(item.get("properties", {}).get("platform", ""))
    sensor = resolve_sensor(sensor, registry, platform or str(item.get("id", "")), source,
                            item.get("properties", {}).get(SENSOR_PROPERTY), f"its {SENSOR_PROPERTY}")
    _check_valid_product(sensor, product)
    if product is None:  # recorded by `cloudmask fetch`, else the Sentinel-2 processing-baseline rule
        from cloudmask.stac import item_product

        product = item_product(item, sensor)
    wanted = sensor.select(bands) if bands else list(sensor.bands)
    paths, chosen = [], []
    base = source if _is_url(source) else str(Path(source).resolve().parent) + "/"
    for band in wanted:
        key = asset_for_band(item, sensor, band)
        if key is None:
            if bands:
                raise BandError(f"{source}: the item has no asset for band {band.name}")
            continue
        href = item["assets"][key]["href"]
        if not _is_url(href) and not Path(href).is_absolute():
            # a relative href is a URL reference: "a%20b.tif" names "a b.tif" beside a local item
            href = urljoin(base, href) if _is_url(base) else str(Path(base) / unquote(href))
        paths.append((href, asset_layer(item["assets"][key], band)))
        chosen.append(band)
    if not chosen:
        raise SceneError(f"{source}: no asset of the item matches a band of {sensor.id}")
    return _stack_files(paths, chosen, sensor, product, resolution, source, chunks, item)
