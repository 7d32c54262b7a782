"""``cloudmask evaluate``: how good is a mask, and which of several masks is better."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.cli.common import Command, JsonOpt, QuietOpt, console, err_console, print_json
from cloudmask.errors import OutputError, UsageError
from cloudmask.files import usual_permissions
from cloudmask.metrics import METRICS, fmt

_HELP = (
    "Score predicted masks against a reference mask (files, or directories paired by file name).\n\n"
    "Several PRED arguments are compared side by side on the same scenes; the first is the reference "
    "for per-bin differences. Metrics: cloud (thick+thin) vs not-cloud accuracy, precision, recall, F1, "
    "IoU, per-class scores, per-scene spread, and per-window scores binned by the window's true cloud cover."
)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write via a temp file in the destination folder, then rename."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the CSV file's name")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["model", "scope", "subject", "metric", "value"])
            writer.writeheader()
            writer.writerows(rows)
        usual_permissions(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write CSV ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:  # nothing half-written stays behind
            Path(tmp).unlink(missing_ok=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _print_tables(report: dict[str, Any]) -> None:
    models = report["models"]
    lab = report["labelled"]
    labelled = ", ".join(k for k, v in lab.items() if v)
    console.print(
        f"[bold]cloudmask evaluate[/] — {len(report['scenes'])} scene(s), truth format {report['truth_format']} "
        f"(labels: {labelled}); totals are pooled pixel counts", highlight=False,
    )
    if report.get("binary_masks"):
        n = len(report["binary_masks"])
        console.print(
            f"[yellow]{n} binary mask(s) (cloudmask --binary: 0 clear, 1 cloud), e.g. {report['binary_masks'][0]}: "
            "every column is scored as cloud / not cloud (--classes cloud)[/]", highlight=False,
        )
    t = Table(title="Scores", title_justify="left")
    t.add_column("metric")
    for m in models:
        t.add_column(m["name"], justify="right")
    t.add_row("pixels scored", *[f"{m['pooled']['pixels']:,}" for m in models])
    for metric in METRICS:
        t.add_row(f"cloud {metric}", *[fmt(m["pooled"]["cloud"][metric]) for m in models])
    t.add_row("overall accuracy (per class)", *[fmt(m["pooled"]["overall_accuracy"]) for m in models], end_section=True)
    for cls in models[0]["pooled"]["class_names"]:
        t.add_row(f"{cls} F1", *[fmt(m["pooled"]["classes"][cls]["f1"]) for m in models])
        t.add_row(f"{cls} IoU", *[fmt(m["pooled"]["classes"][cls]["iou"]) for m in models])
    if len(report["scenes"]) > 1:
        t.add_section()
        for metric in ("f1", "accuracy"):
            cells = []
            for m in models:
                s = m["per_scene_spread"][f"cloud_{metric}"]
                cells.append(
                    "n/a" if s["n"] == 0 else
                    f"{fmt(s['mean'])} ± {fmt(s['std'])} [{fmt(s['min'], 2)}–{fmt(s['max'], 2)}] n={s['n']}"
                )
            t.add_row(f"per-scene cloud {metric}", *cells)
    console.print(t)

    w = Table(title=f"Cloud scores of {report['window']} px windows by true cloud cover", title_justify="left")
    w.add_column("cover")
    w.add_column("windows", justify="right")
    for m in models:
        w.add_column(f"{m['name']} acc", justify="right")
        w.add_column(f"{m['name']} F1", justify="right")
    for c in report["comparisons"]:
        w.add_column(f"Δacc {c['model']}", justify="right")
        w.add_column(f"ΔF1 {c['model']}", justify="right")
    for i, b in enumerate(models[0]["windows"]["bins"]):
        cells = [b["bin"], str(b["windows"])]
        for m in models:
            mb = m["windows"]["bins"][i]
            cells += [fmt(mb["accuracy"]), fmt(mb["f1"])]
        for c in report["comparisons"]:
            cb = c["bins"][i]
            cells += ["n/a" if cb["d_accuracy"] is None else f"{cb['d_accuracy']:+.3f}",
                      "n/a" if cb["d_f1"] is None else f"{cb['d_f1']:+.3f}"]
        w.add_row(*cells)
    console.print(w)
    if report["no_truth"]:
        err_console.print(
            f"[yellow]left out {len(report['no_truth'])} prediction(s) with no truth file: "
            f"{', '.join(report['no_truth'][:5])}{' …' if len(report['no_truth']) > 5 else ''}[/]"
        )
    if report["skipped_scenes"]:
        err_console.print(
            f"[yellow]skipped {len(report['skipped_scenes'])} scene(s) without a prediction from every model: "
            f"{', '.join(report['skipped_scenes'][:5])}{' …' if len(report['skipped_scenes']) > 5 else ''}[/]"
        )


def _check_rgb_bands(image: Path, bands: list[int]) -> None:
    """Every image --plots would read has the bands --rgb names (an image file, or a folder's rasters)."""
    import rasterio

    files = [image] if image.is_file() else sorted(p for p in image.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    for f in files:
        try:
            with rasterio.open(f) as ds:
                count = ds.count
        except (rasterio.errors.RasterioError, OSError):
            continue  # an unreadable image is said where it is read, as before
        if max(bands) > count:
            raise UsageError(f"--rgb {','.join(map(str, bands))}: {f.name} has bands 1-{count}")


@app.command("evaluate", cls=Command, help=_HELP, short_help="Score predicted masks against reference masks.")
def evaluate_cmd(
    preds: Annotated[list[Path], typer.Argument(help="Predicted mask file(s) or folder(s) of masks.", show_default=False, metavar="PRED")],
    truth: Annotated[Path, typer.Option("--truth", "-t", metavar="PATH", help="Reference mask file or folder (paired by file name).")],
    truth_format: Annotated[
        str, typer.Option("--truth-format", metavar="FORMAT", help="cloudmask | cloudsen12 | biome | sparcs, or a YAML mapping file.")
    ] = "cloudmask",
    pred_format: Annotated[
        str, typer.Option("--pred-format", metavar="FORMAT", help="Encoding of the predictions (same choices as --truth-format).")
    ] = "cloudmask",
    classes: Annotated[
        str | None,
        typer.Option("--classes", metavar="CLASSES", help="Classes the truth labels, e.g. 'cloud,thin,shadow' or 'cloud,shadow' "
                     "(default: what the truth format labels)."),
    ] = None,
    names: Annotated[
        list[str] | None, typer.Option("--name", "-n", metavar="NAME", help="Column name for each PRED, in order (repeatable).")
    ] = None,
    reproject: Annotated[
        bool, typer.Option("--reproject", help="Resample predictions onto the truth grid when grids differ.")
    ] = False,
    window: Annotated[int, typer.Option("--window", metavar="PX", min=8, help="Window edge in pixels for the cloud-cover analysis.")] = 128,
    csv_path: Annotated[Path | None, typer.Option("--csv", metavar="FILE", help="Write all numbers as long-format CSV.")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", metavar="DIR", help="Write PNG figures to this folder.")] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", metavar="PATH", help="Image (file, or folder paired by name) for RGB quick-looks in --plots.", exists=True),
    ] = None,
    rgb: Annotated[
        str | None, typer.Option("--rgb", metavar="R,G,B", help="1-based band numbers for red,green,blue of --image (default: by band name).")
    ] = None,
    quicklooks: Annotated[int, typer.Option("--quicklooks", metavar="N", min=0, help="How many scenes get a quick-look figure.")] = 6,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from cloudmask.evaluate import csv_rows, evaluate

    rgb_bands = None
    if rgb:
        try:
            rgb_bands = [int(x) for x in rgb.split(",")]
        except ValueError:
            rgb_bands = []
        if len(rgb_bands) != 3 or min(rgb_bands) < 1:
            raise UsageError(f"--rgb {rgb!r}: give three 1-based band numbers, e.g. --rgb 3,2,1")
        if image is not None and plots is not None:
            _check_rgb_bands(image, rgb_bands)  # before any work or figure, not at the quick-looks
    show_progress = not (quiet or as_json)
    with Progress(
        TextColumn("[bold]evaluate[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=not show_progress, transient=True,
    ) as progress:
        task = progress.add_task("", total=None)

        def step(scene: str, done: int, total: int) -> None:
            progress.update(task, description=scene, completed=done, total=total)

        ev = evaluate(
            preds, truth, names=names, truth_format=truth_format, pred_format=pred_format, classes=classes,
            reproject=reproject, window=window, image=image, previews=quicklooks if plots else 0, on_scene=step,
        )
    written: list[Path] = []
    if csv_path is not None:
        _write_csv(csv_rows(ev.report), csv_path)
        written.append(csv_path)
    if plots is not None:
        from cloudmask.plots import write_all

        written += write_all(ev, plots, rgb_bands)
    if as_json:
        print_json({**ev.report, "outputs": [str(p) for p in written]})
        return
    if quiet:
        return
    _print_tables(ev.report)
    for p in written:
        console.print(f"[dim]wrote {p}[/]", highlight=False)
