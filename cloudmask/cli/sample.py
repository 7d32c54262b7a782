"""``cloudmask sample``: copy the small scene bundled with the package, to try cloudmask at once."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from cloudmask.cli.app import app
from cloudmask.cli.common import console
from cloudmask.errors import OutputError

#: The bundled scene: simulated Sentinel-2 L2A DN (baseline 04.00 offset), 256×256 px at 20 m.
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "S2A_MSIL2A_sample.tif"


@app.command("sample")
def sample_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to copy the sample scene into.")] = Path("sample"),
) -> None:
    """Copy the bundled Sentinel-2 sample scene into a folder (then: cloudmask mask FOLDER/*.tif)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        target = out / SAMPLE.name
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(SAMPLE, tmp)
        tmp.replace(target)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the sample scene ({exc.strerror or exc})") from None
    console.print(str(target), highlight=False)
