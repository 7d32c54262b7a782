"""``cloudmask sample``: copy the small scene bundled with the package, to try cloudmask at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from cloudmask.cli.app import app
from cloudmask.cli.common import Command, JsonOpt, QuietOpt, console
from cloudmask.errors import OutputError

#: The bundled scene: simulated Sentinel-2 L2A DN (baseline 04.00 offset), 256×256 px at 20 m,
#: and its simulator labels (0 clear, 1 thick, 2 thin, 3 shadow) for trying ``cloudmask evaluate``.
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "S2A_MSIL2A_sample.tif"
SAMPLE_LABEL = SAMPLE.with_name("S2A_MSIL2A_sample.label.tif")


@app.command("sample", cls=Command, short_help="Copy the bundled sample scene and its labels.")
def sample_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", metavar="DIR", help="Folder to copy the sample scene into.")] = Path("sample"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy the bundled Sentinel-2 sample scene and its labels into a folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for source in (SAMPLE, SAMPLE_LABEL):
            target = out / source.name
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the sample scene ({exc.strerror or exc})") from None
    if as_json:
        print(json.dumps({"scene": str(out / SAMPLE.name), "labels": str(out / SAMPLE_LABEL.name)}))
    elif not quiet:
        console.print(str(out / SAMPLE.name), highlight=False)
