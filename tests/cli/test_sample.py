"""``cloudmask sample`` copies a readable Sentinel-2 scene."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from cloudmask.cli.app import app
from cloudmask.scene import read_scene


def test_sample_scene_is_copied_and_readable(tmp_path):
    result = CliRunner().invoke(app, ["sample", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "s" / "S2A_MSIL2A_sample.tif"
    scene = read_scene(path)  # sensor from the file name, bands from the descriptions
    assert scene.sensor.id == "sentinel2" and len(scene.bands) == 13
    values = scene.data.sel(band="B02").values
    assert np.nanmin(values) > -0.1 and np.nanmax(values) < 2.0  # baseline-04.00 offset applied
    assert not list((tmp_path / "s").glob(".*part"))
    import rasterio

    with rasterio.open(tmp_path / "s" / "S2A_MSIL2A_sample.label.tif") as src:
        classes = set(np.unique(src.read(1)).tolist())
    assert classes <= {0, 1, 2, 3, 255} and {0, 1, 3} <= classes


def test_sample_quiet_and_json(tmp_path):
    import json

    quiet = CliRunner().invoke(app, ["sample", "-o", str(tmp_path / "q"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
    assert (tmp_path / "q" / "S2A_MSIL2A_sample.tif").is_file()
    out = CliRunner().invoke(app, ["sample", "-o", str(tmp_path / "j"), "--json"])
    paths = json.loads(out.output)
    assert paths["scene"].endswith("S2A_MSIL2A_sample.tif") and paths["labels"].endswith(".label.tif")
