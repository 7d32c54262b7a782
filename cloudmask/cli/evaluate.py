"""``cloudmask evaluate``: placeholder until its issue lands."""

from __future__ import annotations

from cloudmask.cli.app import app
from cloudmask.errors import UsageError


@app.command("evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate_cmd() -> None:
    """Not available yet in this build."""
    raise UsageError("`cloudmask evaluate` is not implemented yet in this version")
