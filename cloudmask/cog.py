"""Atomic Cloud-Optimised GeoTIFF output.

Why a raw file first: results arrive window by window from Dask, so they are streamed into a plain
tiled GeoTIFF next to the destination (hidden name, same folder so the final rename is atomic), then
GDAL's COG driver builds the overviews and the COG layout, the result is checked with rio-cogeo's
``cog_validate``, and only then renamed onto the destination. A crash or a full disk at any point
leaves the destination untouched and no temporary file behind (a SIGKILL can leave a hidden
``.name.*.tmp.tif``, which the next run for that output removes).
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
import rasterio.shutil
from rio_cogeo.cogeo import cog_validate

from cloudmask.errors import OutputError, UsageError, first_line
from cloudmask.files import remove_quietly  # (cog.remove_quietly for its callers)

#: Internal tile edge of the COGs (and of the raw intermediate), in pixels.
BLOCK = 512

#: Colours for the class mask (RGBA): clear, thick cloud, thin cloud, shadow, nodata.
MASK_COLORMAP: dict[int, tuple[int, int, int, int]] = {
    0: (40, 160, 60, 255),
    1: (255, 255, 255, 255),
    2: (150, 220, 255, 255),
    3: (90, 60, 40, 255),
    255: (0, 0, 0, 0),
}
#: Band-1 descriptions of the masks ``cloudmask mask`` writes; ``cloudmask evaluate`` recognises a
#: ``--binary`` mask by its description (see :func:`cloudmask.evaluate.is_binary_mask`).
MASK_DESCRIPTION = "cloud mask: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 nodata"
BINARY_MASK_DESCRIPTION = "cloud mask: 0 clear, 1 cloud, 255 nodata"
BINARY_COLORMAP: dict[int, tuple[int, int, int, int]] = {
    0: (40, 160, 60, 255),
    1: (255, 255, 255, 255),
    255: (0, 0, 0, 0),
}

_TMP_MARK = ".cmtmp-"


def temp_path(dst: Path, tag: str) -> Path:
    """A hidden temporary path beside ``dst`` (same filesystem, so ``os.replace`` is atomic)."""
    return dst.parent / f".{dst.name}{_TMP_MARK}{tag}-{os.getpid()}-{secrets.token_hex(4)}.tif"


def stale_temps(dst: Path) -> list[Path]:
    """Temporaries a killed run left for ``dst`` (only safe to delete while holding its lock)."""
    if not dst.parent.is_dir():
        return []
    return sorted(dst.parent.glob(f".{glob.escape(dst.name)}{_TMP_MARK}*"))  # a name may hold [ ] * ?


def is_disk_full(exc: BaseException, path: Path | str | None = None, writing: bool = False) -> bool:
    """Whether a failed write ran out of space: ENOSPC anywhere in the exception chain, or (GDAL
    often says only "Write error at scanline 0", its "No space left" going to libtiff's own stderr)
    a write failure while the output's filesystem has under 1 MiB free."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(getattr(x, "errno", None) == errno.ENOSPC or "no space left" in str(x).lower() for x in chain):
        return True
    if path is not None and (writing or any("write" in str(x).lower() for x in chain)):
        try:
            st = os.statvfs(Path(path).parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 2**20
    return False


def output_error(exc: BaseException, path: Path | str, writing: bool = False) -> OutputError:
    """One-line error for a failed write: disk full and permissions are named as such.
    ``writing``: the failing step only writes (a read error there means a file cut short)."""
    if is_disk_full(exc, path, writing):
        return OutputError(f"{path}: disk full while writing (no space left on device)")
    # only an OSError's errno is the system's: GDAL's errors carry their own numbers in ``errno``
    # (its generic error, 1, is EPERM's number: a "File too large" read as "not writable")
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
        return OutputError(f"{path}: output folder is not writable")
    return OutputError(f"{path}: cannot write output ({first_line(exc)})")


class RasterSink:
    """A raw tiled GeoTIFF that accepts ``sink[y0:y1, x0:x1] = block`` (a ``dask.array.store`` target).

    Thread safety comes from the lock ``dask.array.store`` holds around each write. Statistics the
    STAC item needs (class counts) are accumulated as blocks arrive, so the file is never re-read.
    """

    def __init__(
        self,
        dst: Path,
        *,
        width: int,
        height: int,
        count: int,
        dtype: str,
        crs: Any,
        transform: Any,
        nodata: float | None,
        descriptions: Sequence[str] = (),
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        scales: Sequence[float] | None = None,
        tags: dict[str, str] | None = None,
        count_values: bool = False,
        tag: str = "raw",
        readable: bool = False,
    ) -> None:
        self.dst = Path(dst)
        self.path = temp_path(self.dst, tag)
        self.count = count
        self.counts = np.zeros(256, dtype="int64") if count_values else None
        profile: dict[str, Any] = {
            "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
            "nodata": nodata, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
            "compress": "none", "BIGTIFF": "IF_SAFER",
        }
        if count > 1:  # GDAL would take 3–4 byte bands for RGB(A), e.g. P(shadow) for alpha
            profile["photometric"] = "MINISBLACK"
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        if len(descriptions) > count or (colormap and count != 1):
            raise UsageError(f"{self.dst}: {len(descriptions)} band descriptions for {count} band(s)"
                             if len(descriptions) > count else f"{self.dst}: a colour table needs one band, not {count}")
        self.ds = None
        try:
            self.ds = rasterio.open(self.path, "w+" if readable else "w", **profile)
            for i, d in enumerate(descriptions, start=1):
                self.ds.set_band_description(i, d)
            if colormap:
                self.ds.colorinterp = [ColorInterp.palette]
                self.ds.write_colormap(1, colormap)
            if scales:
                self.ds.scales = tuple(scales)
            if tags:
                self.ds.update_tags(**tags)
        except BaseException as exc:
            if self.ds is not None:
                self.ds.close()
            remove_quietly(self.path)
            if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, OSError):  # CRSError is a ValueError
                raise UsageError(f"{self.dst}: cannot write this raster ({first_line(exc)})") from None
            if isinstance(exc, (OSError, RasterioError)):
                raise output_error(exc, self.dst) from None
            raise

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        ys, xs = key[-2], key[-1]
        window = ((ys.start or 0, ys.stop), (xs.start or 0, xs.stop))
        arr = np.asarray(value)
        try:
            if arr.ndim == 2:
                self.ds.write(arr, 1, window=window)
            else:
                self.ds.write(arr, window=window)
        except (OSError, RasterioError) as exc:
            raise output_error(exc, self.dst) from None
        if self.counts is not None:
            self.counts += value_counts(arr)

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of band 1 back (a scratch sink opened with ``readable=True``)."""
        try:
            return self.ds.read(1, window=((y0, y1), (0, self.ds.width)))
        except (OSError, RasterioError) as exc:
            raise output_error(exc, self.dst) from None

    def close(self) -> None:
        if not self.ds.closed:
            try:
                self.ds.close()
            except (OSError, RasterioError) as exc:
                raise output_error(exc, self.dst) from None

    def discard(self) -> None:
        """Close and delete the raw file (used on every exit path)."""
        try:
            if not self.ds.closed:
                self.ds.close()
        except Exception:  # noqa: BLE001 - already failing; the file is removed next
            pass
        remove_quietly(self.path)


#: Values a mask holds (classes and nodata), counted one by one before falling back to bincount.
_MASK_VALUES = (0, 1, 2, 3, 255)


def value_counts(arr: np.ndarray) -> np.ndarray:
    """Counts of each value 0–255 of a uint8 array. A mask holds a handful of values, and one
    comparison per value is ~3× cheaper than ``np.bincount``, which widens every pixel to int64."""
    counts = np.zeros(256, dtype="int64")
    if arr.dtype == np.uint8:
        for v in _MASK_VALUES:
            counts[v] = np.count_nonzero(arr == np.uint8(v))
        if counts.sum() == arr.size:
            return counts
    return np.bincount(arr.ravel(), minlength=256)[:256].astype("int64")


def translate(raw: Path, dst: Path, overview_resampling: str = "mode") -> Path:
    """Turn a raw tiled GeoTIFF into a validated COG at a temporary path beside ``dst``; return it.

    The caller renames the result onto ``dst`` (see :func:`commit`), so outputs of one scene can be
    published together.
    """
    part = temp_path(dst, "cog")
    try:
        # GDAL's COG driver copies the raw file straight into the COG layout. rio-cogeo's
        # cog_translate goes through a WarpedVRT whose per-pixel nodata masking cost more than the
        # rest (8192² mask: 1.8 → 0.7 s, same file). It runs after the model's workers are done, so
        # it may compress and build overviews on every core. GDAL's own temporaries (overviews) are
        # named after ``part``, so stale_temps() finds them too.
        if not raw.exists():  # (rasterio says "TypeError" for a missing file opened r+)
            raise FileNotFoundError(errno.ENOENT, "the output folder or its temporary was removed while writing",
                                    str(raw))
        with rasterio.open(raw, "r+") as ds:  # says how the overviews were made (as rio-cogeo does)
            ds.update_tags(OVERVIEW_RESAMPLING=overview_resampling.upper())
        _copy_to_cog(raw, part, overview_resampling)
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        # (GDAL's copy raises its own CPLE_* errors; a raw file that a full disk cut short on
        # closing fails here as a read error)
        _remove_with_gdal_temps(part)
        raise output_error(exc, dst, writing=True) from None
    except BaseException:  # Ctrl-C too: the scene in progress leaves no temporaries
        _remove_with_gdal_temps(part)
        raise
    try:
        ok, errors, _ = cog_validate(str(part), quiet=True)
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        # a COG that a full disk cut short fails here, on reading it back ("TIFFReadDirectory")
        remove_quietly(part)
        raise output_error(exc, dst, writing=True) from None
    except BaseException:
        remove_quietly(part)
        raise
    if not ok:
        remove_quietly(part)
        raise OutputError(f"{dst}: written file is not a valid COG ({'; '.join(errors)})")
    return part


def _copy_to_cog(raw: Path, part: Path, overview_resampling: str) -> None:
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        rasterio.shutil.copy(
            str(raw), str(part), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
            OVERVIEW_RESAMPLING=overview_resampling.upper(), NUM_THREADS="ALL_CPUS",
        )


def _remove_with_gdal_temps(part: Path) -> None:
    for p in part.parent.glob(glob.escape(part.name) + "*"):  # the COG itself and GDAL's overview temporaries
        remove_quietly(p)


def commit(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Rename finished temporaries onto their destinations, in order (put the primary output last)."""
    for tmp, dst in pairs:
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            raise output_error(exc, dst) from None


#: numpy dtypes a GeoTIFF holds as they are.
_GDAL_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
                          "float64", "complex64", "complex128"})


def write_cog(
    array: np.ndarray,
    dst: str | Path,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    descriptions: Sequence[str] = (),
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    overview_resampling: str = "mode",
) -> Path:
    """Write an in-memory (y, x) or (band, y, x) array as a COG, atomically. For small outputs and tests."""
    dst = Path(dst)
    arr = np.asarray(array)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3:
        raise UsageError(f"{dst}: write_cog takes a (y, x) or (band, y, x) array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype("uint8")
    if arr.dtype.name not in _GDAL_DTYPES:
        raise UsageError(f"{dst}: GeoTIFF cannot hold {arr.dtype} values; use one of {', '.join(sorted(_GDAL_DTYPES))}")
    sink = RasterSink(
        dst, width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=str(arr.dtype), crs=crs,
        transform=transform, nodata=nodata, descriptions=descriptions, colormap=colormap,
    )
    part = None
    try:
        sink[:, :] = arr
        sink.close()
        part = translate(sink.path, dst, overview_resampling)
        commit([(part, dst)])
        part = None
    finally:
        sink.discard()
        remove_quietly(part)
    return dst


def is_valid_cog(path: str | Path) -> bool:
    """True when ``path`` opens, passes ``cog_validate`` and holds all its blocks (used to skip
    finished outputs). Why the block map: cog_validate reads only the headers, so a file cut short
    after them passed, and every rerun skipped its scene."""
    try:
        ok, _, _ = cog_validate(str(path), quiet=True)
        if not ok:
            return False
        from cloudmask.scene import _block_data_end  # imported here: the scene stack is heavy

        with rasterio.open(path) as ds:
            end = _block_data_end(ds)
        return end is None or end <= os.path.getsize(path)
    except Exception:  # noqa: BLE001 - any failure to open means "not a finished output"
        return False


__all__ = [
    "BLOCK", "MASK_COLORMAP", "BINARY_COLORMAP", "MASK_DESCRIPTION", "BINARY_MASK_DESCRIPTION", "RasterSink", "translate", "commit", "write_cog",
    "is_valid_cog", "temp_path", "stale_temps", "output_error", "cog_validate",
]
