"""Download what ``cloudmask mask`` needs from STAC search results, robustly.

One folder per item, ``<out>/<sanitised id>/``, holding one GeoTIFF per registry band named by the
band (``B04.tif``, ``B5.tif``: the scene reader's folder matcher reads them directly) and
``item.json``, the item with those assets' hrefs rewritten to the local files and the registry product
recorded (``cloudmask:product``). ``item.json`` is written last, so a folder that has it is complete.

Each file is streamed to ``<name>.part`` and renamed only after its size (``Content-Length`` and
``file:size``) and checksum (``file:checksum`` multihash) match. Transient failures (connection drops,
timeouts, 5xx, 429) are retried with exponential backoff, resuming with an HTTP ``Range`` request from
the bytes already on disk; a ``.part`` left by an interrupted run is resumed the same way next time.
``clip=True`` instead reads only the bbox window of each COG through GDAL's range requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from cloudmask.errors import FetchError, OutputBusyError, OutputError, UsageError, first_line
from cloudmask.files import FETCH_LOCK, FETCH_MARKER, OutputLock
from cloudmask.stac import PRODUCT_PROPERTY, SENSOR_PROPERTY, Found, sanitise_id

log = logging.getLogger("cloudmask.fetch")

ITEM_FILE = "item.json"
#: GeoTIFF tag of a band file cut to a clip box: the box (lon/lat, JSON). Full assets are stored as
#: downloaded, without it. A run for another extent fetches such files again instead of mixing them.
CLIP_TAG = "CLOUDMASK_CLIP_BBOX"
CHUNK_BYTES = 1 << 14  # small reads: a dropped connection loses at most one chunk

#: Progress callback: (file key, bytes just received, total bytes or None).
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class Retry:
    """Retry policy: ``attempts`` tries in all, sleeping ``backoff * 2**n`` (capped) between them."""

    attempts: int = 5
    backoff: float = 0.5
    max_sleep: float = 20.0
    timeout: float = 60.0

    def sleep(self, n: int, stop: threading.Event | None = None) -> None:
        """The pause before attempt ``n + 1``; cut short when ``stop`` is set (Ctrl-C, SIGTERM)."""
        delay = min(self.max_sleep, self.backoff * (2**n))
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise Stopped("stopped while waiting to retry")


class _Transient(Exception):
    """A failure worth retrying (the message says what happened)."""


@dataclass
class FileTask:
    """One band file of one item."""

    found: Found
    band: str
    asset_key: str
    href: str
    dest: Path
    size: int | None = None  # file:size, when the catalogue gives it
    checksum: str | None = None  # file:checksum multihash, hex

    @property
    def key(self) -> str:
        return f"{self.dest.parent.name}/{self.dest.name}"


@dataclass
class ItemPlan:
    """Everything to fetch for one item."""

    found: Found
    folder: Path
    files: list[FileTask] = field(default_factory=list)
    skipped: bool = False  # already complete on disk
    stale: list[Path] = field(default_factory=list)  # band files of another extent (full vs a clip box)
    error: str | None = None  # why this item cannot be, or was not, fetched (the others go on)
    clip_bbox: tuple[float, ...] | None = None  # the extent planned for: fetch() cuts the files to it

    @property
    def complete(self) -> bool:
        """Its folder holds the item: already there, or fetched by this run (``item.json`` written)."""
        return self.error is None and (self.folder / ITEM_FILE).is_file() and all(t.dest.is_file() for t in self.files)

    def summary(self) -> dict[str, Any]:
        props = self.found.item.get("properties", {})
        return {
            "id": self.found.id,
            "collection": self.found.target.collection,
            "sensor": self.found.sensor.id,
            "product": self.found.product,
            "datetime": props.get("datetime"),
            "cloud_cover": props.get("eo:cloud_cover"),
            "folder": str(self.folder),
            "complete": self.complete,
            "already_here": self.skipped,
            "error": self.error,
            "notes": list(self.found.notes),
            "files": [
                {"band": f.band, "asset": f.asset_key, "href": f.href, "path": str(f.dest), "bytes": f.size}
                for f in self.files
            ],
        }


# --------------------------------------------------------------------------- hrefs


def _item_base(item: dict[str, Any]) -> str | None:
    for link in item.get("links", []) or []:
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def resolve_href(item: dict[str, Any], asset: dict[str, Any], what: str) -> str:
    """An asset's downloadable http(s) URL: public S3 becomes https, requester-pays S3 is refused."""
    candidates = [asset.get("href")]
    alternates = asset.get("alternate") or {}
    if isinstance(alternates, dict):
        candidates += [a.get("href") for a in alternates.values() if isinstance(a, dict)]
    hrefs = [str(h) for h in candidates if h]
    if not hrefs:
        raise FetchError(f"{what}: the asset has no href")
    for h in hrefs:
        if h.startswith(("http://", "https://")):
            return h
    href = hrefs[0]
    scheme = urlparse(href).scheme
    if scheme == "":
        base = _item_base(item)
        if base and base.startswith(("http://", "https://")):
            return urljoin(base, href)
        raise FetchError(f"{what}: relative href {href!r} and the item has no http(s) self link to resolve it")
    if scheme == "s3":
        if _requester_pays(item, asset):
            raise FetchError(
                f"{what}: {href} is in a requester-pays S3 bucket; cloudmask does not download it "
                "(use a catalogue with public https hrefs, e.g. --catalog planetary-computer)"
            )
        u = urlparse(href)
        return f"https://{u.netloc}.s3.amazonaws.com{u.path}"
    raise FetchError(f"{what}: unsupported href scheme {scheme!r} ({href})")


def _requester_pays(item: dict[str, Any], asset: dict[str, Any]) -> bool:
    props = item.get("properties", {})
    if asset.get("storage:requester_pays") or props.get("storage:requester_pays"):
        return True
    schemes = {**(props.get("storage:schemes") or {}), **(item.get("storage:schemes") or {})}
    refs = asset.get("storage:refs") or list(schemes)
    return any(isinstance(schemes.get(r), dict) and schemes[r].get("requester_pays") for r in refs)


def _is_signed(url: str) -> bool:
    q = urlparse(url).query.lower()
    return any(k in q for k in ("sig=", "x-amz-signature", "signature=", "se="))


# --------------------------------------------------------------------------- planning


def _extent(clip_bbox: Sequence[float] | None) -> str:
    """What a band file holds: "full", or the clip box as JSON."""
    return "full" if clip_bbox is None else json.dumps([float(v) for v in clip_bbox])


def _file_extent(path: Path) -> str | None:
    """A fetched band file's extent (its clip tag); None when it cannot be read (fetched again)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as ds:
            return ds.tags().get(CLIP_TAG, "full")
    except (RasterioError, OSError):
        return None


def plan(found: Sequence[Found], out: str | os.PathLike[str], clip: bool = False,
         clip_bbox: Sequence[float] | None = None) -> list[ItemPlan]:
    """Decide folders and file names. An item that cannot be fetched (no asset of a band, a
    requester-pays href, its folder holding another item) gets its ``error`` and no files; the
    others are planned as usual (:func:`fetch` reports it with the run's failures).

    An item counts as complete only when its files hold the extent asked for: full assets, or the
    same ``clip_bbox`` (which implies ``clip``).
    """
    out = Path(out)
    clip = clip or clip_bbox is not None
    want = _extent(clip_bbox) if clip_bbox is not None or not clip else None  # None: any clip box
    plans = []
    used: set[str] = set()
    for f in found:
        # An id that is not already a safe name gets a digest of itself: its folder then never
        # depends on which other items a search returns (a folder given by the order of the
        # results went, in a later run, to another id, whose item was taken for complete).
        name = sanitise_id(f.id)
        if name != f.id:
            name = f"{name}_{_digest(f.id)}"
        if name in used:  # the same id twice (two collections)
            name = f"{name}_{_digest(f.target.collection + '/' + f.id)}"
        used.add(name)
        folder = out / name
        p = ItemPlan(found=f, folder=folder, clip_bbox=tuple(float(v) for v in clip_bbox) if clip_bbox is not None else None)
        plans.append(p)
        try:
            _plan_files(p, clip, want)
        except FetchError as exc:  # this item cannot be fetched; the others still are
            p.error, p.files = str(exc), []
    return plans


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _plan_files(p: ItemPlan, clip: bool, want: str | None) -> None:
    """The band files of one item, and whether the folder already holds them (and the item)."""
    f, folder = p.found, p.folder
    # one file per asset: an asset holding several bands (e.g. a 4-band analytic GeoTIFF) is
    # fetched once, named after its key, and item.json says which layer is which band
    by_asset: dict[str, list[str]] = {}
    for band, key in f.assets.items():
        by_asset.setdefault(key, []).append(band)
    for key, bands in by_asset.items():
        asset = f.item["assets"][key]
        href = resolve_href(f.item, asset, f"item {f.id} asset {key}")
        size = asset.get("file:size") if not clip else None
        checksum = asset.get("file:checksum") if not clip else None
        name = bands[0] if len(bands) == 1 else sanitise_id(key)
        p.files.append(
            FileTask(f, ",".join(bands), key, href, folder / f"{name}.tif",
                     size if isinstance(size, int) else None, checksum if isinstance(checksum, str) else None)
        )
    if not p.files:
        raise FetchError(f"item {f.id}: no asset matches a band of {f.sensor.id}")
    for t in p.files:
        if t.dest.is_file():
            have = _file_extent(t.dest)
            if have is None or (have != want if want is not None else have == "full"):
                p.stale.append(t.dest)
    saved = _saved_id(folder / ITEM_FILE)
    if saved is not None and saved != f.id:
        raise FetchError(f"item {f.id}: its folder {folder} holds item {saved!r}; move it aside")
    p.skipped = not p.stale and saved is not None and all(t.dest.is_file() for t in p.files)


def _saved_id(path: Path) -> str | None:
    """The id in a saved ``item.json`` (None: none there, or unreadable: fetched again)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(doc.get("id")) if isinstance(doc, dict) and doc.get("id") is not None else None


# --------------------------------------------------------------------------- one file


def _multihash_check(path: Path, checksum: str, what: str) -> None:
    """Verify a ``file:checksum`` multihash (hex). Unknown hash codes are skipped with a log line."""
    algos = {"12": "sha256", "13": "sha512", "11": "sha1", "d501": "md5"}
    cs = checksum.lower()
    for code, algo in algos.items():
        if cs.startswith(code):
            digest_hex = cs[len(code) + 2 :]  # skip the one-byte length
            h = hashlib.new(algo)
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != digest_hex:
                raise FetchError(f"{what}: checksum mismatch ({algo} {h.hexdigest()[:12]}… != {digest_hex[:12]}…)")
            return
    log.info("%s: file:checksum %s uses an unsupported hash; only the size was checked", what, checksum[:8])


class Stopped(Exception):
    """The run was interrupted: a download stops between two chunks, keeping its ``.part``."""


def _validators(resp: Any) -> dict[str, Any]:
    """What identifies the version of a remote file: its strong ETag, Last-Modified and size."""
    etag = resp.headers.get("ETag")
    return {"etag": etag if etag and not etag.startswith("W/") else None,
            "last_modified": resp.headers.get("Last-Modified"), "size": _expected_total(resp, 0)}


def _read_validators(path: Path) -> dict[str, Any] | None:
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def _same_version(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """The bytes on disk and the server's come from one version of the file (what both sides say)."""
    return all(saved.get(k) is None or now.get(k) is None or saved[k] == now[k] for k in ("etag", "last_modified", "size"))


def _discard(part: Path, meta: Path) -> None:
    """Remove a part file and the record of its version."""
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


def download_file(
    session: Any,
    task: FileTask,
    retry: Retry,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Stream ``task.href`` to ``task.dest`` via ``.part`` with resume, retries and size/checksum checks.

    Beside the ``.part``, ``.part.json`` keeps the server's ETag / Last-Modified / size of the
    version being fetched: a resume asks for the rest of *that* version (``If-Range``) and starts
    over when the server's file has changed, instead of stitching two versions together (sizes
    alone match when a file is re-published). ``stop`` set: :class:`Stopped` between two chunks."""
    import requests

    part = task.dest.with_name(task.dest.name + ".part")
    meta = part.with_name(part.name + ".json")
    what = f"item {task.found.id} band {task.band} ({task.href})"
    last = ""
    for attempt in range(retry.attempts):
        if stop is not None and stop.is_set():
            raise Stopped(what)
        have = part.stat().st_size if part.exists() else 0
        saved = _read_validators(meta) if have else None
        if have and saved is None:  # a part of unknown version (no record, or an older run's): start over
            _discard(part, meta)
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        if saved is not None and (saved.get("etag") or saved.get("last_modified")):
            headers["If-Range"] = saved.get("etag") or saved["last_modified"]
        try:
            with session.get(task.href, headers=headers, stream=True, timeout=retry.timeout) as resp:
                if resp.status_code == 416 and have:
                    # The server says our part file already covers the resource (or is bigger): start over.
                    _discard(part, meta)
                    raise _Transient("HTTP 416 on resume; restarting the file")
                if resp.status_code == 206 and saved is not None and not _same_version(saved, _validators(resp)):
                    _discard(part, meta)  # a server that ignores If-Range sent the new version's rest
                    raise _Transient("the file changed on the server since its part was fetched; starting over")
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _Transient(f"HTTP {resp.status_code}")
                if resp.status_code == 403 and _is_signed(task.href):
                    raise FetchError(f"{what}: HTTP 403 on a signed URL (expired?); run fetch again for fresh signatures")
                if resp.status_code in (401, 403):
                    raise FetchError(f"{what}: HTTP {resp.status_code}: access denied (private or requester-pays?)")
                if resp.status_code >= 400:
                    raise FetchError(f"{what}: HTTP {resp.status_code} {resp.reason}")
                total = _expected_total(resp, have)
                mode = "ab" if resp.status_code == 206 else "wb"
                if mode == "wb":  # the version this part is of, for the next resume: written once the
                    part.write_bytes(b"")  # old bytes are gone (a kill between the two must not pair them)
                    meta.write_text(json.dumps(_validators(resp)), encoding="utf-8")
                if mode == "wb" and have:
                    log.info("%s: server ignored Range; downloading from the start", what)
                    if progress:
                        progress(task.key, -have, total)
                    have = 0
                elif progress and not attempt and have:
                    progress(task.key, have, total)
                if progress and total:
                    progress(task.key, 0, total)
                with part.open(mode) as fh:
                    for chunk in resp.iter_content(CHUNK_BYTES):
                        fh.write(chunk)
                        if progress:
                            progress(task.key, len(chunk), total)
                        if stop is not None and stop.is_set():
                            raise Stopped(what)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            last = type(exc).__name__
        except _Transient as exc:
            last = str(exc)
        else:
            got = part.stat().st_size
            expected = total or task.size
            if task.size is not None and total is not None and task.size != total:
                log.info("%s: file:size %d differs from the server's %d; trusting the server", what, task.size, total)
            if expected is not None and got < expected:
                last = f"short read ({got} of {expected} bytes)"
            elif expected is not None and got > expected:
                _discard(part, meta)
                last = f"file grew past its size ({got} > {expected} bytes)"
            else:
                if task.checksum:
                    try:
                        _multihash_check(part, task.checksum, what)
                    except FetchError:
                        _discard(part, meta)
                        raise
                os.replace(part, task.dest)
                meta.unlink(missing_ok=True)
                return task.dest
        if attempt + 1 < retry.attempts:
            log.info("%s: %s; retrying (%d/%d)", what, last, attempt + 1, retry.attempts - 1)
            retry.sleep(attempt, stop)
    kept = f"; {part.stat().st_size} bytes kept in {part.name} for the next run to resume" if part.exists() else ""
    raise FetchError(f"{what}: failed after {retry.attempts} attempts ({last}){kept}")


def _expected_total(resp: Any, have: int) -> int | None:
    cr = resp.headers.get("Content-Range")
    if resp.status_code == 206 and cr and "/" in cr:
        tail = cr.rsplit("/", 1)[1].strip()
        return int(tail) if tail.isdigit() else None
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit() and resp.headers.get("Content-Encoding") in (None, "identity"):
        return int(cl)
    return None


def clip_file(task: FileTask, bbox: Sequence[float], retry: Retry, stop: threading.Event | None = None) -> Path:
    """Write only the ``bbox`` (lon/lat) window of a remote COG, read with GDAL range requests."""
    import rasterio
    from rasterio.errors import RasterioIOError, WindowError
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    part = task.dest.with_name(task.dest.name + ".part")
    what = f"item {task.found.id} band {task.band} ({task.href})"
    last = ""
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "0", "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/"}
    for attempt in range(retry.attempts):
        if stop is not None and stop.is_set():
            raise Stopped(what)
        try:
            with rasterio.Env(**env), rasterio.open(task.href) as src:
                left, bottom, right, top = transform_bounds("EPSG:4326", src.crs, *bbox, densify_pts=21) if src.crs else bbox
                win = from_bounds(left, bottom, right, top, src.transform).round_offsets().round_lengths()
                win = win.intersection(Window(0, 0, src.width, src.height))
                data = src.read(window=win)
                profile = src.profile.copy()
                profile.update(
                    driver="GTiff", width=int(win.width), height=int(win.height),
                    transform=src.window_transform(win), compress="deflate",
                )
                if win.width >= 16 and win.height >= 16:
                    profile.update(tiled=True, blockxsize=256 if win.width >= 256 else 16 * (int(win.width) // 16),
                                   blockysize=256 if win.height >= 256 else 16 * (int(win.height) // 16))
                else:
                    for k in ("tiled", "blockxsize", "blockysize"):
                        profile.pop(k, None)
            with rasterio.open(part, "w", **profile) as dst:
                dst.write(data)
                dst.update_tags(**{CLIP_TAG: _extent(bbox)})  # so a later run can tell it from a full asset
            os.replace(part, task.dest)
            return task.dest
        except WindowError:
            part.unlink(missing_ok=True)
            raise FetchError(f"{what}: the bbox does not overlap this asset") from None
        except RasterioIOError as exc:
            from cloudmask.scene import http_error

            part.unlink(missing_ok=True)
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else "read error"
            # GDAL takes a range request answered 404 or 500 for a file it does not recognise:
            # the status says which (a 5xx is worth another attempt)
            last = http_error(task.href, exc) or last
            if any(code in last for code in ("404", "403", "401", "not recognized", "not a supported")):
                raise FetchError(f"{what}: cannot read ({last})") from None
        if attempt + 1 < retry.attempts:
            log.info("%s: %s; retrying (%d/%d)", what, last, attempt + 1, retry.attempts - 1)
            retry.sleep(attempt, stop)
    raise FetchError(f"{what}: failed after {retry.attempts} attempts ({last})")


# --------------------------------------------------------------------------- items


def local_item(p: ItemPlan, clip_bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """The item as saved: band hrefs point at the local files, other hrefs made absolute, product
    recorded; clipped, its bbox and geometry are the clip's (within the item's own bbox), so what
    reads it (e.g. the STAC item of its mask) does not claim the whole scene. ``clip_bbox``
    defaults to the plan's."""
    item = json.loads(json.dumps(p.found.item))
    clip_bbox = clip_bbox if clip_bbox is not None else p.clip_bbox
    if clip_bbox is not None:
        w, s, e, n = (float(v) for v in clip_bbox)
        own = item.get("bbox")
        if isinstance(own, list) and len(own) in (4, 6) and all(isinstance(v, (int, float)) for v in own):
            half = len(own) // 2  # [w, s, e, n] or [w, s, zmin, e, n, zmax]
            ow, os_, oe, on = own[0], own[1], own[half], own[half + 1]
            if ow <= oe:  # (an item across the antimeridian keeps the clip box as given)
                w, s, e, n = max(w, ow), max(s, os_), min(e, oe), min(n, on)
        item["bbox"] = [w, s, e, n]
        item["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        item.setdefault("properties", {})["cloudmask:clip_bbox"] = [float(v) for v in clip_bbox]
    base = _item_base(item)
    for key, asset in item.get("assets", {}).items():
        href = asset.get("href")
        if href and base and "://" not in href and not href.startswith("/"):
            asset["href"] = urljoin(base, href)
    for t in p.files:
        asset = item["assets"][t.asset_key]
        asset["href"] = f"./{t.dest.name}"
        asset.pop("alternate", None)
        asset["file:size"] = t.dest.stat().st_size
        asset.pop("file:checksum", None)
    item["links"] = [ln for ln in item.get("links", []) if isinstance(ln, dict) and ln.get("rel") not in ("self",)]
    props = item.setdefault("properties", {})
    props[PRODUCT_PROPERTY] = p.found.product
    props[SENSOR_PROPERTY] = p.found.sensor.id
    return item


def _write_item(p: ItemPlan) -> None:
    dest = p.folder / ITEM_FILE
    tmp = dest.with_name(dest.name + ".part")
    try:
        tmp.write_text(json.dumps(local_item(p), indent=1), encoding="utf-8")
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def fetch(
    plans: Sequence[ItemPlan],
    *,
    clip_bbox: Sequence[float] | None = None,
    workers: int = 4,
    retry: Retry | None = None,
    progress: ProgressFn | None = None,
    on_file_done: Callable[[FileTask], None] | None = None,
) -> list[ItemPlan]:
    """Fetch every planned file concurrently; an item's ``item.json`` is written once all its files are in.

    Files of other items keep downloading when one fails. Each failed item has its ``error`` set
    (planned ones included); once every other item is done, the first failure is raised, naming
    how many items failed.

    ``clip_bbox`` defaults to each plan's own (:func:`plan`'s): given only to ``plan``, the box was
    ignored here and whole assets were downloaded under a plan made for a clip.
    """
    retry = retry or Retry()
    if clip_bbox is not None:
        box = tuple(float(v) for v in clip_bbox)
        other = {p.clip_bbox for p in plans if p.clip_bbox is not None and p.clip_bbox != box}
        if other:
            raise UsageError(f"fetch(clip_bbox={list(box)}) for plans made for another box ({list(other.pop())}): "
                             "give the same box to plan() and fetch(), or only to plan()")
        for p in plans:
            p.clip_bbox = box  # what each item is cut to, and what its item.json records
    with contextlib.ExitStack() as locks:  # released when the fetch ends, however it ends
        for p in plans:
            if p.skipped or p.error is not None:
                continue
            try:
                p.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # e.g. a file where its folder goes: this item fails, the others go on
                p.error = f"{p.folder}: cannot create folder ({_os_reason(exc)})"
                continue
            # one run per item folder: two renaming each other's .part files failed both and could
            # leave a corrupt band in a folder marked complete
            try:
                locks.enter_context(OutputLock(p.folder / FETCH_LOCK, p.folder))
            except OutputBusyError as exc:
                p.error = f"{p.folder}: another run is fetching this item ({exc.owner})"
                continue
            except (OutputError, OSError) as exc:
                p.error = first_line(exc)
                continue
            try:
                (p.folder / FETCH_MARKER).touch()  # "not complete" for readers, until item.json is in
                if p.stale:  # another extent's files: the item goes first, so the folder is never "complete"
                    for old in [p.folder / ITEM_FILE, *p.stale]:
                        old.unlink(missing_ok=True)
            except OSError as exc:
                p.error = f"{p.folder}: cannot write in the folder ({_os_reason(exc)})"
        return _fetch_locked(plans, retry, workers, progress, on_file_done)


def _fetch_locked(plans: Sequence[ItemPlan], retry: Retry, workers: int, progress: ProgressFn | None,
                  on_file_done: Callable[[FileTask], None] | None) -> list[ItemPlan]:
    """:func:`fetch` once the item folders are made and locked."""
    import requests
    from requests.adapters import HTTPAdapter

    todo = [p for p in plans if not p.skipped and p.error is None]
    tasks = [t for p in todo for t in p.files if not t.dest.is_file()]
    owner = {id(t): p for p in todo for t in p.files}
    session = requests.Session()
    session.headers["User-Agent"] = "cloudmask-fetch"
    adapter = HTTPAdapter(pool_connections=workers, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    lock = threading.Lock()
    stop = threading.Event()

    def run(t: FileTask) -> FileTask:
        box = owner[id(t)].clip_bbox
        if stop.is_set():
            raise Stopped(t.key)
        try:
            if box is not None:
                clip_file(t, box, retry, stop)
            else:
                download_file(session, t, retry, progress, stop)
        except OSError as exc:  # e.g. the disk filled up: named with the file, this item fails
            raise FetchError(f"{t.dest}: {_os_reason(exc)}") from None
        return t

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        with session:
            futures = {pool.submit(run, t): t for t in tasks}
            for fut in as_completed(futures):
                try:
                    t = fut.result()
                except FetchError as exc:
                    with lock:
                        p = owner[id(futures[fut])]
                        p.error = p.error or str(exc)
                    continue
                if on_file_done:
                    on_file_done(t)
    except BaseException:
        # Ctrl-C, SIGTERM: the queued files are dropped and the running ones stop at their next
        # chunk, keeping their .part for the next run (the pool's own exit waited for every file)
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for p in todo:
        if p.error is None and all(t.dest.is_file() for t in p.files):
            try:
                _write_item(p)
                (p.folder / FETCH_MARKER).unlink(missing_ok=True)
            except OSError as exc:
                p.error = f"{p.folder / ITEM_FILE}: {_os_reason(exc)}"
    summary = failure_summary(plans)
    if summary:
        raise FetchError(summary)
    return list(plans)


def failure_summary(plans: Sequence[ItemPlan]) -> str | None:
    """One line for the items that failed: the first one's reason (in plan order), and how many
    failed; None when none did."""
    failed = [p for p in plans if p.error is not None]
    if not failed:
        return None
    more = f" ({len(failed)} of {len(plans)} items failed)" if len(plans) > 1 else ""
    return f"{failed[0].error}{more}"


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "disk full while writing (no space left on device)"
    return str(exc.strerror or exc)
