"""Option records that the CLI needs before any scene is read.

Kept apart from :mod:`cloudmask.tiles` (which imports Dask and xarray) so that building the
command line (``cloudmask --help``, ``sensors``, ``fetch``) does not pay for those imports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileOptions:
    """How a scene is cut up. Defaults suit a CPU: ~1024 px cores (~1330 px windows with the
    bundled model's halo, whose context margins then cost ~1.7× the core instead of ~1.95× at 768 px),
    one window per task, which keeps peak memory under ~1.5 GB with two threads (~1.4 GB at 8192²;
    ``tile_size=768`` saves ~200 MB for ~5 % more time); raise ``batch_size`` on a GPU.

    tile_size: target core edge of one model window in pixels; the scene is split into near-equal
        cores on the 8 px grid (:func:`cloudmask.tiles.even_split`), so actual cores are within ~±30 % of it
        (up to +50 % when a whole edge is under 1.5 tiles: 1535 px at 1024 is one core).
    overlap: pixels of extra input per window side (context + feather); default ``halo + 8``: with the full halo
        of context, neighbouring windows already agree, so a thin feather is enough.
    batch_size: windows per model call (one Dask task predicts one batch of adjacent windows).
    threads: local Dask worker threads; default all cores.
    """

    tile_size: int = 1024
    overlap: int | None = None
    batch_size: int = 1
    threads: int | None = None
