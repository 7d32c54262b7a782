"""``cloudmask mask``: scenes in, Cloud-Optimised GeoTIFF masks out — one scene or a whole archive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.cli.common import (
    Command, JsonOpt, QuietOpt, SensorsDirOpt, check_terminated, console, err_console, error_message, print_json,
    startup_imports,
    use_sensors_dirs,
)
from cloudmask.errors import UsageError
from cloudmask.options import TileOptions

if TYPE_CHECKING:
    from cloudmask.mask import MaskResult


def _bands(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [b.strip() for b in value.split(",") if b.strip()]
    if not names:
        raise UsageError("--bands needs a comma-separated list of band names")
    return names


class _Reporter:
    """Rich progress: one bar over scenes, one over the current scene's blocks (stderr). Also keeps
    the scenes and the results so far, for the summary of an interrupted run."""

    def __init__(self, enabled: bool) -> None:
        self.sources: list[str] | None = None
        self.results: list[MaskResult] = []
        self.progress: Progress | None = None
        if enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=err_console, transient=True,
            )
        self.scenes: Any = None
        self.blocks: Any = None
        self.many = False  # live failure lines only in multi-scene runs (one scene: its error ends the run)

    def __enter__(self) -> _Reporter:
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.__exit__(None, None, None)

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        check_terminated()  # a SIGTERM whose exception was swallowed still stops the run here
        if kind == "run-start":
            self.sources = list(payload.get("sources") or [])
        elif kind == "scene-end":
            self.results.append(payload["result"])
        p = self.progress
        if p is None:
            return
        if kind == "run-start":
            self.scenes = p.add_task("scenes", total=payload["scenes"])
            self.many = payload["scenes"] > 1
        elif kind == "scene-start":
            name = Path(str(payload["source"])).name
            if self.blocks is not None:
                p.remove_task(self.blocks)
            self.blocks = p.add_task(f"  {escape(name)} ({payload['sensor']})", total=None)
        elif kind == "blocks":
            if self.blocks is not None:
                p.update(self.blocks, completed=payload["done"], total=payload["total"])
        elif kind == "scene-end":
            r: MaskResult = payload["result"]
            if self.blocks is not None:
                p.remove_task(self.blocks)
                self.blocks = None
            if self.scenes is not None:
                p.advance(self.scenes)
            if r.status == "failed" and self.many:
                p.console.print(f"[red]failed:[/] {escape(r.message)}", highlight=False, soft_wrap=True)


def _unfinished(reporter: _Reporter, items: list[str], **why: Any) -> dict[str, Any]:
    """The ``--json`` document of a run that stopped early (interrupted, or an error of the run
    itself): the scenes done so far, why it stopped, and the scenes not done, the next one first."""
    done = reporter.results
    if done:
        from cloudmask.mask import summarise

        summary = summarise(done)
    else:  # (stopped before any scene, perhaps while the mask stack was still being imported)
        summary = {"scenes": 0, "masked": 0, "skipped": 0, "busy": 0, "failed": 0, "megapixels": 0.0, "seconds": 0.0,
                   "megapixels_per_second": None}
    return {"summary": summary, "scenes": [r.to_dict() for r in done], **why,
            "not_done": (reporter.sources if reporter.sources is not None else items)[len(done):]}


class _MaskCommand(Command):
    """``--json`` errors are mask's own document (what was done so far, what was not)."""

    json_errors = False  # mask_cmd prints its document for errors of the run itself

    def json_error(self, message: str) -> None:
        print_json(_unfinished(_Reporter(enabled=False), [], error=message))


def _mpx(megapixels: float) -> str:
    """Megapixels for people: a chip of 256² is 0.066, not 0.1."""
    return f"{megapixels:.1f}" if megapixels >= 1 else f"{megapixels:.3f}"


def _table(results: list[MaskResult], summary: dict[str, Any]) -> Table:
    table = Table(title="cloudmask mask", show_lines=False)
    for col in ("scene", "status", "cloud %", "Mpx", "s", "output / message"):
        table.add_column(col, overflow="fold")
    style = {"masked": "green", "skipped": "dim", "busy": "yellow", "failed": "red"}
    for r in results:
        table.add_row(
            escape(Path(r.source).name or r.source),
            f"[{style[r.status]}]{r.status}[/]",
            f"{r.cloud_cover:.1f}" if r.cloud_cover is not None else "-",
            _mpx(r.megapixels) if r.megapixels else "-",
            f"{r.seconds:.1f}",
            escape(r.message if r.status in ("failed", "busy") else (r.output or "")),
        )
    rate = summary["megapixels_per_second"]
    table.caption = (
        f"{summary['masked']} masked, {summary['skipped']} skipped, "
        + (f"{summary['busy']} busy (another run), " if summary.get("busy") else "") + f"{summary['failed']} failed"
        + (f" · {_mpx(summary['megapixels'])} Mpx at {rate:.2f} Mpx/s" if rate else "")
    )
    return table


@app.command("mask", cls=_MaskCommand, short_help="Mask clouds and cloud shadow; one COG per scene.")
def mask_cmd(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenes: multi-band GeoTIFFs, band folders, Sentinel-2 .SAFE folders, .SAFE.zip or Landsat .tar "
            "archives (read in place), STAC item JSON paths or URLs, GeoTIFF URLs (range requests), directory trees, "
            "globs ('archive/**/*.tif'), or @list.txt (one input per line).",
            show_default=False,
            metavar="INPUT",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="DIR", help="Output folder; mirrors the input tree. Default: beside each input."),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", metavar="DIR",
                     help="Mirror the tree below DIR under -o, whichever scenes are given (pin it in cron jobs "
                          "over changing lists: outputs then keep their place). Default: the folder or glob "
                          "given, or the common parent of loose files."),
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", metavar="FILE", help="Text file of inputs, one per line (same as @FILE).")
    ] = None,
    stac_item: Annotated[
        list[str] | None,
        typer.Option("--stac-item", metavar="URL", help="A STAC item URL or path; read in place with range requests (repeatable)."),
    ] = None,
    sensor: Annotated[
        str | None, typer.Option("--sensor", "-s", metavar="SENSOR", help="Sensor id; optional when the input names it (STAC, file name).")
    ] = None,
    bands: Annotated[
        str | None, typer.Option("--bands", metavar="NAMES", help="Comma-separated band names of the file's layers, in order; '-' leaves a layer out (e.g. a UDM).")
    ] = None,
    product: Annotated[str | None, typer.Option("--product", metavar="PRODUCT", help="Product level (e.g. l1c, l2a) for DN scaling.")] = None,
    resolution: Annotated[
        float | None, typer.Option("--resolution", metavar="METRES", help="Output pixel size in metres (default: the sensor's).")
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write a 4-band probability COG (percent, uint8).")
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", metavar="P", help="Cloud when P(thick)+P(thin) >= this (above 0, below 1); default: most likely class."),
    ] = None,
    dilate: Annotated[int, typer.Option("--dilate", metavar="N", help="Buffer clouds and shadows by N pixels.", min=0)] = 0,
    binary: Annotated[bool, typer.Option("--binary", help="Write 1 = cloud (thick or thin), 0 = not cloud.")] = False,
    shadow_matching: Annotated[
        bool,
        typer.Option("--shadow-matching/--no-shadow-matching",
                     help="Find more shadows where the scene's clouds cast them (learnt cloud-to-shadow displacement)."),
    ] = True,
    shadow_boost: Annotated[
        float,
        typer.Option("--shadow-boost", metavar="B", min=0.0,
                     help="Strength of shadow matching: inside the learnt shadow zone a clear pixel turns shadow "
                          "when (1 + B) x P(shadow) > P(clear). Lower: fewer added shadows; 0: none."),
    ] = 3.0,
    shadow_darkness: Annotated[
        float | None,
        typer.Option("--shadow-darkness", metavar="R", min=0.0, max=1.0,
                     help="Also turn a clear pixel in the learnt shadow zone to shadow when its NIR is below R x the "
                          "NIR of the clear ground around it (e.g. 0.7; default: off)."),
    ] = None,
    sun_azimuth: Annotated[
        float | None,
        typer.Option("--sun-azimuth", metavar="DEGREES", min=0.0, max=360.0,
                     help="Sun azimuth in degrees clockwise from north: shadow matching keeps only shifts away "
                          "from the sun (default: learnt from the scene alone)."),
    ] = None,
    sun_elevation: Annotated[
        float | None,
        typer.Option("--sun-elevation", metavar="DEGREES", min=0.0, max=90.0,
                     help="Sun elevation in degrees: with the azimuth, bounds the shadow distance for clouds "
                          "0.2-12 km high."),
    ] = None,
    sun_from_metadata: Annotated[
        bool,
        typer.Option("--sun-from-metadata",
                     help="Take each scene's sun position from its metadata (STAC view:sun_azimuth/view:sun_elevation, "
                          "a Landsat MTL, a SAFE's MTD_TL.xml) where --sun-azimuth/--sun-elevation are not given."),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo scenes whose outputs already exist.")] = False,
    tile_size: Annotated[int, typer.Option("--tile-size", metavar="PX", help="Target core edge of one model window in px (the scene is split into near-equal cores).", min=16)] = TileOptions.tile_size,
    overlap: Annotated[
        int | None, typer.Option("--overlap", metavar="PX", help="Extra pixels per window side (default: model halo + 8).", min=0)
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Windows per model call.", min=1)] = TileOptions.batch_size,
    threads: Annotated[int | None, typer.Option("--threads", metavar="N", help="Local worker threads (default: all cores).", min=1)] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when torch sees a GPU). Dask cluster workers (--scheduler) run it on their CPUs.")] = "auto",
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", metavar="ADDRESS", help="Run on a dask.distributed cluster, e.g. tcp://host:8786.")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", metavar="FILE", help="Model weights (.safetensors from `cloudmask train`); default: bundled model."),
    ] = None,
    sensors_dir: SensorsDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mask clouds and cloud shadow; write one COG (+ STAC item) per scene.

    Finished outputs are skipped, so rerunning the same command resumes an interrupted archive.

    Exit status: 0 all scenes done, skipped or busy (another run is writing them), 1 some scene failed, 2 invalid request, 130 interrupted (143 on SIGTERM).
    """
    items = list(inputs or []) + list(stac_item or [])
    reporter = _Reporter(enabled=not (quiet or as_json))
    try:
        # imported here: the mask stack (Dask, xarray, rasterio, torch) costs ~1.5 s that --help,
        # sensors and fetch need not pay (inside the try: a SIGTERM then still gets its document)
        with startup_imports():
            import cloudmask.model.predictor  # noqa: F401 - torch, which MaskOptions.check needs anyway
            from cloudmask.mask import MaskOptions, mask_many, read_list_file, summarise

        use_sensors_dirs(sensors_dir)
        if scheduler and quiet:  # distributed logs its own troubles (a lost scheduler) on stderr; ours is one line
            import logging

            logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)
        if from_file is not None:
            items += read_list_file(str(from_file))
        if not items:
            raise UsageError("give at least one input scene (path, folder, glob, URL, @list.txt or --from-file)")
        if weights is not None and not weights.is_file():  # a wrong option (2), not a broken model (1)
            raise UsageError(f"--weights {weights}: no such file")
        options = MaskOptions(
            sensor=sensor, bands=_bands(bands), product=product, resolution=resolution,
            tiles=TileOptions(tile_size=tile_size, overlap=overlap, batch_size=batch_size, threads=threads),
            scheduler=scheduler, probabilities=probabilities, threshold=threshold, dilate=dilate, binary=binary,
            shadow_matching=shadow_matching, shadow_boost=shadow_boost, shadow_darkness=shadow_darkness, sun_azimuth=sun_azimuth, sun_elevation=sun_elevation, sun_from_metadata=sun_from_metadata, overwrite=overwrite, weights=str(weights) if weights else None,
            device=device,
        )
        with reporter:
            results = mask_many(items, output, options, on_event=reporter, root=root)
    except KeyboardInterrupt:
        if as_json:  # a machine reading stdout still gets a document: what was done, what was not
            print_json(_unfinished(reporter, items, interrupted=True))
        raise  # "interrupted", exit 130 (cloudmask.cli.app)
    except Exception as exc:
        # an error of the run itself (-o, the model, the inputs, an option): with --json it is in
        # the document too, for a cron job that reads only stdout; the exit code is the usual one
        if as_json and not isinstance(exc, BrokenPipeError):
            print_json(_unfinished(reporter, items, error=error_message(exc)))
        raise
    summary = summarise(results)
    failed = [r for r in results if r.status == "failed"]
    if as_json:
        print_json({"summary": summary, "scenes": [r.to_dict() for r in results]})
    elif not quiet:
        console.print(_table(results, summary))
    if not failed:
        return
    if len(results) == 1 and isinstance(failed[0].error, Exception) and hasattr(failed[0].error, "exit_code"):
        raise failed[0].error  # one scene: its own message and exit code
    if quiet or as_json:
        for r in failed:
            err_console.print(f"[bold red]error:[/] {escape(r.message)}", highlight=False, soft_wrap=True)
    err_console.print(f"[bold red]error:[/] {len(failed)} of {len(results)} scenes failed", highlight=False)
    # some scenes done: 1, as documented (a cron job can tell "retry these" from "fix the command");
    # every scene failed with the same kind of error (e.g. --sensor wrong for all): its code, since
    # the request itself may be wrong; failures of mixed kinds (a missing file, a corrupt one): 1
    codes = {r.exit_code or 1 for r in failed}
    raise typer.Exit(codes.pop() if len(failed) == len(results) and len(codes) == 1 else 1)
