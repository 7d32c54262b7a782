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
    assert [f["band"] for f in payload["items"][0]["files"]] == ["B02", "B03", "B04", "B08"]
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
    assert "fetched 2 item(s)" in res.stdout
    res = runner.invoke(app, _args(url, "--quiet", "-o", str(tmp_path / "b")))
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    assert (tmp_path / "b" / "S2B_MSIL2A_20240610" / "item.json").exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--bbox", "10,45,5,46"], 2, "west"),
        (["--date", "2024-02-30"], 2, "YYYY-MM-DD"),
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
