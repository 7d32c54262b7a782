"""``cloudmask simulate``: labelled synthetic scenes for any registry sensor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.cli.common import Command, JsonOpt, QuietOpt, SensorsDirOpt, console, err_console, print_json, use_sensors_dirs
from cloudmask.errors import UsageError
from cloudmask.registry import get_sensor


def scene_seed(base: int, index: int) -> int:
    """Independent, reproducible per-scene seed: scene i of ``--seed S`` is the same whatever ``--n``."""
    return int(np.random.SeedSequence([base, index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


@app.command("simulate", cls=Command, short_help="Simulate labelled scenes (image, labels, JSON).")
def simulate_cmd(
    sensor: Annotated[str, typer.Option("--sensor", "-s", metavar="SENSOR", help="Sensor id, alias or platform (see `cloudmask sensors`).")],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Output folder.", file_okay=False)],
    n: Annotated[int, typer.Option("--n", "-n", metavar="N", help="Number of scenes.", min=1, max=100000)] = 1,
    size: Annotated[int, typer.Option("--size", metavar="PX", help="Scene size in pixels (square).", min=16, max=8192)] = 512,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Base seed for reproducible scenes.", min=0)] = None,
    bands: Annotated[
        list[str] | None, typer.Option("--bands", "-b", metavar="NAMES", help="Bands to simulate (repeat or comma-separate; default all).")
    ] = None,
    pixel_size: Annotated[float | None, typer.Option("--pixel-size", metavar="METRES", help="Metres per pixel (default: the median band resolution, clipped to 10–500 m).", min=1)] = None,
    cloud_cover: Annotated[float | None, typer.Option("--cloud-cover", metavar="F", help="Fix the cloud-layer cover 0..1 (default random).", min=0, max=1)] = None,
    level: Annotated[str, typer.Option("--level", metavar="LEVEL", help="toa (L1 top-of-atmosphere) or boa (L2 surface reflectance).")] = "toa",
    sensors_dir: SensorsDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate labelled scenes: image GeoTIFF (physical values), label GeoTIFF and STAC-like JSON each."""
    use_sensors_dirs(sensors_dir)
    from cloudmask.simulate import simulate_scene
    from cloudmask.simulate.io import write_scene

    s = get_sensor(sensor)
    names = [p.strip() for b in (bands or []) for p in b.split(",") if p.strip()]
    chosen = s.select(names) if names else list(s.bands)
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a folder")
    base = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
    if level not in ("toa", "boa"):
        raise UsageError(f"--level must be toa or boa, got {level!r}")
    options = {k: v for k, v in (("pixel_size", pixel_size), ("cloud_cover", cloud_cover)) if v is not None}
    options["level"] = level
    results = []
    show = not (quiet or as_json)
    progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=not show)
    with progress:
        task = progress.add_task("simulate", total=n)
        for i in range(n):
            sim = simulate_scene(chosen, size, rng=scene_seed(base, i), **options)
            paths = write_scene(sim, output, f"sim_{s.id}_{base}_{i:04d}", s.id)
            results.append({"index": i, "seed": sim.meta["seed"], **paths,
                            "class_fractions": sim.meta["class_fractions"], "biome": sim.meta["biome"]})
            progress.advance(task)
    if as_json:
        print_json({"sensor": s.id, "base_seed": base, "bands": [b.name for b in chosen], "size": size, "scenes": results})
        return
    if quiet:
        return
    table = Table(title=f"{n} simulated {s.name} scene(s) in {output} (base seed {base})")
    for col in ("#", "biome", "clear", "thick", "thin", "shadow", "image"):
        table.add_column(col)
    for r in results:
        f = r["class_fractions"]
        table.add_row(str(r["index"]), r["biome"], *(f"{100 * f[k]:.0f}%" for k in ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")),
                      Path(r["image"]).name)
    console.print(table)
