"""The ``cloudmask`` command group itself: what building it costs."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_cli_leaves_the_mask_stack_unimported() -> None:
    """`cloudmask --help`, `sensors` and `fetch` start in a fraction of a second: building the
    command line must not import Dask, xarray, rasterio or torch (they load when `mask` runs)."""
    code = (
        "import sys; from cloudmask.cli import app; import typer.main; typer.main.get_command(app); "
        "print(','.join(m for m in ('dask', 'xarray', 'rasterio', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
