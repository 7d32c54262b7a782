"""``cloudmask sensors``: tables, JSON, errors and user sensor directories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudmask import registry as reg
from cloudmask.cli.app import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich would otherwise truncate cells at 80 columns

USER_SENSOR = """\
# a user's sensor
id: {id}
name: {name}
source: unit test
default_resolution: 10
products:
  toa: {{scale: 0.0001, offset: 0, nodata: 0}}
bands:
  - {{name: R, common_name: red, type: reflectance, resolution: 10,
     wavelength: {{min: 0.63, center: 0.66, max: 0.69, fwhm: 0.06}}}}
  - {{name: N, common_name: nir, type: reflectance, resolution: 10,
     wavelength: {{min: 0.78, center: 0.83, max: 0.88}}}}
"""


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``--sensors-dir`` extends $CLOUDMASK_SENSORS in-process; monkeypatch restores it after each test."""
    monkeypatch.setenv("CLOUDMASK_SENSORS", "")
    reg._load_cached.cache_clear()
    yield
    reg._load_cached.cache_clear()


def _user_dir(tmp_path: Path, sid: str = "mysat", name: str = "My Satellite") -> Path:
    d = tmp_path / "sensors"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{sid}.yaml").write_text(USER_SENSOR.format(id=sid, name=name), encoding="utf-8")
    return d


def test_lists_every_shipped_sensor() -> None:
    result = runner.invoke(app, ["sensors"], env=WIDE)
    assert result.exit_code == 0, result.output
    for sid in ("landsat5", "landsat7", "landsat8", "landsat9", "sentinel2", "sentinel3-olci", "modis", "superdove"):
        assert sid in result.stdout
    assert "landsat-c2-l2" not in result.stdout  # the list shows catalogue names, not collections
    assert "earth-search" in result.stdout and result.stderr == ""


def test_one_sensor_table_has_its_bands_and_source() -> None:
    result = runner.invoke(app, ["sensors", "landsat8"], env=WIDE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Landsat 8 OLI/TIRS" in out and "default product l2" in out
    for name in ("B1", "B4", "B9", "B10", "B11", "coastal", "cirrus", "lwir11", "thermal"):
        assert name in out
    assert "10.9" in out  # B10 centre in µm
    assert "source:" in out and "Ball_BA_RSR" in out
    # bands are listed in the registry's order, the order of an unnamed file's layers: pan (B8,
    # 0.59 µm) between swir22 (B7) and cirrus (B9), not where its wavelength would put it
    assert out.index("coastal") < out.index("swir22") < out.index(" pan ") < out.index("cirrus") < out.index("lwir12")


def test_alias_and_platform_lookup() -> None:
    for name in ("LC08", "landsat-8", "L8"):
        result = runner.invoke(app, ["sensors", name, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["id"] == "landsat8"


def test_json_for_one_sensor() -> None:
    result = runner.invoke(app, ["sensors", "landsat9", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == "landsat9" and data["platforms"] == ["landsat-9"]
    assert data["default_product"] == "l2"
    assert data["products"]["l2"] == {"scale": 2.75e-05, "offset": -0.2, "nodata": 0.0, "k1": None, "k2": None}
    assert data["catalogues"]["planetary-computer"] == {"l2": "landsat-c2-l2"}
    bands = {b["name"]: b for b in data["bands"]}
    assert list(bands) == [f"B{i}" for i in range(1, 12)]
    red = bands["B4"]
    assert red["common_name"] == "red" and red["type"] == "reflectance" and "SR_B4" in red["aliases"]
    wl = red["wavelength_um"]
    assert wl["min"] < wl["center"] < wl["max"] and 0 < wl["fwhm"] < 0.1
    assert red["assets"] == {"earth-search": "red", "planetary-computer": "red"}
    assert bands["B10"]["type"] == "thermal" and bands["B10"]["resolution_m"] == 100
    assert bands["B10"]["scaling"]["l2"]["scale"] == pytest.approx(0.00341802) and bands["B10"]["scaling"]["l2"]["offset"] == 149.0
    assert red["scaling"] == {} and "description" in data and isinstance(data["aliases"], list)
    assert Path(data["file"]).name == "landsat9.yaml"


def test_json_for_the_whole_registry() -> None:
    result = runner.invoke(app, ["sensors", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_id = {s["id"]: s for s in data}
    assert len(by_id["sentinel3-olci"]["bands"]) == 21
    assert len(by_id["superdove"]["bands"]) == 8
    assert len(by_id["sentinel2"]["bands"]) == 13
    assert all(b["wavelength_um"]["center"] > 0 for s in data for b in s["bands"])


def test_unknown_sensor_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["sensors", "landsat88"])
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "unknown sensor 'landsat88'" in err and "did you mean landsat8" in err
    assert "Traceback" not in result.output


def test_sensors_dir_adds_and_overrides(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    result = runner.invoke(app, ["sensors", "--sensors-dir", str(d)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "mysat" in result.stdout and "landsat8" in result.stdout

    result = runner.invoke(app, ["sensors", "mysat", "--sensors-dir", str(d), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "My Satellite" and [b["name"] for b in data["bands"]] == ["R", "N"]
    assert data["bands"][1]["wavelength_um"]["fwhm"] == pytest.approx(0.1)

    over = _user_dir(tmp_path / "o", sid="landsat8", name="My Landsat")
    result = runner.invoke(app, ["sensors", "landsat8", "--sensors-dir", str(over), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "My Landsat"


def test_environment_variable_is_honoured(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    result = runner.invoke(app, ["sensors", "mysat", "--json"], env={"CLOUDMASK_SENSORS": str(d)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == "mysat"


def test_broken_user_yaml_is_reported_by_file_and_field(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    text = USER_SENSOR.format(id="badsat", name="Bad").replace("min: 0.63, center: 0.66, max: 0.69",
                                                               "min: 630, center: 660, max: 690")
    (d / "badsat.yaml").write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["sensors", "--sensors-dir", str(d)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "badsat.yaml: bands.R.wavelength.min" in err and "nanometres" in err
    assert "Traceback" not in result.output


def test_missing_sensors_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sensors", "--sensors-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "nope" in result.stderr


def test_derived_fwhm_is_rounded_in_json_and_table(tmp_path: Path) -> None:
    """fwhm defaults to max - min: 0.54 - 0.45 must show as 0.09, not 0.08999999999999997."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "dove4.yaml").write_text(
        USER_SENSOR.format(id="dove4", name="Dove").replace("{min: 0.78, center: 0.83, max: 0.88}",
                                                            "{min: 0.45, center: 0.49, max: 0.54}"),
        encoding="utf-8")
    result = runner.invoke(app, ["sensors", "dove4", "--sensors-dir", str(d), "--json"])
    assert result.exit_code == 0, result.output
    assert "0.0899999" not in result.stdout and '"fwhm": 0.09' in result.stdout
    assert json.loads(result.stdout)["bands"][1]["wavelength_um"]["fwhm"] == 0.09
    result = runner.invoke(app, ["sensors", "--sensors-dir", str(d), "--json"])
    assert result.exit_code == 0 and "0.0899999" not in result.stdout
    result = runner.invoke(app, ["sensors", "dove4", "--sensors-dir", str(d)], env=WIDE)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "│ N " in line)  # after the layer number
    assert "0.09 " in row and "0.0899" not in row, row
    # the shipped files' facts are shown as written (no digits cut off by the table format)
    result = runner.invoke(app, ["sensors", "landsat5"], env=WIDE)
    assert "11.4571" in result.stdout and "1.9791" in result.stdout
