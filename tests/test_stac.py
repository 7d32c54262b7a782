"""STAC search against real servers on 127.0.0.1: rustac's memory backend (no query/filter: the client
side filters) and pgstac (server-side CQL2 filter on eo:cloud_cover)."""

from __future__ import annotations

import json

import logging

import numpy as np
import pytest
from fetch_servers import unique_collection, write_s2_item

from cloudmask import stac
from cloudmask.errors import FetchError, NoResultsError, UsageError
from cloudmask.registry import load_registry

BBOX = (8.5, 46.5, 9.5, 47.5)


# --------------------------------------------------------------------------- parsing


def test_parse_bbox_accepts_and_rejects() -> None:
    assert stac.parse_bbox(" 5.9, 45.8,10.5,47.8") == (5.9, 45.8, 10.5, 47.8)
    for bad, word in [("1,2,3", "four numbers"), ("10,45,5,46", "west"), ("5,47,6,46", "south"),
                      ("5,45,200,46", "±180"), ("a,b,c,d", "four numbers"), ("nan,1,2,3", "finite")]:
        with pytest.raises(UsageError, match=word):
            stac.parse_bbox(bad)


def test_parse_date_forms() -> None:
    assert stac.parse_date("2024-06-01") == "2024-06-01T00:00:00Z/2024-06-01T23:59:59.999999Z"
    assert stac.parse_date("2024-06-01/2024-06-30") == "2024-06-01T00:00:00Z/2024-06-30T23:59:59.999999Z"
    assert stac.parse_date("2024-06-01/..") == "2024-06-01T00:00:00Z/.."
    assert stac.parse_date("20240602") == "2024-06-02T00:00:00Z/2024-06-02T23:59:59.999999Z"  # a day, in any ISO form
    # offsets are converted to UTC, not dropped; a date-time without one is UTC
    assert stac.parse_date("2024-06-02T00:00:00+02:00/2024-06-02T05:00:00+02:00") == "2024-06-01T22:00:00Z/2024-06-02T03:00:00Z"
    assert stac.parse_date("2024-06-02T10:30:00/2024-06-02T11:00Z") == "2024-06-02T10:30:00Z/2024-06-02T11:00:00Z"
    # a year, a month or an ISO week is its whole span (a week was its Monday alone; "2024-06" refused)
    assert stac.parse_date("2024") == "2024-01-01T00:00:00Z/2024-12-31T23:59:59.999999Z"
    assert stac.parse_date("2024-02") == "2024-02-01T00:00:00Z/2024-02-29T23:59:59.999999Z"
    assert stac.parse_date("2024-W24") == "2024-06-10T00:00:00Z/2024-06-16T23:59:59.999999Z"
    assert stac.parse_date("2024-05/2024-06") == "2024-05-01T00:00:00Z/2024-06-30T23:59:59.999999Z"
    for bad, word in [("2024-13", "no such month"), ("0000", "no such year"), ("0000-05", "no such month"), ("2024-W60", "no such week"), ("2024-13-01", "no such day"), ("2024-06-xx", "YYYY-MM-DD"), ("2024-06-30/2024-06-01", "after"), ("a/b/c", "START/END"),
                      ("../..", "at least one")]:
        with pytest.raises(UsageError, match=word):
            stac.parse_date(bad)


def test_geojson_is_checked_as_bbox_is(tmp_path) -> None:
    """Projected coordinates or a broken ring found nothing, silently; now a usage error."""
    ring = [[8.9, 46.8], [9.2, 46.8], [9.2, 47.1], [8.9, 47.1], [8.9, 46.8]]
    good = tmp_path / "good.geojson"
    good.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    assert stac.load_geojson(good)["type"] == "Polygon"
    for name, geom, word in [
        ("utm", {"type": "Polygon", "coordinates": [[[500000, 5200000], [501000, 5200000], [501000, 5201000], [500000, 5200000]]]},
         "longitude, latitude in degrees"),
        ("lon200", {"type": "Point", "coordinates": [200, 10]}, "longitude, latitude"),
        ("open", {"type": "Polygon", "coordinates": [ring[:2]]}, "at least 4 positions"),
        ("notageometry", {"type": "Feature", "geometry": [1, 2]}, "not a valid GeoJSON geometry"),
        ("onenumber", {"type": "Point", "coordinates": [5]}, "not a valid GeoJSON geometry"),
        ("null", {"type": "Point", "coordinates": [5, None]}, "not a valid GeoJSON geometry"),
    ]:
        f = tmp_path / f"{name}.geojson"
        f.write_text(json.dumps(geom))
        with pytest.raises(UsageError, match=word):
            stac.load_geojson(f)


def test_sanitise_id_makes_one_safe_path_component() -> None:
    for raw in ["../../etc/passwd", "a/b\\c", "x\x00y\x1b[31m", "..", "", "S2A_MSIL2A_20240615"]:
        out = stac.sanitise_id(raw)
        assert out and "/" not in out and "\\" not in out and ".." not in out
        assert all(ch.isprintable() for ch in out)
    assert stac.sanitise_id("S2A_MSIL2A_20240615") == "S2A_MSIL2A_20240615"


def test_geojson_feature_collection(tmp_path) -> None:
    p = tmp_path / "aoi.geojson"
    poly = [[[9.0, 46.0], [9.2, 46.0], [9.2, 46.2], [9.0, 46.0]]]
    p.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon","coordinates":%s}},'
                 '{"type":"Feature","geometry":{"type":"Polygon","coordinates":%s}}]}' % (poly, poly))
    geom = stac.load_geojson(p)
    assert geom["type"] == "MultiPolygon" and len(geom["coordinates"]) == 2
    assert stac.geometry_bbox(geom) == (9.0, 46.0, 9.2, 46.2)
    for text in ('{"type":"FeatureCollection","features":[]}', '{"type":"FeatureCollection","features":null}',
                 '{"type":"FeatureCollection","features":{"a":1}}'):
        (tmp_path / "empty.json").write_text(text)
        with pytest.raises(UsageError, match="no geometry"):
            stac.load_geojson(tmp_path / "empty.json")


# --------------------------------------------------------------------------- targets and reconciliation


def test_targets_come_from_the_registry() -> None:
    (t,) = stac.resolve_targets(["s2"])
    assert (t.collection, t.catalogue, t.product) == ("sentinel-2-l2a", "earth-search", "l2a")
    assert t.url == "https://earth-search.aws.element84.com/v1"
    (t,) = stac.resolve_targets(["sentinel2"], product="l1c")
    assert t.collection == "sentinel-2-l1c"
    (t,) = stac.resolve_targets(["sentinel2"], catalog="http://127.0.0.1:1/")  # a mirror: earth-search ids
    assert (t.collection, t.catalogue, t.url) == ("sentinel-2-l2a", None, "http://127.0.0.1:1")
    with pytest.raises(UsageError, match="--collection"):
        stac.resolve_targets(["sentinel2"], catalog="http://127.0.0.1:1/", product="l2a-pre0400")
    with pytest.raises(UsageError, match="collection in catalogue 'planetary-computer'"):
        stac.resolve_targets(["sentinel2"], catalog="planetary-computer", product="l1c")
    with pytest.raises(UsageError, match="earth-search"):
        stac.resolve_targets(["sentinel2"], catalog="nasa")
    # a URL equal to a registry catalogue's gets its collections and asset keys
    (t,) = stac.resolve_targets(["sentinel2"], catalog="https://earth-search.aws.element84.com/v1/")
    assert (t.catalogue, t.collection) == ("earth-search", "sentinel-2-l2a")


def test_planetary_computer_needs_its_signer() -> None:
    pytest.importorskip("pystac_client")
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        (t,) = stac.resolve_targets(["sentinel2"], catalog="planetary-computer")
        with pytest.raises(UsageError, match="pip install planetary-computer"):
            stac._open_client(t)
    else:  # pragma: no cover - depends on the environment
        assert stac._signer("planetary-computer") is not None


def test_registry_wins_over_raster_bands(file_server, caplog) -> None:
    (t,) = stac.resolve_targets(["sentinel2"], catalog=file_server.url, collection="sentinel-2-l2a")
    good = write_s2_item(file_server, "good", bands=["B04"])
    wrong = write_s2_item(file_server, "wrong", bands=["B04"], raster_offset=0.0)
    old = write_s2_item(file_server, "old", bands=["B04"], baseline="03.01", raster_offset=0.0)
    with caplog.at_level(logging.INFO, logger="cloudmask.fetch"):
        f_good, f_wrong, f_old = (stac.prepare(i, t) for i in (good, wrong, old))
    assert f_good.product == "l2a" and f_good.notes == [] and f_good.assets == {"B04": "red"}
    assert f_wrong.product == "l2a"
    assert any("registry rule wins" in n and "offset -0.1" in n for n in f_wrong.notes)
    assert f_old.product == "l2a-pre0400" and not any("registry rule wins" in n for n in f_old.notes)
    assert "registry rule wins" in caplog.text and "l2a-pre0400" in caplog.text


# --------------------------------------------------------------------------- rustac memory backend


@pytest.fixture
def memory_api(file_server, stac_servers):
    items = [
        write_s2_item(file_server, "S2A_clear", cloud_cover=5, datetime="2024-06-05T10:30:00Z", bands=["B04"]),
        write_s2_item(file_server, "S2B_cloudy", cloud_cover=80, datetime="2024-06-10T10:30:00Z", bands=["B04"]),
        write_s2_item(file_server, "S2A_half", cloud_cover=40, datetime="2024-06-20T10:30:00Z", bands=["B04"]),
        write_s2_item(file_server, "S2A_july", cloud_cover=1, datetime="2024-07-20T10:30:00Z", bands=["B04"]),
        write_s2_item(file_server, "S2A_far", cloud_cover=1, bbox=(20.0, 50.0, 20.1, 50.1), bands=["B04"]),
    ]
    return stac_servers.serve(items)


def _ids(found) -> list[str]:
    return [f.id for f in found]


def test_an_item_in_the_last_second_of_a_day_is_found_by_that_day(file_server, stac_servers) -> None:
    """Stamped 23:59:59.5: with the day ending at 23:59:59 a daily cron job never fetched it (not
    that day, not the next); the next day's search does not find it either."""
    late = write_s2_item(file_server, "S2A_late", datetime="2024-06-05T23:59:59.500Z", bands=["B04"])
    targets = stac.resolve_targets(["sentinel2"], catalog=stac_servers.serve([late]), collection="sentinel-2-l2a")
    assert _ids(stac.search(targets, bbox=BBOX, datetime=stac.parse_date("2024-06-05"))) == ["S2A_late"]
    with pytest.raises(NoResultsError):
        stac.search(targets, bbox=BBOX, datetime=stac.parse_date("2024-06-06"))


def test_search_bbox_date_collection(memory_api) -> None:
    targets = stac.resolve_targets(["sentinel2"], catalog=memory_api, collection="sentinel-2-l2a")
    june = stac.parse_date("2024-06-01/2024-06-30")
    assert _ids(stac.search(targets, bbox=BBOX, datetime=june)) == ["S2A_clear", "S2B_cloudy", "S2A_half"]
    assert _ids(stac.search(targets, bbox=BBOX, datetime=june, limit=2)) == ["S2A_clear", "S2B_cloudy"]
    geom = {"type": "Polygon", "coordinates": [[[19.9, 49.9], [20.2, 49.9], [20.2, 50.2], [19.9, 49.9]]]}
    assert _ids(stac.search(targets, intersects=geom)) == ["S2A_far"]


def test_memory_backend_cloud_filter_falls_back_to_client_side(memory_api, caplog) -> None:
    targets = stac.resolve_targets(["sentinel2"], catalog=memory_api, collection="sentinel-2-l2a")
    with caplog.at_level(logging.INFO, logger="cloudmask.fetch"):
        found = stac.search(targets, bbox=BBOX, datetime=stac.parse_date("2024-06-01/2024-07-31"), max_cloud=40)
    assert _ids(found) == ["S2A_clear", "S2A_half", "S2A_july"]
    assert "client side" in caplog.text
    found = stac.search(targets, bbox=BBOX, max_cloud=40, limit=1)
    assert len(found) == 1 and found[0].item["properties"]["eo:cloud_cover"] <= 40


def test_empty_search_is_a_clear_error(memory_api) -> None:
    targets = stac.resolve_targets(["sentinel2"], catalog=memory_api, collection="sentinel-2-l2a")
    with pytest.raises(NoResultsError, match=r"no items in sentinel-2-l2a .*2023-01-01.*cloud_cover <= 1"):
        stac.search(targets, bbox=BBOX, datetime=stac.parse_date("2023-01-01"), max_cloud=1)
    wrong = stac.resolve_targets(["sentinel2"], catalog=memory_api, collection="nope")
    with pytest.raises(UsageError, match=r"has no collection 'nope'; it has sentinel-2-l2a$"):  # a typo, not "no items"
        stac.search(wrong, bbox=BBOX)
    with pytest.raises(UsageError, match="max-cloud"):
        stac.search(targets, bbox=BBOX, max_cloud=120)


def test_search_checks_its_arguments_as_the_cli_does(memory_api) -> None:
    """A library caller's datetime="June 2024" reached pystac-client (a bare Exception), a bbox
    string broke on float("."), and resolve_targets("sentinel2") looked for sensor "s"."""
    (target,) = stac.resolve_targets("sentinel2", catalog=memory_api, collection="sentinel-2-l2a")
    with pytest.raises(UsageError, match="--date 'June 2024'"):
        stac.search([target], bbox=BBOX, datetime="June 2024")
    with pytest.raises(UsageError, match="west .* must be left of east"):
        stac.search([target], bbox=(BBOX[2], BBOX[1], BBOX[0], BBOX[3]))
    with pytest.raises(UsageError, match="max-cloud"):
        stac.search([target], bbox=BBOX, max_cloud="50")
    with pytest.raises(UsageError, match="no targets"):
        stac.search([], bbox=BBOX)
    text = ",".join(str(v) for v in BBOX)
    # one Target, a bbox as text, a plain day: the same search as the CLI's
    assert _ids(stac.search(target, bbox=text, datetime="2024-06-05")) == ["S2A_clear"]
    # what pystac-client takes itself stays accepted: a month, numpy numbers
    import numpy as np

    assert _ids(stac.search(target, bbox=BBOX, datetime="2024-06", max_cloud=np.int64(50))) == ["S2A_clear", "S2A_half"]


def test_unreachable_api_is_a_clear_error() -> None:
    (t,) = stac.resolve_targets(["sentinel2"], catalog="http://127.0.0.1:9/", collection="x")
    with pytest.raises(FetchError, match=r"^http://127.0.0.1:9/?: cannot reach the STAC API \(Connection refused\)$"):
        stac.search([t], bbox=BBOX)


# --------------------------------------------------------------------------- pgstac


@pytest.mark.pgstac
def test_pgstac_filters_cloud_cover_on_the_server(pgstac_dsn, file_server, stac_servers, caplog) -> None:
    coll = unique_collection()
    items = [
        write_s2_item(file_server, f"{coll}_{cc}", cloud_cover=cc, collection=coll, bands=["B04"],
                      datetime=f"2024-06-{10 + i:02d}T10:00:00Z")
        for i, cc in enumerate((3, 30, 60, 90))
    ]
    url = stac_servers.serve(items, pgstac=pgstac_dsn)
    targets = stac.resolve_targets(["sentinel2"], catalog=url, collection=coll)
    with caplog.at_level(logging.INFO, logger="cloudmask.fetch"):
        found = stac.search(targets, bbox=BBOX, datetime=stac.parse_date("2024-06-01/2024-06-30"), max_cloud=30)
    assert _ids(found) == [f"{coll}_3", f"{coll}_30"]
    assert "client side" not in caplog.text  # pgstac did the filtering
    with pytest.raises(NoResultsError):
        stac.search(targets, bbox=BBOX, max_cloud=1)
    assert load_registry()["sentinel2"].id == found[0].sensor.id


def test_landsat_and_sentinel2_in_one_search(file_server, stac_servers) -> None:
    """Two sensors, two collections, one API; asset keys and products from each sensor's registry entry."""
    reg = load_registry()
    if "landsat8" not in reg:
        pytest.skip("sensors/landsat8.yaml not in this checkout yet")
    from cloudmask.testing import stac_item, write_raster

    l8 = reg["landsat8"]
    (file_server.root / "LC08").mkdir()
    assets = {}
    for band in l8.bands:
        key = band.assets.get("earth-search")
        if key:
            write_raster(file_server.root / "LC08" / f"{key}.tif", np.full((16, 16), 9000, "uint16"))
            assets[key] = f"{file_server.url}/LC08/{key}.tif"
    lc = stac_item("LC08_L2SP_195028_20240612_02_T1", assets, platform="landsat-8", collection="landsat-c2-l2", bbox=(8.9, 46.9, 9.1, 47.0),
                   datetime="2024-06-12T10:00:00Z", cloud_cover=12)
    # landsat-c2-l2 holds Landsat 7, 8 and 9 alike: each item goes to the sensor of its platform
    others = [stac_item(f"L{n}_other", assets, platform=p, collection="landsat-c2-l2", bbox=(8.9, 46.9, 9.1, 47.0),
                        datetime=f"2024-06-1{n}T10:00:00Z", cloud_cover=5) for n, p in ((7, "LANDSAT_7"), (9, "landsat-9"))]
    s2 = write_s2_item(file_server, "S2A_l8pair", bands=["B04"], datetime="2024-06-11T10:00:00Z")
    url = stac_servers.serve([lc, s2, *others])
    targets = stac.resolve_targets(["sentinel2", "landsat8"], catalog=url)
    assert [t.collection for t in targets] == ["sentinel-2-l2a", "landsat-c2-l2"]
    found = stac.search(targets, bbox=BBOX, max_cloud=20)
    assert _ids(found) == ["S2A_l8pair", "LC08_L2SP_195028_20240612_02_T1"]
    both = stac.search(stac.resolve_targets(["landsat7", "landsat8", "landsat9"], catalog=url), bbox=BBOX)
    assert [(f.id, f.sensor.id) for f in both] == [("LC08_L2SP_195028_20240612_02_T1", "landsat8"),
                                                   ("L7_other", "landsat7"), ("L9_other", "landsat9")]
    lf = found[1]
    assert lf.sensor.id == "landsat8" and lf.product == l8.default_product
    assert set(lf.assets) == {b.name for b in l8.bands if b.assets.get("earth-search")}


def test_a_timeout_is_said_in_a_few_words() -> None:
    """A stalled catalogue's error was urllib3's whole retry chain in one line."""
    read = Exception("HTTPConnectionPool(host='127.0.0.1', port=5): Max retries exceeded with url: /search (Caused by "
                     "ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', port=5): Read timed out. (read timeout=30)\"))")
    connect = Exception("HTTPConnectionPool(host='10.0.0.1', port=80): Max retries exceeded with url: / (Caused by "
                        "ConnectTimeoutError(<urllib3.connection.HTTPConnection object at 0x7f>, 'Connection to 10.0.0.1 "
                        "timed out. (connect timeout=30)'))")
    assert stac._short(read) == "no answer within 30 s (read timeout)"
    assert stac._short(connect) == "no answer within 30 s (connect timeout)"
    refused = Exception("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded (Caused by NewConnectionError("
                        "'<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: "
                        "[Errno 111] Connection refused'))")
    assert stac._short(refused) == "Connection refused"
