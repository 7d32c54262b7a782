"""Shared fixtures: small rasters written into ``tmp_path`` (tests never read ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloudmask.testing import random_reflectance, write_raster


@pytest.fixture
def s2_l2a_tif(tmp_path: Path) -> Path:
    """A 13-band Sentinel-2 L2A-style uint16 GeoTIFF (baseline 04.00 offset, nodata 0), 96×80 px."""
    refl = random_reflectance(13, 80, 96, seed=1)
    dn = np.round(refl * 10000 + 1000).astype("uint16")
    dn[:, :4, :] = 0  # a nodata strip along the top
    return write_raster(tmp_path / "S2A_MSIL2A_test.tif", dn, nodata=0)
pytest_plugins = ["fetch_servers"]
