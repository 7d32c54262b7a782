"""``cloudmask fetch`` end to end against rustac + a Range file server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from fetch_servers import write_s2_item
from typer.testing import CliRunner

from cloudmask.cli.app import app
from cloudmask.scene import read_scene

runner = CliRunner()
BBOX = "8.5,46.5,9.5,47.5"


@pytest.fixture
def api(file_server, stac_servers):
    items = [
        write_s2_item(file_server, "S2A_MSIL2A_20240605", cloud_cover=5, datetime="2024-06-05T10:30:00Z",
                      bands=["B02", "B03", "B04", "B08"]),
        write_s2_item(file_server, "S2B_MSIL2A_20240610", cloud_cover=80, datetime="2024-06-10T10:30:00Z",
                      bands=["B04"], raster_offset=0.0),
    ]
    return stac_servers.serve(items), file_server


def _args(url: str, *extra: str) -> list[str]:
    return ["fetch", "--catalog", url, "--collection", "sentinel-2-l2a", "--bbox", BBOX,
            "--date", "2024-06-01/2024-06-30", "--sensor", "sentinel2", *extra]


def test_fetch_json_then_mask_reads_the_folder(api, tmp_path) -> None:
    url, _ = api
    out = tmp_path / "scenes"
    res = runner.invoke(app, _args(url, "--max-cloud", "50", "--json", "-o", str(out)))
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert [i["id"] for i in payload["items"]] == ["S2A_MSIL2A_20240605"]
    assert payload["dry_run"] is False
    item = payload["items"][0]
    assert item["complete"] is True and item["already_here"] is False and item["error"] is None  # fetched now
    assert [f["band"] for f in item["files"]] == ["B02", "B03", "B04", "B08"]
    assert "client side" in res.stderr  # rustac's memory backend has no cloud filter
    scene = read_scene(out / "S2A_MSIL2A_20240605")
    assert [b.name for b in scene.bands] == ["B02", "B03", "B04", "B08"]


def test_dry_run_lists_without_downloading(api, tmp_path) -> None:
    url, server = api
    out = tmp_path / "scenes"
    res = runner.invoke(app, _args(url, "--dry-run", "-o", str(out)))
    assert res.exit_code == 0, res.output
    assert "would fetch 2 item(s)" in res.stdout and "S2B_MSIL2A_20240610" in res.stdout
    assert "registry rule wins" in res.stderr  # the offset-0 item is reported
    assert not out.exists()
    assert not [p for m, p, _r in server.requests if p.endswith(".tif")]
    res = runner.invoke(app, _args(url, "--dry-run", "--json", "--limit", "1", "-o", str(out)))
    assert res.exit_code == 0 and len(json.loads(res.stdout)["items"]) == 1


def test_table_output_and_quiet(api, tmp_path) -> None:
    url, _ = api
    res = runner.invoke(app, _args(url, "-o", str(tmp_path / "a")))
    assert res.exit_code == 0, res.output
    assert "2 fetched" in res.stdout
    again = runner.invoke(app, _args(url, "-o", str(tmp_path / "a")))
    assert again.exit_code == 0 and "2 already here" in again.stdout and "fetched" not in again.stdout
    res = runner.invoke(app, _args(url, "--quiet", "-o", str(tmp_path / "b")))
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    assert (tmp_path / "b" / "S2B_MSIL2A_20240610" / "item.json").exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--bbox", "10,45,5,46"], 2, "west"),
        (["--date", "2024-02-30"], 2, "no such day"),
        (["--max-cloud", "150"], 2, "between 0 and 100"),
        (["--date", "2020-01-01"], 1, "no items"),
    ],
)
def test_bad_requests_are_one_clear_line(api, tmp_path, extra, code, message) -> None:
    url, _ = api
    res = runner.invoke(app, _args(url, "-o", str(tmp_path / "x")) + extra)
    assert res.exit_code == code, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_usage_errors_without_servers(tmp_path) -> None:
    res = runner.invoke(app, ["fetch", "--date", "2024-06-01", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--bbox" in res.stderr
    res = runner.invoke(app, ["fetch", "--bbox", BBOX, "--catalog", "http://127.0.0.1:9", "--product", "l2a-pre0400",
                              "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--collection" in res.stderr
    res = runner.invoke(app, ["fetch", "--bbox", BBOX, "--catalog", "http://127.0.0.1:9", "-o", str(tmp_path)])
    assert res.exit_code == 1 and "cannot reach the STAC API" in res.stderr
    res = runner.invoke(app, ["fetch", "--bbox", BBOX, "--sensor", "sentinel3000", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "unknown sensor" in res.stderr
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        res = runner.invoke(app, ["fetch", "--bbox", BBOX, "--catalog", "planetary-computer", "-o", str(tmp_path)])
        assert res.exit_code == 2 and "pip install planetary-computer" in res.stderr


def test_404_asset_fails_run_without_partial_files(api, tmp_path) -> None:
    url, server = api
    (server.root / "S2A_MSIL2A_20240605" / "nir.tif").unlink()
    out = tmp_path / "scenes"
    res = runner.invoke(app, _args(url, "--quiet", "-o", str(out)))
    assert res.exit_code == 1 and "HTTP 404" in res.stderr
    folder = out / "S2A_MSIL2A_20240605"
    assert not (folder / "item.json").exists() and not (folder / "B08.tif").exists()
    assert (out / "S2B_MSIL2A_20240610" / "item.json").exists()  # the other item still completed


def test_clip_with_geojson(api, tmp_path) -> None:
    url, server = api
    import rasterio

    with rasterio.open(server.root / "S2A_MSIL2A_20240605" / "red.tif") as src:
        from rasterio.warp import transform_bounds

        b = src.bounds
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", b.left + 100, b.bottom + 100, b.left + 300, b.bottom + 300)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}}))
    out = tmp_path / "clipped"
    args = [a for a in _args(url, "--clip", "--limit", "1", "-o", str(out)) if a not in ("--bbox", BBOX)]
    res = runner.invoke(app, [*args, "--geojson", str(aoi)])
    assert res.exit_code == 0, res.output
    scene = read_scene(out / "S2A_MSIL2A_20240605")
    assert 0 < scene.shape[0] < 32 and 0 < scene.shape[1] < 32
    saved = json.loads((out / "S2A_MSIL2A_20240605" / "item.json").read_text())
    assert saved["bbox"] == pytest.approx([w, s, e, n]) and saved["properties"]["cloudmask:clip_bbox"] == pytest.approx([w, s, e, n])
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [w, s]}))
    res = runner.invoke(app, [*args, "--geojson", str(point)])
    assert res.exit_code == 2 and "--clip needs an area" in res.stderr


def test_one_item_that_cannot_be_fetched_does_not_stop_the_others(file_server, stac_servers, tmp_path) -> None:
    """An item without a band asset fails alone: the others are fetched, --json lists every item's
    state and the error, and the exit status is 1."""
    good = write_s2_item(file_server, "S2A_MSIL2A_20240605", datetime="2024-06-05T10:30:00Z", bands=["B04"])
    bad = write_s2_item(file_server, "S2B_MSIL2A_20240606", datetime="2024-06-06T10:30:00Z", bands=["B04"])
    bad["assets"] = {"thumbnail": bad["assets"]["thumbnail"]}
    url = stac_servers.serve([good, bad])
    out = tmp_path / "scenes"
    res = runner.invoke(app, _args(url, "--json", "-o", str(out)))
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    state = {i["id"]: (i["complete"], i["error"]) for i in doc["items"]}
    assert state["S2A_MSIL2A_20240605"] == (True, None)
    assert state["S2B_MSIL2A_20240606"][0] is False and "no asset matches" in state["S2B_MSIL2A_20240606"][1]
    assert "no asset matches" in doc["error"] and "1 of 2 items failed" in doc["error"]
    assert (out / "S2A_MSIL2A_20240605" / "item.json").is_file()
    table = runner.invoke(app, _args(url, "-o", str(out)))
    assert table.exit_code == 1 and "1 already here, 1 failed" in table.stdout
    # a dry run says so too (it listed the item as fetchable, exit 0)
    dry = runner.invoke(app, _args(url, "--dry-run", "-o", str(tmp_path / "dry")))
    assert dry.exit_code == 1 and "no asset matches" in dry.stderr and "would fetch 2" in dry.stdout
    doc = json.loads(runner.invoke(app, _args(url, "--dry-run", "--json", "-o", str(tmp_path / "dry"))).stdout)
    assert doc["dry_run"] and len(doc["items"]) == 2 and "no asset matches" in doc["error"]


def test_a_folder_that_cannot_be_made_fails_its_item_only(api, tmp_path) -> None:
    url, _ = api
    out = tmp_path / "scenes"
    out.mkdir()
    (out / "S2B_MSIL2A_20240610").write_text("a stray file where the item's folder goes")
    res = runner.invoke(app, _args(url, "--json", "-o", str(out)))
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    state = {i["id"]: (i["complete"], i["error"]) for i in doc["items"]}
    assert state["S2A_MSIL2A_20240605"] == (True, None)
    assert "cannot create folder" in state["S2B_MSIL2A_20240610"][1] and "1 of 2 items failed" in doc["error"]


def test_ids_that_sanitise_alike_keep_their_own_folders_across_runs(file_server, stac_servers, tmp_path) -> None:
    """`a/b` and `a_b`: an id that needs sanitising gets a digest of itself, so its folder does not
    depend on which other items a search returns (it used to, and a later run took `a/b`'s folder
    for `a_b`'s complete item)."""
    slash = write_s2_item(file_server, "a/b", datetime="2024-06-03T10:30:00Z", bands=["B04"], folder="slash")
    plain = write_s2_item(file_server, "a_b", datetime="2024-06-02T10:30:00Z", bands=["B04"], folder="plain")
    url = stac_servers.serve([slash, plain])
    out = tmp_path / "scenes"
    first = runner.invoke(app, _args(url, "--date", "2024-06-03", "--json", "-o", str(out)))
    assert first.exit_code == 0, first.output
    (only,) = json.loads(first.stdout)["items"]
    assert only["id"] == "a/b" and only["folder"].startswith(str(out / "a_b_"))
    both = runner.invoke(app, _args(url, "--date", "2024-06-02/2024-06-03", "--json", "-o", str(out)))
    assert both.exit_code == 0, both.output
    items = {i["id"]: i for i in json.loads(both.stdout)["items"]}
    assert items["a/b"]["already_here"] and items["a/b"]["folder"] == only["folder"]
    assert not items["a_b"]["already_here"] and items["a_b"]["folder"] == str(out / "a_b")
    assert json.loads((out / "a_b" / "item.json").read_text())["id"] == "a_b"


def test_a_full_disk_names_the_file_and_keeps_what_finished(api, tmp_path, monkeypatch) -> None:
    import errno

    from cloudmask import fetch as fetch_mod

    real = fetch_mod.download_file

    def fill_up(session, task, retry, progress=None, stop=None):
        if task.found.id == "S2B_MSIL2A_20240610":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(session, task, retry, progress, stop)

    monkeypatch.setattr(fetch_mod, "download_file", fill_up)
    url, _ = api
    out = tmp_path / "scenes"
    res = runner.invoke(app, _args(url, "-q", "-o", str(out)))
    assert res.exit_code == 1
    assert "S2B_MSIL2A_20240610/B04.tif: disk full while writing (no space left on device)" in res.stderr
    assert (out / "S2A_MSIL2A_20240605" / "item.json").is_file()  # the finished item is saved
    assert not (out / "S2B_MSIL2A_20240610" / "item.json").exists()


def test_sigterm_stops_a_fetch_at_once_and_the_next_run_resumes(file_server, stac_servers, tmp_path) -> None:
    """`timeout`/a scheduler's SIGTERM (and Ctrl-C) waited for every queued download to finish; now
    the queued ones are dropped, the running ones stop at their next chunk and keep their .part."""
    import signal
    import subprocess
    import sys
    import time

    item = write_s2_item(file_server, "S2A_MSIL2A_slow", bands=["B02", "B03", "B04", "B08"], size=96)
    url = stac_servers.serve([item])
    for href in {a["href"] for a in item["assets"].values() if a["href"].endswith(".tif")}:
        file_server.faults[href.split(file_server.url, 1)[-1]] = ["slow"]
    out = tmp_path / "scenes"
    proc = subprocess.Popen([sys.executable, "-m", "cloudmask", *_args(url, "--json", "--workers", "2", "-o", str(out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    folder = out / "S2A_MSIL2A_slow"
    deadline = time.monotonic() + 60
    while not list(folder.glob("*.part")) if folder.is_dir() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert time.monotonic() - sent < 5, "it went on downloading"
    doc = json.loads(stdout)
    assert doc["interrupted"] is True and doc["error"] == "terminated"
    assert not (folder / "item.json").exists() and (folder / ".cloudmask-fetching").exists()
    assert len(list(folder.glob("*.tif"))) < 4 and list(folder.glob("*.tif.part.json"))
    assert not (folder / ".cloudmask-fetch.lock").exists()
    # mask refuses the half-fetched folder rather than mask it with the bands it has
    res = runner.invoke(app, ["mask", str(folder), "-o", str(tmp_path / "masks")])
    assert res.exit_code != 0 and "fetch" in res.stderr, res.output
    res = runner.invoke(app, _args(url, "--quiet", "-o", str(out)))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in folder.iterdir()) == ["B02.tif", "B03.tif", "B04.tif", "B08.tif", "item.json"]
    for band, key in (("B02", "blue"), ("B08", "nir")):
        assert (folder / f"{band}.tif").read_bytes() == (file_server.root / "S2A_MSIL2A_slow" / f"{key}.tif").read_bytes()
