"""Downloads from a real Range-capable HTTP server on 127.0.0.1, with injected faults."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import rasterio
from fetch_servers import S2_SIZE, write_s2_item

from cloudmask import fetch, stac
from cloudmask.errors import FetchError
from cloudmask.files import FETCH_MARKER
from cloudmask.scene import read_scene

FAST = fetch.Retry(attempts=4, backoff=0.01, timeout=10)


def _found(server, items, catalog=None):
    (t,) = stac.resolve_targets(["sentinel2"], catalog=catalog or server.url, collection="sentinel-2-l2a")
    return [stac.prepare(i, t) for i in items]


def _expected_reflectance(server, item_id: str, key: str = "red", offset: float = 1000) -> np.ndarray:
    with rasterio.open(server.root / item_id / f"{key}.tif") as src:
        dn = src.read(1).astype("float32")
    out = (dn - offset) * 1e-4
    out[dn == 0] = np.nan
    return out


def test_fetch_writes_a_folder_read_scene_reads(file_server, tmp_path) -> None:
    items = [write_s2_item(file_server, "S2A_one"), write_s2_item(file_server, "S2B_two", baseline="03.01", seed=3)]
    plans = fetch.plan(_found(file_server, items), tmp_path / "out")
    fetch.fetch(plans, retry=FAST, workers=4)
    one = tmp_path / "out" / "S2A_one"
    assert sorted(p.name for p in one.iterdir()) == sorted([f"{b}.tif" for b in
        ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]] + ["item.json"])
    saved = json.loads((one / "item.json").read_text())
    assert saved["assets"]["red"]["href"] == "./B04.tif"
    assert saved["assets"]["thumbnail"]["href"].startswith("http://127.0.0.1")  # not fetched, left remote
    assert saved["properties"]["cloudmask:product"] == "l2a"
    assert not list((tmp_path / "out").rglob("*.part"))

    scene = read_scene(one)
    assert scene.sensor.id == "sentinel2" and len(scene.bands) == 13 and scene.shape == (S2_SIZE, S2_SIZE)
    red = scene.data.sel(band="B04").values
    np.testing.assert_allclose(red, _expected_reflectance(file_server, "S2A_one"), atol=1e-6, equal_nan=True)
    # the pre-04.00 item: registry product l2a-pre0400, no +1000 offset
    old = read_scene(tmp_path / "out" / "S2B_two")
    assert old.product == "l2a-pre0400"
    np.testing.assert_allclose(old.data.sel(band="B04").values,
                               _expected_reflectance(file_server, "S2B_two", offset=0), atol=1e-6, equal_nan=True)
    # the saved item JSON reads the same local files
    via_json = read_scene(one / "item.json")
    np.testing.assert_allclose(via_json.data.sel(band="B04").values, red, equal_nan=True)

    # a second run finds everything in place and downloads nothing
    n = len(file_server.requests)
    again = fetch.plan(_found(file_server, items), tmp_path / "out")
    assert all(p.skipped for p in again)
    fetch.fetch(again, retry=FAST)
    assert len(file_server.requests) == n


def test_read_scene_from_a_served_item_by_range_requests(file_server) -> None:
    item = write_s2_item(file_server, "S2A_remote", bands=["B02", "B03", "B04", "B08"])
    (file_server.root / "S2A_remote" / "item.json").write_text(json.dumps(item))
    scene = read_scene(f"{file_server.url}/S2A_remote/item.json")
    assert [b.name for b in scene.bands] == ["B02", "B03", "B04", "B08"]
    red = scene.data.sel(band="B04").values
    np.testing.assert_allclose(red, _expected_reflectance(file_server, "S2A_remote"), atol=1e-6, equal_nan=True)
    assert any(r for _m, p, r in file_server.requests if p.endswith("/red.tif"))  # GDAL used Range


def test_a_served_item_cut_short_is_a_scene_error(file_server) -> None:
    """The connection drops half-way through the item JSON: one line naming it, not an internal error."""
    from cloudmask.errors import SceneError

    item = write_s2_item(file_server, "S2A_cut", bands=["B04"])
    (file_server.root / "S2A_cut" / "item.json").write_text(json.dumps(item))
    file_server.faults["/S2A_cut/item.json"] = ["drop"]
    with pytest.raises(SceneError, match=r"S2A_cut/item.json: cannot read STAC item"):
        read_scene(f"{file_server.url}/S2A_cut/item.json")


def test_500_then_recovers(file_server, tmp_path, caplog) -> None:
    item = write_s2_item(file_server, "S2A_flaky", bands=["B04"])
    file_server.faults["/S2A_flaky/red.tif"] = ["500", "500"]
    plans = fetch.plan(_found(file_server, [item]), tmp_path)
    with caplog.at_level(logging.INFO, logger="cloudmask.fetch"):
        fetch.fetch(plans, retry=FAST)
    assert (tmp_path / "S2A_flaky" / "B04.tif").read_bytes() == (file_server.root / "S2A_flaky" / "red.tif").read_bytes()
    assert len(file_server.gets("/S2A_flaky/red.tif")) == 3
    assert "HTTP 500; retrying" in caplog.text


def test_dropped_connection_resumes_with_range(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_drop", bands=["B04"], size=256)  # 128 KiB: several chunks
    file_server.faults["/S2A_drop/red.tif"] = ["drop"]
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    src = (file_server.root / "S2A_drop" / "red.tif").read_bytes()
    assert (tmp_path / "S2A_drop" / "B04.tif").read_bytes() == src
    first, second = file_server.gets("/S2A_drop/red.tif")
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(src) // 2  # only the missing tail was asked for


def test_interrupted_run_leaves_only_a_part_file_then_resumes(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_cut", bands=["B04", "B03"], size=256)
    file_server.faults["/S2A_cut/red.tif"] = ["drop", "500", "500"]
    plans = fetch.plan(_found(file_server, [item]), tmp_path)
    with pytest.raises(FetchError, match=r"band B04 .*failed after 3 attempts \(HTTP 500\).*kept in B04.tif.part"):
        fetch.fetch(plans, retry=fetch.Retry(attempts=3, backoff=0.01))
    folder = tmp_path / "S2A_cut"
    assert not (folder / "B04.tif").exists() and not (folder / "item.json").exists()
    assert (folder / "B04.tif.part").exists() and (folder / "B03.tif").exists()
    # next run resumes the part file
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert (folder / "B04.tif").read_bytes() == (file_server.root / "S2A_cut" / "red.tif").read_bytes()
    assert file_server.gets("/S2A_cut/red.tif")[-1].startswith("bytes=")
    assert (folder / "item.json").exists() and not list(folder.glob("*.part"))


def test_404_is_a_clear_error_without_files(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_gone", bands=["B04"])
    (file_server.root / "S2A_gone" / "red.tif").unlink()
    with pytest.raises(FetchError, match=r"item S2A_gone band B04 .*HTTP 404"):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    # no band, no lock: only the marker saying the item is not complete (for `cloudmask mask`)
    assert [p.name for p in (tmp_path / "S2A_gone").iterdir()] == [FETCH_MARKER]
    assert len(file_server.gets("/S2A_gone/red.tif")) == 1  # not retried


def test_clip_of_an_asset_whose_range_requests_answer_404_names_the_status(file_server, tmp_path) -> None:
    """GDAL's HEAD succeeds, its range request gets 404: not "not recognized as … file format"."""
    item = write_s2_item(file_server, "S2A_cgone", bands=["B04"])
    file_server.faults["/S2A_cgone/red.tif"] = ["404"] * 4
    box = stac.geometry_bbox(item["geometry"])
    with pytest.raises(FetchError, match=r"item S2A_cgone band B04 .*: cannot read \(HTTP 404 Not Found\)$"):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path, clip_bbox=box), clip_bbox=box, retry=FAST)
    assert not (tmp_path / "S2A_cgone" / "B04.tif").exists()


def test_size_and_checksum_are_checked(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_sum", bands=["B04", "B03"])
    data = (file_server.root / "S2A_sum" / "red.tif").read_bytes()
    item["assets"]["red"]["file:checksum"] = "1220" + hashlib.sha256(data).hexdigest()
    item["assets"]["green"]["file:checksum"] = "1220" + "00" * 32
    with pytest.raises(FetchError, match="band B03 .*checksum mismatch"):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    folder = tmp_path / "S2A_sum"
    # verified one kept, bad one removed (and its version record); the item marked not complete
    assert sorted(p.name for p in folder.iterdir()) == [FETCH_MARKER, "B04.tif"]


def test_clip_reads_only_the_window(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_clip", bands=["B04", "B8A"])
    with rasterio.open(file_server.root / "S2A_clip" / "red.tif") as src:
        left, top = src.transform.c, src.transform.f
    # a lon/lat box around the 8x8-pixel block starting 8 px in from the top-left corner
    from rasterio.warp import transform_bounds

    box = transform_bounds("EPSG:32632", "EPSG:4326", left + 160, top - 320, left + 320, top - 160)
    shrink = 1e-5
    box = (box[0] + shrink, box[1] + shrink, box[2] - shrink, box[3] - shrink)
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path, clip_bbox=box), clip_bbox=box, retry=FAST)
    with rasterio.open(tmp_path / "S2A_clip" / "B04.tif") as out, rasterio.open(file_server.root / "S2A_clip" / "red.tif") as src:
        assert out.width < src.width and out.height < src.height
        row, col = src.index(out.transform.c + 1, out.transform.f - 1)
        window = rasterio.windows.Window(col, row, out.width, out.height)
        np.testing.assert_array_equal(out.read(1), src.read(1, window=window))
    scene = read_scene(tmp_path / "S2A_clip")
    assert [b.name for b in scene.bands] == ["B04", "B8A"]
    # the same clip again is complete; full assets or another box are not: fetched again, in full
    assert fetch.plan(_found(file_server, [item]), tmp_path, clip_bbox=box)[0].skipped
    (again,) = fetch.plan(_found(file_server, [item]), tmp_path)
    assert not again.skipped and len(again.stale) == 2
    fetch.fetch([again], retry=FAST)
    with rasterio.open(tmp_path / "S2A_clip" / "B04.tif") as out, rasterio.open(file_server.root / "S2A_clip" / "red.tif") as src:
        assert (out.width, out.height) == (src.width, src.height)
    assert fetch.plan(_found(file_server, [item]), tmp_path)[0].skipped
    assert not fetch.plan(_found(file_server, [item]), tmp_path, clip_bbox=box)[0].skipped
    far = (20.0, 50.0, 20.1, 50.1)
    with pytest.raises(FetchError, match="does not overlap"):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path / "far", clip_bbox=far), clip_bbox=far, retry=FAST)


def test_a_clip_box_given_to_plan_alone_is_the_one_fetch_cuts_to(file_server, tmp_path) -> None:
    """fetch.plan(found, out, clip_bbox=box) then fetch.fetch(plans): whole assets were downloaded
    under a plan made for the clip, and the next plan found them "stale"."""
    from rasterio.warp import transform_bounds

    from cloudmask.errors import UsageError

    item = write_s2_item(file_server, "S2A_pc", bands=["B04"])
    with rasterio.open(file_server.root / "S2A_pc" / "red.tif") as src:
        left, top, full = src.transform.c, src.transform.f, (src.width, src.height)
    box = transform_bounds("EPSG:32632", "EPSG:4326", left + 160, top - 320, left + 320, top - 160)
    box = (box[0] + 1e-5, box[1] + 1e-5, box[2] - 1e-5, box[3] - 1e-5)
    plans = fetch.plan(_found(file_server, [item]), str(tmp_path), clip_bbox=box)  # a str folder works too
    with pytest.raises(UsageError, match="give the same box to plan"):
        fetch.fetch(plans, clip_bbox=(20.0, 50.0, 20.1, 50.1), retry=FAST)
    fetch.fetch(plans, retry=FAST)
    with rasterio.open(tmp_path / "S2A_pc" / "B04.tif") as out:
        assert out.width < full[0] and out.height < full[1]
    assert fetch.plan(_found(file_server, [item]), tmp_path, clip_bbox=box)[0].skipped


def test_hrefs_s3_and_requester_pays(file_server) -> None:
    item = write_s2_item(file_server, "S2A_s3", bands=["B04"])
    asset = item["assets"]["red"]
    asset["href"] = "s3://sentinel-cogs/tiles/32/T/MT/red.tif"
    assert fetch.resolve_href(item, asset, "x") == "https://sentinel-cogs.s3.amazonaws.com/tiles/32/T/MT/red.tif"
    asset["alternate"] = {"https": {"href": "https://example.invalid/red.tif"}}
    assert fetch.resolve_href(item, asset, "x") == "https://example.invalid/red.tif"
    del asset["alternate"]
    asset["href"] = "s3://usgs-landsat/collection02/x_SR_B4.TIF"
    item["properties"]["storage:schemes"] = {"aws": {"platform": "https://{bucket}.s3.amazonaws.com", "requester_pays": True}}
    asset["storage:refs"] = ["aws"]
    with pytest.raises(FetchError, match="requester-pays"):
        fetch.resolve_href(item, asset, "item x asset red")
    (planned,) = fetch.plan(_found(file_server, [item]), file_server.root)  # this item fails, alone
    assert "requester-pays" in planned.error and planned.files == [] and not planned.complete
    asset["href"] = "ftp://host/red.tif"
    with pytest.raises(FetchError, match="unsupported href scheme"):
        fetch.resolve_href(item, asset, "x")


def test_hostile_ids_stay_inside_the_output_folder(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "../../escape", bands=["B04"], folder="escape")
    twin = write_s2_item(file_server, "..//escape", bands=["B04"], folder="escape2")
    plans = fetch.plan(_found(file_server, [item, twin]), tmp_path / "out")
    fetch.fetch(plans, retry=FAST)
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(folders) == 2 and all(p.folder.parent == tmp_path / "out" for p in plans)
    assert not (tmp_path / "escape").exists()


def test_expired_signed_url_says_so(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_signed", bands=["B04"])
    item["assets"]["red"]["href"] += "?se=2024-01-01T00%3A00Z&sig=abc"
    file_server.faults["/S2A_signed/red.tif"] = ["403"]
    with pytest.raises(FetchError, match="403 on a signed URL"):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert not (tmp_path / "S2A_signed" / "B04.tif").exists()


def test_relative_hrefs_resolve_against_the_self_link(file_server, tmp_path) -> None:
    item = write_s2_item(file_server, "S2A_rel", bands=["B04"])
    item["assets"]["red"]["href"] = "red.tif"
    item["assets"]["thumbnail"]["href"] = "thumb.jpg"
    item["links"] = [{"rel": "self", "href": f"{file_server.url}/S2A_rel/item.json"}]
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    saved = json.loads((tmp_path / "S2A_rel" / "item.json").read_text())
    assert saved["assets"]["red"]["href"] == "./B04.tif"
    assert saved["assets"]["thumbnail"]["href"] == f"{file_server.url}/S2A_rel/thumb.jpg"
    assert not any(ln["rel"] == "self" for ln in saved["links"])
    assert read_scene(tmp_path / "S2A_rel" / "item.json").bands[0].name == "B04"


def test_an_asset_holding_several_bands_is_fetched_once_and_read_layer_by_layer(file_server, tmp_path) -> None:
    """E.g. a 4-band analytic GeoTIFF: one download (not one per band), and the saved item.json
    tells which layer is which band, so the folder reads as the remote file does."""
    from cloudmask.testing import random_reflectance, stac_item, test_transform, write_raster

    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    dn = np.round(random_reflectance(13, 48, 48, seed=4) * 10000 + 1000).astype("uint16")
    (file_server.root / "multi").mkdir()
    write_raster(file_server.root / "multi" / "analytic.tif", dn, nodata=0, transform=test_transform(20.0))
    item = stac_item("S2A_multi", {"analytic": f"{file_server.url}/multi/analytic.tif"}, collection="sentinel-2-l2a")
    item["assets"]["analytic"]["eo:bands"] = [{"name": b} for b in names]
    item["properties"]["s2:processing_baseline"] = "05.10"
    plans = fetch.plan(_found(file_server, [item]), tmp_path / "out")
    assert [t.dest.name for t in plans[0].files] == ["analytic.tif"]
    n = len(file_server.requests)
    fetch.fetch(plans, retry=FAST)
    got = [r for r in file_server.requests[n:] if "analytic.tif" in str(r)]
    assert got and len(got) == len(file_server.requests[n:])  # that one file only, once per request kind
    folder = tmp_path / "out" / "S2A_multi"
    assert sorted(p.name for p in folder.iterdir()) == ["analytic.tif", "item.json"]
    scene = read_scene(folder)
    want = (dn.astype("float32") - 1000) * 1e-4
    for i, b in enumerate(names):
        np.testing.assert_allclose(scene.data.sel(band=b).values, want[i], atol=1e-6)


def test_a_part_of_another_version_is_not_resumed(file_server, tmp_path) -> None:
    """A resume asked only for the bytes after the .part: a file re-published at the same URL (or a
    stray .part) was stitched from two versions and saved as complete when the sizes matched."""
    item = write_s2_item(file_server, "S2A_ver", bands=["B04"], size=256)
    src = file_server.root / "S2A_ver" / "red.tif"
    folder = tmp_path / "S2A_ver"
    folder.mkdir()
    part = folder / "B04.tif.part"
    # a part of unknown version (no record beside it): fetched again from the start
    part.write_bytes(b"\xff" * 2000)
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert (folder / "B04.tif").read_bytes() == src.read_bytes()
    assert file_server.gets("/S2A_ver/red.tif")[-1] is None and not list(folder.glob("*.part*"))
    # a part recorded for a version the server no longer has (another Last-Modified): started over
    (folder / "B04.tif").unlink()
    (folder / "item.json").unlink()
    part.write_bytes(b"\xff" * 2000)
    (folder / "B04.tif.part.json").write_text(json.dumps(
        {"etag": None, "last_modified": "Mon, 01 Jan 2001 00:00:00 GMT", "size": src.stat().st_size}))
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert (folder / "B04.tif").read_bytes() == src.read_bytes()
    ranges = file_server.gets("/S2A_ver/red.tif")[-2:]
    assert ranges[0] == "bytes=2000-" and ranges[1] is None  # asked for the rest, saw another version, restarted
    # the same version: resumed (what the record is for)
    data = src.read_bytes()
    (folder / "B04.tif").unlink()
    (folder / "item.json").unlink()
    file_server.faults["/S2A_ver/red.tif"] = ["drop"]
    with pytest.raises(FetchError):
        fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=fetch.Retry(attempts=1, backoff=0.01))
    assert part.exists() and (folder / "B04.tif.part.json").exists()
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert (folder / "B04.tif").read_bytes() == data and file_server.gets("/S2A_ver/red.tif")[-1].startswith("bytes=")


def test_two_runs_on_one_item_folder(file_server, tmp_path) -> None:
    """Two runs fetching the same item renamed each other's .part files (both failed, and a band could
    end up corrupt in a folder marked complete): the second one now says another run has it."""
    from cloudmask.files import FETCH_LOCK, OutputLock

    item = write_s2_item(file_server, "S2A_two", bands=["B04"])
    folder = tmp_path / "S2A_two"
    folder.mkdir()
    with OutputLock(folder / FETCH_LOCK, folder):  # another run of this process holds the item
        with pytest.raises(FetchError, match="another run is fetching this item"):
            fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert file_server.gets("/S2A_two/red.tif") == []
    fetch.fetch(fetch.plan(_found(file_server, [item]), tmp_path), retry=FAST)
    assert sorted(p.name for p in folder.iterdir()) == ["B04.tif", "item.json"]


def test_a_stop_cuts_the_pause_before_a_retry_short() -> None:
    """Ctrl-C during a retry's back-off waited it out (up to 20 s), then started another request."""
    import threading
    import time

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(fetch.Stopped):
        fetch.Retry(backoff=8.0).sleep(0, stop)
    assert time.monotonic() - started < 2.0
    fetch.Retry(backoff=0.01).sleep(0, threading.Event())  # not stopped: just the pause
