"""``cloudmask sensors``: what the registry knows."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.cli.common import Command, JsonOpt, SensorsDirOpt, console, print_json, use_sensors_dirs
from cloudmask.registry import Sensor, load_registry


def _um(x: float) -> float:
    """A wavelength in µm without binary floating-point noise (1e-6 µm is far below any band's precision)."""
    return round(float(x), 6)


def _sensor_json(s: Sensor) -> dict:
    return {
        "id": s.id,
        "name": s.name,
        "aliases": list(s.aliases),
        "description": s.description,
        "platforms": list(s.platforms),
        "default_product": s.default_product,
        "products": {k: vars(v) for k, v in s.products.items()},
        "default_resolution": s.default_resolution,
        "catalogues": {k: dict(v.collections) for k, v in s.stac.items()},
        "source": s.source,
        "file": str(s.path),
        "bands": [
            {
                "name": b.name,
                "common_name": b.common_name,
                "aliases": list(b.aliases),
                "type": b.kind,
                "wavelength_um": {"min": _um(b.wavelength_min), "center": _um(b.wavelength_center),
                                  "max": _um(b.wavelength_max), "fwhm": _um(b.fwhm)},
                "resolution_m": b.resolution,
                "assets": dict(b.assets),
                "scaling": {k: vars(v) for k, v in b.scaling.items()},  # overrides of the products' (e.g. thermal)
            }
            for b in s.bands
        ],
    }


@app.command("sensors", cls=Command, short_help="List the sensor registry, or one sensor's bands.")
def sensors_cmd(
    name: Annotated[str | None, typer.Argument(help="Show one sensor's bands (id, alias or platform).", metavar="SENSOR")] = None,
    sensors_dir: SensorsDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the sensors in the registry, or one sensor's bands and descriptors."""
    use_sensors_dirs(sensors_dir)
    registry = load_registry()
    if name is None:
        if as_json:
            print_json([_sensor_json(s) for s in registry.values()])
            return
        table = Table(title="cloudmask sensor registry")
        for col in ("id", "name", "bands", "products", "catalogues", "file"):
            table.add_column(col)
        for s in registry.values():
            table.add_row(s.id, s.name, str(len(s.bands)), ", ".join(s.products), ", ".join(s.stac) or "-", s.path.name)
        console.print(table)
        return
    s = registry.get_sensor(name)
    if as_json:
        print_json(_sensor_json(s))
        return
    table = Table(title=f"{s.name} ({s.id}) — default product {s.default_product}, {s.default_resolution:g} m grid")
    # in the registry's order: the order of a file's layers when it carries no band names
    for col, just in (("#", "right"), ("band", "left"), ("common", "left"), ("type", "left"), ("min µm", "right"),
                      ("centre µm", "right"), ("max µm", "right"), ("FWHM µm", "right"), ("res m", "right"), ("assets", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, b in enumerate(s.bands, start=1):
        table.add_row(
            str(i), b.name, b.common_name or "", b.kind, f"{_um(b.wavelength_min):g}", f"{_um(b.wavelength_center):g}",
            f"{_um(b.wavelength_max):g}", f"{_um(b.fwhm):g}", f"{b.resolution:g}",
            ", ".join(f"{k}={v}" for k, v in b.assets.items()),
        )
    console.print(table)
    console.print(f"[dim]source: {s.source}[/]", highlight=False)
