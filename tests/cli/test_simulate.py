"""``cloudmask simulate``: files, georeference, reproducibility, JSON, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from cloudmask.cli.app import app
from cloudmask.registry import load_registry
from cloudmask.scene import read_scene

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["simulate", *args])


def test_writes_scene_triplets(tmp_path: Path) -> None:
    out = tmp_path / "sims"
    res = _run("--sensor", "sentinel2", "--n", "2", "--size", "48", "-o", str(out), "--seed", "7", "--quiet")
    assert res.exit_code == 0, res.output
    images = sorted(out.glob("*_image.tif"))
    assert len(images) == 2 and len(list(out.glob("*_labels.tif"))) == 2 and len(list(out.glob("*.json"))) == 2
    assert not list(out.glob(".*tmp"))
    with rasterio.open(images[0]) as src:
        assert src.count == 13 and src.dtypes[0] == "float32"
        assert src.descriptions[0] == "B01" and src.tags()["CLOUDMASK_SENSOR"] == "sentinel2"
        assert src.crs.to_epsg() // 100 in (326, 327)
    labels = Path(str(images[0]).replace("_image", "_labels"))
    with rasterio.open(labels) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert set(np.unique(src.read(1))) <= {0, 1, 2, 3, 255}
    item = json.loads(images[0].with_name(images[0].name.replace("_image.tif", ".json")).read_text())
    props = item["properties"]
    assert props["cloudmask:sensor"] == "sentinel2"
    assert {"view:sun_elevation", "view:sun_azimuth", "sim:cloud_height_km", "sim:class_fractions"} <= set(props)
    # the scene reader understands the image: sensor from the tag, bands from the descriptions
    scene = read_scene(str(images[0]))
    assert scene.sensor.id == "sentinel2" and scene.data.shape == (13, 48, 48)


def test_seed_reproducible_and_json(tmp_path: Path) -> None:
    a = _run("-s", "landsat8", "-n", "1", "--size", "32", "-o", str(tmp_path / "a"), "--seed", "5", "--json")
    b = _run("-s", "landsat8", "-n", "1", "--size", "32", "-o", str(tmp_path / "b"), "--seed", "5", "--json",
             "--bands", "B2,B5", "--bands", "B10")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["sensor"] == "landsat8" and jb["bands"] == ["B2", "B5", "B10"]
    again = _run("-s", "landsat8", "-n", "1", "--size", "32", "-o", str(tmp_path / "c"), "--seed", "5", "--quiet")
    assert again.exit_code == 0
    with rasterio.open(ja["scenes"][0]["image"]) as x, rasterio.open(next((tmp_path / "c").glob("*_image.tif"))) as y:
        np.testing.assert_array_equal(x.read(), y.read())


@pytest.mark.parametrize("sensor", sorted(load_registry()))
def test_every_registry_sensor(tmp_path: Path, sensor: str) -> None:
    res = _run("-s", sensor, "-n", "1", "--size", "32", "-o", str(tmp_path), "--seed", "1", "--quiet")
    assert res.exit_code == 0, res.output


def test_errors(tmp_path: Path) -> None:
    res = _run("-s", "nosuchsat", "-o", str(tmp_path))
    assert res.exit_code == 2 and "unknown sensor" in res.output
    res = _run("-s", "sentinel2", "-o", str(tmp_path), "--bands", "B99")
    assert res.exit_code == 2 and "B99" in res.output
    f = tmp_path / "file"
    f.write_text("x")
    res = _run("-s", "sentinel2", "-o", str(f), "--size", "32")
    assert res.exit_code == 2


def test_level_option(tmp_path: Path) -> None:
    res = _run("-s", "sentinel2", "-n", "1", "--size", "32", "-o", str(tmp_path), "--level", "boa", "--json")
    assert res.exit_code == 0, res.output
    item = json.loads(Path(json.loads(res.stdout)["scenes"][0]["json"]).read_text())
    assert item["properties"]["sim:meta"]["level"] == "boa"
    bad = _run("-s", "sentinel2", "-o", str(tmp_path), "--level", "l9")
    assert bad.exit_code == 2 and "level" in bad.output


def test_a_scene_simulated_otherwise_is_not_replaced_under_its_name(tmp_path: Path) -> None:
    """Names carry sensor, seed and index only: a rerun with other bands or size replaced the scene."""
    out = tmp_path / "sims"
    assert _run("-s", "sentinel2", "--seed", "3", "--size", "32", "-o", str(out), "-q").exit_code == 0
    before = (out / "sim_sentinel2_3_0000_image.tif").read_bytes()
    assert _run("-s", "sentinel2", "--seed", "3", "--size", "32", "-o", str(out), "-q").exit_code == 0  # the same scene again
    for extra, words in ((["-b", "B02,B03,B04,B8A"], "bands"), (["--level", "boa"], "level")):
        res = _run("-s", "sentinel2", "--seed", "3", "--size", "32", "-o", str(out), "-q", *extra)
        assert res.exit_code == 2 and "simulated otherwise" in res.stderr and words in res.stderr, res.output
    res = _run("-s", "sentinel2", "--seed", "3", "--size", "48", "-o", str(out), "-q")
    assert res.exit_code == 2 and "differs in size" in res.stderr
    assert (out / "sim_sentinel2_3_0000_image.tif").read_bytes() == before
