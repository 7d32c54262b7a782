"""Pieces every command shares: consoles, common options, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

#: Human output goes to stdout; errors and progress bars to stderr so ``--json`` stays parseable.
console = Console()
err_console = Console(stderr=True)

SensorsDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--sensors-dir", metavar="DIR",
        help="Extra directory of sensor YAML files (repeatable; also $CLOUDMASK_SENSORS).",
        exists=True,
        file_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables (for cron).")]


def use_sensors_dirs(dirs: list[Path] | None) -> None:
    """Make ``--sensors-dir`` visible to every registry lookup in this process."""
    if dirs:
        current = [p for p in os.environ.get("CLOUDMASK_SENSORS", "").split(os.pathsep) if p]
        os.environ["CLOUDMASK_SENSORS"] = os.pathsep.join(current + [str(d) for d in dirs])


def print_json(obj: Any) -> None:
    """Write JSON to stdout without rich markup or wrapping."""
    typer.echo(json.dumps(obj, indent=2, default=str))
