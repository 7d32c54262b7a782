"""``cloudmask simulate``: labelled synthetic scenes for any registry sensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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


#: What makes two simulated scenes of one name (sensor, seed, index) different scenes.
_SCENE_KEYS = ("seed", "size", "bands", "pixel_size", "level", "cloud_cover_target")


def _check_same_scene(sidecar: Path, meta: dict[str, Any]) -> None:
    """Refuse to replace a scene of the same name simulated otherwise (other --bands, --size,
    --pixel-size, --cloud-cover or --level with the same seed): names carry sensor, seed and index
    only, and a rerun silently replaced the earlier scene with a different one."""
    if not sidecar.is_file():
        return
    try:
        old = json.loads(sidecar.read_text(encoding="utf-8"))["properties"]["sim:meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not one of ours, or damaged: replaced as before
    new = json.loads(json.dumps({k: meta.get(k) for k in _SCENE_KEYS}, default=float))
    diff = [k for k in _SCENE_KEYS if old.get(k) != new[k]]
    if diff:
        raise UsageError(f"{sidecar.with_suffix('')}: the folder holds a scene of this name simulated otherwise "
                         f"(it differs in {', '.join(diff)}); choose another -o (or --seed), or remove it")


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
            name = f"sim_{s.id}_{base}_{i:04d}"
            _check_same_scene(output / f"{name}.json", sim.meta)
            paths = write_scene(sim, output, name, s.id)
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
