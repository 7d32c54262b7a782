"""STAC search for ``cloudmask fetch``: which catalogue, which collection, which items, which assets.

Everything sensor-specific comes from the registry (``Sensor.stac[catalogue]`` for collections,
``Band.assets[catalogue]`` for asset keys, ``Sensor.scaling`` for scale/offset), so adding a sensor
means adding a YAML file, not code. Two things catalogues get wrong are handled here:

* servers without the ``query``/``filter`` extensions (or that silently ignore them) would make a
  ``--max-cloud`` search come back empty; the cloud-cover filter is then applied on the client side
  while paging through the unfiltered results, so a search never silently returns nothing;
* an item's ``raster:bands`` scale/offset can disagree with the registry (the Sentinel-2 +1000 DN
  offset from processing baseline 04.00 is missing or doubled in some catalogues); the registry rule
  wins, the product variant it picks is recorded on the item, and the decision is logged.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import numbers
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from cloudmask.errors import FetchError, NoResultsError, UsageError
from cloudmask.registry import Band, Registry, Sensor, load_registry

log = logging.getLogger("cloudmask.fetch")

#: Catalogue names the registry's ``stac:`` blocks use, with their API root when a sensor gives none.
CATALOGUES: dict[str, str] = {
    "earth-search": "https://earth-search.aws.element84.com/v1",
    "planetary-computer": "https://planetarycomputer.microsoft.com/api/stac/v1",
}
DEFAULT_CATALOGUE = "earth-search"

#: Property that ``cloudmask fetch`` writes on saved items so the scene reader applies the same scaling.
PRODUCT_PROPERTY = "cloudmask:product"
SENSOR_PROPERTY = "cloudmask:sensor"

#: How many unfiltered items the client-side cloud filter pages through before giving up.
CLIENT_FILTER_SCAN_LIMIT = 5000


# --------------------------------------------------------------------------- request parsing


#: A year or month (or a range of them, either end open) as pystac-client takes them in a search.
_YEAR_OR_MONTH = re.compile(r"(\d{4}(-\d{2})?|\.\.)?(/(\d{4}(-\d{2})?|\.\.)?)?")


def parse_bbox(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in degrees (text, or four numbers) → a validated tuple (a wrong order is the
    commonest typo)."""
    if not isinstance(text, str) and isinstance(text, Sequence):
        text = ",".join(str(v) for v in text)
    parts = [p.strip() for p in str(text).split(",")]
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--bbox {text!r}: expected four numbers W,S,E,N in degrees") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise UsageError(f"--bbox {text!r}: values must be finite numbers")
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise UsageError(f"--bbox {text!r}: longitudes must be within ±180 and latitudes within ±90 (order W,S,E,N)")
    if s >= n:
        raise UsageError(f"--bbox {text!r}: south ({s}) must be below north ({n}) (order W,S,E,N)")
    if w >= e:
        raise UsageError(f"--bbox {text!r}: west ({w}) must be left of east ({e}) (order W,S,E,N)")
    return w, s, e, n


def _parse_instant(text: str, end: bool) -> datetime:
    """A day (any ISO 8601 date form: 2024-06-02, 20240602) is the whole UTC day; a date-time with
    an offset is converted to UTC, one without is taken as UTC. Naive UTC out."""
    text = text.strip()
    # coarser ISO 8601 dates are their whole span: a year, a month, a week (fromisoformat took a
    # week for its Monday alone; a year or a month was refused though `search` passes them on)
    span = None
    if m := re.fullmatch(r"(\d{4})", text):
        if int(m[1]) < 1:
            raise UsageError(f"--date {text!r}: no such year")
        span = (date(int(m[1]), 1, 1), date(int(m[1]), 12, 31))
    elif m := re.fullmatch(r"(\d{4})-(\d{2})", text):
        year, month = int(m[1]), int(m[2])
        if not 1 <= month <= 12 or year < 1:
            raise UsageError(f"--date {text!r}: no such month")
        span = (date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1]))
    elif m := re.fullmatch(r"(\d{4})-?W(\d{2})", text, re.I):
        try:
            span = (date.fromisocalendar(int(m[1]), int(m[2]), 1), date.fromisocalendar(int(m[1]), int(m[2]), 7))
        except ValueError as exc:
            raise UsageError(f"--date {text!r}: no such week ({exc})") from None
    if span is not None:
        d = span[1] if end else span[0]
        return datetime(d.year, d.month, d.day, 23, 59, 59, 999999) if end else datetime(d.year, d.month, d.day)
    try:
        try:
            d = date.fromisoformat(text)
        except ValueError:
            t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo is not None else t
        # a day's end is its last microsecond: 23:59:59.5 belongs to that day, not to none
        return datetime(d.year, d.month, d.day, 23, 59, 59, 999999) if end else datetime(d.year, d.month, d.day)
    except ValueError as exc:
        why = str(exc) if "out of range" in str(exc) or "must be in" in str(exc) else ""
        raise UsageError(f"--date {text!r}: " + (f"no such day ({why})" if why else
                                                  "expected YYYY-MM-DD (or an ISO 8601 date-time)")) from None


def parse_date(text: str) -> str:
    """``2024-06-01`` or ``2024-06-01/2024-06-30`` (either end may be ``..``; a year ``2024``, a month
    ``2024-06`` or an ISO week ``2024-W24`` is its whole span) → a STAC datetime interval."""
    text = str(text).strip()
    pieces = text.split("/")
    if len(pieces) > 2 or not text:
        raise UsageError(f"--date {text!r}: expected DAY or START/END, e.g. 2024-06-01/2024-06-30")
    if len(pieces) == 1:
        pieces = [pieces[0], pieces[0]]
    start_s, end_s = (p.strip() for p in pieces)
    start = None if start_s in ("", "..") else _parse_instant(start_s, end=False)
    end = None if end_s in ("", "..") else _parse_instant(end_s, end=True)
    if start is None and end is None:
        raise UsageError(f"--date {text!r}: give at least one end of the range")
    if start and end and start > end:
        raise UsageError(f"--date {text!r}: start is after end")

    def fmt(v: datetime | None) -> str:
        if v is None:
            return ".."
        return v.strftime("%Y-%m-%dT%H:%M:%S") + (f".{v.microsecond:06d}" if v.microsecond else "") + "Z"

    return f"{fmt(start)}/{fmt(end)}"


def load_geojson(path: str | Path) -> dict[str, Any]:
    """A GeoJSON file (geometry, Feature or FeatureCollection) → one geometry for ``intersects``."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--geojson {p}: cannot read GeoJSON ({exc})") from None
    geoms: list[dict[str, Any]] = []
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "FeatureCollection":
        features = obj.get("features")
        geoms = [f.get("geometry") for f in (features if isinstance(features, list) else [])
                 if isinstance(f, dict) and f.get("geometry")]
    elif kind == "Feature":
        geoms = [obj["geometry"]] if obj.get("geometry") else []
    elif kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString"):
        geoms = [obj]
    if not geoms:
        raise UsageError(f"--geojson {p}: no geometry found (expected a Polygon, Feature or FeatureCollection)")
    for g in geoms:  # checked as --bbox is: a projected file or swapped axes finds nothing, silently
        try:
            if not isinstance(g, dict):
                raise TypeError
            w, s_, e, n = geometry_bbox(g)
        except (TypeError, ValueError, IndexError, AttributeError):
            raise UsageError(f"--geojson {p}: not a valid GeoJSON geometry (positions are [longitude, latitude] "
                             "numbers)") from None
        if not (all(math.isfinite(v) for v in (w, s_, e, n)) and -180 <= w <= e <= 180 and -90 <= s_ <= n <= 90):
            raise UsageError(f"--geojson {p}: coordinates must be longitude, latitude in degrees (WGS 84); "
                             f"its extent is {w:g}, {s_:g}, {e:g}, {n:g}")
        if g.get("type") in ("Polygon", "MultiPolygon") and not _rings_closed(g):
            raise UsageError(f"--geojson {p}: a polygon ring needs at least 4 positions, the last equal to the first")
    if len(geoms) == 1:
        return geoms[0]
    polys: list[Any] = []
    for g in geoms:
        if g.get("type") == "Polygon":
            polys.append(g["coordinates"])
        elif g.get("type") == "MultiPolygon":
            polys.extend(g["coordinates"])
        else:
            raise UsageError(f"--geojson {p}: several features are only supported when all are polygons")
    return {"type": "MultiPolygon", "coordinates": polys}


def _rings_closed(geometry: dict[str, Any]) -> bool:
    polys = [geometry.get("coordinates") or []] if geometry.get("type") == "Polygon" else geometry.get("coordinates") or []
    try:
        return all(len(ring) >= 4 and list(ring[0]) == list(ring[-1]) for poly in polys for ring in poly)
    except TypeError:
        return False


def geometry_bbox(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """Bounding box of a GeoJSON geometry (for ``--clip`` with ``--geojson``)."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for sub in c:
                walk(sub)

    walk(geometry.get("coordinates", []))
    if not xs:
        raise UsageError("the GeoJSON geometry has no coordinates")
    return min(xs), min(ys), max(xs), max(ys)


def sanitise_id(item_id: str) -> str:
    """A STAC id → a safe single path component (no separators, ``..``, control or odd characters)."""
    text = unicodedata.normalize("NFKC", str(item_id))
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._-")
    text = re.sub(r"\.{2,}", ".", text)
    if not text:
        text = "item"
    return text[:200]


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One collection to search for one sensor, and how to read its assets."""

    sensor: Sensor
    product: str
    collection: str
    url: str
    catalogue: str | None  # registry catalogue name (asset keys); None for a plain URL


def _catalogue_url(sensor: Sensor, name: str) -> str:
    cat = sensor.stac.get(name)
    return (cat.url if cat and cat.url else None) or CATALOGUES[name]


def resolve_targets(
    sensors: Sequence[str],
    catalog: str | None = None,
    collection: str | None = None,
    product: str | None = None,
    registry: Registry | None = None,
) -> list[Target]:
    """Turn ``--sensor/--catalog/--collection/--product`` into concrete (collection, URL) pairs."""
    if isinstance(sensors, str):  # one sensor, not a sequence of its characters
        sensors = [sensors]
    registry = registry or load_registry()
    catalog = (catalog or DEFAULT_CATALOGUE).strip()
    is_url = "://" in catalog
    if not is_url and catalog not in CATALOGUES:
        raise UsageError(f"--catalog {catalog!r}: use one of {', '.join(CATALOGUES)} or a STAC API URL")
    if is_url and not catalog.startswith(("http://", "https://")):
        raise UsageError(f"--catalog {catalog!r}: only http(s) STAC API URLs are supported")
    if not sensors:
        raise UsageError("give at least one --sensor (see `cloudmask sensors`)")
    targets = []
    for name in sensors:
        sensor = registry.get_sensor(name)
        prod = product or sensor.default_product
        if prod not in sensor.products:
            raise UsageError(f"sensor {sensor.id!r} has no product {prod!r}; choose one of {', '.join(sensor.products)}")
        if is_url:
            known = next((k for k, c in sensor.stac.items() if c.url and c.url.rstrip("/") == catalog.rstrip("/")), None)
            # Unknown API: --collection, else the default catalogue's id (mirrors usually keep those names).
            source = sensor.stac.get(known) if known else sensor.stac.get(DEFAULT_CATALOGUE)
            coll = collection or (source.collections.get(prod) if source else None)
            if not coll:
                raise UsageError(
                    f"--catalog {catalog}: give --collection NAME (the registry has no {sensor.id} {prod} collection)"
                )
            targets.append(Target(sensor, prod, coll, catalog.rstrip("/"), known))
            continue
        cat = sensor.stac.get(catalog)
        coll = collection or (cat.collections.get(prod) if cat else None)
        if not coll:
            offered = ", ".join(f"{k}: {', '.join(c.collections)}" for k, c in sensor.stac.items()) or "none"
            raise UsageError(
                f"sensor {sensor.id!r} product {prod!r} has no collection in catalogue {catalog!r} "
                f"(registry offers {offered}); pass --collection NAME"
            )
        targets.append(Target(sensor, prod, coll, _catalogue_url(sensor, catalog), catalog))
    return targets


# --------------------------------------------------------------------------- search


@dataclass
class Found:
    """One search result with everything the downloader needs."""

    item: dict[str, Any]
    target: Target
    product: str  # the registry product whose scaling applies (may be a baseline variant)
    assets: dict[str, str]  # band name -> asset key
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.item.get("id", ""))

    @property
    def sensor(self) -> Sensor:
        return self.target.sensor


def _signer(catalogue: str | None) -> Any:
    if catalogue != "planetary-computer":
        return None
    try:
        import planetary_computer  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(
            "--catalog planetary-computer needs its URL signer: pip install planetary-computer"
        ) from None
    return planetary_computer.sign_inplace


def _open_client(target: Target) -> Any:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        return Client.open(target.url, modifier=_signer(target.catalogue), timeout=30)
    except APIError as exc:
        if getattr(exc, "status_code", None) is None:
            raise FetchError(f"{target.url}: cannot reach the STAC API ({_short(exc)})") from None
        raise FetchError(f"{target.url}: the STAC API answered HTTP {exc.status_code} ({_short(exc)})") from None
    except (OSError, ValueError) as exc:  # requests' ConnectionError is an OSError
        raise FetchError(f"{target.url}: cannot reach the STAC API ({_short(exc)})") from None


def _missing_collection(client: Any, target: Target) -> bool:
    """Whether the API says the collection does not exist (a search of it finds nothing, which
    would read as "no items" for a typo in --collection): only an API that declares the
    collections endpoint and answers 404 there says so; anything else is "unknown" (False).
    (pystac-client's get_collection answers None, or another collection, on APIs without it.)"""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    from pystac_client.conformance import ConformanceClasses

    try:
        if not client.conforms_to(ConformanceClasses.COLLECTIONS):
            return False
        url = f"{target.url.rstrip('/')}/collections/{quote(target.collection, safe='')}"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=30):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    except Exception:  # noqa: BLE001 - unknown: the usual "no items" error follows
        return False


def _collections_hint(client: Any, most: int = 8) -> str:
    """"; it has a, b, c …" from the API's collection list, when it can be read."""
    try:
        ids = sorted(str(c.id) for c in client.get_collections())
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    if not ids:
        return ""
    return f"; it has {', '.join(ids[:most])}{' …' if len(ids) > most else ''}"


def _short(exc: BaseException) -> str:
    """One short reason: the innermost OS error of a wrapped connection failure ("Connection
    refused", not urllib3's whole chain), else the message's first line."""
    errnos = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if errnos:
        return errnos[-1].strip()
    timeout = re.search(r"(read|connect)[a-z ]*timed? ?out[^)]*?\((?:read |connect )?timeout=([\d.]+)\)", str(exc), re.I)
    if timeout:  # urllib3's retry chain around it said nothing more
        return f"no answer within {float(timeout[2]):g} s ({timeout[1].lower()} timeout)"
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg[:300]


def cloud_ok(item: dict[str, Any], max_cloud: float | None) -> bool:
    """Client-side ``eo:cloud_cover <= max_cloud``; items without the property are kept only with no limit."""
    if max_cloud is None:
        return True
    cc = item.get("properties", {}).get("eo:cloud_cover")
    return isinstance(cc, (int, float)) and cc <= max_cloud


def _iter_items(client: Any, target: Target, params: dict[str, Any], server_filter: str | None, max_cloud: float | None) -> Iterator[dict[str, Any]]:
    from pystac_client.exceptions import APIError

    kwargs = dict(params)
    if server_filter == "filter" and max_cloud is not None:
        kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
        kwargs["filter_lang"] = "cql2-json"
    elif server_filter == "query" and max_cloud is not None:
        kwargs["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
    try:
        search = client.search(collections=[target.collection], **kwargs)
        yield from search.items_as_dicts()
    except APIError as exc:
        raise FetchError(f"{target.url}: search in {target.collection!r} failed ({_short(exc)})") from None
    except NotImplementedError:
        raise FetchError(f"{target.url}: this STAC API does not offer item search") from None
    except OSError as exc:
        raise FetchError(f"{target.url}: search in {target.collection!r} failed ({_short(exc)})") from None


def search(
    targets: Sequence[Target],
    *,
    bbox: Sequence[float] | None = None,
    intersects: dict[str, Any] | None = None,
    datetime: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
) -> list[Found]:
    """Search every target; filter cloud cover on the server when it can, else (or as well) on the client."""
    from pystac_client.conformance import ConformanceClasses

    if isinstance(targets, Target):
        targets = [targets]
    if not targets:
        raise UsageError("nothing to search: no targets (see resolve_targets)")
    if bbox is not None:
        bbox = parse_bbox(bbox)  # text or numbers, checked as --bbox is
    if isinstance(datetime, str):  # "June 2024" reached pystac-client, which raised a bare Exception
        try:
            datetime = parse_date(datetime)
        except UsageError:
            if not datetime.strip() or not _YEAR_OR_MONTH.fullmatch(datetime.strip()):  # 2024, 2024-06: pystac-client expands them
                raise
    if max_cloud is not None and (isinstance(max_cloud, bool) or not isinstance(max_cloud, numbers.Real)):
        raise UsageError(f"--max-cloud {max_cloud!r}: a number of percent, 0-100")
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise UsageError(f"--max-cloud {max_cloud}: must be between 0 and 100 (percent)")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1")
    if bbox is None and intersects is None:
        raise UsageError("give an area: --bbox W,S,E,N or --geojson FILE")
    params: dict[str, Any] = {"datetime": datetime, "limit": min(limit or 100, 100)}
    if intersects is not None:
        params["intersects"] = intersects
    else:
        params["bbox"] = list(bbox or ())
    found: list[Found] = []
    for target in targets:
        client = _open_client(target)
        server_filter = None
        if max_cloud is not None:
            if client.conforms_to(ConformanceClasses.FILTER):
                server_filter = "filter"
            elif client.conforms_to(ConformanceClasses.QUERY):
                server_filter = "query"
        items: list[dict[str, Any]] = []
        ignored = 0
        other_platform = 0

        def ours(it: dict[str, Any]) -> bool:
            nonlocal other_platform
            if target.sensor.flown_on((it.get("properties") or {}).get("platform")):
                return True
            other_platform += 1
            return False

        if server_filter:
            for it in _iter_items(client, target, params, server_filter, max_cloud):
                if not ours(it):
                    continue
                if cloud_ok(it, max_cloud):
                    items.append(it)
                else:
                    ignored += 1
                if limit and len(items) >= limit:
                    break
        if not server_filter or (not items and not other_platform) or ignored:
            reason = (
                "the server does not support the query/filter extensions"
                if not server_filter
                else "the server's cloud filter returned nothing" if not items else "the server ignored the cloud filter"
            )
            if max_cloud is not None:
                log.info("%s %s: %s; filtering eo:cloud_cover on the client side", target.url, target.collection, reason)
            items = []
            other_platform = 0
            unfiltered = {**params, "limit": 100} if max_cloud is not None else params  # full pages to scan
            for n, it in enumerate(_iter_items(client, target, unfiltered, None, None)):
                if n >= CLIENT_FILTER_SCAN_LIMIT:
                    log.warning("client-side filter stopped after %d items; narrow --bbox/--date", n)
                    break
                if ours(it) and cloud_ok(it, max_cloud):
                    items.append(it)
                if limit and len(items) >= limit:
                    break
        if not items and not other_platform and _missing_collection(client, target):
            raise UsageError(f"{target.url}: has no collection {target.collection!r}{_collections_hint(client)}")
        if other_platform:
            log.info("%s %s: %d item(s) from platforms other than %s's (%s) left out", target.url,
                     target.collection, other_platform, target.sensor.id, ", ".join(target.sensor.platforms))
        for it in items:
            found.append(prepare(it, target))
    if not found:
        where = f"bbox {list(bbox)}" if bbox is not None else "the --geojson area"
        cloud = f", eo:cloud_cover <= {max_cloud}" if max_cloud is not None else ""
        colls = ", ".join(f"{t.collection} at {t.url}" for t in targets)
        raise NoResultsError(f"no items in {colls} for {where}, date {datetime or 'any'}{cloud}")
    found.sort(key=lambda f: (str(f.item.get("properties", {}).get("datetime") or ""), f.id))
    if limit:
        found = found[:limit]
    return found


# --------------------------------------------------------------------------- per-item reconciliation


def band_asset(item: dict[str, Any], sensor: Sensor, band: Band, catalogue: str | None) -> str | None:
    """The asset key holding ``band``: the registry key for this catalogue, else the scene reader's matching."""
    assets = item.get("assets", {})
    if catalogue and band.assets.get(catalogue) in assets:
        return band.assets[catalogue]
    if catalogue and catalogue in band.assets:
        return None  # the registry names this catalogue's key and the item lacks it
    from cloudmask.scene import asset_for_band

    return asset_for_band(item, sensor, band)


def item_product(item: dict[str, Any], sensor: Sensor, product: str | None = None) -> str:
    """The registry product whose scaling fits this item.

    A product recorded by ``cloudmask fetch`` wins; otherwise Sentinel-2 items from processing baselines
    before 04.00 (no +1000 DN offset) map to the registry's ``<product>-pre0400`` variant when it exists.
    """
    props = item.get("properties", {})
    recorded = props.get(PRODUCT_PROPERTY)
    if product is None and isinstance(recorded, str) and recorded in sensor.products:
        return recorded
    product = product or sensor.default_product
    baseline = props.get("s2:processing_baseline")
    variant = f"{product}-pre0400"
    if baseline is not None and variant in sensor.products:
        try:
            if float(str(baseline)) < 4.0:
                return variant
        except ValueError:
            log.warning("item %s: unreadable s2:processing_baseline %r; using %s", item.get("id"), baseline, product)
    return product


def _raster_band(asset: dict[str, Any], layer: int = 1) -> dict[str, Any] | None:
    """The ``raster:bands`` (or ``bands``) entry of one 1-based layer: in a multi-band asset each
    band has its own scale/offset, so comparing the first one with every band's rule was wrong."""
    rb = asset.get("raster:bands") or asset.get("bands")
    if isinstance(rb, list) and len(rb) >= layer and isinstance(rb[layer - 1], dict):
        return rb[layer - 1]
    return None


def prepare(item: dict[str, Any], target: Target) -> Found:
    """Pick the band assets and the registry product for one item, logging any scale/offset disagreement."""
    sensor = target.sensor
    product = item_product(item, sensor, target.product)
    notes: list[str] = []
    if product != target.product:
        notes.append(
            f"processing baseline {item['properties'].get('s2:processing_baseline')}: using registry product {product!r}"
        )
    assets: dict[str, str] = {}
    mismatched: list[str] = []
    for band in sensor.bands:
        key = band_asset(item, sensor, band, target.catalogue)
        if key is None:
            continue
        assets[band.name] = key
        from cloudmask.scene import asset_layer

        rb = _raster_band(item["assets"][key], asset_layer(item["assets"][key], band))
        if rb is None:
            continue
        rule = sensor.scaling(product, band)
        scale, offset = rb.get("scale", 1.0), rb.get("offset", 0.0)
        if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
            continue
        if not (math.isclose(scale, rule.scale, rel_tol=1e-6) and math.isclose(offset, rule.offset, abs_tol=1e-9)):
            mismatched.append(f"{band.name} ({key}: scale {scale:g} offset {offset:g})")
    if mismatched:
        rule = sensor.scaling(product, sensor.bands[0])
        note = (
            f"raster:bands disagree with the registry for {', '.join(mismatched[:3])}"
            f"{' and more' if len(mismatched) > 3 else ''}; the registry rule wins "
            f"({sensor.id} {product}: scale {rule.scale:g} offset {rule.offset:g})"
        )
        notes.append(note)
    for n in notes:
        log.info("item %s: %s", item.get("id"), n)
    if not assets:
        notes.append(f"no asset matches a band of {sensor.id}")
    return Found(item=item, target=target, product=product, assets=assets, notes=notes)
