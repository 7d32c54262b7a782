"""Reading, encodings, grid checks, reprojection and pairing of ``cloudmask.evaluate``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS

from cloudmask import evaluate as ev
from cloudmask.errors import EvaluateError, UsageError
from cloudmask.testing import test_transform as grid_transform
from cloudmask.testing import TEST_CRS, write_raster


def _truth(h: int = 64, w: int = 64) -> np.ndarray:
    t = np.zeros((h, w), np.uint8)
    t[: h // 2, : w // 2] = 1
    t[h // 2 :, w // 2 :] = 2
    t[: h // 4, w // 2 :] = 3
    return t


def test_a_nodata_tag_that_is_a_class_of_the_format_is_warned_about(tmp_path: Path) -> None:
    """A Biome mask tagged nodata=255 (Biome's cloud): the tag wins, as documented, and a warning
    says that a class went with it."""
    raw = np.array([[0, 64, 128], [192, 255, 255]], np.uint8)
    path = write_raster(tmp_path / "b.tif", raw, tiled=False, nodata=255)
    with pytest.warns(UserWarning, match=r"b.tif: its nodata value 255 means thick cloud in the biome format; its 2 pixels"):
        m = ev.read_mask(path, ev.load_encoding("biome"))
    np.testing.assert_array_equal(m.data, [[255, 3, 0], [2, 255, 255]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual tag (Biome's fill, 0) says nothing
        ev.read_mask(write_raster(tmp_path / "c.tif", raw, tiled=False, nodata=0), ev.load_encoding("biome"))


def test_biome_encoding(tmp_path: Path) -> None:
    raw = np.array([[0, 64, 128], [192, 255, 128]], np.uint8)
    m = ev.read_mask(write_raster(tmp_path / "b.tif", raw, tiled=False), ev.load_encoding("biome"))
    np.testing.assert_array_equal(m.data, [[255, 3, 0], [2, 1, 0]])


def test_sparcs_encoding_and_labelled_classes(tmp_path: Path) -> None:
    raw = np.array([[0, 1, 2, 3], [4, 5, 6, 5]], np.uint8)
    enc = ev.load_encoding("sparcs")
    m = ev.read_mask(write_raster(tmp_path / "s.tif", raw, tiled=False), enc)
    np.testing.assert_array_equal(m.data, [[3, 3, 0, 0], [0, 1, 0, 1]])
    assert enc.labelled.thin is False and enc.labelled.shadow is True


def test_unknown_values_are_an_error(tmp_path: Path) -> None:
    raw = np.array([[0, 7], [9, 1]], np.uint8)
    with pytest.raises(EvaluateError, match=r"value\(s\) 7, 9 .*'cloudsen12'"):
        ev.read_mask(write_raster(tmp_path / "x.tif", raw, tiled=False), ev.load_encoding("cloudsen12"))


def test_file_nodata_is_excluded(tmp_path: Path) -> None:
    raw = np.array([[0, 99], [1, 2]], np.uint8)
    m = ev.read_mask(write_raster(tmp_path / "x.tif", raw, nodata=99, tiled=False), ev.load_encoding("cloudmask"))
    assert m.data[0, 1] == 255


def test_yaml_mapping(tmp_path: Path) -> None:
    f = tmp_path / "map.yaml"
    f.write_text("name: mine\nvalues:\n  10: clear\n  20: cloud\n  30: shadow\n  0: nodata\n")
    enc = ev.load_encoding(str(f))
    assert enc.name == "mine"
    assert enc.values == {10: 0, 20: 1, 30: 3, 0: 255}
    assert enc.labelled.thin is False and enc.labelled.shadow is True
    f.write_text("values: {1: fog}\n")
    with pytest.raises(UsageError, match="fog"):
        ev.load_encoding(str(f))
    f.write_text("- not a mapping\n")
    with pytest.raises(UsageError, match="values"):
        ev.load_encoding(str(f))
    with pytest.raises(UsageError, match="unknown mask format 'nope'"):
        ev.load_encoding("nope")
    raster = write_raster(tmp_path / "truth.tif", _truth())  # an easy slip: the truth as its format
    with pytest.raises(UsageError, match="truth.tif: not a YAML mapping file"):
        ev.load_encoding(str(raster))


def test_grid_mismatch_message_is_exact(tmp_path: Path) -> None:
    t = write_raster(tmp_path / "t.tif", _truth(), nodata=255)
    p = write_raster(
        tmp_path / "p.tif", _truth(32, 64), nodata=255, transform=grid_transform(20.0, left=500040.0),
    )
    enc = ev.load_encoding("cloudmask")
    msg = ev.grid_difference(ev.read_mask(p, enc), ev.read_mask(t, enc))
    assert msg is not None
    assert "size 64×32 px vs 64×64 px" in msg
    assert "origin (500040, 5.2e+06) vs (500000, 5.2e+06)" in msg
    assert "(+2, +0) truth pixels" in msg
    q = write_raster(tmp_path / "q.tif", _truth(), nodata=255, crs=CRS.from_epsg(32633), transform=grid_transform(10.0))
    msg = ev.grid_difference(ev.read_mask(q, enc), ev.read_mask(t, enc))
    assert "CRS EPSG:32633 vs EPSG:32632" in msg and "pixel size 10×10 vs 20×20" in msg
    assert ev.grid_difference(ev.read_mask(t, enc), ev.read_mask(t, enc)) is None


def test_evaluate_refuses_mismatched_grid_without_reproject(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", _truth(), nodata=255)
    write_raster(tmp_path / "p.tif", _truth(), nodata=255, transform=grid_transform(20.0, left=500020.0))
    with pytest.raises(EvaluateError, match="different grids.*--reproject"):
        ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif")


def test_reproject_finer_prediction_onto_truth(tmp_path: Path) -> None:
    truth = _truth()
    write_raster(tmp_path / "t.tif", truth, nodata=255)
    # the same classes at 10 m: every truth pixel becomes 2×2 prediction pixels
    fine = np.repeat(np.repeat(truth, 2, axis=0), 2, axis=1)
    write_raster(tmp_path / "p.tif", fine, nodata=255, transform=grid_transform(10.0))
    res = ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", reproject=True, window=32)
    pooled = res.report["models"][0]["pooled"]
    assert res.report["reprojected"] == 1
    assert pooled["overall_accuracy"] == 1.0 and pooled["pixels"] == 64 * 64


def test_reproject_shifted_prediction_leaves_uncovered_as_nodata(tmp_path: Path) -> None:
    truth = _truth()
    write_raster(tmp_path / "t.tif", truth, nodata=255)
    shifted = np.zeros_like(truth)
    shifted[:, :-4] = truth[:, 4:]  # content moved 4 px left, grid moved 4 px right -> aligned again
    write_raster(tmp_path / "p.tif", shifted, nodata=255, transform=grid_transform(20.0, left=500080.0))
    res = ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", reproject=True, window=32)
    pooled = res.report["models"][0]["pooled"]
    assert pooled["pixels"] == 64 * 60  # the 4 truth columns the prediction does not cover are nodata
    # the prediction's zero-filled last 4 columns fall beyond the truth's edge, so the overlap is all correct
    assert pooled["overall_accuracy"] == 1.0


def test_reproject_needs_georeferencing(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", _truth(), nodata=255, crs=None)
    write_raster(tmp_path / "p.tif", _truth(32, 32), nodata=255, crs=None)
    with pytest.raises(EvaluateError, match="cannot reproject"):
        ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", reproject=True)
    with pytest.raises(EvaluateError, match="must have the same size") as info:  # not "pass --reproject"
        ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif")
    assert "--reproject" not in str(info.value)


def test_a_georeferenced_prediction_scores_against_a_same_size_plain_truth(tmp_path: Path) -> None:
    """SPARCS-style truth (a PNG, no CRS) of the scene's size: compared pixel for pixel, as two
    plain rasters are; only a size difference is an error."""
    write_raster(tmp_path / "t.tif", _truth(), nodata=255, crs=None)
    write_raster(tmp_path / "p.tif", _truth(), nodata=255)
    pooled = ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", window=32).report["models"][0]["pooled"]
    assert pooled["overall_accuracy"] == 1.0 and pooled["pixels"] == 64 * 64
    write_raster(tmp_path / "small.tif", _truth(32, 64), nodata=255)
    with pytest.raises(EvaluateError, match="the truth has no CRS.*must have the same size"):
        ev.evaluate([tmp_path / "small.tif"], tmp_path / "t.tif")


def test_reproject_without_overlap_is_an_error_not_empty_scores(tmp_path: Path) -> None:
    write_raster(tmp_path / "t.tif", _truth(), nodata=255)
    write_raster(tmp_path / "p.tif", _truth(), nodata=255, transform=grid_transform(20.0, left=700000.0))
    with pytest.raises(EvaluateError, match="does not overlap"):
        ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", reproject=True)


def test_scene_key() -> None:
    assert ev.scene_key("patch00.label.tif") == "patch00"
    assert ev.scene_key("LC08_X_fixedmask.TIF") == "lc08_x"
    assert ev.scene_key("s1_mask.tif") == "s1"
    assert ev.scene_key("label.tif") == "label"
    # "ü" as one character (Linux) and as "u" + combining diaeresis (macOS) is one scene
    assert ev.scene_key("Z\u00fcrich_cloudmask.tif") == ev.scene_key("Zu\u0308rich.label.tif") == "z\u00fcrich"


def test_directory_pairing(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    for name in ("a", "b", "c"):
        write_raster(tmp_path / "truth" / f"{name}.label.tif", _truth(), nodata=255)
    for name in ("a", "b", "d"):
        write_raster(tmp_path / "pred" / f"{name}_mask.tif", _truth(), nodata=255)
    pairs = ev.pair(tmp_path / "pred", tmp_path / "truth")
    assert sorted(pairs) == ["a", "b"]
    assert pairs["a"][1].name == "a.label.tif"
    assert ev.without_truth(tmp_path / "pred", tmp_path / "truth") == ["d"]  # left out, and said
    report = ev.evaluate([tmp_path / "pred"], tmp_path / "truth", window=32).report
    assert report["scenes"] == ["a", "b"] and report["no_truth"] == ["d"]
    single = ev.pair(tmp_path / "pred" / "b_mask.tif", tmp_path / "truth")
    assert single["b"][1].name == "b.label.tif"
    with pytest.raises(EvaluateError, match="no truth file"):
        ev.pair(tmp_path / "pred" / "d_mask.tif", tmp_path / "truth")
    with pytest.raises(UsageError, match="pass a truth directory"):
        ev.pair(tmp_path / "pred", tmp_path / "truth" / "a.label.tif")
    (tmp_path / "other").mkdir()
    write_raster(tmp_path / "other" / "zz.tif", _truth(), nodata=255)
    with pytest.raises(EvaluateError, match="no file in"):
        ev.pair(tmp_path / "other", tmp_path / "truth")


def test_a_scene_beside_its_label_as_cloudmask_sample_writes_them(tmp_path: Path) -> None:
    """x.tif next to x.label.tif: the label is the truth, x.tif the image; a prediction in a truth
    folder (x_cloudmask.tif beside x.tif) stays an error, not a truth taken by guess."""
    write_raster(tmp_path / "S2A_x.tif", np.zeros((3, 8, 8), np.uint16), tiled=False)
    write_raster(tmp_path / "S2A_x.label.tif", _truth(8, 8), nodata=255)
    assert ev._index(tmp_path)["s2a_x"].name == "S2A_x.label.tif"
    assert ev._index(tmp_path, images=True)["s2a_x"].name == "S2A_x.tif"
    (tmp_path / "S2A_x.label.tif").rename(tmp_path / "S2A_x_cloudmask.tif")
    with pytest.raises(EvaluateError, match="look like scene 's2a_x'"):
        ev._index(tmp_path)


def test_images_next_to_labels_are_ignored(tmp_path: Path) -> None:
    write_raster(tmp_path / "a.image.tif", np.zeros((3, 8, 8), np.float32), tiled=False)
    write_raster(tmp_path / "a.label.tif", _truth(8, 8), nodata=255)
    write_raster(tmp_path / "b.label.tif", _truth(8, 8), nodata=255)
    write_raster(tmp_path / "b.image.tif", np.zeros((3, 8, 8), np.float32), tiled=False)
    assert {k: v.name for k, v in ev._index(tmp_path).items()} == {"a": "a.label.tif", "b": "b.label.tif"}
    assert {k: v.name for k, v in ev._index(tmp_path, images=True).items()} == {"a": "a.image.tif", "b": "b.image.tif"}


def test_ambiguous_names_in_a_folder(tmp_path: Path) -> None:
    write_raster(tmp_path / "a.label.tif", _truth(), nodata=255)
    write_raster(tmp_path / "a_mask.tif", _truth(), nodata=255)
    with pytest.raises(EvaluateError, match="both look like scene 'a'"):
        ev.pair(tmp_path / "a_mask.tif", tmp_path)


def test_mask_of_an_image_named_file_is_a_mask_not_an_image(tmp_path: Path) -> None:
    """``sim_x_image_cloudmask.tif`` (cloudmask's mask of ``sim_x_image.tif``) next to ``sim_x_cloudmask.tif``:
    two masks for scene ``sim_x``, on either side of the pairing, in either listing order."""
    for side in ("pred", "truth"):
        (tmp_path / side).mkdir()
    write_raster(tmp_path / "truth" / "sim_x.tif", _truth(), nodata=255)
    write_raster(tmp_path / "pred" / "sim_x_cloudmask.tif", _truth(), nodata=255)
    write_raster(tmp_path / "pred" / "sim_x_image_cloudmask.tif", _truth(), nodata=255)
    with pytest.raises(UsageError, match=r"sim_x_cloudmask\.tif and sim_x_image_cloudmask\.tif both look like scene 'sim_x'"):
        ev.pair(tmp_path / "pred", tmp_path / "truth")
    with pytest.raises(UsageError, match="both look like scene 'sim_x'"):  # truth side, pred given as one file
        ev.pair(tmp_path / "truth" / "sim_x.tif", tmp_path / "pred")
    # the image itself still gives way to its mask
    (tmp_path / "pred" / "sim_x_cloudmask.tif").unlink()
    write_raster(tmp_path / "pred" / "sim_x_image.tif", np.zeros((3, 8, 8), np.float32), tiled=False)
    assert ev._index(tmp_path / "pred")["sim_x"].name == "sim_x_image_cloudmask.tif"
    assert ev._index(tmp_path / "pred", images=True)["sim_x"].name == "sim_x_image.tif"


@pytest.mark.parametrize("names", [("a.tif", "a.tiff"), ("A.tif", "a.tif"), ("a.TIF", "a_mask.tif"),
                                   ("a.image.tif", "a.img.tif"), ("a.label.tif", "a.mask.png", "a.image.tif")])
def test_other_key_collisions(tmp_path: Path, names: tuple[str, ...]) -> None:
    for n in names:
        write_raster(tmp_path / n, _truth(8, 8), nodata=255)
    if len({p.name for p in tmp_path.iterdir()}) < len(names):
        pytest.skip("case-insensitive file system")
    with pytest.raises(UsageError, match="look like scene 'a'") as info:
        ev._index(tmp_path)
    assert isinstance(info.value, EvaluateError) and info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_two_models_on_common_scenes(tmp_path: Path) -> None:
    for d in ("truth", "good", "bad"):
        (tmp_path / d).mkdir()
    for i in range(2):
        t = _truth(128, 128)
        write_raster(tmp_path / "truth" / f"s{i}.tif", t, nodata=255)
        write_raster(tmp_path / "good" / f"s{i}.tif", t, nodata=255)
        bad = t.copy()
        bad[bad == 2] = 0  # misses all thin cloud
        write_raster(tmp_path / "bad" / f"s{i}.tif", bad, nodata=255)
    write_raster(tmp_path / "good" / "s9.tif", _truth(), nodata=255)  # no truth: ignored
    res = ev.evaluate([tmp_path / "good", tmp_path / "bad"], tmp_path / "truth", window=64)
    rep = res.report
    assert [m["name"] for m in rep["models"]] == ["good", "bad"]
    assert rep["scenes"] == ["s0", "s1"]
    good, bad = rep["models"]
    assert good["pooled"]["cloud"]["f1"] == 1.0
    # thin is one quarter of the image, thick one quarter: recall 0.5
    assert bad["pooled"]["cloud"]["recall"] == pytest.approx(0.5)
    assert good["per_scene_spread"]["cloud_f1"]["n"] == 2
    assert good["windows"]["count"] == 8
    cmp = rep["comparisons"][0]
    assert cmp["reference"] == "good" and cmp["model"] == "bad"
    assert cmp["pooled"]["recall"] == pytest.approx(-0.5)
    # 100 % cover bin: the all-thick window keeps its cloud, the all-thin one loses all of it
    assert cmp["bins"][9]["d_recall"] == pytest.approx(-0.5)
    assert cmp["bins"][9]["paired_mean_d_f1"] == pytest.approx(-0.5)
    assert cmp["bins"][0]["d_recall"] is None  # clear windows: nothing to recall for either model
    rows = ev.csv_rows(rep)
    assert {"model": "bad-good", "scope": "pooled", "subject": "cloud", "metric": "d_recall", "value": pytest.approx(-0.5)} in rows


def test_missing_scene_in_one_model_is_skipped(tmp_path: Path) -> None:
    for d in ("truth", "a", "b"):
        (tmp_path / d).mkdir()
    for i in range(2):
        write_raster(tmp_path / "truth" / f"s{i}.tif", _truth(), nodata=255)
        write_raster(tmp_path / "a" / f"s{i}.tif", _truth(), nodata=255)
    write_raster(tmp_path / "b" / "s0.tif", _truth(), nodata=255)
    rep = ev.evaluate([tmp_path / "a", tmp_path / "b"], tmp_path / "truth", names=["x", "y"]).report
    assert rep["scenes"] == ["s0"] and rep["skipped_scenes"] == ["s1"]
    assert [m["name"] for m in rep["models"]] == ["x", "y"]
    with pytest.raises(UsageError, match="--name given 1"):
        ev.evaluate([tmp_path / "a", tmp_path / "b"], tmp_path / "truth", names=["x"])


def test_classes_override_merges_thin(tmp_path: Path) -> None:
    t = _truth()
    p = t.copy()
    p[p == 2] = 1  # thin called thick
    write_raster(tmp_path / "t.tif", t, nodata=255)
    write_raster(tmp_path / "p.tif", p, nodata=255)
    full = ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif").report["models"][0]["pooled"]
    merged = ev.evaluate([tmp_path / "p.tif"], tmp_path / "t.tif", classes="cloud,shadow").report["models"][0]["pooled"]
    assert full["overall_accuracy"] < 1.0 and merged["overall_accuracy"] == 1.0
    assert merged["class_names"] == ["clear", "cloud", "shadow"]
    assert full["cloud"]["f1"] == merged["cloud"]["f1"] == 1.0


def test_read_rgb_by_band_name(tmp_path: Path) -> None:
    img = np.stack([np.full((8, 8), v, np.float32) for v in (0.1, 0.2, 0.3)])
    img[0, 0, 0] = 0.9
    f = write_raster(tmp_path / "i.tif", img, descriptions=["blue", "green", "red"], tiled=False)
    rgb = ev.read_rgb(f)
    assert rgb.shape == (8, 8, 3)
    assert rgb[0, 0, 2] > 0.5 > rgb[1, 1, 2]  # the bright blue pixel ends up in the blue channel
    assert rgb[0, 0, 0] == rgb[1, 1, 0]
    assert ev.read_rgb(f, step=2).shape == (4, 4, 3)


def test_encoding_of_float_and_wide_integer_rasters(tmp_path: Path) -> None:
    enc = ev.load_encoding("biome")
    f = np.array([[np.nan, 64.0], [128.0, 255.0]], np.float32)
    m = ev.read_mask(write_raster(tmp_path / "f.tif", f, tiled=False), enc)
    np.testing.assert_array_equal(m.data, [[255, 3], [0, 1]])
    with pytest.raises(EvaluateError, match=r"value\(s\) 64.5"):
        ev.apply_encoding(np.array([64.5], np.float32), enc)
    u = np.array([[0, 3], [9999, 1]], np.uint16)
    out = ev.apply_encoding(u, ev.load_encoding("cloudmask"), file_nodata=9999)
    np.testing.assert_array_equal(out, [[0, 3], [255, 1]])
    i = np.array([[-1, 2]], np.int16)
    np.testing.assert_array_equal(ev.apply_encoding(i, ev.load_encoding("cloudmask"), file_nodata=-1), [[255, 2]])


def _binary_cog(path: Path, truth: np.ndarray) -> Path:
    """What ``cloudmask mask --binary`` writes: 0 clear, 1 cloud, 255 nodata, its band description and colours."""
    from cloudmask import cog

    b = np.where((truth == 1) | (truth == 2), 1, 0).astype(np.uint8)
    b[:2] = 255
    return cog.write_cog(b, path, crs=TEST_CRS, transform=grid_transform(), nodata=255,
                         descriptions=[cog.BINARY_MASK_DESCRIPTION], colormap=cog.BINARY_COLORMAP, overview_resampling="nearest")


def test_binary_cloudmask_prediction_is_scored_as_cloud_not_cloud(tmp_path: Path) -> None:
    t = _truth()
    write_raster(tmp_path / "t.tif", t, nodata=255)
    pred = _binary_cog(tmp_path / "p_cloudmask.tif", t)
    assert ev.is_binary_mask(pred) and not ev.is_binary_mask(tmp_path / "t.tif")
    rep = ev.evaluate([pred], tmp_path / "t.tif", window=16).report
    pooled = rep["models"][0]["pooled"]
    assert pooled["overall_accuracy"] == 1.0 and pooled["cloud"]["f1"] == 1.0  # thick/thin split: thin F1 was 0
    assert rep["binary_masks"] == [str(pred)]
    assert rep["labelled"] == {"cloud": True, "thin": False, "shadow": False}
    assert pooled["class_names"] == ["clear", "cloud"]
    # a binary mask as the truth, and next to a full-class prediction: every column on the same terms
    full = write_raster(tmp_path / "full.tif", t, nodata=255)
    rep = ev.evaluate([full, pred], pred, window=16).report
    assert rep["binary_masks"] == [str(pred)] and not rep["labelled"]["thin"]
    assert [m["pooled"]["cloud"]["f1"] for m in rep["models"]] == [1.0, 1.0]
    # the same values without the writer's description are read as the format says (1 = thick)
    plain = write_raster(tmp_path / "plain.tif", np.where((t == 1) | (t == 2), 1, 0).astype(np.uint8), nodata=255)
    rep = ev.evaluate([plain], tmp_path / "t.tif", window=16).report
    assert rep["binary_masks"] == [] and rep["labelled"]["thin"]
    # an explicit mapping file is the user's word: no override
    (tmp_path / "m.yaml").write_text("values: {0: clear, 1: thick, 2: thin, 3: shadow, 255: nodata}\n")
    rep = ev.evaluate([pred], tmp_path / "t.tif", window=16, pred_format=str(tmp_path / "m.yaml")).report
    assert rep["binary_masks"] == [] and rep["labelled"]["thin"]


def test_evaluate_takes_one_path_as_one_prediction_and_says_when_no_window_fits(tmp_path: Path) -> None:
    """evaluate("pred.tif", "truth.tif") looped over the characters ("e: no such file"), and masks
    smaller than the window gave an empty per-window analysis without a word."""
    t = _truth(64, 64)
    pred = write_raster(tmp_path / "s0_cloudmask.tif", t, nodata=255)
    truth = write_raster(tmp_path / "s0.label.tif", t, nodata=255)
    with pytest.warns(UserWarning, match="no 128 px window holds at least 50% valid truth"):
        res = ev.evaluate(str(pred), str(truth), names="mine")  # the default window, 128 px
    (model,) = res.report["models"]
    assert model["name"] == "mine" and model["pooled"]["cloud"]["f1"] == 1.0 and model["windows"]["count"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ev.evaluate(pred, truth, window=32).report["models"][0]["windows"]["count"] == 4
    for bad in (dict(window=64.5), dict(min_valid=float("nan")), dict(min_valid=2), dict(preview_px=0)):
        with pytest.raises(UsageError):
            ev.evaluate(pred, truth, **bad)
    assert ev.evaluate(pred, truth, window=np.int64(32), min_valid=np.float32(0.5)).report["window"] == 32
    assert ev.load_encoding(Path("cloudmask")) is ev.load_encoding("cloudmask")  # a Path works as a name or file
    assert ev.pair(str(pred), str(truth)) == {"s0": (pred, truth)}


def test_plot_files_of_models_whose_names_look_alike_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """Names of another script ("模型", "模式") both became "model", and "run 1" / "run_1" clashed:
    write_all returned the same file twice, the second figure over the first."""
    from cloudmask import plots

    t = _truth(64, 64)
    truth = write_raster(tmp_path / "s0.label.tif", t, nodata=255)
    for i in range(4):
        (tmp_path / f"p{i}").mkdir()
    preds = [write_raster(tmp_path / f"p{i}" / "s0.tif", t, nodata=255) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no 128 px window in 64 px masks; no CJK glyphs in the plot font
        res = ev.evaluate(preds, truth, names=["模型", "模式", "run 1", "run_1"])
        files = plots.write_all(res, tmp_path / "plots")
    assert len(set(files)) == len(files) == 1 + 3 + 4
    assert all(f.is_file() for f in files)
    assert plots.confusion_plot(res.report["models"][2]["pooled"], "x", str(tmp_path / "c.png")).is_file()  # a str path


def test_quicklook_draws_nodata_grey_as_its_legend_says(tmp_path: Path) -> None:
    """Without an image, nodata (masked) showed the white figure behind it, next to white-ish thick cloud."""
    import matplotlib.image as mpimg

    from cloudmask.evaluate import Preview
    from cloudmask.plots import quicklook

    truth = np.zeros((64, 64), np.uint8)
    truth[:, :32] = 255
    png = quicklook(Preview("s", truth, {"m": truth.copy()}), tmp_path / "q.png")
    rgb = mpimg.imread(png)[..., :3]
    grey = np.all(np.abs(rgb - 0.5) < 0.02, axis=-1)
    assert grey.sum() > 1000  # the two nodata halves (the legend's patch alone is far smaller)
