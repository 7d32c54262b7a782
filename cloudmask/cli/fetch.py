"""``cloudmask fetch``: search a STAC catalogue and download exactly what ``cloudmask mask`` needs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.cli.common import (Command, JsonOpt, QuietOpt, SensorsDirOpt, console, err_console, error_message, print_json,
                                  Terminated, use_sensors_dirs)
from cloudmask.errors import FetchError, UsageError


class _RichLogHandler(logging.Handler):
    """Fetch decisions (client-side filtering, registry-vs-raster:bands, retries) as dim lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(f"[{style}]{escape(record.getMessage())}[/]", highlight=False, soft_wrap=True)


class _FetchCommand(Command):
    """``--json`` errors are fetch's own document (the items with their state), printed by fetch_cmd."""

    json_errors = False

    def json_error(self, message: str) -> None:  # click's usage errors, before fetch_cmd runs
        print_json({"dry_run": False, "items": [], "error": message})


@app.command("fetch", cls=_FetchCommand, short_help="Search a STAC catalogue and download the scenes' bands.")
def fetch_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write one sub-folder per item into.")] = Path("scenes"),
    bbox: Annotated[str | None, typer.Option("--bbox", metavar="W,S,E,N", help="Area as W,S,E,N in degrees.")] = None,
    geojson: Annotated[Path | None, typer.Option("--geojson", metavar="FILE", help="Area as a GeoJSON file (instead of --bbox).")] = None,
    date: Annotated[str | None, typer.Option("--date", metavar="DATE[/DATE]", help="Day or range: 2024-06-01 or 2024-06-01/2024-06-30 (a year 2024, month 2024-06 or week 2024-W24: all of it).")] = None,
    sensor: Annotated[list[str] | None, typer.Option("--sensor", "-s", metavar="SENSOR", help="Sensor id (repeatable); default sentinel2.")] = None,
    catalog: Annotated[str, typer.Option("--catalog", metavar="NAME|URL", help="earth-search, planetary-computer or a STAC API URL.")] = "earth-search",
    collection: Annotated[str | None, typer.Option("--collection", metavar="ID", help="Collection id (needed with a --catalog URL).")] = None,
    product: Annotated[str | None, typer.Option("--product", metavar="PRODUCT", help="Registry product, e.g. l2a, l1c, l2 (default: sensor's).")] = None,
    max_cloud: Annotated[float | None, typer.Option("--max-cloud", metavar="PERCENT", help="Keep items with eo:cloud_cover <= N percent.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", help="At most N items in all.")] = None,
    clip: Annotated[bool, typer.Option("--clip", help="Download only the area's window of each band (range reads).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be fetched; download nothing.")] = False,
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=1, max=32, help="Concurrent downloads.")] = 4,
    retries: Annotated[int, typer.Option("--retries", metavar="N", min=0, max=20, help="Retries per file after the first try.")] = 4,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    sensors_dir: SensorsDirOpt = None,
) -> None:
    """Search a STAC catalogue and download the bands the model uses, one folder per item.

    \b
    Example:
      cloudmask fetch --bbox 5.9,45.8,10.5,47.8 --date 2024-06-01/2024-06-30 \\
        --sensor sentinel2 -o scenes/
    """
    from cloudmask import stac

    logger = logging.getLogger("cloudmask.fetch")
    handler = _RichLogHandler()
    if not quiet:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    plans: list[Any] = []
    try:
        use_sensors_dirs(sensors_dir)
        if (bbox is None) == (geojson is None):
            raise UsageError("give exactly one area: --bbox W,S,E,N or --geojson FILE")
        box = stac.parse_bbox(bbox) if bbox is not None else None
        geometry = stac.load_geojson(geojson) if geojson is not None else None
        when = stac.parse_date(date) if date else None
        _fetch_run(plans, output, box, geometry, when, sensor, catalog, collection, product, max_cloud, limit, clip,
                   dry_run, workers, retries, json_out, quiet)
    except (Exception, KeyboardInterrupt) as exc:
        # what was fetched, what was already here and what failed, then the error line (exit 1):
        # a cron job reading --json gets one document with every item's state (Ctrl-C and SIGTERM too)
        if json_out and not isinstance(exc, BrokenPipeError):
            stopped = isinstance(exc, KeyboardInterrupt)
            why = ("terminated" if isinstance(exc, Terminated) else "interrupted") if stopped else error_message(exc)
            print_json({"dry_run": dry_run, "items": [p.summary() for p in plans], "error": why,
                        **({"interrupted": True} if stopped else {})})
        elif plans:
            if not dry_run:  # (a dry run printed its table already)
                _report(plans, False, quiet, dry_run=False)
            failed = [p for p in plans if p.error]
            for p in failed[1:]:  # the first is the error line itself (fetch.failure_summary)
                err_console.print(f"[red]failed:[/] {escape(p.error)}", highlight=False, soft_wrap=True)
        raise
    finally:
        logger.removeHandler(handler)


def _fetch_run(plans: list[Any], output: Path, box: Any, geometry: Any, when: Any, sensor: Any, catalog: str,
               collection: str | None, product: str | None, max_cloud: float | None, limit: int | None, clip: bool,
               dry_run: bool, workers: int, retries: int, json_out: bool, quiet: bool) -> None:
    """Search, plan (into ``plans``, so the caller can report them on failure), fetch, report."""
    from cloudmask import fetch as fetch_mod
    from cloudmask import stac

    targets = stac.resolve_targets(sensor or ["sentinel2"], catalog, collection, product)
    clip_bbox = (box or stac.geometry_bbox(geometry or {})) if clip else None
    if clip_bbox is not None and not (clip_bbox[0] < clip_bbox[2] and clip_bbox[1] < clip_bbox[3]):
        raise UsageError("--clip needs an area: the --geojson geometry is a point or a line (its extent has no area)")
    found = stac.search(targets, bbox=box, intersects=geometry, datetime=when, max_cloud=max_cloud, limit=limit)
    plans.extend(fetch_mod.plan(found, output, clip=clip, clip_bbox=clip_bbox))
    if dry_run:
        failed = fetch_mod.failure_summary(plans)  # items that could not be fetched: said, exit 1
        if not (failed and json_out):  # (with --json the error document lists the items)
            _report(plans, json_out, quiet, dry_run=True)
        if failed:
            raise FetchError(failed)
        return
    retry = fetch_mod.Retry(attempts=retries + 1)
    if quiet or json_out:
        fetch_mod.fetch(plans, clip_bbox=clip_bbox, workers=workers, retry=retry)
    else:
        _fetch_with_progress(fetch_mod, plans, clip_bbox, workers, retry)
    _report(plans, json_out, quiet, dry_run=False)


def _fetch_with_progress(fetch_mod: Any, plans: list[Any], clip_bbox: Any, workers: int, retry: Any) -> None:
    """One rich bar: bytes when downloading whole files, files when clipping (sizes unknown up front)."""
    todo = [t for p in plans if not p.skipped for t in p.files if not t.dest.is_file()]
    lock = threading.Lock()
    totals: dict[str, int] = {}
    columns: list[Any] = [TextColumn("[bold]fetch"), BarColumn()]
    if clip_bbox is None:
        columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns += [TextColumn("{task.completed:.0f}/{task.total:.0f} files")]
    with Progress(*columns, console=err_console, transient=True) as bar:
        if clip_bbox is None:
            known = sum(t.size or 0 for t in todo)
            task = bar.add_task("fetch", total=known or None)

            def progress(key: str, delta: int, total: int | None) -> None:
                with lock:
                    if total and key not in totals:
                        size = next((t.size for t in todo if t.key == key), None)
                        totals[key] = total
                        if size != total:
                            bar.update(task, total=(bar.tasks[0].total or 0) - (size or 0) + total)
                    if delta:
                        bar.advance(task, delta)

            fetch_mod.fetch(plans, workers=workers, retry=retry, progress=progress)
        else:
            task = bar.add_task("fetch", total=len(todo))
            fetch_mod.fetch(plans, clip_bbox=clip_bbox, workers=workers, retry=retry,
                            on_file_done=lambda _t: bar.advance(task, 1))


def _report(plans: list[Any], json_out: bool, quiet: bool, dry_run: bool) -> None:
    if json_out:
        print_json({"dry_run": dry_run, "items": [p.summary() for p in plans]})
        return
    if quiet:
        return
    if dry_run:
        title = f"would fetch {len(plans)} item(s)"
    else:
        counts = {"fetched": sum(p.complete and not p.skipped for p in plans), "already here": sum(p.skipped for p in plans),
                  "failed": sum(p.error is not None for p in plans)}
        title = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "nothing fetched"
    table = Table(title=title, title_justify="left")
    table.add_column("item", no_wrap=True)
    for col in ("date", "cloud %", "product", "bands", "size", "folder"):
        table.add_column(col, overflow="fold")
    for p in plans:
        props = p.found.item.get("properties", {})
        sizes = [t.dest.stat().st_size if t.dest.is_file() else t.size for t in p.files]
        size = "?" if not sizes or any(s is None for s in sizes) else _size(sum(sizes))
        cc = props.get("eo:cloud_cover")
        status = " (already here)" if p.skipped else (" [red](failed)[/]" if p.error else "")
        table.add_row(
            escape(p.found.id), str(props.get("datetime", ""))[:10], "" if cc is None else f"{cc:.0f}",
            p.found.product, ",".join(t.band for t in p.files), size, escape(str(p.folder)) + status,
        )
    console.print(table)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
