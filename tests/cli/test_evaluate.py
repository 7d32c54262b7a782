"""``cloudmask evaluate``: tables, JSON, CSV, plots and error exits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cloudmask.cli.app import app
from cloudmask.testing import test_transform as grid_transform
from cloudmask.testing import TEST_CRS, write_raster

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scene(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.zeros((h, w), np.uint8)
    t[np.sin(xx / 9 + seed) + np.cos(yy / 7) > 0.4] = 1
    t[np.sin(xx / 9 + seed) + np.cos(yy / 7) > 1.3] = 2
    t[np.sin(xx / 5) * np.cos(yy / 11 + seed) > 0.8] = 3
    t[:3] = 255
    return t


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """truth/, good/ (5 % noise), poor/ (30 % noise) and img/ for three 96×96 scenes."""
    rng = np.random.default_rng(1)
    for d in ("truth", "good", "poor", "img"):
        (tmp_path / d).mkdir()
    for i in range(3):
        t = _scene(seed=i)
        write_raster(tmp_path / "truth" / f"scene{i}.label.tif", t, nodata=255)
        for d, rate in (("good", 0.05), ("poor", 0.3)):
            p = t.copy()
            flip = rng.random(t.shape) < rate
            p[flip] = rng.integers(0, 4, int(flip.sum()))
            write_raster(tmp_path / d / f"scene{i}_mask.tif", p, nodata=255)
        img = np.stack([np.where(t == 1, 0.5, 0.08) + 0.05 * b for b in range(3)]).astype("float32")
        write_raster(tmp_path / "img" / f"scene{i}.tif", img, descriptions=["red", "green", "blue"])
    return tmp_path


def test_table_compares_two_models(dataset: Path) -> None:
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), str(dataset / "poor"), "--truth", str(dataset / "truth"),
                              "--window", "32"], env=WIDE)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "3 scene(s)" in out
    assert "good" in out and "poor" in out
    assert "cloud f1" in out and "shadow IoU" in out
    assert "per-scene cloud f1" in out
    assert "90–100%" in out and "Δacc poor" in out


def test_json_output(dataset: Path) -> None:
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), str(dataset / "poor"), "--truth", str(dataset / "truth"),
                              "--name", "A", "--name", "B", "--json", "--window", "32"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert [m["name"] for m in rep["models"]] == ["A", "B"]
    a, b = rep["models"]
    assert a["pooled"]["cloud"]["f1"] > b["pooled"]["cloud"]["f1"]
    assert len(a["windows"]["bins"]) == 10 and a["windows"]["count"] == 27
    assert rep["comparisons"][0]["pooled"]["f1"] < 0
    assert len(a["scenes"]) == 3 and a["scenes"][0]["scene"] == "scene0"
    # undefined values are JSON null, never NaN
    assert "NaN" not in res.stdout


def test_csv_output(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), "--truth", str(dataset / "truth"), "--csv", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert {"model", "scope", "subject", "metric", "value"} == set(rows[0])
    pooled_f1 = [r for r in rows if r["scope"] == "pooled" and r["subject"] == "cloud" and r["metric"] == "f1"]
    assert len(pooled_f1) == 1 and 0.8 < float(pooled_f1[0]["value"]) <= 1
    assert any(r["scope"] == "scene:scene2" for r in rows)
    assert any(r["subject"] == "class:shadow" and r["metric"] == "iou" for r in rows)
    assert any(r["scope"].startswith("bin:") for r in rows)
    assert not list(tmp_path.glob(".m.csv*"))  # no temp file left behind
    # a folder given as the CSV: one line, nothing left in it
    (tmp_path / "sub").mkdir()
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), "--truth", str(dataset / "truth"), "--csv", str(tmp_path / "sub"), "-q"])
    assert res.exit_code != 0 and "is a folder" in res.stderr and list((tmp_path / "sub").iterdir()) == []
    assert not list(tmp_path.glob(".sub*"))


def test_prediction_folder_given_as_dot_is_named_after_the_folder(dataset: Path, monkeypatch) -> None:
    monkeypatch.chdir(dataset / "good")
    res = runner.invoke(app, ["evaluate", ".", "--truth", str(dataset / "truth"), "--json"])
    assert res.exit_code == 0, res.output
    assert [m["name"] for m in json.loads(res.stdout)["models"]] == ["good"]


def test_plots_written(dataset: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), str(dataset / "poor"), "--truth", str(dataset / "truth"),
                              "--plots", str(plots), "--image", str(dataset / "img"), "--quicklooks", "2", "--quiet",
                              "--window", "32"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in plots.iterdir())
    assert names == [
        "confusion_good.png", "confusion_poor.png", "difference_poor_vs_good.png",
        "metric_vs_cloud_cover.png", "quicklook_scene0.png", "quicklook_scene1.png",
    ]
    for p in plots.iterdir():
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_quicklook_without_image(dataset: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    res = runner.invoke(app, ["evaluate", str(dataset / "good" / "scene1_mask.tif"), "--truth", str(dataset / "truth"),
                              "--plots", str(plots), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (plots / "quicklook_scene1.png").read_bytes()[:8] == PNG_MAGIC


def test_grid_mismatch_exits_1_with_exact_message(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", _scene(), nodata=255)
    write_raster(tmp_path / "p.tif", _scene(), nodata=255, transform=grid_transform(10.0))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif")], env=WIDE)
    assert res.exit_code == 1
    assert "different grids: pixel size 10×10 vs 20×20" in res.stderr
    assert "--reproject" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif"), "--reproject", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["reprojected"] == 1


def test_truth_format_and_bad_values(tmp_path: Path) -> None:
    biome = np.full((40, 40), 128, np.uint8)
    biome[:20] = 255
    write_raster(tmp_path / "t.tif", biome)
    pred = np.zeros((40, 40), np.uint8)
    pred[:20] = 1
    write_raster(tmp_path / "p.tif", pred)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif"),
                              "--truth-format", "biome", "--json", "--window", "16"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["models"][0]["pooled"]["cloud"]["f1"] == 1.0
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif")])
    assert res.exit_code == 1 and "value(s) 128" in res.stderr
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif"), "--truth-format", "nope"])
    assert res.exit_code == 2 and "unknown mask format" in res.stderr


def test_all_nodata_truth_reports_na(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", np.full((32, 32), 255, np.uint8))
    write_raster(tmp_path / "p.tif", np.zeros((32, 32), np.uint8))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif")], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "n/a" in res.stdout
    res = runner.invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "p.tif"), "--truth", str(tmp_path / "t.tif"),
                              "--json", "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["models"][0]["pooled"]["cloud"]["f1"] is None
    assert rep["comparisons"][0]["pooled"]["accuracy"] is None
    assert len(rep["outputs"]) == 5  # cover, difference, 2 confusions, quick-look: all drawn with n/a


def test_usage_errors(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", np.zeros((32, 32), np.uint8))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing.tif"), "--truth", str(tmp_path / "t.tif")])
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = runner.invoke(app, ["evaluate", str(tmp_path / "t.tif"), "--truth", str(tmp_path / "t.tif"), "--rgb", "1,2"])
    assert res.exit_code == 2 and "--rgb" in res.stderr
    # a band the image lacks: one line before any work (it was an internal IndexError after the
    # first figures were written), for an image file and for a folder of images
    (tmp_path / "img").mkdir()
    write_raster(tmp_path / "img" / "t.tif", np.zeros((3, 32, 32), np.uint16))
    for image in (tmp_path / "img" / "t.tif", tmp_path / "img"):
        res = runner.invoke(app, ["evaluate", str(tmp_path / "t.tif"), "--truth", str(tmp_path / "t.tif"), "--plots",
                                  str(tmp_path / "plots"), "--image", str(image), "--rgb", "99,2,1"])
        assert res.exit_code == 2 and "t.tif has bands 1-3" in res.stderr and "internal" not in res.stderr, res.output
        assert not (tmp_path / "plots").exists()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "t.tif"), "--truth", str(tmp_path / "t.tif"), "--classes", "fog"])
    assert res.exit_code == 2 and "fog" in res.stderr


@pytest.mark.parametrize("side", ["pred", "truth"])
def test_two_masks_for_one_scene_exit_2(tmp_path: Path, side: str) -> None:
    for d in ("outd", "simd"):
        (tmp_path / d).mkdir()
    write_raster(tmp_path / "simd" / "sim_X.tif", _scene(), nodata=255)
    write_raster(tmp_path / "outd" / "sim_X_cloudmask.tif", _scene(), nodata=255)
    write_raster(tmp_path / ("outd" if side == "pred" else "simd") / "sim_X_image_cloudmask.tif", _scene(), nodata=255)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "outd"), "--truth", str(tmp_path / "simd")], env=WIDE)
    assert res.exit_code == 2, res.output
    folder = tmp_path / ("outd" if side == "pred" else "simd")
    first = "sim_X_cloudmask.tif" if side == "pred" else "sim_X.tif"
    assert f"{folder}: {first} and sim_X_image_cloudmask.tif both look like scene 'sim_x'" in res.stderr.replace("\n", "")
    assert "Traceback" not in res.output


def test_binary_mask_scored_as_cloud_and_said_so(tmp_path: Path) -> None:
    from cloudmask import cog

    t = _scene()
    write_raster(tmp_path / "t.tif", t, nodata=255)
    b = np.where(t == 255, 255, np.where((t == 1) | (t == 2), 1, 0)).astype(np.uint8)
    cog.write_cog(b, tmp_path / "p_cloudmask.tif", crs=TEST_CRS, transform=grid_transform(), nodata=255,
                  descriptions=[cog.BINARY_MASK_DESCRIPTION], colormap=cog.BINARY_COLORMAP)
    args = ["evaluate", str(tmp_path / "p_cloudmask.tif"), "--truth", str(tmp_path / "t.tif"), "--window", "16"]
    res = runner.invoke(app, args, env=WIDE)
    assert res.exit_code == 0, res.output
    assert "binary mask(s)" in res.stdout and "cloud / not cloud" in res.stdout
    res = runner.invoke(app, [*args, "--json"])
    rep = json.loads(res.stdout)
    assert rep["models"][0]["pooled"]["overall_accuracy"] == 1.0 and rep["labelled"]["thin"] is False


def test_an_image_on_another_grid_is_said_not_silently_dropped(dataset: Path, tmp_path: Path) -> None:
    img = tmp_path / "small.tif"
    write_raster(img, np.full((3, 48, 48), 0.1, "float32"), descriptions=["red", "green", "blue"])
    res = runner.invoke(app, ["evaluate", str(dataset / "good" / "scene1_mask.tif"), "--truth", str(dataset / "truth"),
                              "--plots", str(tmp_path / "plots"), "--image", str(img)], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "small.tif is not on the truth's grid" in res.stderr and "classes alone" in res.stderr
    assert (tmp_path / "plots" / "quicklook_scene1.png").is_file()


def test_probability_files_beside_the_masks_are_not_predictions(dataset: Path) -> None:
    """A folder from `cloudmask mask --probabilities` warned "left out 2 prediction(s) with no truth
    file: …_cloudprob" and listed them under no_truth."""
    src = dataset / "good" / "scene0_mask.tif"
    (dataset / "good" / "scene0_cloudprob.tif").write_bytes(src.read_bytes())
    res = runner.invoke(app, ["evaluate", str(dataset / "good"), "--truth", str(dataset / "truth"), "--json"])
    assert res.exit_code == 0, res.output
    assert "cloudprob" not in res.stdout and "cloudprob" not in res.stderr
