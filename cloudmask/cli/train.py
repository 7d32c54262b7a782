"""``cloudmask train``: train the sensor-independent model from a YAML config plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cloudmask.cli.app import app
from cloudmask.errors import UsageError
from cloudmask.cli.common import Command, JsonOpt, QuietOpt, SensorsDirOpt, console, err_console, print_json, use_sensors_dirs


def _val_text(val: dict[str, Any]) -> str:
    parts = []
    for name, s in val.items():
        sh = f"/{s['shadow_f1']:.0f}" if "shadow_f1" in s else ""
        parts.append(f"{name.replace('real_', 'r:').replace('sim_', 's:')} {s['cloud_f1']:.0f}{sh}")
    return " ".join(parts)


@app.command("train", cls=Command, short_help="Train the model on simulated (and real) scenes.")
def train_cmd(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides as key.sub=value (YAML values), e.g. train.steps=500 data.tile=96.",
                       metavar="KEY=VALUE"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML training config (defaults apply for missing keys).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Run folder (overrides the config's `out`).", file_okay=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from last.pt in the run folder (its saved config.yaml unless -c is given).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in a run folder that holds an earlier run (its files are removed first).")] = False,
    sensors_dir: SensorsDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the model on simulated scenes (plus optional real tiles); writes checkpoints and best weights.

    Shows loss and validation metrics (cloud F1 / shadow F1 per validation set) while it runs.
    """
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite starts it over: give one of them")
    use_sensors_dirs(sensors_dir)
    from cloudmask.model.train import load_config, train

    extra = list(overrides or [])
    if out is not None:
        extra.append(f"out={out}")
    if resume and config is None:  # the run's own config: resuming needs the folder, not the command again
        run = out if out is not None else Path(load_config(None, extra)["out"])
        if (run / "config.yaml").is_file():
            config = run / "config.yaml"
    cfg = load_config(config, extra)
    show = not (quiet or as_json)
    progress = Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, disable=not show,
    )
    with progress:
        task = progress.add_task("train", total=int(cfg["train"]["steps"]), loss="-", val="")

        plain = show and not err_console.is_terminal  # cron, a pipe, a batch log: the bar draws nothing there
        seen: dict[str, Any] = {"val": None}

        def report(done: int, total: int, info: dict[str, Any]) -> None:
            val = info.get("val") or {}
            progress.update(task, completed=done, loss=f"{info['loss']:.3f}", val=_val_text(val))
            if plain and val and val is not seen["val"]:  # a line per validation, so a log shows the run live
                seen["val"] = val
                err_console.print(f"step {done}/{total} loss {info['loss']:.3f} {_val_text(val)}", highlight=False,
                                  soft_wrap=True)

        summary = train(cfg, resume=resume, progress=report, overwrite=overwrite)
    if as_json:
        print_json(summary)
        return
    if quiet:
        return
    table = Table(title=f"best checkpoint: {summary['out']}/best.safetensors")
    for col in ("set", "cloud F1", "precision", "recall", "accuracy", "shadow F1"):
        table.add_column(col, justify="right" if col != "set" else "left")
    for name, s in (summary["best_metrics"] or {}).items():
        sh = f"{s['shadow_f1']:.1f}" if "shadow_f1" in s else "-"
        table.add_row(name, f"{s['cloud_f1']:.1f}", f"{s['cloud_precision']:.1f}", f"{s['cloud_recall']:.1f}", f"{s['cloud_acc']:.1f}", sh)
    console.print(table)
    console.print(f"{summary['steps']} steps in {summary['elapsed_s']:.0f} s")
