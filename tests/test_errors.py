"""The error hierarchy's helpers."""

from cloudmask.errors import first_line


def test_read_errors_carry_gdals_reason_not_rasterios_wrapper():
    """rasterio raises "Read failed. See previous exception for details." from GDAL's error; the
    one-line message users see must be GDAL's reason (which block of which band failed)."""
    try:
        try:
            raise ValueError("t.tif, band 1: IReadBlock failed at X offset 0, Y offset 0\nsecond line")
        except ValueError as gdal:
            raise OSError("Read failed. See previous exception for details.") from gdal
    except OSError as exc:
        assert first_line(exc) == "t.tif, band 1: IReadBlock failed at X offset 0, Y offset 0"
    assert first_line(OSError("plain\nmore")) == "plain"
