"""Masking scenes and archives: outputs, skip/resume, locks, bad input, distributed scheduler."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import ColorInterp

from cloudmask import cog
from cloudmask import mask as mask_mod
from cloudmask.errors import OutputError, SceneError, UsageError
from cloudmask.mask import MaskOptions, OutputPaths, expand_inputs, mask_many, mask_scene, output_for
from cloudmask.model import Predictor
from cloudmask.registry import get_sensor
from cloudmask.testing import random_reflectance, stac_item, write_item, write_raster, write_safe
from cloudmask.testing import test_transform as grid_transform
from cloudmask.tiles import TileOptions

SMALL = TileOptions(tile_size=64, threads=2)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.random(seed=0, dilations=(1,))


def _s2(path: Path, h: int = 80, w: int = 96, seed: int = 1, nodata_rows: int = 4) -> Path:
    dn = np.round(random_reflectance(13, h, w, seed=seed) * 10000 + 1000).astype("uint16")
    dn[:, :nodata_rows, :] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_raster(path, dn, nodata=0)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_one_scene_gives_valid_cog_on_the_input_grid_and_a_stac_item(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_MSIL2A_a.tif")
    dst = tmp_path / "out" / "a_cloudmask.tif"
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, probabilities=True))
    assert r.status == "masked" and r.sensor == "sentinel2"
    assert cog.is_valid_cog(dst) and cog.is_valid_cog(OutputPaths(dst).proba)
    with rasterio.open(src) as s, rasterio.open(dst) as m:
        assert (m.crs, m.transform, m.shape) == (s.crs, s.transform, s.shape)
        assert m.dtypes[0] == "uint8" and m.nodata == 255 and m.colormap(1)[0][3] == 255
        assert "thick cloud" in m.descriptions[0]
        cls = m.read(1)
    assert (cls[:4] == 255).all() and set(np.unique(cls[4:])) <= {0, 1, 2, 3}
    with rasterio.open(OutputPaths(dst).proba) as p:
        prob = p.read()
        interp = p.colorinterp
    assert p.count == 4 and (prob[:, :4] == 255).all()
    assert ColorInterp.alpha not in interp and ColorInterp.red not in interp  # four plain layers, not RGBA
    np.testing.assert_allclose(prob[:, 4:].astype(int).sum(0), 100, atol=3)
    item = json.loads(OutputPaths(dst).item.read_text())
    pystac.Item.from_dict(item)  # parses as STAC
    props = item["properties"]
    assert props["cloudmask:sensor"] == "sentinel2" and props["cloudmask:model_version"] == "random-0"
    # what the model was told: one descriptor per band used, and the product that scaled the DNs
    b2 = next(b for b in get_sensor("sentinel2").bands if b.name == "B02")
    desc = dict(zip(props["cloudmask:bands"], props["cloudmask:band_descriptors"]))
    assert len(desc) == len(props["cloudmask:band_descriptors"]) and desc["B02"] == pytest.approx(b2.descriptor().tolist())
    assert props["cloudmask:product"] in get_sensor("sentinel2").products
    fr = props["cloudmask:class_fractions"]
    assert sum(fr[k] for k in ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")) == pytest.approx(1.0, abs=1e-5)
    assert fr["nodata"] == pytest.approx(4 / 80, abs=1e-5)
    assert item["assets"]["mask"]["href"] == "a_cloudmask.tif"
    assert _files(tmp_path / "out") == ["a_cloudmask.json", "a_cloudmask.tif", "a_cloudprob.tif"]
    # the footprint in lon/lat: west, south, east, north, and a polygon around the same box
    with rasterio.open(src) as s:
        from rasterio.warp import transform_bounds

        want = transform_bounds(s.crs, "EPSG:4326", *s.bounds)
    assert item["bbox"] == pytest.approx(list(want), abs=1e-6)
    west, south, east, north = item["bbox"]
    assert west < east and south < north
    lons, lats = zip(*item["geometry"]["coordinates"][0])
    assert (min(lons), min(lats), max(lons), max(lats)) == pytest.approx((west, south, east, north), abs=1e-6)


def test_mask_matches_whole_scene_prediction_away_from_edges(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_x.tif", h=200, w=230, nodata_rows=0)
    dst = tmp_path / "x_cloudmask.tif"
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    from cloudmask.scene import read_scene

    scene = read_scene(src)
    whole = predictor.predict_proba(scene.data.values, scene.descriptors).argmax(0)
    with rasterio.open(dst) as ds:
        tiled = ds.read(1)
    m = predictor.halo
    assert (tiled == whole)[m:-m, m:-m].mean() > 0.999


def test_stored_values_to_the_model_give_the_same_mask_as_converting_first(tmp_path, predictor, monkeypatch):
    """16-bit DNs go to the model as they are (it converts them per row chunk); the classes and
    probabilities are those of the float32 path up to float rounding (the scale is applied after
    the first linear step), nodata rows and scene edges included."""
    from cloudmask.tiles import ChunkReader

    src = _s2(tmp_path / "S2A_MSIL2A_d.tif", h=150, w=170, nodata_rows=6)
    with rasterio.open(src, "r+") as ds:  # nodata in one band only, mid-scene
        dn = ds.read(5)
        dn[60:70, 40:90] = 0
        ds.write(dn, 5)
    used: list[bool] = []
    real = ChunkReader.window_stored

    def spy(self, *a):
        used.append(True)
        return real(self, *a)

    monkeypatch.setattr(ChunkReader, "window_stored", spy)
    opts = MaskOptions(tiles=SMALL, probabilities=True)
    a = mask_scene(src, tmp_path / "a" / "d_cloudmask.tif", predictor, opts)
    assert used
    monkeypatch.setattr(ChunkReader, "_stored_affine", lambda self, dtype: None)
    used.clear()
    b = mask_scene(src, tmp_path / "b" / "d_cloudmask.tif", predictor, opts)
    assert not used
    with rasterio.open(a.output) as ds1, rasterio.open(b.output) as ds2:
        c1, c2 = ds1.read(1), ds2.read(1)
    np.testing.assert_array_equal(c1 == 255, c2 == 255)
    assert (c1 != c2).mean() < 1e-3  # only a near-tie can flip
    with rasterio.open(a.probabilities) as ds1, rasterio.open(b.probabilities) as ds2:
        assert np.abs(ds1.read().astype(int) - ds2.read().astype(int)).max() <= 1  # uint8 rounding
    with rasterio.open(a.output) as ds:
        cls = ds.read(1)
    assert (cls[:6] == 255).all() and (cls[60:70, 40:90] == 255).all() and (cls[6:60] != 255).all()


def test_all_nodata_and_non_finite_pixels_become_255(tmp_path, predictor):
    empty = write_raster(tmp_path / "empty.tif", np.zeros((13, 40, 50), dtype="uint16"), nodata=0)
    r = mask_scene(empty, tmp_path / "empty_cloudmask.tif", predictor, MaskOptions(sensor="sentinel2", tiles=SMALL))
    with rasterio.open(r.output) as ds:
        assert (ds.read(1) == 255).all()
    # an empty scene has no cloud cover (not 0 %: a cron filter on it must not call it clear)
    assert r.fractions["nodata"] == 1.0 and r.fractions["clear"] is None and r.cloud_cover is None
    assert "eo:cloud_cover" not in json.loads(OutputPaths(Path(r.output)).item.read_text())["properties"]
    refl = random_reflectance(13, 40, 50)
    refl[2, 5, 5] = np.nan
    refl[7, 6, 6] = np.inf
    refl[0, 7, 7] = -np.inf
    f = write_raster(tmp_path / "float.tif", refl)
    r = mask_scene(f, tmp_path / "float_cloudmask.tif", predictor, MaskOptions(sensor="sentinel2", tiles=SMALL))
    with rasterio.open(r.output) as ds:
        cls = ds.read(1)
    assert cls[5, 5] == cls[6, 6] == cls[7, 7] == 255 and (cls != 255).sum() == 40 * 50 - 3


def test_threshold_binary_and_dilate_options(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_b.tif")
    r = mask_scene(src, tmp_path / "bin_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, binary=True, dilate=2))
    with rasterio.open(r.output) as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1, 255}
        assert len(ds.colormap(1)) >= 2
    assert set(r.fractions) == {"clear", "cloud", "nodata"}
    from cloudmask.evaluate import is_binary_mask  # evaluate scores it as cloud / not cloud

    assert is_binary_mask(r.output) and not is_binary_mask(src)
    lo = mask_scene(src, tmp_path / "lo_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, threshold=0.05))
    hi = mask_scene(src, tmp_path / "hi_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, threshold=0.95))
    assert lo.cloud_cover >= hi.cloud_cover
    assert lo.cloud_cover > 0 or hi.cloud_cover < 100


def test_archive_mirrors_tree_skips_bad_scene_and_resumes(tmp_path, predictor):
    arc = tmp_path / "archive"
    _s2(arc / "2024" / "S2A_MSIL2A_one.tif", seed=1)
    bad = arc / "2024" / "S2A_MSIL2A_two.tif"
    _s2(bad, seed=2)
    bad.write_bytes(bad.read_bytes()[:3000])  # truncated mid-archive
    _s2(arc / "2025" / "deep" / "S2B_MSIL2A_three.tif", seed=3)
    out = tmp_path / "masks"
    results = mask_many([str(arc)], out, MaskOptions(tiles=SMALL), predictor)
    status = {Path(r.source).name: r.status for r in results}
    assert status == {"S2A_MSIL2A_one.tif": "masked", "S2A_MSIL2A_two.tif": "failed", "S2B_MSIL2A_three.tif": "masked"}
    failed = next(r for r in results if r.status == "failed")
    assert "S2A_MSIL2A_two.tif" in failed.message and failed.exit_code == 1
    assert _files(out) == [
        "2024/S2A_MSIL2A_one_cloudmask.json", "2024/S2A_MSIL2A_one_cloudmask.tif",
        "2025/deep/S2B_MSIL2A_three_cloudmask.json", "2025/deep/S2B_MSIL2A_three_cloudmask.tif",
    ]
    before = (out / "2024" / "S2A_MSIL2A_one_cloudmask.tif").stat().st_mtime_ns
    again = mask_many([str(arc)], out, MaskOptions(tiles=SMALL), predictor)
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]
    assert (out / "2024" / "S2A_MSIL2A_one_cloudmask.tif").stat().st_mtime_ns == before
    redo = mask_many([str(arc / "2024" / "S2A_MSIL2A_one.tif")], out / "2024", MaskOptions(tiles=SMALL, overwrite=True), predictor)
    assert redo[0].status == "masked"


def test_disk_full_leaves_nothing_and_a_rerun_completes(tmp_path, predictor, monkeypatch):
    src = _s2(tmp_path / "in" / "S2A_c.tif")
    out = tmp_path / "out"
    real = cog._copy_to_cog

    def full(raw, part, resampling):  # GDAL got part-way, then the disk filled up
        part.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cog, "_copy_to_cog", full)
    with pytest.raises(OutputError, match="disk full"):
        mask_scene(src, out / "c_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, probabilities=True))
    assert _files(out) == []  # no partial mask, no temporaries, no lock
    monkeypatch.setattr(cog, "_copy_to_cog", real)
    r = mask_many([str(src)], out, MaskOptions(tiles=SMALL), predictor)
    assert r[0].status == "masked" and _files(out) == ["S2A_c_cloudmask.json", "S2A_c_cloudmask.tif"]


@pytest.mark.parametrize("failure", ["sink", "cog"])
def test_a_full_disk_is_named_as_such_whatever_gdal_says(tmp_path, predictor, monkeypatch, failure):
    """GDAL often reports a full disk only as "Write error at scanline 0" (libtiff prints the
    ENOSPC itself), or, when closing cut the raw file short, as a read error in the COG step; with
    under 1 MiB free that is "disk full", in one line, and nothing is left behind."""
    from collections import namedtuple

    from rasterio._err import CPLE_AppDefinedError

    src = _s2(tmp_path / "in" / "S2A_f.tif")
    out = tmp_path / "out"
    if failure == "sink":
        def broken(self, key, value):
            raise cog.output_error(rasterio.errors.RasterioIOError("TIFFAppendToStrip:Write error at scanline 0"), self.dst)
        monkeypatch.setattr(cog.RasterSink, "__setitem__", broken)
    else:
        def broken(raw, part, resampling):
            raise CPLE_AppDefinedError(1, 1, f"{raw}: TIFFReadDirectory:Failed to read directory")
        monkeypatch.setattr(cog, "_copy_to_cog", broken)
    full = namedtuple("statvfs", "f_bavail f_frsize")(3, 4096)
    monkeypatch.setattr(cog.os, "statvfs", lambda p: full)
    with pytest.raises(OutputError, match="disk full while writing"):
        mask_scene(src, out / "f_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    assert _files(out) == []


_WRITE_LIMITED = """
import resource, signal, sys
from cloudmask import mask as mask_mod
from cloudmask.model import Predictor
from cloudmask.tiles import TileOptions
p = Predictor.random(seed=0, dilations=(1,))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
try:
    mask_mod.mask_scene(sys.argv[1], sys.argv[2], p, mask_mod.MaskOptions(tiles=TileOptions(tile_size=256, threads=2)))
except mask_mod.OutputError as exc:
    print("cloudmask:", exc, file=sys.stderr)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_gdal_write_errors_are_not_printed_beside_cloudmasks_own(tmp_path):
    """A write that fails (full disk; here a file size limit) is reported by cloudmask in one line;
    GDAL's own "ERROR 1: TIFFAppendToStrip:Write error…" lines went to stderr beside it (GDAL's
    default error handler: rasterio routes CPL errors to its logger only inside a rasterio.Env)."""
    src = _s2(tmp_path / "S2A_w.tif", h=300, w=300)
    res = subprocess.run([sys.executable, "-c", _WRITE_LIMITED, str(src), str(tmp_path / "out" / "w_cloudmask.tif")],
                         capture_output=True, text=True, timeout=120)
    assert f"cloudmask: {tmp_path / 'out' / 'w_cloudmask.tif'}: " in res.stderr, res.stderr
    assert not [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR")], res.stderr
    assert _files(tmp_path / "out") == []


def test_killed_run_leftovers_are_cleaned_and_not_taken_for_output(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_d.tif")
    dst = tmp_path / "out" / "d_cloudmask.tif"
    dst.parent.mkdir()
    leftover = cog.temp_path(dst, "mask")
    leftover.write_bytes(b"partial")
    item_leftover = dst.parent / f".{OutputPaths(dst).item.name}.cmtmp-999999"  # killed while writing its item
    item_leftover.write_text("{")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    OutputPaths(dst).lock.write_text(f"{dead.pid} {os.uname().nodename}\n")  # stale lock of a dead run
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert r.status == "masked" and not leftover.exists() and not OutputPaths(dst).lock.exists()
    assert _files(dst.parent) == ["d_cloudmask.json", "d_cloudmask.tif"]


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path):
    """Two runs that both judged a dead run's lock stale: the one that breaks it second finds the
    first one's new lock, puts it back and reports the output as locked; a run never removes a
    lock that is not its own."""
    from cloudmask.mask import OutputLock

    lock, target = tmp_path / "x.lock", tmp_path / "x_cloudmask.tif"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid} {socket.gethostname()}\n")
    first = OutputLock(lock, target).__enter__()  # took the stale lock over
    mine = lock.read_text()
    late = OutputLock(lock, target)
    assert late._break_stale() is False  # it renamed the first run's live lock away, then put it back
    assert lock.read_text() == mine and not list(tmp_path.glob("x.lock.stale-*"))
    with pytest.raises(OutputError, match="another run is writing"):
        late.__enter__()
    lock.write_text("1 some-other-host\n")  # not ours any more: leaving must not remove it
    first.__exit__(None, None, None)
    assert lock.read_text() == "1 some-other-host\n"


def test_a_lock_renamed_aside_by_a_killed_takeover_is_cleaned_by_the_next_run(tmp_path, predictor):
    """A run killed between renaming a stale lock aside (``.lock.stale-PID``) and removing it left
    that file for good; the next run for the output removes it, masking or skipping. One that holds
    a live run's lock (its taker killed before putting it back) stays until that run is gone."""
    src = _s2(tmp_path / "S2A_s.tif")
    dst = tmp_path / "out" / "s_cloudmask.tif"
    dst.parent.mkdir()
    lock = OutputPaths(dst).lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = lock.with_name(f"{lock.name}.stale-{dead.pid}")
    aside.write_text(f"{dead.pid} {socket.gethostname()}\n")  # the lock of a dead run it took over
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = lock.with_name(f"{lock.name}.stale-1")
        kept.write_text(f"{alive.pid} {socket.gethostname()}\n")
        r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
        assert r.status == "masked" and not aside.exists() and kept.exists()
        aside.write_text(f"{dead.pid} {socket.gethostname()}\n")
        r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
        assert r.status == "skipped" and not aside.exists() and kept.exists()
    finally:
        alive.kill()
        alive.wait()
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert _files(dst.parent) == ["s_cloudmask.json", "s_cloudmask.tif"]


def test_a_scene_finished_by_another_run_while_we_waited_for_its_lock_is_skipped(tmp_path, predictor, monkeypatch):
    """"Done" is checked again once the lock is ours: another run may have finished the scene
    between our first check and our lock; redoing it doubled the work (and rewrote the files)."""
    src = _s2(tmp_path / "S2A_r.tif")
    dst = tmp_path / "out" / "r_cloudmask.tif"
    real, other_run = mask_mod.OutputLock.__enter__, []

    def enter(self):
        if not other_run:  # after our "not done yet", before our lock: another run does the scene
            other_run.append(None)
            other_run[0] = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
        return real(self)

    monkeypatch.setattr(mask_mod.OutputLock, "__enter__", enter)
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert other_run[0].status == "masked" and r.status == "skipped"
    assert _files(dst.parent) == ["r_cloudmask.json", "r_cloudmask.tif"]
    assert mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, overwrite=True)).status == "masked"


def test_ctrl_c_right_after_the_first_temporary_leaves_none(tmp_path, predictor, monkeypatch):
    """Every temporary is made inside the block whose end removes them all."""
    def interrupted(self, scene=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(MaskOptions, "shadow_options", interrupted)  # called between two sinks' creation
    with pytest.raises(KeyboardInterrupt):
        mask_scene(_s2(tmp_path / "S2A_k.tif"), tmp_path / "out" / "S2A_k_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    assert not (tmp_path / "out").exists()  # no temporaries, nor the folder made for them


@pytest.mark.parametrize("step", ["_copy_to_cog", "cog_validate"])
def test_ctrl_c_while_the_cog_is_made_leaves_no_temporary(tmp_path, predictor, monkeypatch, step):
    """Ctrl-C inside cog.translate (GDAL's copy, or the validation of its result) left the COG
    temporary behind, against "the scene in progress leaves no temporaries"."""
    real = getattr(cog, step)

    def interrupted(*args, **kw):
        real(*args, **kw)  # the COG temporary now exists
        raise KeyboardInterrupt

    monkeypatch.setattr(cog, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        mask_scene(_s2(tmp_path / "S2A_k.tif"), tmp_path / "out" / "S2A_k_cloudmask.tif", predictor,
                   MaskOptions(tiles=SMALL, probabilities=True))
    assert not (tmp_path / "out").exists()  # no temporaries, nor the folder made for them


def test_an_overwrite_killed_mid_commit_is_redone_not_taken_for_done(tmp_path, predictor, monkeypatch):
    """--overwrite replaces item and mask; if the run dies after the new item is in place but before
    the new mask, the old mask must not sit beside it looking finished."""
    src = _s2(tmp_path / "S2A_o.tif")
    dst = tmp_path / "out" / "o_cloudmask.tif"
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    real = os.replace

    def dies_at_the_mask(a, b, *args, **kw):
        if Path(b) == dst:
            raise KeyboardInterrupt  # killed between the item's rename and the mask's
        return real(a, b, *args, **kw)

    monkeypatch.setattr(os, "replace", dies_at_the_mask)
    with pytest.raises(KeyboardInterrupt):
        mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, overwrite=True, binary=True))
    monkeypatch.setattr(os, "replace", real)
    assert not OutputPaths(dst).complete(False)  # so the next run redoes it
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, binary=True))
    assert r.status == "masked"
    with rasterio.open(dst) as m:
        assert set(np.unique(m.read(1))) <= {0, 1, 255}


def test_a_skipped_output_loses_a_killed_runs_leftovers(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_k.tif")
    dst = tmp_path / "out" / "k_cloudmask.tif"
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    cog.temp_path(dst, "mask").write_bytes(b"partial")  # what a killed --overwrite run leaves
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    OutputPaths(dst).lock.write_text(f"{dead.pid} {socket.gethostname()}\n")
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert r.status == "skipped" and _files(dst.parent) == ["k_cloudmask.json", "k_cloudmask.tif"]


def test_a_finished_output_of_another_scene_is_not_taken_for_this_ones(tmp_path, predictor):
    """x.tif masked by one run, x.tiff (same output name) by the next: not "skipped" with x.tif's
    mask, but a clear failure; the same scene moved elsewhere is still skipped; --overwrite redoes it."""
    out = tmp_path / "out"
    first = _s2(tmp_path / "a" / "S2A_MSIL2A_z.tif")
    assert mask_many([str(first)], out, MaskOptions(tiles=SMALL), predictor)[0].status == "masked"
    other = _s2(tmp_path / "b" / "S2A_MSIL2A_z.tiff", seed=5)
    (r,) = mask_many([str(other)], out, MaskOptions(tiles=SMALL), predictor)
    assert r.status == "failed" and r.exit_code == 2 and f"is the mask of another scene ({first})" in r.message
    moved = tmp_path / "moved" / "S2A_MSIL2A_z.tif"
    moved.parent.mkdir()
    first.rename(moved)
    assert mask_many([str(moved)], out, MaskOptions(tiles=SMALL), predictor)[0].status == "skipped"
    (r,) = mask_many([str(other)], out, MaskOptions(tiles=SMALL, overwrite=True), predictor)
    assert r.status == "masked" and OutputPaths(Path(r.output)).source() == str(other)


def test_a_stac_item_cut_short_is_redone_not_skipped(tmp_path, predictor):
    """The item is an output too: one that does not parse (cut short, emptied) is not a finished
    scene, or every rerun skipped it and the catalogue kept a broken item."""
    src = _s2(tmp_path / "S2A_i.tif")
    dst = tmp_path / "out" / "i_cloudmask.tif"
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    item = OutputPaths(dst).item
    text = item.read_text()
    item.write_text(text[: len(text) // 2])
    assert not OutputPaths(dst).complete(False)
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert r.status == "masked" and json.loads(item.read_text())["assets"]["mask"]["href"] == dst.name


def test_live_lock_blocks_a_second_writer(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_e.tif")
    dst = tmp_path / "e_cloudmask.tif"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another run, alive
    try:
        OutputPaths(dst).lock.write_text(f"{other.pid} {os.uname().nodename}\n")
        with pytest.raises(OutputError, match="another run"):
            mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    finally:
        other.kill()
        other.wait()
    assert not dst.exists()


def test_a_lock_naming_our_pid_that_we_do_not_hold_is_stale(tmp_path, predictor):
    """In a container with a fixed hostname cloudmask may run as pid 1 every time: a killed run's
    lock names the pid of the next run, which must not take it for its own live lock."""
    src = _s2(tmp_path / "S2A_p.tif")
    dst = tmp_path / "out" / "p_cloudmask.tif"
    dst.parent.mkdir()
    OutputPaths(dst).lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL))
    assert r.status == "masked" and _files(dst.parent) == ["p_cloudmask.json", "p_cloudmask.tif"]
    with mask_mod.OutputLock(OutputPaths(dst).lock, dst):  # one this process holds still blocks
        with pytest.raises(OutputError, match="another run"):
            mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, overwrite=True))


def test_unwritable_output_is_reported_per_scene(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_f.tif")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        mask_many([str(src)], blocker / "sub", MaskOptions(tiles=SMALL), predictor)
    with pytest.raises(OutputError):
        mask_scene(src, blocker / "f_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))


def test_a_safe_in_an_archive_is_one_scene_named_after_the_product(tmp_path, predictor):
    """Its R10m, R20m and R60m band folders would otherwise be masked as three scenes; zipped, it is
    one scene file."""
    name = "S2A_MSIL2A_20240612T103031_N0510_R108_T32TMT_20240612T140342"
    safe = write_safe(tmp_path / "archive" / "2024", f"{name}.SAFE")
    loose = _s2(tmp_path / "archive" / "S2A_loose.tif")
    import zipfile

    zipped = tmp_path / "archive" / "zips" / f"{name}.SAFE.zip"
    zipped.parent.mkdir()
    with zipfile.ZipFile(zipped, "w") as z:
        for p in sorted(safe.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(safe.parent))
    with zipfile.ZipFile(zipped.parent / "roads.zip", "w") as z:  # not a scene: passed over
        z.writestr("roads.shp", b"\x00" * 100)
    pairs = expand_inputs([str(tmp_path / "archive")])
    assert sorted(p for p, _ in pairs) == sorted([str(safe), str(loose), str(zipped)])
    assert output_for(str(zipped), tmp_path / "archive", tmp_path / "o") == tmp_path / "o" / "zips" / f"{name}_cloudmask.tif"
    zipped.unlink()
    (zipped.parent / "roads.zip").unlink()
    assert expand_inputs([str(safe)]) == [(str(safe), safe.parent)]
    results = mask_many([str(tmp_path / "archive")], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
    assert [r.status for r in results] == ["masked", "masked"], [r.message for r in results]
    assert (tmp_path / "out" / "2024" / f"{name}_cloudmask.tif").exists()
    with rasterio.open(tmp_path / "out" / "2024" / f"{name}_cloudmask.tif") as m:
        assert (m.width, m.height, m.transform.a) == (60, 60, 20.0)


def test_symlinked_scenes_in_a_tree_keep_their_place_in_the_mirror(tmp_path, predictor):
    """An archive of links into other disks: the mirror follows the tree as given, not where the
    links point (resolving them put every mask flat in -o, and same-named scenes collided)."""
    store = tmp_path / "store"
    for month in ("06", "07"):
        (tmp_path / "arc" / month).mkdir(parents=True)
        (tmp_path / "arc" / month / "S2A_x.tif").symlink_to(_s2(store / month / "S2A_x.tif"))
    out = tmp_path / "out"
    results = mask_many([str(tmp_path / "arc")], out, MaskOptions(tiles=SMALL), predictor)
    assert [r.status for r in results] == ["masked", "masked"], [r.message for r in results]
    assert [r.output for r in results] == [str(out / m / "S2A_x_cloudmask.tif") for m in ("06", "07")]
    globbed = expand_inputs([str(tmp_path / "arc" / "**" / "*.tif")])
    assert output_for(*globbed[1], out) == out / "07" / "S2A_x_cloudmask.tif"


def test_a_list_file_saved_with_a_byte_order_mark_reads_its_first_path(tmp_path):
    """Windows editors start UTF-8 files with a BOM: it stuck to the first path ("no such file")."""
    a = _s2(tmp_path / "a" / "S2A_one.tif")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{a}\r\n# done\r\n".encode())
    assert mask_mod.read_list_file(str(listing)) == [str(a)]


def test_a_tree_walk_follows_symlinked_folders_once(tmp_path):
    """A month folder linked in from another disk was passed over without a word (os.walk does not
    follow links); a link back up the tree must not loop."""
    a = _s2(tmp_path / "arc" / "2023" / "S2A_a.tif")
    b = _s2(tmp_path / "disk2" / "2024" / "S2A_b.tif")
    (tmp_path / "arc" / "2024").symlink_to(b.parent, target_is_directory=True)
    (tmp_path / "arc" / "2023" / "up").symlink_to(tmp_path / "arc", target_is_directory=True)
    pairs = expand_inputs([str(tmp_path / "arc")])
    assert [p for p, _ in pairs] == [str(a), str(tmp_path / "arc" / "2024" / "S2A_b.tif")]
    assert output_for(*pairs[1], tmp_path / "out") == tmp_path / "out" / "2024" / "S2A_b_cloudmask.tif"


def test_without_o_the_mask_of_a_symlinked_scene_goes_beside_the_link(tmp_path):
    """"Beside the input" is beside the path named, not in the folder the link points into (often
    another, read-only disk)."""
    (tmp_path / "arc").mkdir()
    link = tmp_path / "arc" / "S2A_x.tif"
    link.symlink_to(_s2(tmp_path / "store" / "S2A_x.tif"))
    assert output_for(str(link), None, None) == tmp_path / "arc" / "S2A_x_cloudmask.tif"


def test_inputs_from_globs_lists_band_folders_and_stac_items(tmp_path, predictor):
    a = _s2(tmp_path / "a" / "S2A_one.tif")
    b = _s2(tmp_path / "b" / "S2A_two.tif")
    folder = tmp_path / "c" / "T32TMT_20240101T103021"
    folder.mkdir(parents=True)
    for band in ("B02", "B03", "B04", "B8A", "B11", "B12"):
        dn = (random_reflectance(1, 40, 40) * 10000 + 1000).astype("uint16")
        write_raster(folder / f"T32TMT_20240101T103021_{band}_20m.tif", dn, transform=grid_transform(20), nodata=0)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{a}\n\n{b}\n")
    pairs = expand_inputs([f"@{listing}"])
    assert [p for p, _ in pairs] == [str(a), str(b)]
    out = tmp_path / "out"
    assert output_for(str(a), pairs[0][1], out) == out / "a" / "S2A_one_cloudmask.tif"
    globbed = expand_inputs([str(tmp_path / "**" / "*.tif")])  # reaches the band files: their folder is one scene
    assert sorted(Path(p).name for p, _ in globbed) == ["S2A_one.tif", "S2A_two.tif", folder.name]
    assert output_for(str(folder), globbed[-1][1], out) == out / "c" / f"{folder.name}_cloudmask.tif"
    # a glob into a SAFE reaches its R10m/R20m/R60m band folders: the SAFE is the one scene
    from cloudmask.testing import write_safe

    safe = write_safe(tmp_path / "safes", "S2A_MSIL2A_20240612T103031_N0510_R108_T32TMT_20240612T140342.SAFE")
    assert [p for p, _ in expand_inputs([str(tmp_path / "safes" / "**" / "*.tif")])] == [str(safe)]
    # one scene named several ways is masked once
    assert expand_inputs([str(a), str(a), str(tmp_path / "b" / ".." / "a" / "S2A_one.tif")]) == [(str(a), a.parent)]
    walked = expand_inputs([str(tmp_path / "c")])
    assert walked == [(str(folder), walked[0][1])]
    # a STAC item whose assets are local files; sensor from the item's platform
    item = stac_item("S2A_item/../evil", {b: f"T32TMT_20240101T103021_{b}_20m.tif" for b in ("B02", "B03", "B04", "B8A", "B11", "B12")})
    path = write_item(folder / "item.json", item)
    r = mask_scene(path, out / "item_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    doc = json.loads(Path(r.item).read_text())
    assert r.sensor == "sentinel2" and "/" not in doc["id"] and doc["links"][0]["rel"] == "derived_from"
    # absolute: the path as typed was relative to the shell's folder, not to the mask's item
    assert doc["links"][0]["href"] == Path(path).resolve().as_uri()
    r = mask_scene(folder, out / "folder_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))  # the fetched-folder form
    assert json.loads(Path(r.item).read_text())["links"][0]["href"] == Path(path).resolve().as_uri()


def test_distributed_scheduler_gives_the_same_mask(tmp_path, predictor):
    distributed = pytest.importorskip("distributed")
    src = _s2(tmp_path / "S2A_g.tif", h=150, w=170)
    local = mask_scene(src, tmp_path / "local_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        results = mask_many([str(src)], tmp_path / "dist", MaskOptions(tiles=SMALL, scheduler=cluster.scheduler_address), predictor)
    assert results[0].status == "masked", results[0].message
    with rasterio.open(local.output) as a, rasterio.open(results[0].output) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_distributed_errors_are_one_line(tmp_path, predictor, monkeypatch):
    """A worker's read error that reaches the client as a plain Exception (distributed could not
    send it as itself) is a read failure of that scene; an address that is not one is a usage error."""
    distributed = pytest.importorskip("distributed")
    from cloudmask import tiles as tiles_mod

    with pytest.raises(UsageError, match="expected an address such as tcp://"):
        mask_many([str(tmp_path / "x.tif")], tmp_path / "o", MaskOptions(tiles=SMALL, scheduler="nonsense://x"), predictor)
    src = _s2(tmp_path / "S2A_w.tif", h=96, w=96)

    def worker_fails(*a, **k):
        raise Exception("RasterioIOError('Read failed. See previous exception for details.')")  # noqa: TRY002

    monkeypatch.setattr(tiles_mod, "_predict_block", worker_fails)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        results = mask_many([str(src)], tmp_path / "dist", MaskOptions(tiles=SMALL, scheduler=cluster.scheduler_address), predictor)
    assert results[0].status == "failed" and "reading failed mid-scene (RasterioIOError('Read failed." in results[0].message


def test_missing_scene_is_a_scene_error(tmp_path, predictor):
    with pytest.raises(SceneError, match="no such file"):
        mask_scene(tmp_path / "nope.tif", tmp_path / "nope_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    assert list(tmp_path.iterdir()) == []


def test_a_scene_that_cannot_be_read_leaves_no_output_folder(tmp_path, predictor):
    """A missing input in a subfolder of the tree: its mirror folder under -o is not made for it."""
    good = _s2(tmp_path / "arc" / "S2A_g.tif")
    results = mask_many([str(good), str(tmp_path / "arc" / "99" / "S2A_gone.tif")], tmp_path / "out",
                        MaskOptions(tiles=SMALL), predictor)
    assert [r.status for r in results] == ["masked", "failed"] and "no such file" in results[1].message
    assert _files(tmp_path / "out") == ["S2A_g_cloudmask.json", "S2A_g_cloudmask.tif"]
    assert not (tmp_path / "out" / "99").exists()
    with pytest.raises(SceneError):
        mask_scene(tmp_path / "gone.tif", tmp_path / "o2" / "2024" / "gone_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    assert not (tmp_path / "o2").exists()


def test_model_is_not_loaded_when_everything_is_done(tmp_path, predictor, monkeypatch):
    src = _s2(tmp_path / "S2A_h.tif")
    mask_many([str(src)], tmp_path / "o", MaskOptions(tiles=SMALL), predictor)
    monkeypatch.setattr(mask_mod, "load_predictor", lambda *a: pytest.fail("model loaded for a finished archive"))
    assert mask_many([str(src)], tmp_path / "o", MaskOptions(tiles=SMALL))[0].status == "skipped"


def test_stac_item_url_is_read_in_place_with_range_requests(tmp_path, predictor):
    """A real Range-capable server in a subprocess (GDAL holds the GIL while it waits on HTTP)."""
    import socket
    import time

    www = tmp_path / "www"
    www.mkdir()
    bands = ("B02", "B03", "B04", "B8A", "B11", "B12")
    for b in bands:
        dn = (random_reflectance(1, 96, 96) * 10000 + 1000).astype("uint16")
        write_raster(www / f"{b}.tif", dn, transform=grid_transform(20), nodata=0)
    write_item(www / "item.json", stac_item("S2B_T32TMT_x", {b: f"{b}.tif" for b in bands}, platform="sentinel-2b"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "RangeHTTPServer", str(port), "--bind", "127.0.0.1"],
            cwd=www, stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/item.json"
            results = mask_many([url], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
        finally:
            server.terminate()
            server.wait(timeout=10)
    r = results[0]
    assert r.status == "masked", r.message
    assert Path(r.output) == tmp_path / "out" / "item_cloudmask.tif" and r.sensor == "sentinel2"
    served = log.read_text()
    assert '"GET /B04.tif HTTP/1.1" 206' in served  # partial content: read with Range requests
    assert _files(tmp_path / "out") == ["item_cloudmask.json", "item_cloudmask.tif"]  # nothing downloaded


@pytest.mark.parametrize("where", ["local", "cluster"])
@pytest.mark.parametrize("cut", [["header", "range-drop"], ["range-drop"]], ids=["data", "header"])
def test_a_connection_dropped_mid_read_costs_a_request_not_the_scene(file_server, tmp_path, predictor, where, cut):
    """One range request cut half-way through its body, of the band's blocks or of its header (which
    GDAL opens as if whole): the band is asked for again (GDAL itself does not, and keeps the cut
    response in its cache), and the mask is the undisturbed one."""
    from fetch_servers import write_s2_item

    from cloudmask.scene import forget_remote_data

    item = write_item(tmp_path / "item.json", write_s2_item(file_server, "S2A_cut", bands=["B04", "B8A", "B11"], size=256))
    want = mask_scene(item, tmp_path / "want_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    forget_remote_data()  # read again from the server, not from GDAL's cache
    url = file_server.url + "/S2A_cut/item.json"
    (file_server.root / "S2A_cut" / "item.json").write_text(item.read_text())
    file_server.faults["/S2A_cut/red.tif"] = cut
    if where == "local":
        results = mask_many([url], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
    else:
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                      dashboard_address=None) as cluster:
            results = mask_many([url], tmp_path / "out", MaskOptions(tiles=SMALL, scheduler=cluster.scheduler_address),
                                predictor)
    assert results[0].status == "masked", results[0].message
    assert file_server.faults_left("/S2A_cut/red.tif") == []  # the cut did happen
    with rasterio.open(want.output) as a, rasterio.open(results[0].output) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_a_geotiff_url_is_masked_in_place_as_its_file_is(file_server, tmp_path, predictor):
    src = _s2(file_server.root / "S2A_MSIL2A_url.tif", h=150, w=170)
    local = mask_scene(src, tmp_path / "local_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    (r,) = mask_many([f"{file_server.url}/S2A_MSIL2A_url.tif?x=1"], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
    assert r.status == "masked", r.message
    assert Path(r.output) == tmp_path / "out" / "S2A_MSIL2A_url_cloudmask.tif" and r.sensor == "sentinel2"
    with rasterio.open(local.output) as a, rasterio.open(r.output) as b:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert json.loads(OutputPaths(Path(r.output)).item.read_text())["links"][0]["href"].endswith("/S2A_MSIL2A_url.tif?x=1")


def test_served_fetch_folders_are_masked_under_their_ids(file_server, tmp_path, predictor):
    """`cloudmask fetch` writes <id>/item.json; served over HTTP and masked by URL (outputs of URLs
    are not mirrored), each is named after its folder, not "item"; a rerun of one skips only it."""
    from fetch_servers import write_s2_item

    urls = []
    for sid in ("S2A_one", "S2B_two"):
        item = write_s2_item(file_server, sid, bands=["B04", "B8A", "B11"], size=48)
        write_item(file_server.root / sid / "item.json", item)
        urls.append(f"{file_server.url}/{sid}/item.json")
    results = mask_many(urls, tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
    assert [r.status for r in results] == ["masked", "masked"], [r.message for r in results]
    assert _files(tmp_path / "out") == ["S2A_one_cloudmask.json", "S2A_one_cloudmask.tif",
                                        "S2B_two_cloudmask.json", "S2B_two_cloudmask.tif"]
    assert [r.status for r in mask_many(urls[:1], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)] == ["skipped"]


def _shadow_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Clouds (bright band 1) each cast a dark patch 14 px down, 22 px left; two dark decoys lie
    far from any cloud (for :class:`test_shadows._PointPredictor`, unsure of every dark patch)."""
    from test_shadows import SHIFT, _disk_mask

    h, w = 160, 200
    centres = [(40, 70), (60, 150), (100, 110), (120, 60), (30, 180)]
    cloud = _disk_mask((h, w), centres, 8)
    shadow = _disk_mask((h, w), [(y + SHIFT[0], x + SHIFT[1]) for y, x in centres], 8) & ~cloud
    decoy = _disk_mask((h, w), [(150, 190), (150, 10)], 6) & ~cloud & ~shadow
    refl = np.full((13, h, w), 0.3, "float32")
    refl[0][cloud] = 0.8
    refl[0][shadow | decoy] = 0.05
    src = write_raster(tmp_path / "S2A_MSIL2A_shadows.tif", np.round(refl * 10000 + 1000).astype("uint16"), nodata=0)
    return src, cloud, shadow, decoy


def test_shadow_matching_finds_shadows_cast_by_the_scenes_clouds(tmp_path):
    """A per-pixel model is unsure of all dark patches; matching confirms the ones the clouds cast
    only, and no temporary is left beside the mask."""
    from test_shadows import _PointPredictor

    src, cloud, shadow, decoy = _shadow_scene(tmp_path)
    out = {}
    for matching in (True, False):
        dst = tmp_path / f"m{matching}" / "s_cloudmask.tif"
        mask_scene(src, dst, _PointPredictor(), MaskOptions(tiles=SMALL, shadow_matching=matching))
        with rasterio.open(dst) as m:
            out[matching] = m.read(1)
        item = json.loads(OutputPaths(dst).item.read_text())
        assert item["properties"]["cloudmask:options"]["shadow_matching"] is matching
        if matching:  # the learnt cloud → shadow shift: 14 px down, 22 px left, to a 4 px cell
            learnt = item["properties"]["cloudmask:shadow_matching"]
            assert learnt["applied"] and abs(learnt["shift_px"][0] - 14) <= 4 and abs(learnt["shift_px"][1] + 22) <= 4
        else:
            assert "cloudmask:shadow_matching" not in item["properties"]
        assert _files(dst.parent) == sorted(["s_cloudmask.tif", "s_cloudmask.json"])
    assert not (out[False] == 3).any()
    assert (out[True][shadow] == 3).mean() > 0.9 and not (out[True][decoy] == 3).any()
    assert (out[True][cloud] == 1).all()
    # boost 0: a clear pixel would need P(shadow) > P(clear), which its class already rules out
    dst = tmp_path / "b0" / "s_cloudmask.tif"
    mask_scene(src, dst, _PointPredictor(), MaskOptions(tiles=SMALL, shadow_boost=0.0))
    with rasterio.open(dst) as m:
        np.testing.assert_array_equal(m.read(1), out[False])
    assert json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:options"]["shadow_boost"] == 0.0


def test_the_suns_position_narrows_shadow_matching_and_is_recorded(tmp_path):
    """A sun in the north-east casts the scene's shadows (down and left); one in the south-west
    would cast them up and right, where nothing dark lies, so they are not confirmed."""
    from test_shadows import SHIFT, _PointPredictor, _azimuth_of

    src, cloud, shadow, decoy = _shadow_scene(tmp_path)
    sun = _azimuth_of(*SHIFT)
    for azimuth, hit in ((sun, True), ((sun + 180.0) % 360.0, False)):
        dst = tmp_path / f"az{azimuth:.0f}" / "s_cloudmask.tif"
        mask_scene(src, dst, _PointPredictor(), MaskOptions(tiles=SMALL, sun_azimuth=azimuth, sun_elevation=45.0))
        with rasterio.open(dst) as m:
            got = m.read(1)
        assert bool((got[shadow] == 3).mean() > 0.9) is hit
        assert not (got[decoy] == 3).any()
        record = json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:shadow_matching"]
        assert record["sun_azimuth"] == pytest.approx(azimuth) and record["sun_elevation"] == 45.0


def test_the_sun_comes_from_the_options_else_asked_from_the_scenes_metadata():
    from types import SimpleNamespace

    scene = SimpleNamespace(sun=(151.2, 38.5))
    assert MaskOptions().sun_for(scene) == (None, None)  # learnt alone unless asked
    assert MaskOptions(sun_from_metadata=True).sun_for(scene) == (151.2, 38.5)
    assert MaskOptions(sun_azimuth=10.0, sun_from_metadata=True).sun_for(scene) == (10.0, 38.5)
    assert MaskOptions(sun_azimuth=10.0).sun_for(scene) == (10.0, None)
    assert MaskOptions(sun_from_metadata=True).sun_for(SimpleNamespace(sun=None)) == (None, None)


def test_sun_from_metadata_reads_each_scenes_stac_item(tmp_path):
    """A STAC item (float bands: physical values) whose sun lies on the far side: asked to read it,
    matching confirms none of the shadows the learnt shift would."""
    from test_shadows import SHIFT, _PointPredictor, _azimuth_of

    _, cloud, shadow, decoy = _shadow_scene(tmp_path)
    b02 = np.full(cloud.shape, 0.3, "float32")
    b02[cloud], b02[shadow | decoy] = 0.8, 0.05
    for name in ("B02", "B03", "B04", "B8A"):
        write_raster(tmp_path / f"{name}.tif", (b02 if name == "B02" else np.full_like(b02, 0.3))[None])
    away = (_azimuth_of(*SHIFT) + 180.0) % 360.0
    item = write_item(tmp_path / "item.json", stac_item(
        "S2A_sun", {b: f"{b}.tif" for b in ("B02", "B03", "B04", "B8A")},
        extra_properties={"view:sun_azimuth": away, "view:sun_elevation": 45.0}))
    for from_item, hit in ((False, True), (True, False)):
        dst = tmp_path / f"i{from_item}" / "s_cloudmask.tif"
        mask_scene(item, dst, _PointPredictor(), MaskOptions(tiles=SMALL, sun_from_metadata=from_item))
        with rasterio.open(dst) as m:
            assert bool((m.read(1)[shadow] == 3).mean() > 0.9) is hit
        record = json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:shadow_matching"]
        assert record["sun_azimuth"] == (pytest.approx(away) if from_item else None)


@pytest.mark.parametrize("opts, flag", [({"sun_azimuth": 360.5}, "sun-azimuth"), ({"sun_azimuth": -1.0}, "sun-azimuth"),
                                        ({"sun_elevation": 0.0}, "sun-elevation"), ({"sun_elevation": 91.0}, "sun-elevation")])
def test_a_sun_off_the_sky_is_a_usage_error(opts, flag):
    with pytest.raises(UsageError, match=flag):
        MaskOptions(**opts).check()


def _rim_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_shadow_scene` where the per-pixel model is sure each shadow's 2 px rim is clear,
    although the rims, like the whole shadows and the decoys, are dark in NIR (0.1 against 0.3)."""
    from scipy import ndimage

    from cloudmask.registry import load_registry
    from cloudmask.shadows import nir_band

    src, cloud, shadow, decoy = _shadow_scene(tmp_path)
    with rasterio.open(src) as ds:
        dn = ds.read()
    rim = shadow & ~ndimage.binary_erosion(shadow, iterations=2)
    dn[0][rim] = 4000  # band 1 at 0.3: the model calls it clear
    s2 = load_registry().get_sensor("sentinel2")
    dn[nir_band(s2.descriptors(list(s2.bands)))][shadow | decoy] = 2000
    return write_raster(tmp_path / "S2A_MSIL2A_rims.tif", dn, nodata=0), cloud, shadow, decoy, rim


def test_the_darkness_test_finds_shadows_the_network_calls_clear(tmp_path):
    """Shadow rims the per-pixel model calls clear but whose NIR is dark are found with
    --shadow-darkness, and only then; the option is recorded in the mask's STAC item."""
    from test_shadows import _PointPredictor

    src, cloud, shadow, decoy, rim = _rim_scene(tmp_path)
    out = {}
    for darkness in (None, 0.7):
        dst = tmp_path / f"d{darkness}" / "s_cloudmask.tif"
        mask_scene(src, dst, _PointPredictor(), MaskOptions(tiles=SMALL, shadow_darkness=darkness))
        with rasterio.open(dst) as m:
            out[darkness] = m.read(1)
        assert json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:options"]["shadow_darkness"] == darkness
    assert rim.sum() > 200 and (out[None][rim] == 3).mean() < 0.1
    assert (out[0.7][rim] == 3).mean() > 0.9 and not (out[0.7][decoy] == 3).any()
    assert (out[0.7][cloud] == 1).all() and set(np.unique(out[0.7])) <= {0, 1, 3}


def test_the_darkness_test_on_a_cluster_gives_the_local_mask(tmp_path):
    """On a cluster the NIR rows are read again rather than carried by the blocks: same mask."""
    distributed = pytest.importorskip("distributed")
    from test_shadows import _PointPredictor

    src, cloud, shadow, decoy, rim = _rim_scene(tmp_path)
    opts = MaskOptions(tiles=SMALL, shadow_darkness=0.7)
    local = mask_scene(src, tmp_path / "local_cloudmask.tif", _PointPredictor(), opts)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        results = mask_many([str(src)], tmp_path / "dist", replace(opts, scheduler=cluster.scheduler_address), _PointPredictor())
    assert results[0].status == "masked", results[0].message
    with rasterio.open(local.output) as a, rasterio.open(results[0].output) as b:
        got = b.read(1)
        np.testing.assert_array_equal(a.read(1), got)
    assert (got[rim] == 3).mean() > 0.9


def test_the_darkness_test_without_a_nir_band_warns_and_records_that_it_was_off(tmp_path, predictor):
    """A blue/green/red file has no band near 0.84 µm: the scene is masked without the test, a
    warning says so, and the STAC item does not claim it ran."""
    src = tmp_path / "rgb.tif"
    write_raster(src, random_reflectance(3, 48, 48, seed=3))
    dst = tmp_path / "out" / "rgb_cloudmask.tif"
    opts = MaskOptions(tiles=SMALL, sensor="sentinel2", bands=("B2", "B3", "B4"), shadow_darkness=0.7)
    with pytest.warns(UserWarning, match=r"rgb.tif: no NIR band near 0.84 µm; --shadow-darkness is off"):
        r = mask_scene(src, dst, predictor, opts)
    assert r.status == "masked"
    options = json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:options"]
    assert options["shadow_matching"] is True and options["shadow_darkness"] is None


def test_sun_from_metadata_without_any_warns_and_matches_as_usual(tmp_path, predictor):
    src = _s2(tmp_path / "S2A_MSIL2A_nosun.tif")
    dst = tmp_path / "out" / "nosun_cloudmask.tif"
    with pytest.warns(UserWarning, match=r"S2A_MSIL2A_nosun.tif: no usable sun azimuth in its metadata"):
        r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, sun_from_metadata=True))
    assert r.status == "masked"
    matching = json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:shadow_matching"]
    assert matching["sun_azimuth"] is None


def test_sun_from_metadata_with_an_elevation_off_the_sky_warns_and_keeps_the_direction(tmp_path, predictor):
    for name in ("B02", "B03", "B04", "B8A"):
        write_raster(tmp_path / f"{name}.tif", random_reflectance(1, 48, 48, seed=len(name)))
    item = write_item(tmp_path / "item.json", stac_item(
        "S2A_badsun", {b: f"{b}.tif" for b in ("B02", "B03", "B04", "B8A")},
        extra_properties={"view:sun_azimuth": 150.0, "view:sun_elevation": 95.0}))
    dst = tmp_path / "out" / "badsun_cloudmask.tif"
    with pytest.warns(UserWarning, match=r"item.json: no usable sun elevation in its metadata"):
        mask_scene(item, dst, predictor, MaskOptions(tiles=SMALL, sun_from_metadata=True))
    matching = json.loads(OutputPaths(dst).item.read_text())["properties"]["cloudmask:shadow_matching"]
    assert matching["sun_azimuth"] == 150.0 and matching["sun_elevation"] is None


def test_shadow_options_that_cannot_apply_are_named_once_per_run():
    with pytest.warns(UserWarning, match=r"^--shadow-darkness has no effect with --binary \(no shadow class\)$"):
        MaskOptions(binary=True, shadow_darkness=0.7).check()
    with pytest.warns(UserWarning, match=r"^--shadow-boost, --sun-azimuth have no effect with --no-shadow-matching$"):
        MaskOptions(shadow_matching=False, shadow_boost=1.0, sun_azimuth=10.0).check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskOptions().check()
        MaskOptions(binary=True).check()
        MaskOptions(shadow_darkness=0.7, sun_from_metadata=True).check()


def test_a_darkness_ratio_outside_0_1_is_a_usage_error():
    with pytest.raises(UsageError, match="shadow-darkness"):
        MaskOptions(shadow_darkness=1.5).check()
    MaskOptions(shadow_darkness=0.0).check()  # 0: off


def test_negative_shadow_boost_is_a_usage_error():
    with pytest.raises(UsageError, match="shadow-boost"):
        MaskOptions(shadow_boost=-1.0).check()


@pytest.mark.parametrize("where", ["local", "cluster"])
def test_a_block_that_cannot_be_decoded_mid_scene_fails_with_gdals_reason(tmp_path, predictor, where):
    """The truncation check touches the last block only; a damaged block elsewhere fails while
    masking, is reported as a read (with GDAL's reason, not "cannot write output") and leaves
    nothing behind. On a cluster too, where GDAL's reason is an exception that cannot travel."""
    src = tmp_path / "S2A_MSIL2A_damaged.tif"
    dn = np.round(random_reflectance(13, 128, 128, seed=4) * 10000 + 1000).astype("uint16")
    with rasterio.open(src, "w", driver="GTiff", width=128, height=128, count=13, dtype="uint16", nodata=0,
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate", crs="EPSG:32632",
                       transform=grid_transform(20.0)) as dst:
        dst.write(dn)
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_1", "TIFF", bidx=1))
    data = bytearray(src.read_bytes())
    data[offset : offset + size] = b"\xff" * size
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    if where == "local":
        with pytest.raises(SceneError) as info:
            mask_scene(src, out / "m.tif", predictor, MaskOptions(tiles=SMALL))
        message = str(info.value)
    else:
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                      dashboard_address=None) as cluster:
            (r,) = mask_many([str(src)], out, MaskOptions(tiles=SMALL, scheduler=cluster.scheduler_address), predictor)
        message = r.message
    assert message.startswith(f"{src}: reading failed mid-scene (") and "\n" not in message
    assert "cannot write output" not in message and "previous exception" not in message
    assert re.search(r"\(S2A_MSIL2A_damaged\.tif, band \d+: IReadBlock failed at X offset 0, Y offset 1", message)
    assert not out.exists() or _files(out) == []


def test_an_item_with_one_multiband_asset_masks_as_its_file_does(tmp_path, predictor):
    tif = _s2(tmp_path / "scene" / "S2A_analytic.tif", h=64, w=64)
    item = stac_item("one-asset", {"analytic": tif.name}, collection=None)
    item["assets"]["analytic"]["eo:bands"] = [{"name": b} for b in
                                              ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                               "B09", "B10", "B11", "B12")]
    item_path = write_item(tmp_path / "scene" / "item.json", item)
    mask_scene(tif, tmp_path / "a_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, probabilities=True))
    mask_scene(item_path, tmp_path / "b_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, probabilities=True))
    for a, b in (("a_cloudmask.tif", "b_cloudmask.tif"), ("a_cloudprob.tif", "b_cloudprob.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert (x.transform, x.shape) == (y.transform, y.shape)
            np.testing.assert_array_equal(x.read(), y.read())


def _simulated(folder: Path, n: int = 2, sensor: str = "sentinel2") -> list[dict[str, str]]:
    """A small ``cloudmask simulate`` output folder: image, labels and item per scene."""
    from cloudmask.registry import get_sensor
    from cloudmask.simulate import simulate_scene
    from cloudmask.simulate.io import write_scene

    bands = list(get_sensor(sensor).bands)
    return [write_scene(simulate_scene(bands, 48, rng=i), folder, f"sim_{sensor}_9_{i:04d}", sensor) for i in range(n)]


def test_a_simulate_folder_is_one_scene_per_item_without_its_labels(tmp_path, predictor):
    written = _simulated(tmp_path / "sims")
    found = [Path(s).name for s, _ in expand_inputs([str(tmp_path / "sims")])]
    assert found == [Path(w["json"]).name for w in written]  # not the images again, not the labels
    # without the items the images are the scenes; the labels are still not
    for w in written:
        Path(w["json"]).unlink()
    found = [Path(s).name for s, _ in expand_inputs([str(tmp_path / "sims")])]
    assert found == [Path(w["image"]).name for w in written]
    # a user's own raster that merely ends in _labels.tif is still a scene
    _s2(tmp_path / "sims" / "S2A_labels.tif")
    assert "S2A_labels.tif" in [Path(s).name for s, _ in expand_inputs([str(tmp_path / "sims")])]


def test_label_rasters_beside_their_scenes_are_passed_over_in_walks_and_globs(tmp_path):
    """`cloudmask sample -o sample && cloudmask mask sample` must not take the sample's
    ``.label.tif`` (one band of truth) for a scene; a label named on its own is still masked."""
    folder = tmp_path / "data"
    _s2(folder / "S2A_MSIL2A_a.tif")
    _s2(folder / "S2A_MSIL2A_a.label.tif")
    _s2(folder / "p01_image.tif")
    _s2(folder / "p01-gt.tif")
    _s2(folder / "lonely_labels.tif")  # no scene beside it: a scene
    walked = sorted(Path(s).name for s, _ in expand_inputs([str(folder)]))
    assert walked == ["S2A_MSIL2A_a.tif", "lonely_labels.tif", "p01_image.tif"]
    globbed = sorted(Path(s).name for s, _ in expand_inputs([str(folder / "*.tif")]))
    assert globbed == walked
    named = [Path(s).name for s, _ in expand_inputs([str(folder / "S2A_MSIL2A_a.label.tif")])]
    assert named == ["S2A_MSIL2A_a.label.tif"]


def test_an_item_and_its_image_named_together_are_one_scene(tmp_path):
    """`mask sims/*` or both files on the command line: the item only, not a second mask of its image."""
    written = _simulated(tmp_path / "sims")
    found = [Path(s).name for s, _ in expand_inputs([str(tmp_path / "sims" / "*")])]
    assert sorted(found) == sorted(Path(w["json"]).name for w in written)
    w = written[0]
    assert [Path(s).name for s, _ in expand_inputs([w["image"], w["json"]])] == [Path(w["json"]).name]


def test_a_simulated_item_masks_as_its_image(tmp_path, predictor):
    (w,) = _simulated(tmp_path / "sims", n=1)
    a = mask_scene(w["json"], tmp_path / "a_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    b = mask_scene(w["image"], tmp_path / "b_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    assert a.sensor == b.sensor == "sentinel2"
    with rasterio.open(tmp_path / "a_cloudmask.tif") as x, rasterio.open(tmp_path / "b_cloudmask.tif") as y:
        assert (x.transform, x.shape) == (y.transform, y.shape)
        np.testing.assert_array_equal(x.read(), y.read())


DOVE4 = """\
id: dove4
name: Dove 4-band
source: unit test
default_resolution: 20
products:
  sr: {scale: 0.0001, offset: 0, nodata: 0}
bands:
  - {name: B1, common_name: blue, type: reflectance, resolution: 20, wavelength: {min: 0.45, center: 0.49, max: 0.53}}
  - {name: B2, common_name: green, type: reflectance, resolution: 20, wavelength: {min: 0.53, center: 0.56, max: 0.59}}
  - {name: B3, common_name: red, type: reflectance, resolution: 20, wavelength: {min: 0.63, center: 0.66, max: 0.69}}
  - {name: B4, common_name: nir, type: reflectance, resolution: 20, wavelength: {min: 0.78, center: 0.83, max: 0.88}}
"""


def test_a_user_sensor_from_python_as_a_sensor_object_or_through_the_environment(tmp_path, predictor, monkeypatch):
    from cloudmask import registry
    from cloudmask.errors import UnknownSensorError

    monkeypatch.setenv("CLOUDMASK_SENSORS", "")
    registry._load_cached.cache_clear()
    folder = tmp_path / "my-sensors"
    folder.mkdir()
    (folder / "dove4.yaml").write_text(DOVE4, encoding="utf-8")
    dn = np.round(random_reflectance(4, 48, 56, seed=3) * 10000).astype("uint16") + 1
    src = write_raster(tmp_path / "scene.tif", dn, nodata=0)

    # a name alone is looked up in the bundled registry and $CLOUDMASK_SENSORS only
    with pytest.raises(UnknownSensorError, match="dove4"):
        mask_scene(src, tmp_path / "x_cloudmask.tif", predictor, MaskOptions(sensor="dove4", tiles=SMALL))
    # a Sensor object from the user folder works in mask_scene and mask_many (whose check() takes it too)
    sensor = registry.get_sensor("dove4", [folder])
    opts = MaskOptions(sensor=sensor, tiles=SMALL)
    opts.check()
    r = mask_scene(src, tmp_path / "a" / "scene_cloudmask.tif", predictor, opts)
    assert r.status == "masked" and r.sensor == "dove4", r
    [r2] = mask_many([str(src)], tmp_path / "b", opts, predictor=predictor)
    assert r2.status == "masked" and r2.sensor == "dove4", r2
    with rasterio.open(r.output) as a, rasterio.open(r2.output) as b:
        assert (a.read(1) == b.read(1)).all()
    # or by name, with the folder in $CLOUDMASK_SENSORS
    monkeypatch.setenv("CLOUDMASK_SENSORS", str(folder))
    r3 = mask_scene(src, tmp_path / "c" / "scene_cloudmask.tif", predictor, MaskOptions(sensor="dove4", tiles=SMALL))
    assert r3.status == "masked" and r3.sensor == "dove4"
    registry._load_cached.cache_clear()
    with pytest.raises(UsageError, match="sensor must be a name"):
        MaskOptions(sensor=4).check()  # type: ignore[arg-type]


def test_overwrite_without_probabilities_removes_an_earlier_runs_probability_cog(tmp_path, predictor):
    """A `_cloudprob.tif` from a run with --probabilities stayed beside a mask made by --overwrite
    without it: two files of one scene from two different runs."""
    src = _s2(tmp_path / "S2A_p.tif")
    dst = tmp_path / "out" / "p_cloudmask.tif"
    mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, probabilities=True))
    assert OutputPaths(dst).proba.is_file()
    r = mask_scene(src, dst, predictor, MaskOptions(tiles=SMALL, overwrite=True, binary=True))
    assert r.status == "masked" and r.probabilities is None
    assert _files(dst.parent) == ["p_cloudmask.json", "p_cloudmask.tif"]


def test_mask_many_takes_one_path_as_one_input_not_its_characters(tmp_path, predictor, monkeypatch):
    """mask_many("scene.tif", out) walked "/" and "." (a string is a sequence of characters)."""
    src = _s2(tmp_path / "in" / "S2A_MSIL2A_s.tif")
    monkeypatch.chdir(tmp_path / "in")
    for given in ("S2A_MSIL2A_s.tif", Path("S2A_MSIL2A_s.tif"), [Path("S2A_MSIL2A_s.tif")]):
        out = tmp_path / f"out-{type(given).__name__}"
        results = mask_many(given, out, MaskOptions(tiles=SMALL), predictor)
        assert [(Path(r.source).resolve(), r.status) for r in results] == [(src.resolve(), "masked")]
        assert _files(out) == ["S2A_MSIL2A_s_cloudmask.json", "S2A_MSIL2A_s_cloudmask.tif"]


@pytest.mark.parametrize("bad", [dict(threshold=2.0), dict(dilate=-3), dict(resolution=-5.0), dict(sun_azimuth=500.0),
                                 dict(device="tpu")])
def test_mask_scene_refuses_what_mask_many_refuses_before_any_file(tmp_path, predictor, bad):
    """mask_scene never checked its options: threshold 2 gave a mask without cloud, resolution -5 a
    1×1 mask on a flipped grid."""
    src = _s2(tmp_path / "S2A_b.tif")
    with pytest.raises(UsageError):
        mask_scene(src, tmp_path / "out" / "b_cloudmask.tif", predictor, MaskOptions(tiles=SMALL, **bad))
    assert not (tmp_path / "out").exists()


def test_mask_scene_loads_options_weights_and_takes_options_in_the_third_place(tmp_path, predictor):
    """Without a predictor, mask_scene used the bundled model whatever options.weights said; and
    mask_scene(src, dst, MaskOptions(...)) failed deep inside on the options as a predictor."""
    src = _s2(tmp_path / "S2A_w.tif")
    weights = predictor.save(tmp_path / "mine.safetensors", version="9.9.9")
    r = mask_scene(src, tmp_path / "out" / "w_cloudmask.tif", MaskOptions(tiles=SMALL, weights=str(weights)))
    assert r.status == "masked"
    item = json.loads(OutputPaths(tmp_path / "out" / "w_cloudmask.tif").item.read_text())
    assert item["properties"]["cloudmask:model_version"] == "9.9.9"
    from cloudmask.errors import ModelError

    with pytest.raises(ModelError, match="not found"):
        mask_scene(src, tmp_path / "out2" / "w_cloudmask.tif", options=MaskOptions(tiles=SMALL, weights=str(tmp_path / "no.safetensors")))


@pytest.mark.parametrize("talks", [False, True])
def test_a_scheduler_address_that_is_not_a_dask_scheduler_fails_in_seconds(tmp_path, predictor, monkeypatch, talks):
    """A port that accepts the connection but is no Dask scheduler (a web server, a silent service)
    made `--scheduler` wait forever in distributed's handshake."""
    pytest.importorskip("distributed")
    import threading

    monkeypatch.setattr(mask_mod, "SCHEDULER_TIMEOUT", 1.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if talks:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(UsageError, match=f"{address}") as err:
            mask_many([str(_s2(tmp_path / "S2A_n.tif"))], tmp_path / "o", MaskOptions(tiles=SMALL, scheduler=address),
                      predictor)
        assert "\n" not in str(err.value) and not (tmp_path / "o").exists()
    finally:
        server.close()
        for c in held:
            c.close()


def test_a_scheduler_without_workers_is_named_in_a_warning():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=None) as cluster:
        with pytest.warns(UserWarning, match="has no workers yet"):
            client = mask_mod.connect(cluster.scheduler_address)
        client.close()


def test_losing_the_scheduler_mid_run_stops_the_run_with_one_line(tmp_path, predictor, monkeypatch):
    """The scheduler killed mid-scene: the cancelled blocks came back as values ("internal error
    AttributeError: 'FutureCancelledError' object has no attribute 'shape'") and every later scene
    failed with another misleading reason."""
    distributed = pytest.importorskip("distributed")
    from cloudmask.errors import SchedulerLostError

    monkeypatch.setattr(mask_mod, "SCHEDULER_TIMEOUT", 2.0)  # the client gives up reconnecting after this
    first = _s2(tmp_path / "in" / "S2A_a.tif", h=200, w=200)
    _s2(tmp_path / "in" / "S2A_b.tif", h=96, w=96, seed=2)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                       dashboard_address=None)
    ends = []

    def on_event(kind, info):
        if kind == "blocks" and info["done"] == 1:
            cluster.close()  # the scheduler and its worker go away mid-scene
        if kind == "scene-end":
            ends.append(info["result"])

    with pytest.raises(SchedulerLostError, match=r"S2A_a.tif: lost the Dask scheduler at tcp://") as err:
        mask_many([str(tmp_path / "in")], tmp_path / "out",
                  MaskOptions(tiles=TileOptions(tile_size=64, threads=1), scheduler=cluster.scheduler_address),
                  predictor, on_event=on_event)
    assert "\n" not in str(err.value)
    assert [(Path(r.source).name, r.status) for r in ends] == [(first.name, "failed")]  # b.tif never started
    assert not (tmp_path / "out").exists()  # no temporaries, no lock, no empty folder


def test_a_cluster_worker_that_cannot_open_the_scene_is_told_apart(tmp_path, predictor):
    """A worker without the input (another machine, another mount) read as "reading failed
    mid-scene (…: No such file or directory)"; the scene was never read there at all."""
    distributed = pytest.importorskip("distributed")
    src = _s2(tmp_path / "S2A_gone.tif", h=96, w=96)

    def on_event(kind, info):
        if kind == "scene-start":  # opened here; the workers open it themselves, later
            src.unlink()

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        (r,) = mask_many([str(src)], tmp_path / "out", MaskOptions(tiles=SMALL, scheduler=cluster.scheduler_address),
                         predictor, on_event=on_event)
    assert r.status == "failed" and "a cluster worker cannot open it" in r.message, r.message
    assert "the workers must see every input at the same path" in r.message
    assert not (tmp_path / "out").exists()  # a failed scene leaves no empty folder behind


def test_workers_dying_on_a_block_are_named_as_such(tmp_path):
    distributed = pytest.importorskip("distributed")
    from cloudmask.errors import ClusterError
    from cloudmask.tiles import DistributedRunner

    class Running:
        status = "running"

    failure = DistributedRunner(Running())._failure(distributed.KilledWorker("task-1", None, 3))
    assert isinstance(failure, ClusterError) and "out of memory?" in str(failure)


def test_a_scene_failing_mid_run_leaves_no_empty_folders_in_the_mirror(tmp_path, predictor, monkeypatch):
    import rasterio.errors

    arc = tmp_path / "arc"
    _s2(arc / "2024" / "05" / "S2A_x.tif")
    (arc / "keep").mkdir()
    (tmp_path / "out" / "keep").mkdir(parents=True)  # folders that were there stay

    def read_fails(*a, **k):
        raise rasterio.errors.RasterioIOError("Read failed (a cut-short tile)")

    monkeypatch.setattr(mask_mod, "stream_mask", read_fails)
    (r,) = mask_many([str(arc)], tmp_path / "out", MaskOptions(tiles=SMALL), predictor)
    assert r.status == "failed" and "reading failed mid-scene" in r.message
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["keep"]


def test_a_local_item_json_is_named_after_its_folder(tmp_path):
    """`cloudmask mask scenes/<id>/item.json -o masks/`, one scene per command: every output was
    item_cloudmask.tif, so the second scene was skipped as done."""
    for name in ("S2A_one", "S2B_two"):
        folder = tmp_path / "scenes" / name
        folder.mkdir(parents=True)
        write_item(folder / "item.json", stac_item(name, {"B04": "B04.tif"}))
        assert output_for(str(folder / "item.json"), folder, tmp_path / "masks") == tmp_path / "masks" / f"{name}_cloudmask.tif"


def test_stac_footprint_across_the_antimeridian_and_wkt2_for_custom_crs(tmp_path, predictor):
    """A grid past 180° E gave bbox longitudes above 180 (not GeoJSON); proj:wkt2 held WKT1."""
    from affine import Affine
    from rasterio.crs import CRS

    dn = np.round(random_reflectance(13, 40, 40, seed=2) * 10000 + 1000).astype("uint16")
    src = write_raster(tmp_path / "S2A_MSIL2A_dateline.tif", dn, nodata=0, crs=CRS.from_epsg(4326),
                       transform=Affine(0.01, 0, 179.8, 0, -0.01, -16.0))
    r = mask_scene(src, tmp_path / "out" / "a_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    item = json.loads(Path(r.item).read_text())
    w, s, e, n = item["bbox"]
    assert (w, e) == (pytest.approx(179.8), pytest.approx(-179.8)) and s < n  # west > east: across 180°
    assert item["geometry"]["type"] == "MultiPolygon"
    assert all(-180 <= x <= 180 for poly in item["geometry"]["coordinates"] for x, _ in poly[0])
    laea = CRS.from_proj4("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m")
    src = write_raster(tmp_path / "S2A_MSIL2A_laea.tif", dn, nodata=0, crs=laea,
                       transform=Affine(20, 0, 4321000, 0, -20, 3210000))
    r = mask_scene(src, tmp_path / "out" / "b_cloudmask.tif", predictor, MaskOptions(tiles=SMALL))
    props = json.loads(Path(r.item).read_text())["properties"]
    assert props["proj:wkt2"].startswith("PROJCRS[")


def test_globs_follow_a_symlink_loop_once_and_existing_bracket_names_are_files(tmp_path):
    """'g/**/*.tif' through a link back to g wrote masks 40 folders deep (two such links: no end);
    an existing "S2A_[1].tif" was taken for a pattern matching nothing (exit 2, a whole list aborted)."""
    g = tmp_path / "g"
    a = _s2(g / "zz" / "S2A_one.tif")
    (g / "loop").symlink_to(".")
    (g / "loop2").symlink_to(".")
    pairs = expand_inputs([str(g / "**" / "*.tif")])
    assert pairs == [(str(a), g)]
    assert output_for(*pairs[0], tmp_path / "out") == tmp_path / "out" / "zz" / "S2A_one_cloudmask.tif"
    odd = _s2(tmp_path / "b" / "S2A_[1].tif")
    assert [p for p, _ in expand_inputs([str(odd)])] == [str(odd)]


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
    """After a reboot or in a container a dead run's pid may belong to another live process: its lock
    never expired and every run failed (now skipped) that scene for good."""
    import subprocess
    import time

    from cloudmask.files import _lock_file_stale

    other = subprocess.Popen(["sleep", "30"])
    try:
        lock = tmp_path / ".x_cloudmask.tif.lock"
        lock.write_text(f"{other.pid} {socket.gethostname()} cafe\n")
        assert not _lock_file_stale(lock)  # written after the process started: it may hold it
        skewed = time.time() - 60  # a minute "before" it started (a clock step, an NFS server's clock): still its
        os.utime(lock, (skewed, skewed))
        assert not _lock_file_stale(lock)
        old = time.time() - 3600
        os.utime(lock, (old, old))  # written an hour before that process existed: not its lock
        assert _lock_file_stale(lock)
    finally:
        other.kill()
        other.wait()
