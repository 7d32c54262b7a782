"""COG writing: valid layout, colour table, overviews, and atomicity when writes fail."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from cloudmask import cog
from cloudmask.errors import OutputError
from cloudmask import testing as cmt
from cloudmask.testing import TEST_CRS


def _classes(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4, size=(h, w), dtype="uint8")
    arr[:, :10] = 255
    return arr


def test_mask_cog_is_valid_with_colour_table_overviews_and_grid(tmp_path):
    arr = _classes(1100, 1300)
    dst = cog.write_cog(
        arr, tmp_path / "m.tif", crs=TEST_CRS, transform=cmt.test_transform(), nodata=255,
        descriptions=["cloud mask"], colormap=cog.MASK_COLORMAP,
    )
    ok, errors, _ = cog.cog_validate(str(dst), quiet=True)
    assert ok, errors
    with rasterio.open(dst) as ds:
        assert ds.crs == TEST_CRS and ds.transform == cmt.test_transform() and ds.shape == (1100, 1300)
        assert ds.nodata == 255 and ds.descriptions == ("cloud mask",)
        assert ds.colorinterp[0] == ColorInterp.palette and ds.colormap(1)[1] == (255, 255, 255, 255)
        assert ds.overviews(1)[0] == 2
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "MODE"
        assert ds.block_shapes[0] == (512, 512)
        np.testing.assert_array_equal(ds.read(1), arr)
    with rasterio.open(dst, overview_level=0) as ov:  # mode keeps class values (no colour averaging)
        assert set(np.unique(ov.read(1))) <= {0, 1, 2, 3, 255}
    assert sorted(os.listdir(tmp_path)) == ["m.tif"]  # no temporaries left


def test_sink_accepts_windows_and_counts_values(tmp_path):
    sink = cog.RasterSink(tmp_path / "x.tif", width=40, height=30, count=1, dtype="uint8", crs=None,
                          transform=None, nodata=255, count_values=True)
    try:
        sink[0:30, 0:20] = np.zeros((30, 20), dtype="uint8")
        sink[0:30, 20:40] = np.full((30, 20), 2, dtype="uint8")
        sink.close()
        assert sink.counts[0] == 600 and sink.counts[2] == 600
        with rasterio.open(sink.path) as ds:
            assert ds.read(1)[:, 25].tolist() == [2] * 30
    finally:
        sink.discard()
    assert not sink.path.exists()


@pytest.mark.parametrize("values", [(0, 1, 2, 3, 255), (0, 1, 7, 200, 255), (9,)])
def test_value_counts_equal_bincount(values):
    """The per-value fast path and its fallback (values a mask does not hold) both count right."""
    arr = np.random.default_rng(1).choice(np.array(values, dtype="uint8"), size=(37, 53))
    np.testing.assert_array_equal(cog.value_counts(arr), np.bincount(arr.ravel(), minlength=256))
    assert cog.value_counts(arr.astype("int64")).sum() == arr.size


def test_disk_full_during_translate_leaves_nothing(tmp_path, monkeypatch):
    def full(raw, part, resampling):  # GDAL got part-way: the COG and an overview temporary exist
        part.write_bytes(b"partial")
        part.with_name(part.name + ".ovr.tmp").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cog, "_copy_to_cog", full)
    (tmp_path / "m.tif").write_bytes(b"old")  # an existing output stays untouched
    with pytest.raises(OutputError, match="disk full"):
        cog.write_cog(_classes(64, 64), tmp_path / "m.tif", nodata=255)
    assert sorted(os.listdir(tmp_path)) == ["m.tif"] and (tmp_path / "m.tif").read_bytes() == b"old"


def test_failed_window_write_is_an_output_error(tmp_path, monkeypatch):
    sink = cog.RasterSink(tmp_path / "x.tif", width=16, height=16, count=1, dtype="uint8", crs=None,
                          transform=None, nodata=255)

    class Broken:
        closed = False

        def write(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.closed = True

    real, sink.ds = sink.ds, Broken()
    with pytest.raises(OutputError, match="disk full"):
        sink[0:16, 0:16] = np.zeros((16, 16), dtype="uint8")
    real.close()
    sink.discard()
    assert os.listdir(tmp_path) == []


def test_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a file where a folder should be: fails even for root
    with pytest.raises(OutputError, match="cannot write output|not writable"):
        cog.write_cog(_classes(16, 16), blocker / "m.tif", nodata=255)
    assert os.listdir(tmp_path) == ["afile"]


def test_invalid_files_are_not_taken_for_finished_outputs(tmp_path):
    bad = tmp_path / "half.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    assert not cog.is_valid_cog(bad)
    assert not cog.is_valid_cog(tmp_path / "missing.tif")
    good = cog.write_cog(_classes(32, 32), tmp_path / "ok.tif", nodata=255)
    assert cog.is_valid_cog(good)


def test_a_cog_cut_short_is_not_taken_for_a_finished_output(tmp_path):
    """cog_validate reads only the headers: a mask truncated after them (a copy or disk cut short)
    passed it, and reruns skipped the scene for good."""
    good = cog.write_cog(_classes(600, 700), tmp_path / "ok.tif", nodata=255)
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert cog.cog_validate(str(cut), quiet=True)[0]  # what the skip check relied on
    assert not cog.is_valid_cog(cut)
    assert cog.is_valid_cog(good)


def test_a_gdal_error_numbered_like_eperm_is_not_called_a_permission_problem(tmp_path):
    """GDAL's generic error number is 1, EPERM's: a "File too large" from GDAL is named as it is."""
    from rasterio._err import CPLE_AppDefinedError

    from cloudmask.cog import output_error

    gdal = CPLE_AppDefinedError(3, 1, "TIFFWriteEncodedTile: File too large")
    assert str(output_error(gdal, tmp_path / "m.tif")) == f"{tmp_path / 'm.tif'}: cannot write output (TIFFWriteEncodedTile: File too large)"
    system = PermissionError(1, "Operation not permitted")
    assert "not writable" in str(output_error(system, tmp_path / "m.tif"))
    assert "not writable" in str(output_error(OSError(30, "Read-only file system"), tmp_path / "m.tif"))


def test_bad_arguments_are_usage_errors_and_leave_no_temporary(tmp_path):
    """A nodata value the dtype cannot hold, an unknown CRS, a colour table on two bands, more
    descriptions than bands: raw rasterio/Python errors, and a hidden temporary left each time."""
    from cloudmask.errors import UsageError
    from cloudmask.testing import test_transform

    m = np.zeros((16, 16), np.uint8)
    cases = [
        (m, dict(nodata=-1)),
        (m, dict(crs="EPSG:99999", transform=test_transform(20.0))),
        (np.stack([m, m]), dict(colormap=cog.MASK_COLORMAP)),
        (m, dict(descriptions=["a", "b"])),
        (m.astype("float16"), {}),
        (m[0], {}),
    ]
    for i, (arr, kw) in enumerate(cases):
        with pytest.raises(UsageError, match=f"c{i}.tif"):
            cog.write_cog(arr, tmp_path / f"c{i}.tif", **kw)
    assert list(tmp_path.iterdir()) == []
    cog.write_cog(m.astype(bool), tmp_path / "b.tif")  # a boolean mask is written as uint8
    assert cog.is_valid_cog(tmp_path / "b.tif")


def test_a_cog_the_disk_cut_short_fails_on_reading_back_as_disk_full(tmp_path, monkeypatch):
    """The copy "succeeded" but the file was cut short: validating it raised a RasterioIOError that
    reached the user as "internal error"; a raw file removed mid-write gave rasterio's TypeError."""
    from rasterio.errors import RasterioIOError

    def cut_short(path, quiet=True):
        raise RasterioIOError(f"{path}: TIFFReadDirectory:Failed to read directory at offset 0")

    monkeypatch.setattr(cog, "cog_validate", cut_short)
    monkeypatch.setattr(cog, "is_disk_full", lambda exc, path=None, writing=False: writing)
    (tmp_path / "m.tif").write_bytes(b"old")
    with pytest.raises(OutputError, match="disk full"):
        cog.write_cog(_classes(64, 64), tmp_path / "m.tif", nodata=255)
    assert sorted(os.listdir(tmp_path)) == ["m.tif"] and (tmp_path / "m.tif").read_bytes() == b"old"
    monkeypatch.undo()
    with pytest.raises(OutputError, match="removed while writing"):
        cog.translate(tmp_path / "gone_raw.tif", tmp_path / "n.tif")
