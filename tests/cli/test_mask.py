"""``cloudmask mask`` from the command line: exit codes, JSON, quiet mode, archives."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cloudmask import mask as mask_mod
from cloudmask.cli.app import app
from cloudmask.model import Predictor
from cloudmask.shadows import ShadowOptions
from cloudmask.testing import random_reflectance, write_raster

runner = CliRunner()
FAST = ["--tile-size", "64", "--threads", "2"]


@pytest.fixture(autouse=True)
def random_model(monkeypatch):
    p = Predictor.random(seed=0, dilations=(1,))
    real = mask_mod.load_predictor  # --weights files still go through the real loader
    monkeypatch.setattr(mask_mod, "load_predictor", lambda path=None: p if path is None else real(path))
    yield
    gc.unfreeze()  # the command freezes what is alive after its imports; the test process goes on as usual


def _s2(path: Path, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dn = np.round(random_reflectance(13, 64, 72, seed=seed) * 10000 + 1000).astype("uint16")
    return write_raster(path, dn, nodata=0)


def test_one_scene_writes_mask_and_prints_a_table(tmp_path):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), *FAST])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "S2A_MSIL2A_a_cloudmask.tif").is_file()
    assert "masked" in res.stdout and "1 masked" in res.stdout


def test_json_summary_and_skip_on_rerun(tmp_path):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    args = ["mask", str(src), "-o", str(tmp_path / "out"), "--json", "--probabilities", "--dilate", "1", *FAST]
    first = json.loads(runner.invoke(app, args).stdout)
    assert first["summary"]["masked"] == 1 and first["scenes"][0]["probabilities"].endswith("_cloudprob.tif")
    second = json.loads(runner.invoke(app, args).stdout)
    assert second["summary"] == {**second["summary"], "masked": 0, "skipped": 1, "failed": 0}
    third = json.loads(runner.invoke(app, [*args, "--overwrite"]).stdout)
    assert third["summary"]["masked"] == 1


def test_archive_with_a_corrupt_scene_continues_and_exits_1(tmp_path):
    arc = tmp_path / "arc"
    _s2(arc / "x" / "S2A_one.tif")
    (arc / "x" / "S2A_bad.tif").write_bytes(b"II*\x00garbage")
    _s2(arc / "y" / "S2B_three.tif", seed=3)
    res = runner.invoke(app, ["mask", str(arc), "-o", str(tmp_path / "out"), "--json", *FAST])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["summary"]["masked"] == 2 and doc["summary"]["failed"] == 1
    assert "S2A_bad.tif" in res.stderr and "1 of 3 scenes failed" in res.stderr
    assert (tmp_path / "out" / "y" / "S2B_three_cloudmask.tif").is_file()


def test_one_failing_scene_reports_its_error_once(tmp_path):
    """A single scene: the table row and one error line, no live "failed:" line repeating it."""
    bad = tmp_path / "S2A_bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    res = runner.invoke(app, ["mask", str(bad), "-o", str(tmp_path / "out"), *FAST], env={"COLUMNS": "250"})
    assert res.exit_code != 0
    assert res.stderr.count("cannot read raster") == 1 and "failed:" not in res.stderr, res.stderr
    assert "failed" in res.stdout  # the summary table


def test_quiet_mode_prints_nothing_on_success(tmp_path):
    src = _s2(tmp_path / "S2A_q.tif")
    res = runner.invoke(app, ["mask", str(src), "--quiet", *FAST])
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    assert (tmp_path / "S2A_q_cloudmask.tif").is_file()  # default: beside the input


def test_list_files_and_from_file(tmp_path):
    a, b = _s2(tmp_path / "d1" / "S2A_a.tif"), _s2(tmp_path / "d2" / "S2A_b.tif", seed=2)
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"{a}\n{b}\n")
    res = runner.invoke(app, ["mask", f"@{listing}", "-o", str(tmp_path / "o1"), "--json", *FAST])
    assert json.loads(res.stdout)["summary"]["masked"] == 2
    res = runner.invoke(app, ["mask", "--from-file", str(listing), "-o", str(tmp_path / "o1"), "--json", *FAST])
    assert json.loads(res.stdout)["summary"]["skipped"] == 2
    assert (tmp_path / "o1" / "d2" / "S2A_b_cloudmask.tif").is_file()


def test_root_keeps_a_growing_lists_outputs_in_place(tmp_path):
    """A cron job's list gains a scene in another folder: without --root the common parent moves
    up and every mask would be redone elsewhere; with it the finished ones are skipped where they are."""
    arc = tmp_path / "arc"
    a, b = _s2(arc / "2024" / "11" / "S2A_a.tif"), _s2(arc / "2024" / "11" / "S2A_b.tif", seed=2)
    c = _s2(arc / "2024" / "12" / "S2A_c.tif", seed=3)
    listing, out = tmp_path / "scenes.txt", tmp_path / "out"
    listing.write_text(f"{a}\n{b}\n")
    assert runner.invoke(app, ["mask", f"@{listing}", "-o", str(out), "-q", *FAST]).exit_code == 0
    assert (out / "S2A_a_cloudmask.tif").is_file()  # the common parent, 2024/11, is the root
    listing.write_text(f"{a}\n{b}\n{c}\n")
    moved = json.loads(runner.invoke(app, ["mask", f"@{listing}", "-o", str(tmp_path / "o2"), "--json", *FAST]).stdout)
    assert [Path(s["output"]).relative_to(tmp_path / "o2").as_posix() for s in moved["scenes"]] == [
        "11/S2A_a_cloudmask.tif", "11/S2A_b_cloudmask.tif", "12/S2A_c_cloudmask.tif"]

    pinned = tmp_path / "pinned"
    for scenes, want in (([a, b], {"masked": 2}), ([a, b, c], {"skipped": 2, "masked": 1})):
        listing.write_text("".join(f"{p}\n" for p in scenes))
        res = runner.invoke(app, ["mask", f"@{listing}", "-o", str(pinned), "--root", str(arc), "--json", *FAST])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)["summary"]
        assert summary == {**summary, **want}
    assert sorted(p.relative_to(pinned).as_posix() for p in pinned.rglob("*.tif")) == [
        "2024/11/S2A_a_cloudmask.tif", "2024/11/S2A_b_cloudmask.tif", "2024/12/S2A_c_cloudmask.tif"]


def test_root_errors(tmp_path):
    """A scene outside --root fails alone (the others are masked); --root without -o, or not a
    folder, is a usage error."""
    inside, outside = _s2(tmp_path / "arc" / "S2A_in.tif"), _s2(tmp_path / "elsewhere" / "S2A_out.tif", seed=2)
    res = runner.invoke(app, ["mask", str(inside), str(outside), "-o", str(tmp_path / "o"), "--root",
                              str(tmp_path / "arc"), "--json", *FAST])
    assert res.exit_code == 1
    scenes = {Path(s["source"]).name: s for s in json.loads(res.stdout)["scenes"]}
    assert scenes["S2A_in.tif"]["status"] == "masked"
    assert scenes["S2A_out.tif"]["status"] == "failed" and "not below --root" in scenes["S2A_out.tif"]["message"]
    assert scenes["S2A_out.tif"]["output"] is None  # none is written, none is named
    assert not list((tmp_path / "o").rglob("S2A_out*"))
    for args, says in (([], "--root needs -o"), (["-o", str(tmp_path / "o")], "not a folder")):
        res = runner.invoke(app, ["mask", str(inside), "--root", str(tmp_path / "nope"), *args, *FAST])
        assert res.exit_code == 2 and says in res.stderr, res.output


def test_a_run_whose_scenes_all_fail_leaves_no_output_folder(tmp_path):
    """-o is checked, not made, before the scenes: only a scene that is read makes its folder."""
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    for args in ([str(tmp_path / "bad.tif")], [str(tmp_path / "missing.tif")], [str(tmp_path / "no" / "*.tif")]):
        res = runner.invoke(app, ["mask", *args, "-o", str(tmp_path / "out" / "deep"), "-q", *FAST])
        assert res.exit_code in (1, 2) and not (tmp_path / "out").exists(), res.output
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(app, ["mask", str(tmp_path / "bad.tif"), "-o", str(tmp_path / "afile"), *FAST])
    assert res.exit_code == 1 and "afile: not a folder" in res.stderr


def test_usage_errors_exit_2_with_one_line(tmp_path):
    src = _s2(tmp_path / "S2A_u.tif")
    res = runner.invoke(app, ["mask", str(src), "--sensor", "sentinel22"])
    assert res.exit_code == 2 and "sentinel22" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["mask", str(src), "--threshold", "1.5"])
    assert res.exit_code == 2 and "--threshold" in res.stderr
    res = runner.invoke(app, ["mask"])
    assert res.exit_code == 2 and "input" in res.stderr
    odd = write_raster(tmp_path / "odd.tif", random_reflectance(3, 32, 32))
    res = runner.invoke(app, ["mask", str(odd), "--sensor", "sentinel2"])
    assert res.exit_code == 2 and "--bands" in res.stderr
    res = runner.invoke(app, ["mask", str(odd), "--sensor", "sentinel2", "--bands", "red,nir,swir16", "-q", *FAST])
    assert res.exit_code == 0, res.stderr


def test_archive_exit_status_is_1_when_some_scenes_failed_and_2_when_all_failed_as_bad_requests(tmp_path):
    good = _s2(tmp_path / "S2A_g.tif")
    odd = write_raster(tmp_path / "odd.tif", random_reflectance(3, 32, 32))  # 3 bands: not Sentinel-2's 13
    res = runner.invoke(app, ["mask", str(good), str(odd), "--sensor", "sentinel2", "-o", str(tmp_path / "o"), "-q", *FAST])
    assert res.exit_code == 1 and "1 of 2 scenes failed" in res.stderr
    odd2 = write_raster(tmp_path / "odd2.tif", random_reflectance(2, 32, 32))
    res = runner.invoke(app, ["mask", str(odd), str(odd2), "--sensor", "sentinel2", "-o", str(tmp_path / "o2"), "-q", *FAST])
    assert res.exit_code == 2 and "2 of 2 scenes failed" in res.stderr
    # all failed, but not all for the request: a missing file is not a wrong option
    res = runner.invoke(app, ["mask", str(odd), str(tmp_path / "gone.tif"), "--sensor", "sentinel2", "-o",
                              str(tmp_path / "o3"), "-q", *FAST])
    assert res.exit_code == 1 and "2 of 2 scenes failed" in res.stderr


def test_single_missing_scene_exits_1_with_its_message(tmp_path):
    res = runner.invoke(app, ["mask", str(tmp_path / "gone.tif"), "--sensor", "sentinel2"])
    assert res.exit_code == 1 and "gone.tif: no such file" in res.stderr


def test_weights_option_loads_a_user_model_and_rejects_a_corrupt_one(tmp_path):
    from typer.testing import CliRunner

    from cloudmask.cli.app import app
    from cloudmask.testing import random_reflectance, write_raster

    scene = write_raster(tmp_path / "x.tif", random_reflectance(4, 48, 48), descriptions=["red", "green", "blue", "nir"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    res = CliRunner().invoke(app, ["mask", str(scene), "--sensor", "sentinel2", "-o", str(tmp_path / "o"), "--weights", str(bad), "-q"])
    assert res.exit_code == 1
    assert "bad.safetensors" in res.output and "Traceback" not in res.output
    assert not list((tmp_path / "o").glob("*.tif"))
    import cloudmask.model

    bundled = next((Path(cloudmask.model.__file__).parent / "weights").glob("*.safetensors"))
    res = CliRunner().invoke(app, ["mask", str(scene), "--sensor", "sentinel2", "-o", str(tmp_path / "o"), "--weights", str(bundled), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "x_cloudmask.tif").exists()


@pytest.mark.parametrize("flag, key, value", [
    ([], "shadow_boost", ShadowOptions().boost), (["--shadow-boost", "1.5"], "shadow_boost", 1.5),
    ([], "shadow_darkness", None), (["--shadow-darkness", "0.7"], "shadow_darkness", 0.7),
])
def test_shadow_options_reach_the_stac_item(tmp_path, flag, key, value):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--quiet", *flag, *FAST])
    assert res.exit_code == 0, res.output
    props = json.loads((tmp_path / "out" / "S2A_MSIL2A_a_cloudmask.json").read_text())["properties"]
    assert props["cloudmask:options"][key] == value


def test_a_shadow_darkness_above_1_exits_2(tmp_path):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--shadow-darkness", "2", *FAST])
    assert res.exit_code == 2 and not (tmp_path / "out").exists()
    assert "shadow-darkness" in res.output and "Traceback" not in res.output


def test_negative_shadow_boost_exits_2(tmp_path):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--shadow-boost", "-1", *FAST])
    assert res.exit_code == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, sun", [([], [None, None]), (["--sun-azimuth", "120", "--sun-elevation", "35.5"], [120.0, 35.5]),
                                       (["--sun-from-metadata"], [None, None])])  # a bare GeoTIFF has none
def test_the_sun_flags_reach_the_stac_item(tmp_path, flag, sun):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--quiet", *flag, *FAST])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "out" / "S2A_MSIL2A_a_cloudmask.json").read_text())["properties"]["cloudmask:shadow_matching"]
    assert [record["sun_azimuth"], record["sun_elevation"]] == sun


@pytest.mark.parametrize("flag", [["--sun-azimuth", "400"], ["--sun-elevation", "0"], ["--sun-elevation", "-5"]])
def test_a_sun_off_the_sky_exits_2(tmp_path, flag):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), *flag, *FAST])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, applied", [([], True), (["--no-shadow-matching"], False), (["--binary"], False)])
def test_shadow_matching_flag_reaches_the_stac_item(tmp_path, flag, applied):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--quiet", *flag, *FAST])
    assert res.exit_code == 0, res.output
    props = json.loads((tmp_path / "out" / "S2A_MSIL2A_a_cloudmask.json").read_text())["properties"]
    assert props["cloudmask:options"]["shadow_matching"] is applied
    assert (props["cloudmask:options"]["shadow_boost"] is not None) is applied
    assert ("cloudmask:shadow_matching" in props) is applied
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["S2A_MSIL2A_a_cloudmask.json", "S2A_MSIL2A_a_cloudmask.tif"]


def test_device_that_torch_cannot_see_is_a_usage_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    src = _s2(tmp_path / "S2A_d.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--device", "cuda", *FAST])
    assert res.exit_code == 2
    assert "sees no CUDA GPU" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    ok = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "cpu"), "--device", "cpu", "--quiet", *FAST])
    assert ok.exit_code == 0 and (tmp_path / "cpu" / "S2A_d_cloudmask.tif").is_file()


def test_warnings_are_one_line_each(tmp_path):
    """An un-georeferenced scene: cloudmask's own warning as one line; rasterio's
    NotGeoreferencedWarning for every file opened or written is not shown."""
    dn = np.round(random_reflectance(13, 64, 72, seed=3) * 10000 + 1000).astype("uint16")
    src = write_raster(tmp_path / "plain.tif", dn, crs=None)
    res = runner.invoke(app, ["mask", str(src), "--sensor", "sentinel2", "-o", str(tmp_path / "out"), "--json", *FAST])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == ["warning: plain.tif is not georeferenced; the mask will not be either"]
    assert (tmp_path / "out" / "plain_cloudmask.tif").is_file()


def test_quiet_mode_prints_no_warnings_only_errors(tmp_path):
    """--quiet is for cron: a warning per scene (no sun in its metadata) would mail every night."""
    src = _s2(tmp_path / "S2A_w.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--quiet", "--sun-from-metadata", *FAST])
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == "", res.stderr
    res = runner.invoke(app, ["mask", str(src), str(tmp_path / "gone.tif"), "-o", str(tmp_path / "o2"), "--quiet",
                              "--sun-from-metadata", *FAST])
    assert res.exit_code == 1 and res.stdout == ""
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [
        f"error: {tmp_path / 'gone.tif'}: no such file or directory", "error: 1 of 2 scenes failed"]


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_mid_archive_exits_130_leaving_no_temporaries_and_with_json_says_what_was_done(
        tmp_path, monkeypatch, as_json):
    """Ctrl-C while the second of three scenes is being masked (its temporaries already exist)."""
    sources = [str(_s2(tmp_path / "in" / f"S2A_{i}.tif", seed=i)) for i in range(3)]
    real, calls = mask_mod.stream_mask, []

    def stream_mask(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mask_mod, "stream_mask", stream_mask)
    res = runner.invoke(app, ["mask", *sources, "-o", str(tmp_path / "out"), *FAST, *(["--json"] if as_json else [])])
    assert res.exit_code == 130
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == ["error: interrupted"]
    # only the finished scene's outputs: no temporaries, no lock
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["S2A_0_cloudmask.json", "S2A_0_cloudmask.tif"]
    if not as_json:
        assert "Traceback" not in res.output
        return
    doc = json.loads(res.stdout)
    assert doc["interrupted"] is True and doc["not_done"] == sources[1:]
    assert doc["summary"] == {**doc["summary"], "scenes": 1, "masked": 1, "failed": 0}
    assert [s["source"] for s in doc["scenes"]] == sources[:1] and doc["scenes"][0]["status"] == "masked"


def test_a_rerun_redoes_a_mask_cut_short_instead_of_skipping_it(tmp_path):
    src = _s2(tmp_path / "arc" / "S2A_MSIL2A_t.tif")
    args = ["mask", str(tmp_path / "arc"), "-o", str(tmp_path / "out"), "--json", "--quiet", *FAST]
    assert runner.invoke(app, args).exit_code == 0
    dst = tmp_path / "out" / "S2A_MSIL2A_t_cloudmask.tif"
    data = dst.read_bytes()
    dst.write_bytes(data[: len(data) * 2 // 3])  # a copy or disk cut it short after its headers
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["scenes"][0]["status"] == "masked"
    assert len(dst.read_bytes()) == len(data) and src.is_file()


@pytest.mark.parametrize("case, code, says", [
    ("unwritable -o", 1, "blocker: not a folder"), ("glob matches nothing", 2, "no file matches"),
    ("empty folder", 2, "no scenes found"), ("model fails to load", 1, "bad.safetensors"),
    ("bad option value", 2, "--threshold"), ("option out of click's range", 2, "--dilate"),
    ("unknown option", 2, "--bogus"), ("no input", 2, "give at least one input"),
    ("unreadable list file", 2, "cannot read the list of inputs"), ("@ without a file", 2, "@ needs the list file"),
    ("missing weights file", 2, "nope.safetensors: no such file"),
    ("a glob of masks only", 2, "only cloudmask's own outputs"),
])
def test_json_run_level_errors_still_print_one_document(tmp_path, case, code, says):
    """A cron job parsing stdout gets a document, with the error, whatever stopped the run."""
    src = _s2(tmp_path / "S2A_j.tif")
    (tmp_path / "blocker").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a_cloudmask.tif").write_bytes(b"x")
    args = {
        "unwritable -o": [str(src), "-o", str(tmp_path / "blocker" / "sub")],
        "glob matches nothing": [str(tmp_path / "nothing" / "*.tif")],
        "empty folder": [str(tmp_path / "empty")],
        "model fails to load": [str(src), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "bad.safetensors")],
        "bad option value": [str(src), "--threshold", "3"],
        "option out of click's range": [str(src), "--dilate", "-1"],
        "unknown option": [str(src), "--bogus"],
        "no input": [],
        "unreadable list file": ["--from-file", str(tmp_path / "gone.txt")],
        "@ without a file": ["@"],
        "missing weights file": [str(src), "--weights", str(tmp_path / "nope.safetensors")],
        "a glob of masks only": [str(tmp_path / "masks" / "*.tif")],
    }[case]
    res = runner.invoke(app, ["mask", *args, "--json", *FAST])
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    assert says in doc["error"] and says in res.stderr
    assert doc["scenes"] == [] and doc["summary"]["scenes"] == 0 and "not_done" in doc
    assert not (tmp_path / "o").exists()  # a run that did nothing made no output folder


def test_json_error_after_some_scenes_keeps_them_in_the_document(tmp_path, monkeypatch):
    """The model is loaded at the first scene that needs it: scenes skipped before still count."""
    a, b = _s2(tmp_path / "in" / "S2A_a.tif"), _s2(tmp_path / "in" / "S2A_b.tif", seed=2)
    out = tmp_path / "out"
    assert runner.invoke(app, ["mask", str(a), "-o", str(out), "-q", *FAST]).exit_code == 0

    def broken(path=None):
        raise mask_mod.ModelError("weights.safetensors: cannot load the model")

    monkeypatch.setattr(mask_mod, "load_predictor", broken)
    res = runner.invoke(app, ["mask", str(a), str(b), "-o", str(out), "--json", *FAST])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert "cannot load the model" in doc["error"] and doc["not_done"] == [str(b)]
    assert [s["status"] for s in doc["scenes"]] == ["skipped"] and doc["summary"]["skipped"] == 1


def test_the_collector_is_back_on_after_the_mask_commands_imports(tmp_path):
    """The command imports torch & co. with the cyclic collector off (startup_imports); it must be
    on again for the scenes, or an archive run's cyclic garbage would pile up."""
    src = _s2(tmp_path / "S2A_MSIL2A_g.tif")
    seen = []
    real = mask_mod.mask_many

    def spy(*args, **kw):
        seen.append(gc.isenabled())
        return real(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mask_mod, "mask_many", spy)
        res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "-q", *FAST])
    assert res.exit_code == 0, res.output
    assert seen == [True] and gc.isenabled()


def test_sigterm_mid_scene_exits_143_leaving_no_temporaries_or_lock(tmp_path):
    """`timeout 1h cloudmask mask …` sends SIGTERM: the scene in progress left its temporaries and
    lock behind (the next run cleaned up, but an archive's output tree held debris meanwhile)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    dn = np.round(random_reflectance(13, 768, 768, seed=4) * 10000 + 1000).astype("uint16")
    src = write_raster(tmp_path / "S2A_MSIL2A_t.tif", dn, nodata=0)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cloudmask", "mask", str(src), "-o", str(out), "--tile-size", "64",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".") for p in (out.iterdir() if out.is_dir() else [])):
        assert proc.poll() is None and time.monotonic() < deadline, "the scene never started"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the scene (768² in 64 px tiles: 144 blocks)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert [ln for ln in stderr.splitlines() if ln.strip()] == ["error: terminated"]
    assert not out.exists() or list(out.iterdir()) == []


def test_a_sigterm_whose_exception_was_swallowed_still_ends_the_run_as_terminated(tmp_path, monkeypatch):
    """A Python signal handler's exception raised inside a finalizer or weakref callback is only
    printed ("Exception ignored in …"): the run went on to the end and exited 0."""
    import signal

    from cloudmask.cli import common

    sources = [str(_s2(tmp_path / "in" / f"S2A_{i}.tif", seed=i)) for i in range(2)]
    real, calls = mask_mod.stream_mask, []

    def stream_mask(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the signal would end pytest itself
                raise AssertionError("no SIGTERM handler while the command runs")
            try:
                signal.raise_signal(signal.SIGTERM)  # the handler raises here…
            except common.Terminated:
                pass  # …and something swallows it, as a finalizer's caller does
        return real(*args, **kwargs)

    monkeypatch.setattr(mask_mod, "stream_mask", stream_mask)
    res = runner.invoke(app, ["mask", *sources, "-o", str(tmp_path / "out"), "--json", *FAST])
    assert res.exit_code == 143, res.output
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == ["error: terminated"]
    doc = json.loads(res.stdout)
    assert doc["interrupted"] is True and doc["not_done"] == sources  # stopped at its next progress event
    assert not (tmp_path / "out").exists()  # the scene in progress left no temporaries, lock or folder
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command put the default back


def test_values_that_cannot_be_reflectance_fail_the_scene(tmp_path):
    """DNs in a float file, or an int16 fill value the file does not mark as nodata, gave a confident
    all-cloud or shadow mask with exit 0: the model's check ran for Python calls only, and every
    window of `cloudmask mask` (stored integers included) goes round it."""
    refl = random_reflectance(13, 64, 72, seed=5)
    dn_float = write_raster(tmp_path / "S2A_MSIL2A_dn.tif", (refl * 10000 + 1000).astype("float32"))
    filled = np.round(refl * 10000 + 1000).astype("int16")
    filled[:, :20] = -9999  # fill, with no nodata in the file
    fill_int = write_raster(tmp_path / "S2A_MSIL2A_fill.tif", filled)
    for src, words in ((dn_float, "look scaled"), (fill_int, "below -0.5")):
        out = tmp_path / ("out_" + src.stem)
        res = runner.invoke(app, ["mask", str(src), "-o", str(out), "--sensor", "sentinel2", "--product", "l2a", *FAST])
        assert res.exit_code == 2, res.output
        assert words in res.stderr and "Traceback" not in res.output
        assert not out.exists() or not any(out.iterdir())  # nothing written, no temporaries left
    # the same fill under a product without an offset (scale 1e-4): -0.9999, which "below -1" let through
    res = runner.invoke(app, ["mask", str(fill_int), "-o", str(tmp_path / "out_pre"), "--sensor", "sentinel2",
                              "--product", "l2a-pre0400", *FAST])
    assert res.exit_code == 2 and "below -0.5" in res.stderr, res.output
    ok = write_raster(tmp_path / "S2A_MSIL2A_ok.tif", np.round(refl * 10000 + 1000).astype("int16"))
    res = runner.invoke(app, ["mask", str(ok), "-o", str(tmp_path / "out_ok"), "--sensor", "sentinel2", "--product", "l2a", *FAST])
    assert res.exit_code == 0, res.output


def test_resolution_must_be_finite_and_needs_a_georeferenced_scene(tmp_path):
    """--resolution inf wrote a 1×1 mask with an inf/NaN transform and "Infinity" in its JSON; on a
    file with no georeferencing, metres were taken as pixels."""
    src = _s2(tmp_path / "S2A_MSIL2A_r.tif")
    for value in ("inf", "nan", "0"):
        res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "o"), "--resolution", value, *FAST])
        assert res.exit_code == 2 and "--resolution" in res.stderr, (value, res.output)
    dn = np.round(random_reflectance(13, 64, 72, seed=1) * 10000 + 1000).astype("uint16")
    bare = write_raster(tmp_path / "S2A_MSIL2A_bare.tif", dn, nodata=0, crs=None)
    res = runner.invoke(app, ["mask", str(bare), "-o", str(tmp_path / "o"), "--resolution", "60", *FAST])
    assert res.exit_code == 2 and "not georeferenced" in res.stderr, res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_nodata_given_by_an_internal_mask_band_is_nodata(tmp_path):
    """A GeoTIFF whose nodata is GDAL's internal mask (rio cogeo --add-mask), not a value: its masked
    pixels were classified (0-3) and counted as valid."""
    import rasterio
    from affine import Affine

    dn = np.round(random_reflectance(13, 64, 72, seed=6) * 10000 + 1000).astype("uint16")
    src = tmp_path / "S2A_MSIL2A_masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            src, "w", driver="GTiff", width=72, height=64, count=13, dtype="uint16", crs="EPSG:32632",
            transform=Affine(20, 0, 500000, 0, -20, 5200000), tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(dn)
        valid = np.full((64, 72), 255, np.uint8)
        valid[:, :24] = 0
        dst.write_mask(valid)
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--json", *FAST])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "out" / "S2A_MSIL2A_masked_cloudmask.tif") as m:
        cls = m.read(1)
    assert (cls[:, :24] == 255).all() and (cls[:, 24:] != 255).all()
    fractions = json.loads(res.stdout)["scenes"][0]["fractions"]
    assert fractions["nodata"] == pytest.approx(24 / 72)


def test_local_file_names_are_kept_in_output_names(tmp_path):
    """Names were made ASCII: "a b.tif", "a#b.tif" and "a_b.tif" collided (two failed as produced by
    another scene) and "scène" became "sc_ne"; the docs promise NAME_cloudmask.tif."""
    names = ["a b", "a#b", "a_b", "S2 scène #1"]
    for i, name in enumerate(names):
        _s2(tmp_path / "in" / f"{name}.tif", seed=i + 1)
    res = runner.invoke(app, ["mask", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--sensor", "sentinel2", "--json", *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == sorted(f"{n}_cloudmask.tif" for n in names)


def test_odd_local_names_are_safe_for_globs_urls_and_long(tmp_path):
    """Kept local names brought [ ] * ? into the temporaries' glob (a run removed another scene's
    temporary), "#" and spaces into the STAC href unencoded, and names past the 255-byte limit."""
    from urllib.parse import unquote

    import pystac

    src = _s2(tmp_path / "in" / "S2A_MSIL2A_*.tif")
    other = tmp_path / "out" / ".S2A_MSIL2A_abc_cloudmask.tif.cmtmp-mask-4242-deadbeef.tif"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another run's temporary")
    _s2(tmp_path / "in" / "S2A_MSIL2A a#b%20c.tif", seed=2)
    _s2(tmp_path / "in" / ("S2A_MSIL2A_" + "é" * 120 + ".tif"), seed=3)
    res = runner.invoke(app, ["mask", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--json", *FAST])
    assert res.exit_code == 0, res.output
    assert other.exists()  # not this run's: "*" in a scene's name matched it
    assert (tmp_path / "out" / f"{src.stem}_cloudmask.tif").is_file()
    doc = json.loads((tmp_path / "out" / "S2A_MSIL2A a#b%20c_cloudmask.json").read_text())
    item = pystac.Item.from_dict(doc)
    item.set_self_href(str(tmp_path / "out" / "item.json"))
    href = item.assets["mask"].get_absolute_href()
    assert "#" not in href and unquote(Path(href).name) == "S2A_MSIL2A a#b%20c_cloudmask.tif"
    long = [p.name for p in (tmp_path / "out").glob("S2A_MSIL2A_é*_cloudmask.tif")]
    assert len(long) == 1 and len(long[0].encode()) < 255


def test_a_sigterm_while_the_stack_imports_still_gets_its_json_document(tmp_path, monkeypatch):
    """The imports (~1.5 s) ran before the try that prints --json's document: a SIGTERM then gave
    "error: terminated" and an empty stdout."""
    import contextlib

    from cloudmask.cli import common
    from cloudmask.cli import mask as cli_mask

    @contextlib.contextmanager
    def killed_while_importing():
        raise common.Terminated()
        yield

    monkeypatch.setattr(cli_mask, "startup_imports", killed_while_importing)
    src = _s2(tmp_path / "S2A_MSIL2A_t.tif")
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "out"), "--json", "-q"])
    assert res.exit_code == 143, res.output
    doc = json.loads(res.stdout)
    assert doc["interrupted"] is True and doc["not_done"] == [str(src)] and doc["summary"]["scenes"] == 0


def test_a_scene_another_run_is_writing_is_busy_not_failed(tmp_path):
    """Overlapping cron runs: a scene locked by a live run was "failed" (exit 1, an error line even
    under --quiet, cron mail every time although nothing was wrong)."""
    import os
    import time

    from cloudmask.mask import OutputLock, OutputPaths

    a, b = _s2(tmp_path / "in" / "S2A_a.tif"), _s2(tmp_path / "in" / "S2A_b.tif", seed=2)
    busy = tmp_path / "out" / "S2A_b_cloudmask.tif"
    busy.parent.mkdir()
    with OutputLock(OutputPaths(busy).lock, busy):  # "another run" (this process) is writing b
        res = runner.invoke(app, ["mask", str(a), str(b), "-o", str(tmp_path / "out"), "--json", "-q", *FAST])
    assert res.exit_code == 0 and res.stderr == "", res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["masked"] == 1 and doc["summary"]["busy"] == 1 and doc["summary"]["failed"] == 0
    status = {Path(s["source"]).name: (s["status"], s["message"]) for s in doc["scenes"]}
    assert status["S2A_b.tif"][0] == "busy" and "another run is writing it" in status["S2A_b.tif"][1]
    assert not busy.exists()
    # a lock held for hours (a run crashed on another host: its pid cannot be checked) is a failure
    lock = OutputPaths(busy).lock
    lock.write_text("4242 deadnode cafe\n")
    old = time.time() - 7200
    os.utime(lock, (old, old))
    res = runner.invoke(app, ["mask", str(b), "-o", str(tmp_path / "out"), "--json", "-q", *FAST])
    assert res.exit_code == 1 and "locked for 2.0 h" in res.stderr and "remove the lock" in res.stderr, res.output


def test_a_resolution_coarser_than_the_scene_is_refused(tmp_path):
    """A 1×1 all-nodata mask was written, exit 0."""
    src = _s2(tmp_path / "S2A_MSIL2A_small.tif")  # 72 × 64 px at 20 m: 1440 × 1280 m
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "o"), "--resolution", "5000", "-q", *FAST])
    assert res.exit_code == 2 and "coarser than the whole scene (1440 × 1280 m)" in res.stderr, res.output
    res = runner.invoke(app, ["mask", str(src), "-o", str(tmp_path / "o"), "--resolution", "1000", *FAST])
    assert res.exit_code == 0, res.output  # 2 × 2 px: coarse, but a grid
