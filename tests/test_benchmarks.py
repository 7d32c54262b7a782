"""The benchmark scripts still run against the current library (their numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bench_mask_runs_every_case_on_a_small_scene(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_mask.py"), "--sizes", "256", "--threads", "1", "--workdir", str(tmp_path),
         "--cluster", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    (row,) = doc["cases"]
    assert row["size"] == 256 and row["mask_s"] > 0 and row["floor_s"] > 0 and row["raw_s"] > 0 and row["cluster_s"] > 0
    assert row["ratio_to_raw"] >= row["ratio_to_floor"] > 0  # the raw floor is the stricter one
    from rio_cogeo.cogeo import cog_validate

    for name in ("floor_256.tif", "raw_256.tif", "mask_256_cloudmask.tif", "cluster/S2A_MSIL2A_synthetic_256_cloudmask.tif"):
        assert cog_validate(str(tmp_path / name))[0], name


def test_bench_window_times_every_stage_of_the_bundled_model_and_a_variant() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_window.py"), "--tile", "64", "--repeat", "1", "--arch", "c8=32",
         "dilations=1,2", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundled, variant = json.loads(proc.stdout)["rows"]
    assert bundled["halo"] > 0 and bundled["window_px"] == 64 + 2 * (bundled["halo"] + 8)  # halo + feather
    assert variant["halo"] < 144 and variant["window_px"] == 64 + 2 * (variant["halo"] + 8)  # dilations 1, 2: a smaller field
    for row in (bundled, variant):
        assert all(row[k] > 0 for k in ("convert", "pool", "context", "head", "total"))
        assert row["total"] >= row["convert"] + row["pool"] + row["context"] + row["head"]


def test_shadow_ceiling_finds_a_shadow_that_geometry_and_darkness_explain(tmp_path: Path) -> None:
    """A made-up "real" root (the study never needs the project's real tiles in tests): one Landsat 5
    tile whose labelled shadow is its cloud moved 20 px down-right and dark in NIR."""
    from cloudmask.testing import write_raster

    (tmp_path / "ukis").mkdir()
    x = np.empty((6, 96, 96), "float32")
    x[:] = np.array([0.08, 0.09, 0.07, 0.30, 0.20, 0.12], "float32")[:, None, None]  # vegetation
    y = np.zeros((96, 96), "uint8")
    y[40:60, 40:60] = 3
    x[:, 40:60, 40:60] *= 0.35  # the shadow: no direct sun
    y[20:40, 20:40] = 1
    x[:, 20:40, 20:40] = 0.7  # the cloud
    write_raster(tmp_path / "ukis" / "t.image.tif", x, crs=None)
    write_raster(tmp_path / "ukis" / "t.label.tif", y, crs=None)
    (tmp_path / "manifest.json").write_text(json.dumps([{
        "image": "ukis/t.image.tif", "label": "ukis/t.label.tif", "sensor": "landsat5",
        "bands": ["B1", "B2", "B3", "B4", "B5", "B7"], "labelled": {"cloud": True, "thin": False, "shadow": True}}]))
    proc = subprocess.run([sys.executable, str(BENCH / "shadow_ceiling.py"), "--real", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sets = json.loads(proc.stdout)["sets"]
    tile = sets["ukis landsat5"]
    assert (tile["tiles"], tile["with_shadow"]) == (1, 1)
    assert tile["ceiling"]["darkness"] > 99 and tile["ceiling"]["both"] > 99 and 60 < tile["ceiling"]["geometry"] < 100
    assert set(tile["knobs"]) == {"all bands", "4 bands"} and len(tile["knobs"]["all bands"]) == 13
    assert sets["l8biome val"]["tiles"] == 0 and sets["l8biome val"]["ceiling"]["geometry"] == 0.0
